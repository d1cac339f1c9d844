"""``tunekit doctor``: what is installed, what this machine can do, and which installed combinations are known not to
work, with the fix for each. :func:`report` returns it as a :class:`Report`; the command prints it (``--json``: the
fields of :meth:`Report.to_dict`, documented in docs/cli.md) and exits 1 when the report has an error.

Nothing heavy is imported needlessly: versions come from the installed packages' metadata, and whether a package can
be imported from ``find_spec``; a package is imported only where "usable" depends on it (torch, for the CUDA facts;
bitsandbytes, flash-attn and llama-cpp-python, whose compiled parts fail only at import when built for another torch,
CUDA or CPU). vLLM is never imported (many seconds, and it sets up CUDA): its torch requirement is checked instead.

The tested range of each dependency is read from tunekit's own requirements (pyproject.toml in a checkout, else the
installed package's metadata), so a dependency bump is one line of pyproject.toml: a version below a lower bound is
an error (the lower bounds are the oldest releases `nox -s "compat(oldest)"` passes on; older ones are known to fail),
one above an upper bound a warning (untested).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from tunekit._version import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: no TOML reader in the standard library; the installed metadata is read instead
    tomllib = None

__all__ = [
    "FEATURES",
    "JSON_SCHEMA_VERSION",
    "Dependency",
    "Extra",
    "Feature",
    "Gpu",
    "Problem",
    "Report",
    "Torch",
    "format_report",
    "installed_version",
    "parse_requires_dist",
    "report",
    "requirements",
]

# Bumped when a field of Report.to_dict() is renamed, removed or changes type (adding one does not bump it).
JSON_SCHEMA_VERSION = 1

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """A known-incompatible combination found on this machine: what it is, and what to do."""

    severity: Severity  # "error": known not to work (exit code 1); "warning": untested, or a feature that cannot run
    what: str
    fix: str


@dataclass(frozen=True)
class Dependency:
    """A package tunekit requires, its installed version and its tested range (pyproject.toml)."""

    name: str
    version: str | None  # None: not installed
    tested: str  # the range tunekit states, e.g. ">=1.16,<1.17" ("" when it states none)
    status: Literal["ok", "missing", "older", "newer", "excluded"]


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: str  # CUDA compute capability, e.g. "9.0"
    memory_gib: float
    bf16: bool


@dataclass(frozen=True)
class Torch:
    """torch and the accelerator it sees."""

    version: str | None  # None: torch is not installed (or cannot be imported)
    cuda_build: str | None  # the CUDA version torch was built for (torch.version.cuda); None: a CPU (or ROCm) build
    cuda_available: bool
    driver: str | None  # the NVIDIA driver version (nvidia-smi); None when no driver was found
    gpus: list[Gpu] = field(default_factory=list)
    bf16: bool | None = None  # whether the first GPU trains in bf16; None without a GPU
    mps: bool = False  # Apple's Metal backend


@dataclass(frozen=True)
class Feature:
    """An optional accelerator or engine: installed, and usable on this machine (importable, with what it needs)."""

    name: str  # the distribution's name (what pip installs)
    version: str | None
    installed: bool
    usable: bool
    detail: str  # why it is not usable, or what it is for


@dataclass(frozen=True)
class Extra:
    """One of tunekit's extras (``pip install "tunekit[NAME]"``): usable when all its packages are importable."""

    name: str
    usable: bool
    missing: list[str]  # packages not installed or not importable


