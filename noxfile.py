"""Test matrix. `nox -s tests` is what CI runs (CPU, the README's test command); `nox -s gpu` needs a
CUDA machine and `nox -s multi_gpu` two or more GPUs. `nox -s distributed` runs only the 2-process CPU
tests (torchrun, gloo), which `tests` includes.

`nox -s mutation` (not in CI, slow) runs mutmut over the modules where a silent bug costs users most, each against
its own tests (scripts/mutation.py; scores and survivors in tests/MUTATION.md).

`nox -s "compat(oldest)"` and `nox -s "compat(newest)"` run a core subset of the suite against the lower bounds of the
tested ranges in pyproject.toml (read from there) and against the newest releases the ranges admit (what CI installs).

`nox -s docs` builds the site with no warning allowed and runs every snippet in docs/; `nox -s examples`
runs every example and `tunekit fit` on every example config. The default suite runs both too
(tests/test_docs.py, tests/integration/test_examples*.py, tests/integration/test_cli.py), so CI covers them.

CPU sessions install the CPU build of torch first, so pip never pulls a multi-GB CUDA wheel.

`nox --no-venv -s gpu` runs a session on the current interpreter instead (an offline GPU machine whose
packages were installed from carried wheels: scripts/device_check.sh): nothing is installed, tunekit is
imported from this checkout's src/, and python and pytest are the interpreter's own. The sessions that
install nothing but tunekit (`tests`, `slow`, `distributed`, `gpu`, `multi_gpu`, `bench`) support it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

TORCH_CPU = "torch==2.13.0"


def _no_venv(session: nox.Session) -> bool:
    """True under `nox --no-venv` (nox's PassthroughEnv): the session runs on the interpreter that runs nox."""
    return session.venv_backend == "none"


def _python(session: nox.Session) -> str:
    # Without a virtualenv, "python" on PATH may be another interpreter than the one with the packages.
    return sys.executable if _no_venv(session) else "python"


def _pytest(session: nox.Session, *args: str, **kwargs: Any) -> None:
    if _no_venv(session):
        session.run(sys.executable, "-m", "pytest", *args, **kwargs)
    else:
        session.run("pytest", *args, **kwargs)


def _install(session: nox.Session, extras: str = "test", cpu: bool = True) -> None:
    if _no_venv(session):
        # nox refuses session.install() without a virtualenv (it would change the interpreter's packages), and
        # the machine this is for has no network: use the packages there and import tunekit from src/.
        src = str(Path(__file__).resolve().parent / "src")
        session.env["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
        session.log(f"--no-venv: nothing installed (wanted tunekit[{extras}]); {sys.executable}, src/ on PYTHONPATH")
        return
    if cpu:
        session.install(TORCH_CPU)
    session.install("-e", f".[{extras}]")


XDIST = ("-n", "auto", "--maxprocesses", "4", "--dist", "worksteal")  # the README's test command


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The default CPU suite (unit + integration on tiny models), one process per core as CI runs it (pytest-xdist)."""
    _install(session)
    _pytest(session, *(session.posargs or XDIST))


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    """Tests marked slow."""
    _install(session)
    _pytest(session, "-m", "slow", *session.posargs)


DEEPSPEED_CPU = "deepspeed==0.19.8"


@nox.session(python="3.11")
def distributed(session: nox.Session) -> None:
    """The 2-process CPU tests (torchrun, gloo): parity with one process, one writer, resume, a failing rank; and
    the tests marked deepspeed, with deepspeed installed (it builds on a CPU machine, its ops compiled only when
    used), which fail rather than skip here if deepspeed cannot be imported (TUNEKIT_REQUIRE_DEEPSPEED)."""
    _install(session)
    if not _no_venv(session):
        # An sdist whose setup.py imports torch: built against the CPU torch installed above, not an isolated
        # build environment that would download a CUDA torch. DS_BUILD_OPS=0: no op is compiled at install.
        session.install("setuptools", "wheel")
        session.install("--no-build-isolation", DEEPSPEED_CPU, env={"DS_BUILD_OPS": "0"})
    session.env["TUNEKIT_REQUIRE_DEEPSPEED"] = "1"
    _pytest(session, "-m", "distributed or deepspeed", *session.posargs)


def _no_gpu_no_install(session: nox.Session, count: int) -> None:
    """Fail at once on a machine without NVIDIA GPUs, before installing a multi-GB CUDA torch for nothing."""
    if shutil.which("nvidia-smi") is None:
        session.error(f"no CUDA device: nvidia-smi is not on PATH; the {session.name} session needs {count} GPU(s)")


def _require_gpus(session: nox.Session, count: int) -> None:
    """Fail (never skip) without ``count`` CUDA devices, so a GPU session cannot pass vacuously."""
    code = f"import torch, sys; n = torch.cuda.device_count(); sys.exit(0 if n >= {count} else f'{{n}} CUDA devices')"
    session.run(_python(session), "-c", code)


@nox.session(python="3.11")
def gpu(session: nox.Session) -> None:
    """Tests marked gpu; fails (does not skip) without a CUDA device."""
    _no_gpu_no_install(session, 1)
    _install(session, extras="test,qlora", cpu=False)
    _require_gpus(session, 1)
    _pytest(session, "-m", "gpu", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The CPU benchmarks (benchmarks/README.md), one JSON line each; gpu_throughput.py runs on a GPU machine."""
    _install(session)
    for script in ("cpu_overhead.py", "cpu_packing.py", "cache.py", "plan_accuracy.py"):
        session.run(_python(session), f"benchmarks/{script}", *session.posargs)


@nox.session(python="3.11")
def multi_gpu(session: nox.Session) -> None:
    """FSDP and DeepSpeed under torchrun (tests marked multi_gpu); fails without two CUDA devices."""
    _no_gpu_no_install(session, 2)
    _install(session, extras="test,qlora,deepspeed", cpu=False)
    _require_gpus(session, 2)
    _pytest(session, "-m", "multi_gpu", *session.posargs)


@nox.session(python="3.11")
def gguf(session: nox.Session) -> None:
    """GGUF exports checked in llama.cpp: builds llama-cpp-python from source (CPU, several minutes; pip caches
    the wheel), then runs the slow llama.cpp export tests (every GGUF family, and the k-quants made by llama.cpp's
    quantizer), which fail rather than skip without it."""
    _install(session, extras="test,gguf")
    session.install("llama-cpp-python>=0.3", env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF"})
    session.run(
        "pytest",
        "-m",
        "slow",
        "tests/integration/test_export_llamacpp.py",
        "tests/integration/test_export_gguf_families.py",
        *session.posargs,
        env={"TUNEKIT_REQUIRE_LLAMA_CPP": "1"},
    )


# The libraries whose tested range pyproject.toml states (lower and upper bound): `compat` installs each at its lower
# bound (oldest) or at the newest release the range admits (newest). The bounds live only in pyproject.toml.
COMPAT_PACKAGES = ("transformers", "trl", "peft", "accelerate", "datasets")
# A core subset, ~70 s on 2 CPU cores: config validation, data formats and encoding, chat templates, SFT with full and
# LoRA fine-tuning learning the toy task, save / load round trips (same logits), checkpoints with exact resume, DPO.
COMPAT_TESTS = (
    "tests/unit/test_config.py",
    "tests/unit/test_formats.py",
    "tests/unit/test_encoding.py",
    "tests/unit/test_templates.py",
    "tests/integration/test_sft_learns.py",
    "tests/integration/test_save_load.py",
    "tests/integration/test_checkpoints.py",
    "tests/integration/test_preference.py::test_policy_learns_to_prefer_chosen[dpo-lora]",
    "tests/integration/test_preference.py::test_policy_learns_to_prefer_chosen[dpo-full]",
)


def oldest_pins() -> list[str]:
    """``name==lower`` for each of COMPAT_PACKAGES, the lower bound read from pyproject.toml's dependencies."""
    import tomllib  # Python 3.11+: nox itself may run on 3.10
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parent / "pyproject.toml").read_text(encoding="utf-8"))
    pins = {}
    for line in pyproject["project"]["dependencies"]:
        req = Requirement(line)
        if req.name in COMPAT_PACKAGES:
            lower = [s.version for s in req.specifier if s.operator == ">="]
            upper = [s for s in req.specifier if s.operator == "<"]
            if len(lower) != 1 or len(upper) != 1:
                raise SystemExit(f"pyproject.toml: {line!r} needs one lower (>=) and one upper (<) bound")
            pins[req.name] = f"{req.name}=={lower[0]}"
    missing = set(COMPAT_PACKAGES) - set(pins)
    if missing:
        raise SystemExit(f"pyproject.toml: no dependency line for {sorted(missing)}")
    return [pins[name] for name in COMPAT_PACKAGES]


@nox.session(python="3.11")
@nox.parametrize("versions", ["oldest", "newest"], ids=["oldest", "newest"])
def compat(session: nox.Session, versions: str) -> None:
    """The core tests (COMPAT_TESTS) against the oldest supported releases of transformers, trl, peft, accelerate and
    datasets (each at its lower bound in pyproject.toml), or against the newest releases their ranges admit (what a
    fresh install, and so CI, gets). tunekit and pytest only, no extras: `nox -s "compat(oldest)"`."""
    session.install(TORCH_CPU)
    pins = oldest_pins() if versions == "oldest" else []
    # One resolve: tunekit's own requirements and the pins together, so pip cannot pick a combination it would refuse.
    session.install("-e", ".", "pytest>=8", "pytest-timeout>=2.3", *pins)
    session.run(
        "python", "-c",
        "import importlib.metadata as m; "
        f"print('compat({versions}):', ', '.join(f'{{n}} {{m.version(n)}}' for n in {COMPAT_PACKAGES!r}))",
    )  # fmt: skip
    _pytest(session, "-p", "no:cacheprovider", *COMPAT_TESTS, *session.posargs)


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
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the modules where a silent bug costs users most, each against its own tests, one
    worker: scripts/mutation.py, scores and survivors in tests/MUTATION.md. Not in CI (tens of minutes to hours).
    Arguments go to the script: `nox -s mutation -- peft_map --sample 60`."""
    _install(session, extras="test,mutation")
    session.run(_python(session), "scripts/mutation.py", *session.posargs)


# What the built distributions must hold. The wheel: the package (every module, py.typed for type checkers) and the
# console script; the sdist: what a packager rebuilds and tests from (hatchling takes everything git does not ignore).
_SDIST_MUST_HOLD = (
    "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "src/tunekit/py.typed", "tests/conftest.py", "tests/unit",
    "docs/index.md", "mkdocs.yml",
)  # fmt: skip
# Run by the installed wheel, outside the checkout: the package imported is the installed one, every module imports
# (a file missing from the wheel, or an import of a test-only package, fails here), and the version is the metadata's.
_SMOKE = """
import importlib, importlib.metadata, pathlib, pkgutil, re
import tunekit as tk
where = pathlib.Path(tk.__file__).parent
assert "site-packages" in where.parts, f"tunekit imported from {where}, not from the installed wheel"
assert tk.__version__ == importlib.metadata.version("tunekit"), tk.__version__
assert (where / "py.typed").is_file(), "py.typed is missing"
# A module may need an optional extra's package (tunekit.serving: fastapi); any other missing package is a bug.
extras = {re.split(r"[ ;<>=!~\\[]", r)[0].lower().replace("-", "_") for r in importlib.metadata.requires("tunekit")
          if "extra ==" in r}
names = [m.name for m in pkgutil.walk_packages(tk.__path__, "tunekit.") if not m.name.endswith("__main__")]
needs_extra = {}
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0].lower()
        if top not in extras:
            raise
        needs_extra[name] = top
