"""What a failed connection means, in words a user can act on.

gRPC reports a connection it could not set up as UNAVAILABLE with C-core's own text, for example
`failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: Tls handshake failed
(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER`.
`explain` recognises the usual mistakes and says what happened and what to do; the code stays UNAVAILABLE
and C-core's text stays in `metadata["grpc_message"]`.

    reason                  when                                                          sure?
    SERVER_NOT_TLS          TLS to a server that answers in plaintext (WRONG_VERSION_NUMBER)  yes
    PLAINTEXT_REFUSED       plaintext to a server that closes (or resets) it at once        likely TLS
    CERTIFICATE_UNTRUSTED   TLS to a server whose certificate no trusted CA signed          yes
"""

from __future__ import annotations

import grpc

from client.errors import CLIENT_DOMAIN, GatewayError, UnavailableError

__all__ = ["explain"]

# C-core's text is bounded before it is kept: it is not ours, and it is echoed by the CLI's --debug.
_MAX_GRPC_MESSAGE = 500
_CONNECT_FAILED = "failed to connect to all addresses"
# A TLS server that reads a plaintext HTTP/2 preface closes the connection; when the client's next bytes
# are still unread then, the close is a reset.
_CLOSED_AT_ONCE = ("Socket closed", "Connection reset by peer")


def explain(error: GatewayError, *, target: str, plaintext: bool) -> GatewayError:
    """`error`, or a clearer UnavailableError when it is a connection failure whose cause is known."""
    message = error.message
    if error.code != grpc.StatusCode.UNAVAILABLE or error.reason or _CONNECT_FAILED not in message:
        return error  # the gateway's own errors carry a reason; only C-core's connection failures do not
    server = f"the server at {target}"
    if not plaintext and "WRONG_VERSION_NUMBER" in message:
        reason = "SERVER_NOT_TLS"
        text = f"{server} speaks plaintext, not TLS: use --plaintext (Python: plaintext=True)"
    elif not plaintext and "CERTIFICATE_VERIFY_FAILED" in message:
        reason = "CERTIFICATE_UNTRUSTED"
        text = f"{server} has a certificate that no trusted CA signed: give its CA with --ca-cert (Python: ca_file=)"
    elif plaintext and any(closed in message for closed in _CLOSED_AT_ONCE):
        reason = "PLAINTEXT_REFUSED"
        text = (
            f"{server} closed the plaintext connection at once; it probably requires TLS: leave out --plaintext "
            "(Python: plaintext=False), and give --ca-cert (ca_file=) if a private CA signed its certificate"
        )
    else:
        return error
    metadata = {**error.metadata, "grpc_message": message[:_MAX_GRPC_MESSAGE]}
    return UnavailableError(error.code, text, reason=reason, domain=CLIENT_DOMAIN, metadata=metadata)
