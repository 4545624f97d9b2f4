"""The command line: `softdist demo` (the default) and `softdist check`, and their bad input."""

from __future__ import annotations

import pytest

from softdist._cli import main


def test_check_numpy(capsys):
    assert main(["check", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "softmax_loss     numpy" in out and "pairwise_sqdist  numpy" in out


def test_demo_is_the_default_and_agrees(capsys):
    pytest.importorskip("sklearn")
    assert main(["--quick", "--backend", "numpy", "--backend", "strict", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "strict" in out and "DISAGREES" not in out


def test_unknown_backend_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--backend", "tpu"])
    assert exit_info.value.code == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err
