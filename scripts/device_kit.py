"""Helpers of the GPU check kit (scripts/device_wheels.sh here, scripts/device_check.sh on the lent machine).

    python scripts/device_kit.py check-wheels .whl [--python-version 3.12]   # every wheel pinned, every need met
    python scripts/device_kit.py trim-wheel WHEEL --drop GLOB --keep GLOB   # drop files (unused GPU builds)
    python scripts/device_kit.py env                                        # on the device: versions, CUDA, bf16 rate

The lists it reads: scripts/device_packages.txt (what the machine has) and scripts/device_wheels.txt (what we
carry). Only the standard library and ``packaging`` are needed (both exist here and there).
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import fnmatch
import hashlib
import importlib.metadata as md
import re
import shutil
import sys
import tempfile
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEVICE_PACKAGES = HERE / "device_packages.txt"
WHEEL_PINS = HERE / "device_wheels.txt"

# Import names whose distribution is named otherwise; every other import maps to its own (normalised) name.
IMPORT_TO_DIST = {"yaml": "pyyaml", "google": "protobuf", "PIL": "pillow", "sklearn": "scikit-learn"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def device_packages() -> dict[str, str | None]:
    """What the machine has: name -> recorded version (None where no session recorded one)."""
    out: dict[str, str | None] = {}
    for entry in _entries(DEVICE_PACKAGES):
        name, _, version = entry.partition("==")
        out[normalise(name)] = version or None
    return out


def wheel_pins() -> tuple[dict[str, str], set[str]]:
    """(carried name -> version, requirements deliberately not carried)."""
    pins: dict[str, str] = {}
    skipped: set[str] = set()
    for entry in _entries(WHEEL_PINS):
        if entry.startswith("-"):
            skipped.add(normalise(entry[1:]))
            continue
        name, sep, version = entry.partition("==")
        if not sep or not version:
            raise SystemExit(f"{WHEEL_PINS}: {entry!r} is not name==version")
        pins[normalise(name)] = version
    return pins, skipped


def third_party_imports(paths: list[Path], local: set[str], top_level_only: bool = False) -> dict[str, set[str]]:
    """Top-level module names imported by ``paths`` (absolute imports, stdlib and ``local`` left out)
    -> the files importing each. ``top_level_only`` keeps module-level imports (those that run on import)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in sys.stdlib_module_names or root in local or root == "__future__":
                    continue
                found.setdefault(root, set()).add(str(path))
    return found


def dist_of_import(module: str) -> str:
    return normalise(IMPORT_TO_DIST.get(module, module))


# ---------------------------------------------------------------------------------------------- wheels


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.parser.Parser().parsestr(zf.read(name).decode("utf-8"))


