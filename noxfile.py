"""nox sessions: `nox -s tests_all` is what CI runs (see .ci/run)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests_all"]

# The CPU build of PyTorch; a bare `torch` requirement pulls a multi-GB CUDA build.
TORCH_CPU = "torch==2.13.0"


def _pytest(session: nox.Session, *extra: str) -> None:
    # a process per core, a test file to a process (the README's test command)
    session.run("python", "-m", "pytest", "-n", "auto", "--dist", "loadfile", *extra, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """NumPy and array-api-strict (other backends skip with a reason)."""
    session.install("-e", ".[test]")
    _pytest(session)


@nox.session
@nox.parametrize("backend", ["torch", "jax", "dask"])
def one_backend(session: nox.Session, backend: str) -> None:
    """NumPy, array-api-strict and one more backend (the rest skip with a reason):
    `nox -s "one_backend(backend='torch')"`."""
    if backend == "torch":
        session.install(TORCH_CPU)
    session.install("-e", f".[test,{backend}]")
    _pytest(session, "-k", f"{backend} or numpy or strict")


@nox.session
def tests_all(session: nox.Session) -> None:
    """Every CPU backend: NumPy, array-api-strict, torch, JAX (eager and jit), Dask."""
    session.install(TORCH_CPU)
    session.install("-e", ".[test,torch,jax,dask]")
    _pytest(session)


@nox.session
def tests_gpu(session: nox.Session) -> None:
    """The GPU tests (ids with cuda or gpu): CuPy, torch CUDA (PyPI's default Linux torch wheel is a CUDA
    build), JAX GPU and JAX-jit GPU; every one skips cleanly without a CUDA device."""
    session.install("torch", "jax[cuda12]")
    session.install("-e", ".[test,cupy]")
    _pytest(session, "-k", "cuda or gpu")


@nox.session
def bench(session: nox.Session) -> None:
    """`softdist bench` on every CPU backend; pass options after --, e.g. `nox -s bench -- --quick`."""
    session.install(TORCH_CPU)
    session.install("-e", ".[bench,torch,jax,dask]", "optax", "faiss-cpu")
    session.run("softdist", "bench", *(session.posargs or ["--out", "bench-results"]))


@nox.session
def docs(session: nox.Session) -> None:
    """The Sphinx documentation into build/docs (warnings are errors); autodoc imports softdist.torch,
    softdist.jax and the estimators, so their libraries are installed. `nox -s docs -- -b linkcheck`
    passes other builder options."""
    session.install(TORCH_CPU)
    session.install("-e", ".[docs,torch,jax,sklearn]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", *session.posargs, "docs", "build/docs")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")
