"""Request signatures: what is signed, and that the path is the one the upstream sees."""

from __future__ import annotations

import hashlib
import hmac

from server.providers.signing import RequestSigner, signature


def test_the_signature_is_the_hmac_of_method_path_timestamp_and_body() -> None:
    expected = hmac.new(b"k", b"POST:/v1/chat/completions:1700000000:{}", hashlib.sha256).hexdigest()
    assert signature(b"k", "POST", "/v1/chat/completions", 1700000000, b"{}") == expected


def test_the_signed_path_includes_the_base_urls_path_and_leaves_out_the_query() -> None:
    signer = RequestSigner("k", "http://127.0.0.1:9/v1beta/", clock=lambda: 1700000000.9)
    headers = signer.headers("/models/m:streamGenerateContent?alt=sse", b"{}")
    assert headers == {
        "x-timestamp": "1700000000",
        "x-signature": signature(b"k", "POST", "/v1beta/models/m:streamGenerateContent", 1700000000, b"{}"),
    }
