"""Test matrix. `nox -s tests` is what CI runs (CPU); `nox -s gpu` needs a CUDA machine.

`nox -s docs` builds the site with no warning allowed and runs every snippet in docs/; `nox -s examples`
runs every example and `tunekit fit` on every example config. The default suite runs both too
(tests/test_docs.py, tests/integration/test_examples*.py, tests/integration/test_cli.py), so CI covers them.

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
def docs(session: nox.Session) -> None:
    """Build the docs site with `mkdocs build --strict` (a warning fails) and run the docs' snippets."""
    _install(session, extras="test,docs")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
    session.run("pytest", "tests/test_docs.py", *session.posargs)


@nox.session(python="3.11")
def examples(session: nox.Session) -> None:
    """Run every script in examples/ and `tunekit fit` on every examples/configs/*.yaml (CPU, tiny models)."""
    _install(session)
    session.run(
        "pytest",
        "tests/integration/test_examples_run.py",
        "tests/integration/test_examples_embed.py",
        "tests/integration/test_rlhf_pipeline.py",
        "tests/integration/test_cli.py",
        *session.posargs,
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "examples", "scripts", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "scripts", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.install("mypy>=1.10", "types-PyYAML")
    session.run("mypy")
