"""What keeps a call alive when an upstream is not: the parts the router's attempt loop (server/routing/plan.py)
is built from, each small, clock-injected and tested on its own.

    retry.py     which failures are retried, backoff with full jitter, Retry-After, the retry budget
    breaker.py   a circuit breaker per deployment
    limits.py    caps on upstream calls in flight, per process and per provider
    idle.py      the stream idle timeout after the first token
    resume.py    `resume: continue`: the request that picks a failed stream up
"""
