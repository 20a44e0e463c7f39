"""Request signing for upstreams that require it: `X-Timestamp` and `X-Signature` headers.

The signature is the hex HMAC-SHA256, keyed by the provider's signing secret, of
`METHOD:path:timestamp:` followed by the request body's bytes, where `path` is the URL path as sent (the
base URL's path and the call's, without the query string) and `timestamp` is unix seconds. An upstream
checks it and refuses a timestamp far from its own clock (the fake upstream: 300 s either way), which is
what stops a captured request from being replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = ["RequestSigner", "signature"]


def signature(secret: bytes, method: str, path: str, timestamp: int, body: bytes) -> str:
    message = f"{method}:{path}:{timestamp}:".encode() + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class RequestSigner:
    """Signs the POSTs of one provider whose base URL is `base_url`."""

    def __init__(self, secret: str, base_url: str, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret.encode()
        self._base_path = urlsplit(base_url).path.rstrip("/")
        self._clock = clock

    def headers(self, path: str, body: bytes) -> dict[str, str]:
        timestamp = int(self._clock())
        signed_path = self._base_path + path.partition("?")[0]
        return {
            "x-timestamp": str(timestamp),
            "x-signature": signature(self._secret, "POST", signed_path, timestamp, body),
        }