assert tk.LoRA(r=4).r == 4 and len(names) - len(needs_extra) > 100
print(f"tunekit {tk.__version__} from {where}: {len(names) - len(needs_extra)} of {len(names)} modules import;"
      f" {needs_extra or 'none'} need an extra")
"""


def _check_dists(session: nox.Session, dist: Path) -> Path:
    """The wheel and sdist in ``dist`` hold what they must (see _SDIST_MUST_HOLD); returns the wheel."""
    wheels, sdists = sorted(dist.glob("tunekit-*.whl")), sorted(dist.glob("tunekit-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        session.error(f"expected one wheel and one sdist in {dist}, found {[p.name for p in dist.iterdir()]}")
    src = Path(__file__).resolve().parent / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "tunekit").rglob("*.py")}
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        entry = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        scripts = whl.read(entry).decode("utf-8") if entry else ""
    missing = sorted(modules - names) + [f for f in ("tunekit/py.typed",) if f not in names]
    if missing:
        session.error(f"{wheels[0].name} lacks {missing}")
    if "tunekit = tunekit.cli:main" not in scripts:
        session.error(f"{wheels[0].name}: no 'tunekit' console script in entry_points.txt")
    strays = sorted(n for n in names if not n.startswith(("tunekit/", "tunekit-")))
    if strays:
        session.error(f"{wheels[0].name} holds files outside the package: {strays[:10]}")
    with tarfile.open(sdists[0]) as tar:
        top = sdists[0].name.removesuffix(".tar.gz")
        held = {m.name.removeprefix(top + "/") for m in tar.getmembers()}
    lacking = [f for f in _SDIST_MUST_HOLD if f not in held and not any(h.startswith(f + "/") for h in held)]
    if lacking:
        session.error(f"{sdists[0].name} lacks {lacking}")
    session.log(f"{wheels[0].name}: {len(names)} files, {len(modules)} modules; {sdists[0].name}: {len(held)} files")
    return wheels[0]


@nox.session(python="3.11")
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel (`python -m build`: the wheel is built from the sdist), check their metadata
    (`twine check --strict`) and contents, install the wheel (not the checkout) into this session's fresh virtualenv
    after the CPU torch, then, from a folder outside the checkout, import every module and run `tunekit demo`
    (about 2 minutes on 2 cores). `nox -s package -- --no-demo` stops after the import smoke test."""
    if _no_venv(session):
        session.error("the package session installs the wheel into a clean virtualenv: run it without --no-venv")
    session.install("build>=1.2", "twine>=5")
    root = Path(__file__).resolve().parent
    work = Path(session.create_tmp()).resolve()
    dist = work / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(root))
    session.run("twine", "check", "--strict", *(str(p) for p in sorted(dist.iterdir())))
    wheel = _check_dists(session, dist)
    session.install(TORCH_CPU)
    session.install(str(wheel))
    outside = work / "outside"  # no src/ on the path: the installed package is the one imported
    shutil.rmtree(outside, ignore_errors=True)
    outside.mkdir()
    (outside / "smoke.py").write_text(_SMOKE, encoding="utf-8")
    session.chdir(outside)
    session.run("python", "smoke.py")
    session.run("tunekit", "version")
    if "--no-demo" not in session.posargs:
        session.run("tunekit", "demo", "--output-dir", str(outside / "demo"))


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.12", "import-linter>=2.16")
    session.run("ruff", "check", "src", "tests", "examples", "scripts", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "scripts", "benchmarks", "noxfile.py")
    # The layers of docs/concepts/architecture.md ([tool.importlinter] in pyproject.toml); grimp reads the source.
    session.run("lint-imports", env={"PYTHONPATH": str(Path(__file__).resolve().parent / "src")})


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.install("mypy>=1.10", "types-PyYAML")
    session.run("mypy")
