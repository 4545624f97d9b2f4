"""The command line: `softdist demo` (the default) and `softdist check`, and their bad input."""

from __future__ import annotations

import pytest

from softdist._cli import main
from softdist.testing import CPU_BACKENDS, GPU_BACKENDS


def test_check_numpy(capsys):
    assert main(["check", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "softmax_loss     numpy" in out and "pairwise_sqdist  numpy" in out


# What the demo reaches against its NumPy run, measured (--quick, 2-core CPU): float32 1.7e-7 (strict) to
# 1.1e-6 (torch, Dask), float64 3e-16 to 1.4e-15. The bars leave about a factor of 5-10 for other BLAS.
DEMO_BAR = {"float32": 5e-6, "float64": 1e-14}


def test_demo_is_the_default_and_every_cpu_backend_agrees_closely(capsys):
    pytest.importorskip("sklearn")
    names = [b.name for b in CPU_BACKENDS if b.skip_reason() is None]
    argv = ["--quick"] + [arg for name in names for arg in ("--backend", name)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    seen = set()
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] in names and len(fields) == 8:
            name, _, dtype, *_, diff = fields
            seen.add((name, dtype))
            assert float(diff) <= DEMO_BAR[dtype], line
    assert seen == {(n, dt) for n in names for dt in DEMO_BAR}, out


def _one_line_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.skipif(any(b.skip_reason() is None for b in GPU_BACKENDS), reason="a GPU is present")
@pytest.mark.parametrize(
    "argv",
    [["demo", "--device", "cuda"], ["demo", "--device", "gpu"], ["--device", "cuda"],
     ["demo", "--backend", "torch-cuda"], ["check", "--backend", "torch-cuda"],
     ["check", "--backend", "jax-gpu"]],
)  # fmt: skip
def test_missing_gpu_is_a_one_line_error(capsys, argv):
    err = _one_line_exit_2(capsys, argv)
    assert "no CUDA device" in err and ("--device cpu" in err or "CPU backend" in err), err


def test_unknown_backend_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--backend", "tpu"])
    assert exit_info.value.code == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err
