"""Test matrix. `nox -s tests` is what CI runs (CPU); `nox -s gpu` needs a CUDA machine.

CPU sessions install the CPU build of torch first, so pip never pulls a multi-GB CUDA wheel.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

TORCH_CPU = "torch==2.13.0"


def _install(session: nox.Session, extras: str = "test", cpu: bool = True) -> None:
    if cpu:
        session.install(TORCH_CPU)
    session.install("-e", f".[{extras}]")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The default CPU suite (unit + integration on tiny models)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    """Tests marked slow."""
    _install(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session(python="3.11")
def gpu(session: nox.Session) -> None:
    """Tests marked gpu; fails (does not skip) without a CUDA device."""
    _install(session, extras="test,qlora", cpu=False)
    session.run("python", "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')")
    session.run("pytest", "-m", "gpu", *session.posargs)


@nox.session(python="3.11")
def gguf(session: nox.Session) -> None:
    """GGUF exports checked in llama.cpp: builds llama-cpp-python from source (CPU, several minutes; pip caches
    the wheel), then runs the slow llama.cpp export tests, which fail rather than skip without it."""
    _install(session, extras="test,gguf")
    session.install("llama-cpp-python>=0.3", env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF"})
    session.run(
        "pytest",
        "-m",
        "slow",
        "tests/integration/test_export_llamacpp.py",
        *session.posargs,
        env={"TUNEKIT_REQUIRE_LLAMA_CPP": "1"},
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.install("mypy>=1.10", "types-PyYAML")
    session.run("mypy")
