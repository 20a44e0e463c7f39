"""`make certs` (tools/devcerts.py): the private key is readable by its owner only."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

from cryptography import x509

from tools.devcerts import main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_private_key_is_written_with_mode_0600(tmp_path: Path) -> None:
    assert main([str(tmp_path / "tls")]) == 0
    assert mode(tmp_path / "tls" / "server.key") == 0o600
    assert mode(tmp_path / "tls" / "ca.crt") & 0o044  # certificates stay readable


def test_a_key_left_readable_by_an_older_run_is_narrowed_to_0600(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_text("an older key")
    key.chmod(0o644)
    assert main([str(tmp_path)]) == 0
    assert mode(key) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_development_certificates_outlive_the_day_they_were_made(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > datetime.timedelta(days=89)
