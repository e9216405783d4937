"""The README's three outputs (search, pareto, export) claim to be one demo run: they must agree with each other.

Printed outputs are pasted by hand; when one of them is refreshed from a new run and the others are not, the
front door shows a pareto front that the search above it never printed. These tests read the README only."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _block(marker: str) -> str:
    found = [b for b in _blocks() if marker in b]
    assert len(found) == 1, f"expected one README code block containing {marker!r}, found {len(found)}"
    return found[0]


def _table(block: str, title: str) -> list[str]:
    """The rows of the table headed ``title`` (front or confirmed), whitespace-normalised, pick mark kept."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 2:]:
        if not re.match(r"^[*~ ]\s+trial \d+ ", line):
            break
        rows.append(" ".join(line.split()))
    assert rows, f"no rows under {title!r}"
    return rows


SEARCH = "opmix search 'demo'"
PARETO = "runs/demo: budget"
EXPORT = "exporting trial"


def test_search_and_pareto_print_the_same_front_and_confirmed_candidates():
    search, pareto = _block(SEARCH), _block(PARETO)
    for title in ("Pareto front", "Confirmed"):
        assert _table(search, title) == _table(pareto, title), title
    hv = re.compile(r"hypervolume (\d\.\d+)")
    assert hv.search(search).group(1) == hv.search(pareto).group(1)


def test_export_exports_the_pick_that_search_and_pareto_printed():
    pick = next(r for r in _table(_block(PARETO), "Confirmed") if r.startswith("*"))
    # '* trial 0 0.4940 ± 0.1018 2 0.4560 3.369 glmix x1 144 | ...'
    _, _, trial, mean, _, sd, _, proxy, gflops, *arch = pick.split()
    export = _block(EXPORT).splitlines()[0]
    assert export.startswith(f"exporting trial {trial} ({' '.join(arch)}), confirmed accuracy {mean} ± {sd}")
    assert export.endswith(f"proxy accuracy {proxy}, {gflops} GFLOPs")
    assert f"recommended pick (*): trial {trial}, confirmed accuracy {mean} ± {sd}" in _block(SEARCH)