def check_wheels(folder: Path, python_version: str) -> list[str]:
    """Problems with the wheels in ``folder``: a pin without its wheel, a wheel nobody pinned, two versions of
    one name, or a requirement (for linux x86_64, ``python_version``) neither the machine nor a wheel meets."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    pins, skipped = wheel_pins()
    device = device_packages()
    problems: list[str] = []
    wheels: dict[str, str] = {}
    metas = {}
    for wheel in sorted(folder.glob("*.whl")):
        meta = _wheel_metadata(wheel)
        name, version = normalise(meta["Name"]), meta["Version"]
        if name in wheels:
            problems.append(f"two wheels of {name} ({wheels[name]}, {version}): pip --target stops on that")
        wheels[name], metas[name] = version, meta
        if pins.get(name) != version:
            problems.append(f"{wheel.name}: not pinned in {WHEEL_PINS.name} (pinned: {pins.get(name)})")
    problems += [f"{name}=={v}: pinned but no wheel in {folder}" for name, v in pins.items() if name not in wheels]

    env = {**default_environment(), "python_version": python_version, "python_full_version": f"{python_version}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip
    for name, meta in metas.items():
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra's need, or another platform's / python's
            dep = normalise(req.name)
            if dep in wheels or dep in pins:  # a pin without its wheel is reported above
                have: str | None = wheels.get(dep, pins.get(dep))
            elif dep in device:
                have = device[dep]
            elif dep in skipped:
                continue
            else:
                problems.append(f"{name} needs {req}: neither on the machine nor carried")
                continue
            if have is not None and req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {req}, but {dep} {have} is what it gets there")
    return problems


def _record_hash(data: bytes) -> str:
    return "sha256=" + urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def trim_wheel(wheel: Path, drop: list[str], keep: list[str]) -> tuple[int, int]:
    """Rewrite ``wheel`` without the files matching a ``drop`` glob (unless they match a ``keep`` glob), RECORD
    updated. Returns (files dropped, bytes saved). Used for bitsandbytes, whose wheel holds a library for every
    CUDA and ROCm version; only the CUDA 13 ones can load with the machine's torch (cu130)."""
    before = wheel.stat().st_size
    dropped: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            names = src.namelist()
            for name in names:
                if any(fnmatch.fnmatch(name, g) for g in drop) and not any(fnmatch.fnmatch(name, g) for g in keep):
                    dropped.add(name)
            for info in src.infolist():
                if info.filename in dropped:
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode("utf-8").splitlines()
                    data = ("\n".join(r for r in lines if r.split(",")[0] not in dropped) + "\n").encode()
                dst.writestr(info, data)
        shutil.move(str(out), wheel)
    return len(dropped), before - wheel.stat().st_size


# ---------------------------------------------------------------------------------------------- the device


def _where(dist: md.Distribution) -> str:
    try:
        return str(Path(str(dist.locate_file(""))).resolve())
    except Exception:  # an odd finder; the version is what matters
        return "?"


def env_report() -> int:
    """On the device: the versions of what the runs use (and where each comes from: the carried wheels in
    /tmp/site or the machine's own), requirements of the carried wheels that the mix does not meet, CUDA, and a
    bf16 matmul rate (the MFU figures' 989 TFLOP/s is the H200's datasheet peak; this is what it reaches)."""
    from packaging.requirements import Requirement

    pins, skipped = wheel_pins()
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    names = [*pins, "torch", "triton", "accelerate", "tokenizers", "huggingface-hub", "safetensors", "numpy",
             "pyarrow", "fsspec", "pandas", "pytest", "pytest-timeout"]  # fmt: skip
    unmet = []
    for name in dict.fromkeys(names):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            print(f"  {name:20s} MISSING")
            continue
        print(f"  {name:20s} {dist.version:24s} {_where(dist)}")
        if name not in pins:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if (req.marker is not None and not req.marker.evaluate({"extra": ""})) or normalise(req.name) in skipped:
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                unmet.append(f"{name} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{name} needs {req}: {have} installed")
    print("unmet requirements of the carried wheels:", *(unmet or ["none"]), sep="\n  ")

    import torch

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
    if not torch.cuda.is_available():
        return 0
    print(f"device: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
    import time

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    print(f"bf16 8192^3 matmul: {10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12:.0f} TFLOP/s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check-wheels")
    check.add_argument("folder", type=Path)
    check.add_argument("--python-version", default="3.12")
    trim = sub.add_parser("trim-wheel")
    trim.add_argument("wheel", type=Path)
    trim.add_argument("--drop", action="append", default=[])
    trim.add_argument("--keep", action="append", default=[])
    sub.add_parser("env")
    a = ap.parse_args()
    if a.cmd == "check-wheels":
        problems = check_wheels(a.folder, a.python_version)
        for p in problems:
            print(f"wheel check: {p}", file=sys.stderr)
        print(f"wheel check: {len(list(a.folder.glob('*.whl')))} wheels, {len(problems)} problem(s)")
        return 1 if problems else 0
    if a.cmd == "trim-wheel":
        n, saved = trim_wheel(a.wheel, a.drop, a.keep)
        print(f"trimmed {a.wheel.name}: {n} files dropped, {saved / 2**20:.1f} MiB saved")
        return 0
    return env_report()


if __name__ == "__main__":
    sys.exit(main())
