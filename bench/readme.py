"""python -m bench.readme [--check]: the README's benchmark tables, made from bench/results/latest.json.

The tables between the markers `<!-- bench:tables -->` and `<!-- /bench:tables -->` in README.md are
rendered from the saved run by the same functions that print the bench's own tables (bench/report.py), so
a full `make bench` (which saves its run and calls this) keeps them in step, and `--check` (a test runs it)
fails when someone edits one without the other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR, markdown, tables

__all__ = ["BEGIN", "END", "LATEST", "README", "main", "section", "update"]

README = Path(__file__).resolve().parent.parent / "README.md"
LATEST = RESULTS_DIR / "latest.json"
BEGIN = "<!-- bench:tables -->"
END = "<!-- /bench:tables -->"


def section(doc: dict[str, Any]) -> str:
    """The markdown between the markers: the run's machine line, its tables and its target lines."""
    machine, settings = doc["machine"], doc["settings"]
    lines = [
        f"Run of {doc.get('finished', 'n/a')}: {machine['cpus']} CPUs, {machine['python']}, "
        f"`{' '.join(doc['command'].split()[1:])}` with {settings['rounds']} round(s) of {settings['duration_s']:g} s; "
        f"other processes used {doc['summary'].get('other_cpu_percent', 0) or 0:.0f} % of a core on average.",
        "",
    ]
    for table in tables(doc["summary"], doc):
        lines += [*markdown(table), ""]
    lines += ["```", *doc["targets"], "```"]
    return "\n".join(lines)


def update(readme: str, doc: dict[str, Any]) -> str:
    """`readme` with the text between the markers replaced by `section(doc)`."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README.md has no {BEGIN} ... {END} markers")
    return f"{head}{BEGIN}\n{section(doc)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the JSON makes")
    parser.add_argument("--json", type=Path, default=LATEST, help="the saved run (default: %(default)s)")
    args = parser.parse_args(argv)
    doc = json.loads(args.json.read_text())
    current = README.read_text()
    wanted = update(current, doc)
    if args.check:
        if wanted != current:
            print(f"README.md's bench tables differ from {args.json}: run `python -m bench.readme`", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
