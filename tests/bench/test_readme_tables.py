"""The README's benchmark tables are made from bench/results/latest.json and nothing else: they cannot
drift from the saved run (a full `make bench` rewrites both)."""

from __future__ import annotations

import json

import pytest

from bench import readme


def test_the_readme_tables_are_what_the_saved_run_makes() -> None:
    document = json.loads(readme.LATEST.read_text())
    current = readme.README.read_text()

    assert readme.update(current, document) == current, "run `python -m bench.readme` after editing latest.json"
    assert readme.main(["--check"]) == 0


def test_a_changed_figure_in_the_saved_run_shows_in_the_readme_tables() -> None:
    document = json.loads(readme.LATEST.read_text())
    document["summary"]["gateway_us_per_token"] = 12345.0
    current = readme.README.read_text()

    changed = readme.update(current, document)

    assert changed != current
    assert "12,345" in readme.section(document)
    assert changed.startswith(current.partition(readme.BEGIN)[0])  # only the text between the markers
    assert changed.endswith(current.partition(readme.END)[2])


def test_a_readme_without_the_markers_is_an_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        readme.update("# no tables here\n", json.loads(readme.LATEST.read_text()))
