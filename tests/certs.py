"""Test TLS material: the server's lives in tools/devcerts.py (shared with `make certs`); client certificates
for mTLS, signed by a client CA of their own, are made here."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tools.devcerts import CertFiles, make_certs

__all__ = ["CertFiles", "ClientCert", "make_certs", "make_client_certs"]


@dataclass(frozen=True)
class ClientCert:
    cert: bytes  # PEM
    key: bytes  # PEM, PKCS#8


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_client_certs(
    ca_file: Path, subjects: dict[str, tuple[str, ...]], *, ca_name: str = "gateway test client CA"
) -> dict[str, ClientCert]:
    """A client CA written to `ca_file`, and for each common name in `subjects` a client certificate it
    signed, with those DNS or URI (containing "://") subject alternative names."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs = {}
    for common_name, sans in subjects.items():
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if sans:
            names = [x509.UniformResourceIdentifier(s) if "://" in s else x509.DNSName(s) for s in sans]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        certs[common_name] = ClientCert(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
    return certs
