"""What the gateway tells its operators: one record per call, and what is written from it.

record.py         the call record and the access log line written from it
request_id.py     x-request-id: which caller ids are kept, the new ones, the upstream's own id bounded
logs.py           text or JSON log lines, each naming the request id of the call it was written in
trace.py          a span per call, turn and upstream attempt, or nothing (the default); otel.py has the SDK
metrics.py        the GenAI and gateway metrics, written from each record; breakers and budgets when scraped
grpc_metrics.py   go-grpc-prometheus server metrics, from an interceptor in front of auth
lean.py           counters, gauges and histograms of plain numbers, rendered when scraped (one process)
exporter.py       the /metrics HTTP listener (prometheus-client's, in a thread)
"""