@dataclass(frozen=True)
class Report:
    """Everything ``tunekit doctor`` prints. ``ok``: no error (the command's exit code is 0).

    Example:
        >>> from tunekit.doctor import report
        >>> r = report()
        >>> r.tunekit == r.to_dict()["tunekit"]
        True
    """

    tunekit: str
    python: str
    platform: str
    torch: Torch
    dependencies: list[Dependency]
    features: list[Feature]
    extras: list[Extra]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` output: ``schema`` (JSON_SCHEMA_VERSION), ``ok``, then every field."""
        return {"schema": JSON_SCHEMA_VERSION, "ok": self.ok, **asdict(self)}


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (its metadata; nothing is imported), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- tunekit's requirements: the tested ranges --------------------------------------------------------------------


def parse_requires_dist(lines: list[str]) -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """Split ``Requires-Dist`` lines (as in installed metadata) into the core requirements and those of each extra."""
    core: list[Requirement] = []
    extras: dict[str, list[Requirement]] = {}
    for line in lines:
        req = Requirement(line)
        marker = str(req.marker) if req.marker else ""
        if "extra" not in marker:
            core.append(req)
            continue
        match = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if match is None:
            continue
        name = match.group(1)
        req.marker = None
        extras.setdefault(name, []).append(req)
    return core, _expand(extras)


def _expand(extras: dict[str, list[Requirement]]) -> dict[str, list[Requirement]]:
    """An extra made of others (``dev = ["tunekit[test,docs]", ...]``) with their requirements in place of the
    reference, as the build backend writes it into the metadata."""
    out = {}
    for name, reqs in extras.items():
        flat: dict[str, Requirement] = {}  # by its text: test and docs both list mkdocs-material
        for req in reqs:
            inner = [x for e in sorted(req.extras) for x in extras.get(e, [])] if req.name == "tunekit" else [req]
            flat.update((str(x), x) for x in inner if str(x) not in flat)
        out[name] = list(flat.values())
    return out


def _checkout_pyproject() -> Path | None:
    """pyproject.toml of the checkout this module was imported from (src/tunekit/doctor.py), if it is tunekit's."""
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return path if path.is_file() and (path.parent / "src" / "tunekit").is_dir() else None


def requirements() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """tunekit's core requirements and its extras' requirements.

    From pyproject.toml when tunekit runs from a checkout (an editable install's metadata is written at install
    time and goes stale when pyproject.toml changes), else from the installed package's metadata.
    """
    path = _checkout_pyproject()
    if path is not None and tomllib is not None:
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
        core = [Requirement(line) for line in project["dependencies"]]
        extras = {name: [Requirement(x) for x in lines] for name, lines in project["optional-dependencies"].items()}
        return core, _expand(extras)
    try:
        return parse_requires_dist(importlib.metadata.requires("tunekit") or [])
    except (importlib.metadata.PackageNotFoundError, InvalidRequirement):
        return [], {}


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _check_dependency(req: Requirement, problems: list[Problem]) -> Dependency:
    spec = req.specifier
    tested = ",".join(sorted((str(s) for s in spec), key=lambda s: (not s.startswith(">"), s)))  # lower bound first
    installed = installed_version(req.name)
    want = f'pip install "{req.name}{tested}"'
    if installed is None:
        problems.append(Problem("error", f"{req.name} is not installed; tunekit needs {req.name}{tested}", want))
        return Dependency(req.name, None, tested, "missing")
    version = _version(installed)
    if version is None or spec.contains(version, prereleases=True):
        return Dependency(req.name, installed, tested, "ok")
    lower = [s for s in spec if s.operator in (">=", ">", "==", "~=")]
    if any(not s.contains(version, prereleases=True) for s in lower):
        problems.append(
            Problem(
                "error",
                f"{req.name} {installed} is older than tunekit's tested range {tested}; tunekit is known not to work "
                "with it",
                want,
            )
        )
        return Dependency(req.name, installed, tested, "older")
    upper = [s for s in spec if s.operator in ("<", "<=")]
    if any(not s.contains(version, prereleases=True) for s in upper):
        problems.append(
            Problem(
                "warning",
                f"{req.name} {installed} is newer than tunekit's tested range {tested}: untested, it may break",
                f"{want} (or a tunekit release that tests {req.name} {installed})",
            )
        )
        return Dependency(req.name, installed, tested, "newer")
    problems.append(Problem("error", f"{req.name} {installed} is excluded by tunekit ({tested})", want))
    return Dependency(req.name, installed, tested, "excluded")


# --- torch and the accelerator ------------------------------------------------------------------------------------


def _driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi (torch does not report it), or None when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


def _torch(problems: list[Problem]) -> Torch:
    driver = _driver()
    if installed_version("torch") is None:
        return Torch(None, None, False, driver)
    try:
        import torch
    except Exception as e:  # a broken install: a missing shared library, an ABI mismatch
        problems.append(
            Problem("error", f"torch is installed but cannot be imported: {type(e).__name__}: {e}", _REINSTALL_TORCH)
        )
        return Torch(installed_version("torch"), None, False, driver)
    cuda_build = torch.version.cuda
    available = bool(torch.cuda.is_available())
    gpus = []
    if available:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                Gpu(
                    name=props.name,
                    capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    bf16=props.major >= 8,  # Ampere and later
                )
            )
    bf16 = bool(torch.cuda.is_bf16_supported()) if gpus else None
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if cuda_build and not available:
        if driver is None:
            problems.append(
                Problem(
                    "warning",
                    f"torch {torch.__version__} is built for CUDA {cuda_build}, but no NVIDIA driver was found: "
                    "tunekit trains on the CPU",
                    "on a GPU machine install the NVIDIA driver; on a CPU machine the CPU build of torch is much "
                    "smaller (README: install)",
                )
            )
        else:
            problems.append(
                Problem(
                    "error",
                    f"torch {torch.__version__} is built for CUDA {cuda_build} but cannot use the GPU with NVIDIA "
                    f"driver {driver}",
                    f"update the NVIDIA driver to one that supports CUDA {cuda_build}, or install a torch built for "
                    "the CUDA version the driver supports (nvidia-smi shows it)",
                )
            )
    elif not cuda_build and driver is not None and not getattr(torch.version, "hip", None):
        problems.append(
            Problem(
                "warning",
                f"an NVIDIA GPU is here (driver {driver}) but torch {torch.__version__} is a CPU build: tunekit "
                "trains on the CPU",
                "install a CUDA build of torch (pip install torch picks one on Linux)",
            )
        )
    return Torch(torch.__version__, cuda_build, available, driver, gpus, bf16, mps)


_REINSTALL_TORCH = "reinstall torch: pip install --force-reinstall torch"


# --- optional accelerators and engines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _FeatureCheck:
    distribution: str
    module: str
    purpose: str
    cuda: bool  # needs a CUDA GPU
    import_to_check: bool  # its compiled part fails only at import (built for another torch / CUDA / CPU)
    fix: str  # what to do when it is installed but broken
    # From this version on, part of it runs without CUDA: (version, what then works on the CPU). bitsandbytes 0.50
    # has CPU kernels for its 8-bit optimizers (tunekit's check_optimizer relies on the same version).
    cpu_from: tuple[str, str] | None = None


# The table of optional packages whose presence changes what tunekit can do. `import_to_check`: imported (guarded)
# only when installed, because a wheel built for another torch or CUDA installs fine and fails at import.
FEATURES: tuple[_FeatureCheck, ...] = (
    _FeatureCheck(
        "flash-attn", "flash_attn", "FlashAttention-2 kernels (CUDA)", cuda=True, import_to_check=True,
        fix="it was built for another torch or CUDA: rebuild it for the installed torch "
        "(pip install --force-reinstall --no-build-isolation flash-attn) or pip uninstall flash-attn",
    ),
    _FeatureCheck(
        "liger-kernel", "liger_kernel", "fused RMSNorm / SwiGLU / RoPE kernels, tunekit[fast] (CUDA)", cuda=True,
        import_to_check=False, fix='pip install --force-reinstall "tunekit[fast]"',
    ),
    _FeatureCheck(
        "bitsandbytes", "bitsandbytes", "QLoRA's 4-bit and 8-bit weights, tunekit[qlora] (CUDA)", cuda=True,
        import_to_check=True,
        fix="its native library does not load with this torch / CUDA: pip install --force-reinstall bitsandbytes",
        cpu_from=("0.50", "8-bit AdamW and Lion on the CPU (QLoRA's 4-bit weights need CUDA)"),
    ),
    _FeatureCheck(
        "vllm", "vllm", "tunekit serve --engine vllm (CUDA)", cuda=True, import_to_check=False,
        fix="install the torch vLLM was built for, or the vLLM release built for the installed torch",
    ),
    _FeatureCheck(
        "llama-cpp-python", "llama_cpp", "checking GGUF exports in llama.cpp, tunekit[gguf]", cuda=False,
        import_to_check=True,
        fix="rebuild it for this machine: "
        'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python',
    ),
)  # fmt: skip


def _torch_requirement(distribution: str) -> SpecifierSet | None:
    """The torch versions ``distribution`` declares it works with (its metadata), or None when it states none."""
    try:
        lines = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name == "torch" and not (req.marker and "extra" in str(req.marker)) and str(req.specifier):
            return req.specifier
    return None


def _import_error(module: str) -> str:
    """Import ``module``; "" when it imports, else the error in one line."""
    try:
        importlib.import_module(module)
    except Exception as e:  # an ABI mismatch is an ImportError or OSError; some packages raise RuntimeError
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return ""


def _feature(check: _FeatureCheck, torch_info: Torch, problems: list[Problem]) -> Feature:
    version = installed_version(check.distribution)
    if version is None:
        return Feature(check.distribution, None, False, False, f"not installed; {check.purpose}")
    name = f"{check.distribution} {version}"
    pin = _torch_requirement(check.distribution)
    torch_version = _version(torch_info.version.split("+")[0]) if torch_info.version else None
    if pin is not None and torch_version is not None and not pin.contains(torch_version, prereleases=True):
        problems.append(
            Problem("error", f"{name} requires torch{pin}, but torch {torch_info.version} is installed", check.fix)
        )
        return Feature(check.distribution, version, True, False, f"requires torch{pin}")
    if importlib.util.find_spec(check.module) is None:
        problems.append(Problem("error", f"{name} is installed but its module {check.module!r} is missing", check.fix))
        return Feature(check.distribution, version, True, False, f"module {check.module!r} not found")
    cpu_purpose = ""
    if check.cuda and not torch_info.cuda_available and check.cpu_from is not None:
        have, since = _version(version), _version(check.cpu_from[0])
        if have is not None and since is not None and have >= since:
            cpu_purpose = check.cpu_from[1]
    if check.cuda and not torch_info.cuda_available and not cpu_purpose:
        problems.append(
            Problem(
                "warning",
                f"{name} is installed, but there is no usable CUDA GPU: {check.purpose.split(',')[0]} cannot run here",
                "nothing, on a CPU machine (tunekit refuses such options before loading a model); on a GPU machine "
                "see the CUDA lines above",
            )
        )
        return Feature(check.distribution, version, True, False, "needs a CUDA GPU")
    if check.import_to_check:
        error = _import_error(check.module)
        if error:
            problems.append(Problem("error", f"{name} is installed but cannot be imported: {error}", check.fix))
            return Feature(check.distribution, version, True, False, error)
    return Feature(check.distribution, version, True, True, cpu_purpose or check.purpose)


def _top_modules(distribution: str) -> list[str]:
    """The top-level modules ``distribution`` installs: its top_level.txt, else the first part of its RECORD's paths.

    One distribution's metadata only (importlib.metadata.packages_distributions() reads every installed RECORD:
    seconds).
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return []
    listed = (dist.read_text("top_level.txt") or "").split()
    if listed:
        return listed
    names = set()
    for line in (dist.read_text("RECORD") or "").splitlines():  # the raw text: dist.files builds a Path per line
        parts = line.split(",", 1)[0].split("/")
        if len(parts) > 1 and parts[0].isidentifier():
            names.add(parts[0])
        elif len(parts) == 1 and parts[0].endswith(".py"):
            names.add(parts[0][:-3])
    return sorted(names)


def _extras(extras: dict[str, list[Requirement]], problems: list[Problem]) -> list[Extra]:
    out = []
    modules: dict[str, list[str]] = {}  # several extras share packages (test = data + plot + ...)
    for name, reqs in extras.items():
        missing = []
        for req in reqs:
            version = installed_version(req.name)
            if version is not None and req.name not in modules:
                modules[req.name] = _top_modules(req.name)
            tops = modules.get(req.name, [])
            if version is None or (tops and not any(importlib.util.find_spec(m) for m in tops)):
                missing.append(req.name)
                continue
            parsed = _version(version)
            if parsed is not None and not req.specifier.contains(parsed, prereleases=True):
                problems.append(
                    Problem(
                        "warning",
                        f"{req.name} {version} is outside the range tunekit[{name}] needs ({req.specifier})",
                        f'pip install "{req.name}{req.specifier}"',
                    )
                )
        out.append(Extra(name, not missing, missing))
    return out


def report() -> Report:
    """What ``tunekit doctor`` reports: versions, the accelerator, optional packages, extras and known problems.

    Example:
        >>> from tunekit.doctor import report
        >>> r = report()
        >>> any(d.name == "transformers" for d in r.dependencies)
        True
    """
    problems: list[Problem] = []
    core, extras = requirements()
    # A requirement for other platforms or Pythons (a marker false here) is not checked.
    dependencies = [_check_dependency(req, problems) for req in core if req.marker is None or req.marker.evaluate()]
    torch_info = _torch(problems)
    features = [_feature(check, torch_info, problems) for check in FEATURES]
    return Report(
        tunekit=__version__,
        python=f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        platform=platform.platform(),
        torch=torch_info,
        dependencies=dependencies,
        features=features,
        extras=_extras(extras, problems),
        problems=sorted(problems, key=lambda p: p.severity != "error"),
    )


def format_report(r: Report) -> str:
    """The report as plain text (what ``tunekit doctor`` prints; paste it into a bug report)."""
    t = r.torch
    if t.version is None:
        accel = "torch not installed"
    elif t.cuda_available:
        accel = f"CUDA {t.cuda_build}, driver {t.driver or 'unknown'}, {len(t.gpus)} GPU(s), bf16 {_yes(t.bf16)}"
    elif t.cuda_build:
        accel = f"CUDA {t.cuda_build} build, no usable GPU (driver {t.driver or 'not found'})"
    else:
        accel = "CPU build" + (", MPS available" if t.mps else "") + (f", driver {t.driver}" if t.driver else "")
    lines = [
        f"tunekit    {r.tunekit}",
        f"python     {r.python}",
        f"platform   {r.platform}",
        f"torch      {t.version or 'not installed'} ({accel})",
    ]
    for i, g in enumerate(t.gpus):
        lines.append(f"gpu {i}      {g.name}, {g.memory_gib} GiB, sm {g.capability}, bf16 {_yes(g.bf16)}")
    lines += ["", "dependencies (installed, tested range)"]
    width = max((len(d.name) for d in r.dependencies), default=0)
    for d in r.dependencies:
        flag = "" if d.status == "ok" else f"  <- {d.status}"
        lines.append(f"  {d.name:<{width}}  {d.version or '-':<12} {d.tested}{flag}")
    lines += ["", "optional packages"]
    width = max((len(f.name) for f in r.features), default=0)
    for f in r.features:
        state = "usable" if f.usable else "installed, not usable" if f.installed else "not installed"
        lines.append(f"  {f.name:<{width}}  {f.version or '-':<12} {state}" + (f": {f.detail}" if f.installed else ""))
    lines += ["", 'extras (pip install "tunekit[NAME]")']
    width = max((len(e.name) for e in r.extras), default=0)
    for e in r.extras:
        lines.append(f"  {e.name:<{width}}  " + ("usable" if e.usable else f"missing {', '.join(e.missing)}"))
    errors = sum(p.severity == "error" for p in r.problems)
    warnings = len(r.problems) - errors
    lines += ["", f"problems: {errors} error(s), {warnings} warning(s)" if r.problems else "problems: none found"]
    for p in r.problems:
        lines += [f"  {p.severity}: {p.what}", f"    fix: {p.fix}"]
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "yes" if value else "no" if value is False else "-"
