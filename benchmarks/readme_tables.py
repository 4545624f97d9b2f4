"""Rewrite the performance tables in README.md and docs/performance.md from the committed results.

Every table sits between two markers::

    <!-- bench:start cpu float32 -->
    ...generated...
    <!-- bench:end -->

``cpu`` names the folder under benchmarks/results/ whose bench.json is read, the dtypes that follow say
which tables to write. The tables are `softdist bench`'s own summary (``softdist._bench._report.summary``,
the same code that writes summary.md), preceded by one line saying which run they come from. A folder
without a bench.json gives a line saying so, and fills in once results are committed there.

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
BLOCK = re.compile(r"(<!-- bench:start ([\w-]+)((?: [\w]+)+) -->\n)(.*?)(<!-- bench:end -->)", re.DOTALL)


def caption(meta: dict, source: str) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    gpus = f" and {', '.join(meta['gpus'])}" if meta.get("gpus") else ""
    return (
        f"From `benchmarks/results/{source}/bench.json`: `{meta['command']}` on {meta['date'][:10]}, "
        f"{meta['cpus']} CPUs ({meta['machine']}){gpus}; Python {meta['python']}; {versions}; "
        f"{meta['seconds'] / 60:.0f} min in all. The largest size of each case; ms is the median time, "
        "× bound the ratio to the backend's own matrix products (or one elementwise pass), accuracy the "
        "max relative error on the case's probe (kNN: also the recall of the true 10 neighbours)."
        + (f" Note: {meta['note']}" if meta.get("note") else "")
    )


def tables(source: str, dtypes: list[str]) -> str:
    path = RESULTS / source / "bench.json"
    if not path.exists():
        return f"No committed run in `benchmarks/results/{source}/` yet.\n"
    run = json.loads(path.read_text())
    parts = [caption(run["meta"], source)]
    for dtype in dtypes:
        rows = [r for r in run["rows"] if r["dtype"] == dtype]
        parts.append(summary(rows, dtype).rstrip("\n") if rows else f"No {dtype} rows in this run.")
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
