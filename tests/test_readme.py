"""Every Python snippet in README.md runs (snippets that need a GPU or a missing library skip)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
# API signature blocks (no import) document, they do not run.
RUNNABLE = [s for s in SNIPPETS if re.search(r"^import ", s, flags=re.MULTILINE)]


def _missing(snippet: str) -> str | None:
    for module in ("torch", "jax", "optax", "sklearn", "cupy", "dask"):
        if (
            re.search(rf"\bimport {module}\b|\b{module}\.", snippet)
            and importlib.util.find_spec(module) is None
        ):
            return f"{module} is not installed"
    if "cuda" in snippet or "cupy" in snippet:
        if importlib.util.find_spec("torch") is None:
            return "needs a CUDA device"
        import torch

        if not torch.cuda.is_available():
            return "needs a CUDA device"
    return None


def test_readme_has_runnable_snippets():
    assert len(RUNNABLE) >= 6


@pytest.mark.parametrize("snippet", RUNNABLE, ids=[f"snippet{i}" for i in range(len(RUNNABLE))])
def test_readme_snippet_runs(snippet, capsys):
    reason = _missing(snippet)
    if reason:
        pytest.skip(reason)
    exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})
