"""Test TLS material lives in tools/devcerts.py (shared with `make certs`)."""

from tools.devcerts import CertFiles, make_certs

__all__ = ["CertFiles", "make_certs"]
