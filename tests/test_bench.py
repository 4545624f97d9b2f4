"""`softdist bench`: what it writes, that its softdist rows are accurate, the timing helper, bad input."""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest

from softdist._bench import _measure
from softdist._bench._measure import settle, synchronizer, time_methods
from softdist._cli import main
from softdist.testing import GPU_BACKENDS, backend_by_name

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Every case at its smallest quick size, NumPy and array-api-strict (both devices), float32 and
    float64, without the wait for idle threads before each repeat (tested on its own below). The whole
    `--quick` run took 132 s of the suite, 41 s of it in those waits; these tests check what the bench
    writes and how, not the sizes."""
    pytest.importorskip("sklearn")
    from softdist._bench import _cases

    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--quick", "--backend", "numpy", "--backend", "strict", "--backend", "strict-device1",
            "--out", str(out)]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for case in _cases.CASES.values():
            patch.setattr(case, "quick_sizes", case.quick_sizes[:1])
        patch.setattr(_measure, "SETTLE_MAX_S", 0.0)
        assert main(argv) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_writes_table_json_and_plots(quick_run):
    out, result = quick_run
    table = (out / "bench.md").read_text()
    for case in (
        "pairwise_sqdist",
        "knn",
        "softmax_cross_entropy_and_grad",
        "softmax_loss",
        "linear_cross_entropy",
    ):
        assert f"## {case}" in table
        if HAS_MATPLOTLIB:
            assert (out / f"{case}.png").stat().st_size > 10_000
    assert result["meta"]["quick"] is True and result["failures"] == []
    assert {r["backend"] for r in result["rows"]} == {"numpy", "strict", "strict-device1"}


def test_every_row_has_a_ratio_to_its_bound(quick_run):
    _, result = quick_run
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["case"], r["backend"], r["dtype"], tuple(r["size"])), []).append(r)
    for rows in groups.values():
        bound = [r for r in rows if r["role"] == "bound"]
        assert len(bound) == 1 and bound[0]["ratio_to_bound"] == 1.0
        assert all(r["seconds"] > 0 and r["repeats"] >= 1 for r in rows)


def test_each_row_times_its_own_call(tmp_path, monkeypatch):
    """The bench's rows time the calls they name, not swapped or stale ones: softdist.pairwise_sqdist is
    made 0.25 s slower (a sleep: a lower bound whatever the machine's load), and only the softdist rows
    show it, as seconds and as their ratio to the bound of the same run."""
    from softdist._bench import _cases

    real = _cases.pairwise_sqdist
    delay = 0.25

    def slower(*args, **kwargs):
        time.sleep(delay)
        return real(*args, **kwargs)

    monkeypatch.setattr(_cases, "pairwise_sqdist", slower)
    monkeypatch.setattr(_measure, "SETTLE_MAX_S", 0.0)
    argv = ["bench", "--quick", "--case", "pairwise_sqdist", "--backend", "numpy", "--dtype", "float64",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    by_size: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_size.setdefault(tuple(r["size"]), {})[r["method"]] = r
    assert by_size
    for methods in by_size.values():
        ours = methods["softdist.pairwise_sqdist"]
        bound = next(r for r in methods.values() if r["role"] == "bound")
        assert ours["seconds"] >= delay
        assert bound["seconds"] < delay  # the products are milliseconds at the quick sizes
        assert ours["ratio_to_bound"] >= delay / bound["seconds"]


def test_softdist_rows_are_accurate(quick_run):
    """The accuracy column is scored against long-double references on the hard probe data."""
    _, result = quick_run
    bar = {"float32": 1e-5, "float64": 1e-12}  # what the README promises (softmax; distances promise less)
    for r in result["rows"]:
        if r["role"] == "softdist":
            assert r["accuracy"] <= bar[r["dtype"]], r
            if r["case"] == "knn":
                assert r["accuracy_text"].startswith("recall 1.0000")
    # The textbook expansion is the shortcut softdist replaces: it must visibly fail on offset float32 data.
    textbook = [
        r for r in result["rows"] if r["case"] == "pairwise_sqdist" and r["method"].startswith("textbook")
    ]
    assert all(r["accuracy"] > 1e-2 for r in textbook if r["dtype"] == "float32")


def test_peers_are_side_by_side(quick_run):
    _, result = quick_run
    methods = {r["method"] for r in result["rows"] if r["backend"] == "numpy"}
    assert "sklearn euclidean_distances(squared=True)" in methods
    assert "sklearn NearestNeighbors(brute)" in methods


def test_time_methods_reports_a_failing_method_and_times_the_rest():
    errors = []

    def broken():
        raise MemoryError("too big")

    timed = time_methods(
        {"ok": lambda: np.ones(1000).sum(), "broken": broken},
        backend_by_name("numpy"),
        budget_s=0.01,
        max_repeats=5,
        on_error=lambda name, exc: errors.append((name, type(exc).__name__)),
    )
    assert errors == [("broken", "MemoryError")]
    assert list(timed) == ["ok"] and 3 <= timed["ok"].repeats <= 5 and timed["ok"].seconds > 0


def test_each_repeat_starts_once_other_threads_are_idle(monkeypatch):
    """Before each timed repeat on a CPU backend the bench waits for the process's other threads (a BLAS
    pool's spinning workers) to go idle, at most SETTLE_MAX_S; on a GPU backend it does not wait."""
    states = iter([True, True, False])
    polls = []
    monkeypatch.setattr(_measure, "other_threads_running", lambda: polls.append(1) or next(states))
    settle(backend_by_name("numpy"))
    assert len(polls) == 3
    monkeypatch.setattr(_measure, "other_threads_running", lambda: True)  # never idle: bounded wait
    monkeypatch.setattr(_measure, "SETTLE_MAX_S", 0.05)
    start = time.perf_counter()
    settle(backend_by_name("torch-cpu"))
    assert 0.05 <= time.perf_counter() - start < 1.0
    monkeypatch.setattr(_measure, "other_threads_running", lambda: pytest.fail("waited on a GPU"))
    settle(backend_by_name("torch-cuda"))
    settled = []
    monkeypatch.setattr(_measure, "settle", lambda backend: settled.append(backend.name))
    time_methods({"a": lambda: None, "b": lambda: None}, backend_by_name("numpy"), budget_s=0.0,
                 max_repeats=3, on_error=lambda name, exc: None)  # fmt: skip
    assert settled == ["numpy"] * 6  # each timed repeat, not the warm-ups


def test_other_threads_running_sees_a_busy_thread():
    """A thread computing without the GIL (hashing 64 MiB) is seen as running."""
    import hashlib
    import sys
    import threading

    if not sys.platform.startswith("linux"):
        assert _measure.other_threads_running() is None
        return
    started, done = threading.Event(), threading.Event()

    def busy():
        started.set()
        while not done.is_set():
            hashlib.sha256(bytes(64 << 20)).digest()

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        started.wait()
        seen, deadline = [], time.monotonic() + 5.0  # a loaded machine may keep the worker waiting
        while True not in seen and time.monotonic() < deadline:
            seen.append(_measure.other_threads_running())
    finally:
        done.set()
        worker.join()
    assert True in seen and set(seen) <= {True, False}


def test_other_threads_running_off_linux(monkeypatch):
    def no_proc(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(_measure.os, "listdir", no_proc)
    assert _measure.other_threads_running() is None


def test_synchronizer_computes_dask():
    da = pytest.importorskip("dask.array")
    (out,) = synchronizer(backend_by_name("dask"))(da.ones(10).sum())
    assert float(out) == 10.0


def test_unknown_backend_case_and_device_are_one_line_errors(capsys):
    assert "unknown backend 'tpu'" in _one_line_error(capsys, ["bench", "--backend", "tpu"])
    assert "--case: invalid choice" in _one_line_error(capsys, ["bench", "--case", "svd"])
    assert "--device: invalid choice" in _one_line_error(capsys, ["bench", "--device", "rocm"])


@pytest.mark.skipif(any(b.skip_reason() is None for b in GPU_BACKENDS), reason="a GPU is present")
def test_missing_gpu_is_a_one_line_error(capsys):
    err = _one_line_error(capsys, ["bench", "--device", "cuda"])
    assert "no CUDA device" in err and "--device cpu" in err


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed")
def test_missing_library_says_what_to_install(capsys):
    err = _one_line_error(capsys, ["bench", "--backend", "cupy-cuda"])
    assert "cupy is not installed" in err and "pip install" in err


def test_missing_matplotlib_skips_the_plots(tmp_path, capsys, monkeypatch):
    import softdist._cli as cli

    monkeypatch.setattr(cli, "_has_matplotlib", lambda: False)
    argv = ["bench", "--quick", "--backend", "numpy", "--case", "softmax_cross_entropy_and_grad", "--dtype",
            "float64", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert "skipped plots: matplotlib is not installed" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png")) and (tmp_path / "bench.md").exists()


@pytest.mark.parametrize("backend", [b.name for b in GPU_BACKENDS])
def test_bench_on_cuda(backend, tmp_path):
    """The GPU rows (run by `nox -s tests_gpu` / benchmarks/gpu.sh): synchronised timing, device memory,
    TFLOP/s, accuracy."""
    reason = backend_by_name(backend).skip_reason()
    if reason:
        pytest.skip(reason)
    argv = ["bench", "--quick", "--backend", backend, "--case", "pairwise_sqdist", "--no-plots", "--out",
            str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert rows and all(r["device"] == "cuda" and r["tflops"] > 0 for r in rows)


def test_unwritable_out_is_refused_before_running(capsys, tmp_path, monkeypatch):
    import softdist._bench as bench_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("bench ran before checking --out")

    monkeypatch.setattr(bench_module, "bench", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _one_line_error(capsys, ["bench", "--quick", "--backend", "numpy", "--out", str(blocker / "sub")])
    assert f"--out {blocker / 'sub'}: cannot write there" in err


@pytest.mark.parametrize("name", ["jax-cpu", "jax-jit-cpu"])
def test_jax_rows_have_optax_beside_softdist(name):
    """optax's loss under jax.value_and_grad is a peer on eager and jitted JAX, and gives the same loss."""
    pytest.importorskip("optax")
    from softdist._bench._cases import CASES

    backend = backend_by_name(name)
    mode = "jit" if backend.jit else "eager"
    for case, size in (("softmax_cross_entropy_and_grad", (50, 7)), ("softmax_loss", (50, 4, 7))):
        rows, _ = CASES[case].methods(backend, "float32", size, quick=True)
        assert any(m.role == "peer" and "optax" in m.name and mode in m.name for m in rows)
    rows, _ = CASES["softmax_cross_entropy_and_grad"].methods(backend, "float32", (50, 7), quick=True)
    (peer,) = (m for m in rows if "optax" in m.name)
    ours = next(m for m in rows if m.role == "softdist")
    rng = np.random.default_rng(0)
    logits = backend.asarray(rng.standard_normal((50, 7)).astype(np.float32))
    labels = backend.asarray(rng.integers(0, 7, 50).astype(np.int32))
    want = backend.to_numpy(ours.fn(logits, labels)[0])
    np.testing.assert_allclose(backend.to_numpy(peer.fn(logits, labels)[0]), want, rtol=1e-5)
