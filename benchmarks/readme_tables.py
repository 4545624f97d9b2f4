"""Rewrite the performance tables in README.md and docs/performance.md from the committed results.

Every table sits between two markers::

    <!-- bench:start cpu float32 -->
    ...generated...
    <!-- bench:end -->

``cpu`` names the folder under benchmarks/results/ whose bench.json is read; a folder without one but
with sub-folders that have one (``gpu/knn/bench.json``, ``gpu/softmax_loss/bench.json``, ...: runs of one
case each) contributes the rows of all of them. The dtypes that follow say which tables to write. The
tables are `softdist bench`'s own summary (``softdist._bench._report.summary``, the same code that writes
summary.md: the largest size measured of each case and backend), preceded by a line saying which runs
they come from. A folder without results gives a line saying so, and fills in once results are there.

    python benchmarks/readme_tables.py           # rewrite the files
    python benchmarks/readme_tables.py --check   # exit 1 if a file differs from what would be written

tests/test_readme_tables.py runs the check, so the committed text can never drift from the results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from softdist._bench._report import summary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FILES = (ROOT / "README.md", ROOT / "docs" / "performance.md")
BLOCK = re.compile(
    r"(<!-- bench:start ([\w-]+)((?: [\w]+)+) -->\n)(.*?)(<!-- bench:end -->)",
    re.DOTALL,
)


def _runs(source: str) -> list[tuple[str, dict]]:
    """(path relative to benchmarks/results, bench.json contents) of every run under ``source``."""
    folder = RESULTS / source
    paths = (
        [folder / "bench.json"] if (folder / "bench.json").exists() else sorted(folder.glob("*/bench.json"))
    )
    return [(str(p.relative_to(RESULTS)), json.loads(p.read_text())) for p in paths]


def caption(runs: list[tuple[str, dict]]) -> str:
    meta = runs[0][1]["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    gpus = f" and {', '.join(meta['gpus'])}" if meta.get("gpus") else ""
    where = f"{meta['cpus']} CPUs ({meta['machine']}){gpus}; Python {meta['python']}; {versions}"
    if len(runs) == 1:
        source = f"`benchmarks/results/{runs[0][0]}`: `{meta['command']}` on {meta['date'][:10]}, {where}; "
        source += f"{meta['seconds'] / 60:.0f} min in all."
    else:
        stopped = " (stopped at its time limit)"
        each = "; ".join(
            f"`{path}`: `{run['meta']['command']}`" + (stopped if run["meta"].get("interrupted") else "")
            for path, run in runs
        )
        source = f"{len(runs)} runs under `benchmarks/results/`, {meta['date'][:10]}, {where}. {each}."
    notes = " ".join(f"Note: {run['meta']['note']}" for _, run in runs if run["meta"].get("note"))
    legend = (
        "The largest size of each case measured; ms is the median time, × bound the ratio to the "
        "backend's own matrix products (or one elementwise pass), accuracy the max relative error on the "
        "case's probe (kNN: also the recall of the true 10 neighbours)."
    )
    return f"From {source} {legend}" + (f" {notes}" if notes else "")


def tables(source: str, dtypes: list[str]) -> str:
    runs = _runs(source)
    if not runs:
        return f"No committed run in `benchmarks/results/{source}/` yet.\n"
    parts = [caption(runs)]
    for dtype in dtypes:
        rows = [r for _, run in runs for r in run["rows"] if r["dtype"] == dtype]
        parts.append(summary(rows, dtype).rstrip("\n") if rows else f"No {dtype} rows in these runs.")
    return "\n\n".join(parts) + "\n"


def render(text: str) -> str:
    """``text`` with every marked block regenerated."""

    def block(match: re.Match[str]) -> str:
        start, source, dtypes, _, end = match.groups()
        return f"{start}\n{tables(source, dtypes.split())}\n{end}"

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in FILES:
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    verb = "out of date" if args.check else "rewritten"
    for path in stale:
        print(f"{path.relative_to(ROOT)}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
