"""The run as a PNG: CPU time per token, tokens/s and TTFT at c=1 of every side, side by side.

matplotlib comes with the `bench` extra (`pip install -e '.[bench]'`, which `make bench` does); without
it `draw` says so and writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.report import SIDES

__all__ = ["draw"]

_PANELS = (
    ("{side}_us_per_token", "CPU time per token (µs, log scale)", True),
    ("tokens_per_s_{side}", "tokens/s at c={c}", False),
    ("ttft_p50_ms_{side}", "time to first token p50 at c=1 (ms, log scale)", True),
)


def draw(doc: Mapping[str, Any], path: Path) -> str:
    """Write the chart of `doc` (a saved run) to `path`; what happened, in a few words."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install -e '.[bench]')"
    summary, c = doc["summary"], doc["settings"]["concurrency"]
    sides = [side for side in SIDES if side not in doc.get("absent", {})]
    figure, axes = plt.subplots(1, len(_PANELS), figsize=(15, 4.2))
    for axis, (key, title, log) in zip(axes, _PANELS, strict=True):
        values = [summary.get(key.format(side=side)) for side in sides]
        shown = [(side, v) for side, v in zip(sides, values, strict=True) if v is not None and not math.isnan(v)]
        axis.barh([SIDES[s].split(" (")[0] for s, _ in shown], [v for _, v in shown], color="#4a7fb5")
        axis.set_title(title.format(c=c), fontsize=10)
        axis.invert_yaxis()
        if log:
            axis.set_xscale("log")
        for i, (_, v) in enumerate(shown):
            axis.annotate(
                f"{v:,.0f}" if v >= 100 else f"{v:.3g}",
                (v, i),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    figure.suptitle(f"make bench, {doc.get('finished', '')}: {doc['settings']['tokens']}-token streams", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return f"chart: {path}"
