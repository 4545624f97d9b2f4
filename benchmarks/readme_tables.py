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
``<!-- bench:start cpu/knn knn_cells -->`` instead writes the kNN cells of issue 15 (``KNN_CELLS``): each
the ratio of two rows' times in that kNN run (softdist against a peer, a backend against NumPy, sorted
input against shuffled), per dtype.

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
    r"(<!-- bench:start ([\w/-]+)((?: [\w]+)+) -->\n)(.*?)(<!-- bench:end -->)",
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
            f"`{path}` ({run['meta']['date'][:10]}): `{run['meta']['command']}`"
            + (stopped if run["meta"].get("interrupted") else "")
            for path, run in runs
        )
        dates = sorted({run["meta"]["date"][:10] for _, run in runs})
        when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        source = f"{len(runs)} runs under `benchmarks/results/`, {when}, {where}. {each}."
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


# The kNN cells of issue 15, each the ratio of two rows' median times in one kNN run: (what, goal, the
# dtypes the goal is for, numerator, denominator), each row named by (size, backend, method), "bound"
# for the backend's bound row; one column per dtype ("—" where a row is missing, e.g. faiss in float64),
# marked ✓ or ✗ against the goal where it applies. "*": rows of different backends, timed minutes apart.
KNN, BOUND, SORTED = "softdist.knn", "bound", "softdist.knn, the same points sorted along x"
SKLEARN, FAISS = "sklearn NearestNeighbors(brute)", "faiss IndexFlatL2"
LARGE, LOW, SMALL = "50000 × 50000 × 64", "50000 × 50000 × 3", "5000 × 5000 × 64"
BOTH = ("float32", "float64")
KNN_CELLS = [
    ("NumPy ÷ scikit-learn brute", 1.0, BOTH, (LARGE, "numpy", KNN), (LARGE, "numpy", SKLEARN)),
    ("NumPy ÷ faiss `IndexFlatL2`", 1.0, BOTH, (LARGE, "numpy", KNN), (LARGE, "numpy", FAISS)),
    ("NumPy ÷ scikit-learn brute, 3-D", 1.0, BOTH, (LOW, "numpy", KNN), (LOW, "numpy", SKLEARN)),
    ("NumPy, 3-D sorted along x ÷ shuffled", 1.3, BOTH, (LOW, "numpy", SORTED), (LOW, "numpy", KNN)),
    (
        "torch CPU, 3-D sorted along x ÷ shuffled",
        1.3,
        BOTH,
        (LOW, "torch-cpu", SORTED),
        (LOW, "torch-cpu", KNN),
    ),
    ("torch CPU ÷ NumPy *", 1.0, BOTH, (LARGE, "torch-cpu", KNN), (LARGE, "numpy", KNN)),
    (
        "Dask (threaded scheduler, 8 row chunks) ÷ NumPy *",
        1.3,
        BOTH,
        (LARGE, "dask", KNN),
        (LARGE, "numpy", KNN),
    ),
    ("JAX eager ÷ its bound, 5000²", 3.0, ("float64",), (SMALL, "jax-cpu", KNN), (SMALL, "jax-cpu", BOUND)),
    (
        "JAX jit ÷ its bound, 5000²",
        3.0,
        ("float64",),
        (SMALL, "jax-jit-cpu", KNN),
        (SMALL, "jax-jit-cpu", BOUND),
    ),
]


def knn_cells(source: str) -> str:
    """The table of KNN_CELLS from the kNN run under ``source`` (a folder holding bench.json)."""
    runs = _runs(source)
    if not runs:
        return f"No committed run in `benchmarks/results/{source}/` yet.\n"
    path, run = runs[0]
    seconds = {}
    for r in run["rows"]:
        method = BOUND if r["role"] == "bound" else r["method"]
        seconds[(r["size_label"], r["backend"], method, r["dtype"])] = r["seconds"]

    def cell(
        goal: float, dtypes: tuple[str, ...], top: tuple[str, ...], bottom: tuple[str, ...], dtype: str
    ) -> str:
        a, b = seconds.get((*top, dtype)), seconds.get((*bottom, dtype))
        if a is None or b is None:
            return "—"
        mark = (" ✓" if a / b <= goal else " ✗") if dtype in dtypes else ""
        return f"{a / b:.2f}{mark}"

    lines = [
        f"Ratios of median times in `benchmarks/results/{path}` ({run['meta']['date'][:10]}), "
        f"{LARGE} unless said, k = 10; ✓ / ✗ against the issue's goal. Each ratio's two rows ran "
        "interleaved in one group, except those marked *, whose backends ran minutes apart (the machine's "
        "speed drifts between them); calls over a second ran once (`bench.md` gives each row's repeats)."
        + (f" Note: {run['meta']['note']}" if run["meta"].get("note") else ""),
        "",
        "| cell | goal | float32 | float64 |",
        "|---|---|---:|---:|",
    ]
    for what, goal, dtypes, top, bottom in KNN_CELLS:
        goal_text = f"≤ {goal:.1f}" + ("" if dtypes == BOTH else f" ({', '.join(dtypes)})")
        f32, f64 = (cell(goal, dtypes, top, bottom, dtype) for dtype in BOTH)
        lines.append(f"| {what} | {goal_text} | {f32} | {f64} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` with every marked block regenerated."""

    def block(match: re.Match[str]) -> str:
        start, source, dtypes, _, end = match.groups()
        words = dtypes.split()
        body = knn_cells(source) if words == ["knn_cells"] else tables(source, words)
        return f"{start}\n{body}\n{end}"

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
