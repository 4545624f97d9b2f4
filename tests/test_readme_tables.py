"""The performance tables of README.md and docs/performance.md are what benchmarks/readme_tables.py
generates from the committed results: they can never drift from benchmarks/results/."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "readme_tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_tables", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["README.md", "docs/performance.md"])
def test_tables_match_committed_results(tables, name):
    path = tables.ROOT / name
    text = path.read_text()
    assert "<!-- bench:start cpu float32" in text, f"{name} lost its generated CPU table"
    assert tables.render(text) == text, (
        f"{name}: the performance tables differ from benchmarks/results/*/bench.json; "
        "run `python benchmarks/readme_tables.py` and commit the result"
    )


def test_table_is_the_bench_summary(tables):
    """The generated table is softdist bench's own summary.md (one formatter, not two)."""
    summary = (tables.RESULTS / "cpu" / "knn" / "summary.md").read_text()
    float32 = summary.split("\n\n")[0].strip()
    rows = [line for line in float32.splitlines() if line.startswith("| knn |")]
    assert rows and all(row in tables.tables("cpu", ["float32"]) for row in rows)


def test_missing_results_say_so(tables):
    assert "No committed run" in tables.tables("no-such-folder", ["float32"])


def test_check_mode_reports_stale_text(tables, tmp_path, monkeypatch):
    stale = tmp_path / "README.md"
    stale.write_text("<!-- bench:start cpu float32 -->\nold\n<!-- bench:end -->\n")
    monkeypatch.setattr(tables, "FILES", (stale,))
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    assert tables.main(["--check"]) == 1
    assert stale.read_text().endswith("old\n<!-- bench:end -->\n")  # --check writes nothing
    assert tables.main([]) == 0
    assert "| knn |" in stale.read_text()
    assert tables.main(["--check"]) == 0


def test_runs_of_one_case_each_are_combined(tables, tmp_path, monkeypatch):
    """A folder of per-case runs (benchmarks/results/gpu/<case>/bench.json) gives one table of them all."""
    for case in ("knn", "softmax_loss"):
        run = json.loads((tables.RESULTS / "cpu" / case / "bench.json").read_text())
        (tmp_path / "gpu" / case).mkdir(parents=True)
        (tmp_path / "gpu" / case / "bench.json").write_text(json.dumps(run))
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    text = tables.tables("gpu", ["float32"])
    assert "2 runs under" in text and "`gpu/knn/bench.json`" in text
    assert "| knn |" in text and "| softmax_loss |" in text and "| pairwise_sqdist |" not in text


def test_knn_cells_are_ratios_of_the_committed_rows(tables):
    """Each kNN cell is the quotient of the two named rows' seconds in the committed run, per dtype."""
    run = json.loads((tables.RESULTS / "cpu" / "knn" / "bench.json").read_text())
    seconds = {(r["size_label"], r["backend"], r["method"], r["dtype"]): r["seconds"] for r in run["rows"]}
    text = tables.knn_cells("cpu/knn")
    numpy_large = seconds[("50000 × 50000 × 64", "numpy", "softdist.knn", "float32")]
    sklearn_large = seconds[("50000 × 50000 × 64", "numpy", "sklearn NearestNeighbors(brute)", "float32")]
    torch_large = seconds[("50000 × 50000 × 64", "torch-cpu", "softdist.knn", "float64")]
    numpy_large64 = seconds[("50000 × 50000 × 64", "numpy", "softdist.knn", "float64")]
    row = next(line for line in text.splitlines() if line.startswith("| NumPy ÷ scikit-learn brute |"))
    assert row.split("|")[3].split()[0] == f"{numpy_large / sklearn_large:.2f}"
    row = next(line for line in text.splitlines() if line.startswith("| torch CPU ÷ NumPy"))
    assert row.split("|")[4].split() == [
        f"{torch_large / numpy_large64:.2f}",
        "✓" if torch_large <= numpy_large64 else "✗",
    ]
    row = next(line for line in text.splitlines() if line.startswith("| NumPy ÷ faiss"))
    assert row.split("|")[4].strip() == "—"  # faiss runs float32 only
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == len(tables.KNN_CELLS) + 1
    assert "No committed run" in tables.knn_cells("no-such-folder")
