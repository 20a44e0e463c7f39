"""`workers`: the config key, GATEWAY_WORKERS and --workers, with `auto` and the precedence of the three."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server import defaults
from server.config import ConfigError, default_config, load_config
from server.config.readers import available_cores


def config_file(tmp_path: Path, workers: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"workers: {workers}\nproviders: [{{name: demo, kind: demo}}]\nmodels: [{{name: demo, provider: demo}}]\n"
    )
    return path


def test_one_process_unless_asked() -> None:
    assert default_config(env={}).workers == 1


@pytest.mark.parametrize(
    ("text", "expected"), [("4", 4), ("1", 1), ("auto", available_cores()), ("AUTO", available_cores())]
)
def test_the_file_sets_a_number_or_auto(tmp_path: Path, text: str, expected: int) -> None:
    assert load_config(config_file(tmp_path, text), env={}).workers == expected


def test_auto_is_the_cores_this_process_may_run_on() -> None:
    assert available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("text", ["0", "-2", "2.5", "lots", "true", "[2]", str(defaults.MAX_WORKERS + 1)])
def test_anything_else_in_the_file_is_a_problem(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(config_file(tmp_path, text), env={})

    assert str(error.value).startswith(
        f"workers: expected a whole number from 1 to {defaults.MAX_WORKERS}, or auto; got "
    )


def test_the_flag_wins_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "2")

    assert load_config(path, env={"GATEWAY_WORKERS": "3"}).workers == 3
    assert load_config(path, env={"GATEWAY_WORKERS": "3"}, workers="4").workers == 4
    assert load_config(None, env={"GATEWAY_WORKERS": "auto"}).workers == available_cores()
    assert load_config(None, env={"GATEWAY_WORKERS": "3"}, workers="5").workers == 5


@pytest.mark.parametrize(
    ("env", "flag", "problem"),
    [
        (
            {"GATEWAY_WORKERS": "many"},
            None,
            "GATEWAY_WORKERS: expected a whole number from 1 to 256, or auto; got 'many'",
        ),
        ({}, "0", "--workers: expected a whole number from 1 to 256, or auto; got '0'"),
    ],
)
def test_a_bad_count_from_the_environment_or_the_flag_is_a_config_error(
    env: dict[str, str], flag: str | None, problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, env=env, workers=flag)

    assert str(error.value) == problem
