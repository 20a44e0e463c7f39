"""The supervisor's decisions, without processes: when a dead worker is replaced, and how its end is told.
tests/integration/test_workers.py runs the real thing."""

from __future__ import annotations

import signal
import socket

import pytest

from server.workers import RestartPolicy, check_port_free, describe_exit

POLICY = RestartPolicy(stable_s=30.0, base_s=0.1, cap_s=0.5, max_quick_restarts=5)


@pytest.mark.parametrize(
    ("deaths", "delay"),
    [(1, 0.0), (2, 0.1), (3, 0.2), (4, 0.4), (5, 0.5), (6, None)],
)
def test_replacements_back_off_then_the_supervisor_gives_up(deaths: int, delay: float | None) -> None:
    assert POLICY.delay_s(deaths) == delay


@pytest.mark.parametrize(
    ("before", "ready_for_s", "after"),
    [
        (0, None, 1),  # died before it was ever ready
        (3, None, 4),
        (3, 29.9, 4),  # ready, but not for long: still a quick death
        (3, 30.0, 1),  # it served a while: the count starts again
        (5, 3600.0, 1),
    ],
)
def test_deaths_in_a_row_count_only_quick_ones(before: int, ready_for_s: float | None, after: int) -> None:
    assert POLICY.deaths(before, ready_for_s) == after


def test_a_worker_that_keeps_dying_is_given_up_after_the_restarts_allowed() -> None:
    deaths, delays = 0, []
    while (delay := POLICY.delay_s(deaths := POLICY.deaths(deaths, 1.0))) is not None:
        delays.append(delay)

    assert delays == [0.0, 0.1, 0.2, 0.4, 0.5]


@pytest.mark.parametrize(
    ("exitcode", "said"),
    [
        (0, "exited with code 0"),
        (1, "exited with code 1"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGSEGV, "was killed by SIGSEGV"),
        (-200, "was killed by signal 200"),
        (None, "is still running"),
    ],
)
def test_how_a_worker_ended_is_said_with_its_code_or_signal(exitcode: int | None, said: str) -> None:
    assert describe_exit(exitcode) == said


def test_a_port_someone_listens_on_is_refused_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: Address already in use$"):
            check_port_free(f"127.0.0.1:{port}")


def test_a_port_only_bound_by_a_closed_listener_or_port_0_is_free() -> None:
    with socket.socket() as was:
        was.bind(("127.0.0.1", 0))
        port = was.getsockname()[1]
    check_port_free(f"127.0.0.1:{port}")
    check_port_free("127.0.0.1:0")
