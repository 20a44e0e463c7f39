"""py-spy's collapsed stacks boiled down to the top frames by own and by total time."""

from __future__ import annotations

from bench.profile import top_frames

RAW = """\
main (a.py:1);serve (a.py:5);write (grpc.py:9) 6
main (a.py:1);serve (a.py:5);decode (sse.py:3) 3
main (a.py:1);idle (a.py:7) 1
"""


def test_own_time_is_the_innermost_frame_and_total_time_every_frame_on_the_stack() -> None:
    lines = top_frames(RAW, top=2)

    assert lines[0] == "10 samples at 200 Hz"
    own = lines.index("own time (innermost frame):")
    assert lines[own + 1 : own + 4] == ["   60.0 %  write (grpc.py:9)", "   30.0 %  decode (sse.py:3)", ""]
    total = lines.index("total time (frames on the stack):")
    assert lines[total + 1 :] == ["  100.0 %  main (a.py:1)", "   90.0 %  serve (a.py:5)"]


def test_no_samples_says_so() -> None:
    assert top_frames("") == ["no samples (the process was idle or py-spy saw no Python frames)"]
