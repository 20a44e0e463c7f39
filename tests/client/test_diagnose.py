"""Connection failures in words a user can act on; everything else passes through unchanged."""

from __future__ import annotations

import grpc
import pytest

from client.diagnose import explain
from client.errors import GatewayError, UnavailableError

CORE = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
NOT_TLS = CORE + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: ...:WRONG_VERSION_NUMBER: x"
CLOSED = CORE.replace("UNKNOWN", "UNAVAILABLE") + "Socket closed"
UNTRUSTED = CORE + "Ssl handshake failed: SSL_ERROR_SSL: error:1000007d:SSL routines:CERTIFICATE_VERIFY_FAILED"
RESET = CORE.replace("UNKNOWN", "UNAVAILABLE") + "recvmsg:Connection reset by peer"
REFUSED = CORE + "Failed to connect to remote host: Connection refused"


@pytest.mark.parametrize(
    ("message", "plaintext", "reason"),
    [
        (NOT_TLS, False, "SERVER_NOT_TLS"),
        (UNTRUSTED, False, "CERTIFICATE_UNTRUSTED"),
        (CLOSED, True, "PLAINTEXT_REFUSED"),
        (RESET, True, "PLAINTEXT_REFUSED"),
        (CLOSED, False, None),  # a TLS client whose connection was closed: nothing to say about plaintext
        (NOT_TLS, True, None),
        (REFUSED, False, None),  # nobody listens: C-core's message says so already
    ],
)
def test_connection_failures(message: str, plaintext: bool, reason: str | None) -> None:
    error = UnavailableError(grpc.StatusCode.UNAVAILABLE, message)
    explained = explain(error, target="localhost:50051", plaintext=plaintext)
    if reason is None:
        assert explained is error
        return
    assert isinstance(explained, UnavailableError)
    assert (explained.code, explained.reason, explained.domain) == (grpc.StatusCode.UNAVAILABLE, reason, "client")
    assert explained.message.startswith("the server at localhost:50051 ")
    assert explained.metadata == {"grpc_message": message}


def test_the_gateways_own_errors_are_left_alone() -> None:
    # A status the gateway sent carries a reason, even if its text happened to match.
    error = UnavailableError(grpc.StatusCode.UNAVAILABLE, NOT_TLS, reason="UPSTREAM_UNAVAILABLE")
    assert explain(error, target="t", plaintext=False) is error
    other = GatewayError(grpc.StatusCode.INTERNAL, NOT_TLS)
    assert explain(other, target="t", plaintext=False) is other


def test_grpc_message_is_bounded() -> None:
    error = UnavailableError(grpc.StatusCode.UNAVAILABLE, NOT_TLS + "x" * 5000)
    assert len(explain(error, target="t", plaintext=False).metadata["grpc_message"]) == 500
