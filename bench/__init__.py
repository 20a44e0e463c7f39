"""The gateway benchmark: `make bench` (= `python -m bench`) puts the gateway beside its peers in one run.

Every side is a separate process (or process group) on one fake OpenAI upstream, and so is every load
generator, so that no measurement shares an interpreter with what it measures:

    tests.fakes.openai_upstream   the fake upstream (`tokens-N` streams N tokens without delay)
    bench.floor                   the floor: a bare grpc.aio server with pre-serialized chunks, no upstream
    server                        the gateway: 1 worker, N workers, metrics on, tracing on, asyncio's loop
    litellm (bench/.venv-litellm) the LiteLLM proxy, when `make bench-peers` installed it
    bench.load                    load generators, each printing its result as one JSON line

Modules: `results` (settings, result types, the summary), `stack` (starting the sides), `scenarios` (the
steps), `load` and `clients` (the load processes), `procs` (children and /proc), `relay` (bytes on the
socket), `otlp_sink`, `profile` (py-spy), `litellm_peer`, `report` (tables, targets, JSON), `readme` (the
README's tables from the saved JSON), `chart` (the PNG).
"""

__all__: list[str] = []
