"""The gateway's event loop: uvloop when installed (auto), asyncio's own on request or without it."""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType

import pytest
import uvloop

from server import __main__ as entry
from server.eventloop import LoopUnavailable, loop_runner


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def without_uvloop(name: str, package: str | None = None) -> ModuleType:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_uvloop)


def test_auto_is_uvloop_when_it_is_installed() -> None:
    assert loop_runner("auto") == ("uvloop", uvloop.run)


def test_asyncio_on_request() -> None:
    assert loop_runner("asyncio") == ("asyncio", asyncio.run)


@pytest.mark.usefixtures("no_uvloop")
def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    assert loop_runner("auto") == ("asyncio", asyncio.run)


@pytest.mark.usefixtures("no_uvloop")
def test_uvloop_asked_for_and_missing_is_refused_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LoopUnavailable, match="uvloop is not installed"):
        loop_runner("uvloop")
    assert entry.main(["--loop", "uvloop"]) == 2
    assert "gateway: --loop uvloop: uvloop is not installed" in capsys.readouterr().err


def test_an_unknown_loop_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        loop_runner("trio")
