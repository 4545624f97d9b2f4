"""Documentation that runs, as part of ``python -m pytest`` (testpaths in pyproject.toml):

- the Python blocks of README.md and docs/*.md, collected by Sybil. A block that cannot run everywhere
  says so just above itself, in Sybil's own skip syntax, e.g. ``<!-- skip: next needs("cupy", gpu=True) -->``:
  ``needs`` gives the reason to skip (a library that is not installed, no CUDA device) or None to run;
- the docstring examples of the package (``--doctest-modules``); the modules whose framework is not
  installed (softdist.torch, softdist.jax, the estimators) are left out rather than failing to import.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

# JAX takes 75% of a GPU's memory when it starts; the README's test command runs a process per core, each
# with its own JAX, so on a GPU machine they allocate as they go instead (no effect on the CPU).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@cache
def _cuda() -> bool:
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return True
    if importlib.util.find_spec("cupy") is not None:
        import cupy

        try:
            return cupy.cuda.runtime.getDeviceCount() > 0
        except cupy.cuda.runtime.CUDARuntimeError:
            return False
    return False


def needs(*modules: str, gpu: bool = False) -> str | None:
    """The reason a block cannot run here, or None."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if gpu and not _cuda():
        return "needs a CUDA device"
    return None


def _markdown_setup(namespace: dict) -> None:
    namespace["needs"] = needs
    namespace["__name__"] = "__main__"  # each document runs as a script: its `if __name__ == "__main__":` too


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    setup=_markdown_setup,
).pytest()

# --doctest-modules imports every module under testpaths: not the Sphinx configuration, and not the
# framework integrations and backend modules whose library is missing (src/softdist/torch.py,
# src/softdist/_backends/torch.py, ...).
collect_ignore = ["docs/conf.py"]
collect_ignore_glob = [
    f"src/softdist/*{name}*.py"
    for name, module in {
        "torch": "torch",
        "jax": "jax",
        "dask": "dask",
        "cupy": "cupy",
        "estimators": "sklearn",
    }.items()
    if needs(module)
]
