"""The gateway benchmark: `make bench` (= `python -m bench`) measures what the gateway adds to a direct call.

It starts SEPARATE processes, so that no measurement shares an interpreter with what it measures:

    tests.fakes.openai_upstream   the fake OpenAI upstream (`tokens-N` streams N tokens, no delay)
    server                        ONE gateway process, its config pointing at the upstream
    bench.load                    load generators, each printing its result as one JSON line

and runs two scenarios, each DIRECT (httpx + SSE against the upstream) and THROUGH the gateway (grpc.aio):

    1. time to first token at concurrency 1, sequential requests: p50, p99 and the gateway's added latency;
    2. throughput at concurrency 32 (split over several load processes) with 64-token streams for a fixed
       time: tokens/s, streams/s, and the gateway's CPU and peak RSS.

Modules: `results` (settings, result types, targets), `procs` (child processes and /proc readings), `clients`
(the two ways to stream a reply), `load` (the load-generator CLI), `scenarios` (running them), `report` (the
table).
"""

__all__: list[str] = []
