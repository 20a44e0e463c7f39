"""What the gateway tells its operators: one record per call, and what is written from it.

record.py   the call record and the access log line written from it
"""
