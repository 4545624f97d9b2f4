"""`softdist bench` output: a Markdown table per case, the same rows as JSON, a PNG plot per case."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .._harness import Backend
from ._cases import CASES

# Dense float32 / float64 peaks (TFLOP/s, without tensor cores, boost clock) from the vendors' data
# sheets; the first name contained in the device's name wins.
GPU_PEAK_TFLOPS = (
    ("H200", 67.0, 34.0),
    ("H100 PCIe", 51.2, 25.6),
    ("H100", 67.0, 34.0),
    ("A100", 19.5, 9.7),
    ("L40S", 91.6, 1.4),
    ("L4", 30.3, 0.5),
    ("A10", 31.2, 1.0),
    ("V100", 15.7, 7.8),
    ("T4", 8.1, 0.25),
    ("RTX 4090", 82.6, 1.3),
)


def device_name(backend: Backend) -> str:
    if backend.library == "torch":
        import torch

        return torch.cuda.get_device_name(0)
    if backend.library == "cupy":
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    if backend.library == "jax":
        import jax

        return jax.devices("gpu")[0].device_kind
    return "cpu"


def peak_tflops(backend: Backend, dtype: str) -> float | None:
    """The GPU's data-sheet peak for ``dtype``; None on CPUs and unknown GPUs."""
    if not backend.needs_gpu:
        return None
    name = device_name(backend)
    for key, fp32, fp64 in GPU_PEAK_TFLOPS:
        if key in name:
            return fp32 if dtype == "float32" else fp64
    return None


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def to_markdown(rows: list[dict], skipped: list[str], failures: list[str], meta: dict) -> str:
    gpu = any(r["device"] != "cpu" for r in rows)
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines = [
        f"# softdist bench ({meta['date'][:10]})",
        "",
        f"`{meta['command']}` on {meta['cpus']} CPUs ({meta['machine']})"
        + (f" and {', '.join(meta['gpus'])}" if meta["gpus"] else "")
        + f"; Python {meta['python']}; {versions}. {meta['seconds']:.0f} s in all.",
        *(["", meta["note"]] if meta.get("note") else []),
        "",
        "Time is the median of interleaved repeats after a warm-up, with device synchronisation, each "
        "started once the process's other threads were idle (a BLAS pool's workers spin for up to "
        "0.1 s after a call); "
        "× bound divides by the bound row of the same backend, dtype and size in the same run. "
        "Peak MB is how far resident memory (CPU) or the allocator's peak (GPU) rose during one call. "
        "Accuracy is scored on a harder probe problem against a long-double reference.",
    ]
    for case in CASES.values():
        case_rows = [r for r in rows if r["case"] == case.name]
        if not case_rows:
            continue
        header = "| size | backend | dtype | method | ms | × bound | TFLOP/s |"
        rule = "|---|---|---|---|---:|---:|---:|"
        if gpu:
            header, rule = header + " % of peak |", rule + "---:|"
        header, rule = header + f" peak MB | {case.accuracy_label} |", rule + "---:|---:|"
        lines += ["", f"## {case.title}", "", f"size = {case.work_label.split(' (')[0]}", "", header, rule]
        for r in case_rows:
            name = f"**{r['method']}**" if r["role"] == "softdist" else r["method"]
            cells = [r["size_label"], r["backend"], r["dtype"], name, _fmt(r["seconds"] * 1e3, ".4g"),
                     _fmt(r["ratio_to_bound"], ".2f"), _fmt(r["tflops"], ".3g")]  # fmt: skip
            if gpu:
                fraction = r["fraction_of_peak"]
                cells.append(_fmt(None if fraction is None else 100 * fraction, ".0f"))
            cells += [_fmt(r["peak_mb"], ".0f"), r["accuracy_text"]]
            lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {s}" for s in skipped]
    if failures:
        lines += ["", "FAILED:", ""] + [f"- {s}" for s in failures]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], dtype: str) -> str:
    """One line per case and backend at the largest size measured: softdist's own call, the fastest peer
    of the same backend, both as multiples of the bound, with their accuracy."""
    lines = [
        f"| case ({dtype}) | size | backend | softdist ms | × bound | fastest peer | × bound "
        "| accuracy: softdist / peer |",
        "|---|---|---|---:|---:|---|---:|---|",
    ]  # fmt: skip
    for case in CASES.values():
        mine = [r for r in rows if r["case"] == case.name and r["dtype"] == dtype]
        for backend in dict.fromkeys(r["backend"] for r in mine):
            at = [r for r in mine if r["backend"] == backend]
            sizes = [r["work"] for r in at if r["role"] == "softdist"]
            if not sizes:
                continue
            group = [r for r in at if r["work"] == max(sizes)]
            ours = next(r for r in group if r["role"] == "softdist")
            peers = sorted((r for r in group if r["role"] == "peer"), key=lambda r: r["seconds"])
            peer = peers[0] if peers else None
            cells = [case.name, ours["size_label"], backend, _fmt(ours["seconds"] * 1e3, ".4g"),
                     _fmt(ours["ratio_to_bound"], ".2f"), peer["method"] if peer else "—",
                     _fmt(peer["ratio_to_bound"], ".2f") if peer else "—",
                     f"{ours['accuracy_text']} / {peer['accuracy_text'] if peer else '—'}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def plot(rows: list[dict], case_name: str, title: str, work_label: str, path: Path) -> None:
    """Time against problem size, one colour per backend: softdist solid, the bound dashed."""
    from matplotlib.figure import Figure

    dtypes = sorted({r["dtype"] for r in rows})
    fig = Figure(figsize=(5.5 * len(dtypes), 4.5), layout="constrained")
    axes = fig.subplots(1, len(dtypes), squeeze=False)[0]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colours = {b: f"C{i % 10}" for i, b in enumerate(backends)}
    for ax, dtype in zip(axes, dtypes, strict=True):
        for backend in backends:
            mine = [r for r in rows if r["backend"] == backend and r["dtype"] == dtype]
            for role, style in (("softdist", "-o"), ("bound", "--")):
                points: dict[float, float] = {}
                for r in mine:  # the first row of this role per size: softdist's own call, not a variant
                    if r["role"] == role:
                        points.setdefault(r["work"], r["seconds"])
                if points:
                    xs = sorted(points)
                    label = f"{backend}" if role == "softdist" else f"{backend} bound"
                    ax.plot(xs, [points[x] for x in xs], style, color=colours[backend], label=label,
                            alpha=1.0 if role == "softdist" else 0.6, markersize=4)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(work_label)
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"{case_name}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)


def write_results(out: Path, rows: list[dict], skipped: list[str], failures: list[str], meta: dict,
                  plots: bool) -> list[Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "bench.md", out / "bench.json", out / "summary.md"]
    if plots:
        for case in CASES.values():
            case_rows = [r for r in rows if r["case"] == case.name]
            if case_rows:
                path = out / f"{case.name}.png"
                plot(case_rows, case.name, case.title, case.work_label, path)
                written.append(path)
    written[0].write_text(to_markdown(rows, skipped, failures, meta))
    dtypes = sorted({r["dtype"] for r in rows})
    written[2].write_text("\n".join(summary(rows, dtype) for dtype in dtypes))
    payload = {"meta": meta, "rows": rows, "skipped": skipped, "failures": failures}
    written[1].write_text(json.dumps(_json_safe(payload), indent=1, ensure_ascii=False) + "\n")
    return written
