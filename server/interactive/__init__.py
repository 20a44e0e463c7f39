"""InteractiveStream sessions.

session.py   one session: reader, turn tasks and writer, joined by the outbox
wire.py      protobuf in and out: the session's checks and its outgoing messages
outbox.py    the bounded queue between turn tasks and the writer
history.py   a conversation's history, trimmed to its bounds
"""
