"""tunekit.doctor: the tested ranges, the known-incompatible combinations it names, and the fields it reports."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from tunekit import doctor
from tunekit.cli import main

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
RANGED = ("transformers", "trl", "peft", "accelerate", "datasets")


def with_versions(monkeypatch: pytest.MonkeyPatch, **versions: str | None) -> None:
    """Make doctor see other installed versions of some distributions (``trl="1.14.0"``; None: not installed)."""
    real = doctor.installed_version
    fake = {name.replace("_", "-"): v for name, v in versions.items()}
    monkeypatch.setattr(doctor, "installed_version", lambda name: fake[name] if name in fake else real(name))


def test_the_five_libraries_have_a_lower_and_an_upper_bound() -> None:
    core, _extras = doctor.requirements()
    specs = {r.name: r.specifier for r in core}
    for name in RANGED:
        ops = sorted(s.operator for s in specs[name])
        assert ops == ["<", ">="], (name, str(specs[name]))


def test_the_installed_libraries_lie_in_the_tested_range() -> None:
    """What CI installs (the newest releases the ranges admit) is inside them, and nothing required is missing."""
    r = doctor.report()
    by_name = {d.name: d for d in r.dependencies}
    assert set(RANGED) <= set(by_name)
    assert all(d.status in ("ok", "newer") for d in r.dependencies), r.dependencies
    assert all(by_name[name].status == "ok" for name in RANGED), [by_name[n] for n in RANGED]


def test_metadata_and_pyproject_give_the_same_requirements() -> None:
    """An installed tunekit reads its Requires-Dist lines; a checkout reads pyproject.toml: the same ranges."""
    lines = list(PYPROJECT["dependencies"])
    for extra, reqs in PYPROJECT["optional-dependencies"].items():
        lines += [f'{r}; extra == "{extra}"' for r in reqs]
    core, extras = doctor.parse_requires_dist(lines)
    pcore, pextras = doctor.requirements()

    def names(reqs):  # the build backend sorts the lines
        return sorted(str(r) for r in reqs)

    assert names(core) == names(pcore)
    assert {k: names(v) for k, v in extras.items()} == {k: names(v) for k, v in pextras.items()}
    assert set(extras) == set(PYPROJECT["optional-dependencies"])
    # an extra made of others lists their packages (dev = test + docs + tools), as installed metadata does
    assert {"pytest", "mkdocs-material", "ruff"} <= {r.name for r in pextras["dev"]}
    assert "tunekit" not in {r.name for e in pextras.values() for r in e}
    assert all(len(names(v)) == len(set(names(v))) for v in pextras.values())


def test_report_fields_and_types() -> None:
    d = doctor.report().to_dict()
    assert d["schema"] == doctor.JSON_SCHEMA_VERSION and isinstance(d["ok"], bool)
    assert d["tunekit"] == __import__("tunekit").__version__
    assert isinstance(d["python"], str) and d["python"].startswith(".".join(map(str, sys.version_info[:2])))
    assert isinstance(d["platform"], str) and d["platform"]
    torch = d["torch"]
    assert set(torch) == {"version", "cuda_build", "cuda_available", "driver", "gpus", "bf16", "mps"}
    assert torch["version"] == importlib.metadata.version("torch") and isinstance(torch["cuda_available"], bool)
    assert (torch["bf16"] is None) == (not torch["gpus"])
    for dep in d["dependencies"]:
        assert set(dep) == {"name", "version", "tested", "status"}
    assert {dep["name"] for dep in d["dependencies"]} >= {"torch", *RANGED}
    assert [f["name"] for f in d["features"]] == [
        "flash-attn",
        "liger-kernel",
        "bitsandbytes",
        "vllm",
        "llama-cpp-python",
    ]
    for f in d["features"]:
        assert set(f) == {"name", "version", "installed", "usable", "detail"}
        assert f["usable"] <= f["installed"] and (f["version"] is None) == (not f["installed"])
    assert [e["name"] for e in d["extras"]] == list(PYPROJECT["optional-dependencies"])
    for e in d["extras"]:
        assert set(e) == {"name", "usable", "missing"} and e["usable"] == (not e["missing"])
    for p in d["problems"]:
        assert set(p) == {"severity", "what", "fix"} and p["severity"] in ("error", "warning")
    assert d["ok"] == (not any(p["severity"] == "error" for p in d["problems"]))


def test_an_older_release_than_tested_is_an_error_and_exit_code_1(monkeypatch, capsys) -> None:
    with_versions(monkeypatch, trl="1.14.0")
    r = doctor.report()
    assert not r.ok
    assert {d.name: d.status for d in r.dependencies}["trl"] == "older"
    [p] = [p for p in r.problems if "trl" in p.what]
    tested = next(d.tested for d in r.dependencies if d.name == "trl")  # ">=1.16,<1.17", as pyproject.toml states it
    assert p.severity == "error" and "1.14.0" in p.what and p.fix == f'pip install "trl{tested}"'
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "trl           1.14.0" in out and "<- older" in out and "error: trl 1.14.0 is older" in out
    assert main(["doctor", "--json"]) == 1


def test_a_newer_release_than_tested_is_a_warning_and_exit_code_0(monkeypatch, capsys) -> None:
    with_versions(monkeypatch, transformers="6.0.0")
    r = doctor.report()
    assert {d.name: d.status for d in r.dependencies}["transformers"] == "newer"
    assert any(p.severity == "warning" and "transformers 6.0.0 is newer" in p.what for p in r.problems)
    if r.ok:  # nothing else on this machine is broken
        assert main(["doctor"]) == 0
        assert "warning: transformers 6.0.0 is newer than tunekit's tested range" in capsys.readouterr().out


def test_a_missing_requirement_is_an_error(monkeypatch) -> None:
    with_versions(monkeypatch, peft=None)
    r = doctor.report()
    assert not r.ok and {d.name: d.status for d in r.dependencies}["peft"] == "missing"


def test_a_package_built_for_another_torch_is_an_error(monkeypatch, tmp_path: Path) -> None:
    """vLLM pins the torch it was built for: another torch installed is named, with the fix (vllm is not imported)."""
    fake_distribution(
        tmp_path, "vllm", "vllm", "0.33.0", "raise SystemExit('vllm must not be imported')\n", "torch==2.9.0"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    r = doctor.report()
    [vllm] = [f for f in r.features if f.name == "vllm"]
    assert vllm.installed and not vllm.usable and vllm.version == "0.33.0"
    assert not r.ok
    assert any(p.severity == "error" and "vllm 0.33.0 requires torch==2.9.0" in p.what for p in r.problems)


def test_a_native_library_that_fails_to_load_is_an_error(monkeypatch, tmp_path: Path) -> None:
    """llama-cpp-python installs fine and fails at import when its library was built for another machine."""
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text(
        "raise OSError('libllama.so: cannot open shared object file')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    with_versions(monkeypatch, llama_cpp_python="0.3.36")
    r = doctor.report()
    [llama] = [f for f in r.features if f.name == "llama-cpp-python"]
    assert llama.installed and not llama.usable and "libllama.so" in llama.detail
    [p] = [p for p in r.problems if "llama-cpp-python" in p.what]
    assert p.severity == "error" and "rebuild" in p.fix and not r.ok


@pytest.mark.skipif(sys.platform == "win32", reason="a fake nvidia-smi shell script")
@pytest.mark.parametrize("driver", [None, "550.54.15"])
def test_a_cuda_torch_without_a_usable_gpu(monkeypatch, tmp_path: Path, driver: str | None) -> None:
    """A CUDA build of torch and no driver: a warning (it trains on CPU); a driver it cannot use: an error."""
    import shutil

    import torch

    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {driver}\n", encoding="utf-8")
    smi.chmod(0o755)
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name: (str(smi) if driver else None) if name == "nvidia-smi" else real_which(name)
    )
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = doctor.report()
    assert r.torch.cuda_build == "12.8" and not r.torch.cuda_available and r.torch.driver == driver
    [p] = [p for p in r.problems if "built for CUDA 12.8" in p.what]
    assert p.severity == ("error" if driver else "warning")
    assert ("driver" in p.fix) if driver else ("NVIDIA driver" in p.fix)


def test_human_output_names_every_section(capsys) -> None:
    code = main(["doctor"])
    out = capsys.readouterr().out
    for heading in (
        "tunekit ",
        "python ",
        "platform ",
        "torch ",
        "dependencies",
        "optional packages",
        "extras",
        "problems",
    ):
        assert heading in out, heading
    for name in ("transformers", "flash-attn", "liger-kernel", "bitsandbytes", "vllm", "llama-cpp-python", "qlora"):
        assert name in out, name
    assert out.rstrip().endswith("Attach this output to bug reports.")
    assert code == (0 if doctor.report().ok else 1)


def test_the_compat_session_installs_each_lower_bound() -> None:
    """`nox -s "compat(oldest)"` reads its pins from pyproject.toml, the same lines doctor checks against."""
    pytest.importorskip("nox")
    import importlib.util

    spec = importlib.util.spec_from_file_location("tunekit_noxfile", ROOT / "noxfile.py")
    noxfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noxfile)
    core, _extras = doctor.requirements()
    lower = {r.name: next(s.version for s in r.specifier if s.operator == ">=") for r in core if r.name in RANGED}
    assert noxfile.oldest_pins() == [f"{name}=={lower[name]}" for name in noxfile.COMPAT_PACKAGES]
    assert set(noxfile.COMPAT_PACKAGES) == set(RANGED)


def fake_distribution(root: Path, name: str, module: str, version: str, body: str, requires: str = "") -> None:
    """An installed package as importlib.metadata and the import system find it: a dist-info and a module."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    lines = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + (
        f"Requires-Dist: {requires}\n" if requires else ""
    )
    (info / "METADATA").write_text(lines, encoding="utf-8")
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(body, encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "module", "version"),
    [("bitsandbytes", "bitsandbytes", "0.49.2"), ("liger-kernel", "liger_kernel", "9.9.9")],
)
def test_a_cuda_only_package_without_cuda_is_a_warning_and_not_imported(
    monkeypatch, tmp_path, name, module, version
) -> None:
    import torch

    fake_distribution(tmp_path, name, module, version, "raise SystemExit('imported without CUDA')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = doctor.report()
    [feature] = [f for f in r.features if f.name == name]
    assert (feature.version, feature.installed, feature.usable, feature.detail) == (
        version,
        True,
        False,
        "needs a CUDA GPU",
    )
    [p] = [p for p in r.problems if p.what.startswith(f"{name} {version}") and "CUDA" in p.what]
    assert p.severity == "warning" and "no usable CUDA GPU" in p.what


@pytest.mark.parametrize(("version", "usable"), [("0.50.0", True), ("0.50.2", True), ("0.49.9", False)])
def test_bitsandbytes_without_cuda_is_usable_for_its_cpu_optimizers_from_0_50(
    monkeypatch, tmp_path, version, usable
) -> None:
    """bitsandbytes 0.50 runs 8-bit AdamW and Lion on the CPU (tunekit trains with them there): doctor says so,
    imports it to check it, and raises no warning; older releases need CUDA."""
    import torch

    fake_distribution(tmp_path, "bitsandbytes", "bitsandbytes", version, "")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = doctor.report()
    [feature] = [f for f in r.features if f.name == "bitsandbytes"]
    assert feature.usable is usable
    if usable:
        assert feature.detail == "8-bit AdamW and Lion on the CPU (QLoRA's 4-bit weights need CUDA)"
    else:
        assert feature.detail == "needs a CUDA GPU"
    assert any(p.what.startswith(f"bitsandbytes {version}") and "CUDA" in p.what for p in r.problems) is not usable


def test_an_installed_tunekit_reads_its_metadata(monkeypatch) -> None:
    """Outside a checkout (a wheel install) the ranges come from the Requires-Dist lines of tunekit's metadata."""
    lines = ["torch>=2.6", "trl>=1.16,<1.17", 'bitsandbytes>=0.48; extra == "qlora"']
    monkeypatch.setattr(doctor, "_checkout_pyproject", lambda: None)
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: lines if name == "tunekit" else None)
    core, extras = doctor.requirements()
    assert [str(r) for r in core] == ["torch>=2.6", "trl<1.17,>=1.16"]
    assert {k: [str(r) for r in v] for k, v in extras.items()} == {"qlora": ["bitsandbytes>=0.48"]}
