"""The LiteLLM proxy as a peer: found in the virtual environment `make bench-peers` makes, configured to
call the same fake upstream as the gateway, started with a master key (current versions refuse to start
without LITELLM_MASTER_KEY) and one worker process.

    executable()                               # None when `make bench-peers` has not been run
    arguments(config_path, port), environment(), config(upstream_url, models)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["HOW_TO_GET", "MASTER_KEY", "READY_TIMEOUT_S", "arguments", "config", "environment", "executable"]

VENV = Path(__file__).resolve().parent / ".venv-litellm"
HOW_TO_GET = "not installed: `make bench-peers` installs it (into bench/.venv-litellm)"
# A bench-only key for a proxy that listens on loopback for the length of the run.
MASTER_KEY = "sk-bench-litellm-master"
# Importing LiteLLM's proxy takes most of a minute on a busy 2-core machine.
READY_TIMEOUT_S = 240.0


def executable(venv: Path = VENV) -> Path | None:
    path = venv / "bin" / "litellm"
    return path if path.exists() else None


def config(upstream_url: str, models: list[str]) -> dict[str, Any]:
    """A proxy config serving each of `models` from the fake OpenAI upstream under the same name."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": upstream_url, "api_key": "sk-fake"},
            }
            for model in models
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }


def environment() -> dict[str, str]:
    return {
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
    }


def arguments(config_path: Path, port: int) -> list[str]:
    return ["--config", str(config_path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
