"""What the gateway tells its operators: one record per call, and what is written from it.

record.py         the call record and the access log line written from it
metrics.py        the GenAI and gateway metrics, written from each record; breakers and budgets when scraped
grpc_metrics.py   go-grpc-prometheus server metrics, from an interceptor in front of auth
exporter.py       the /metrics HTTP listener (prometheus-client's, in a thread)
"""
