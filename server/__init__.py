"""The gateway server: a grpc.aio AIService in front of HTTP/SSE model providers.

Layers, top to bottom (each module holds one concern):

    app.py          build the grpc.aio server; health, reflection, interceptors; graceful shutdown
    auth.py         bearer-token interceptor
    service.py      the AIService servicer: protobuf <-> provider-neutral types, nothing else
    validation.py   request checks -> field violations
    routing.py      model name -> catalog model; the attempt loop of each call (stream and complete)
    attempts.py     which deployment or fallback a call tries next, how long it waits, when it gives up
    resilience/     retry policy and budget, circuit breaker, concurrency limits, idle timeout, resume
    providers/      provider adapters: neutral request -> HTTP; SSE/JSON -> neutral events
    sse.py          the text/event-stream decoder
    types.py        the provider-neutral request, events and results
    errors.py       the error tree and its one mapping to google.rpc.Status
    config.py       typed configuration: YAML, environment, the embedded default
    defaults.py     every default number in one place
"""
