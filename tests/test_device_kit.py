"""The GPU check kit (scripts/device_wheels.sh, scripts/device_check.sh, scripts/device_kit.py) is sound before a
lent GPU machine's 15 minutes are spent on it: the scripts parse, everything a GPU run imports is on the machine
or among the carried wheels, and the wheel check and the wheel trimming do what they say."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

spec = importlib.util.spec_from_file_location("device_kit", SCRIPTS / "device_kit.py")
assert spec and spec.loader
kit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kit)

# What the `gpu` session and gpu_throughput.py run: every import in them (lazy ones too) must be there.
GPU_RUN = [
    *sorted((ROOT / "tests" / "gpu").glob("*.py")),
    ROOT / "tests" / "distributed" / "test_gpus.py",
    ROOT / "tests" / "distributed" / "helpers.py",
    ROOT / "tests" / "conftest.py",
    ROOT / "tests" / "support_matrix.py",
    ROOT / "benchmarks" / "gpu_throughput.py",
    ROOT / "benchmarks" / "_util.py",
    ROOT / "noxfile.py",
]
LOCAL = {"tunekit", "tests", "_util"}
# tunekit's optional integrations that no gpu-marked test and no benchmark uses (checked below: the GPU_RUN
# files import none of them), so they are not carried: MLflow, llama.cpp, DeepSpeed (multi_gpu), and the eval
# extra's rouge-score and lm-evaluation-harness.
NOT_NEEDED_THERE = {
    "mlflow",
    "llama_cpp",
    "deepspeed",
    "rouge_score",
    "lm_eval",
    "fastapi",
    "starlette",
    "uvicorn",
    "openai",
    "httpx",
}  # tunekit serve: tested on the CPU


def test_the_scripts_parse():
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the scripts"
    for name in ("device_wheels.sh", "device_check.sh"):
        proc = subprocess.run([bash, "-n", str(SCRIPTS / name)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"


def test_every_import_of_the_gpu_run_is_on_the_machine_or_carried():
    device = kit.device_packages()
    pins, _ = kit.wheel_pins()
    assert "torch" in device and "pytest" in device and len(device) > 100  # the list was read
    assert {"trl", "datasets", "pydantic", "liger-kernel", "bitsandbytes", "nox"} <= set(pins)

    run = kit.third_party_imports(GPU_RUN, LOCAL)
    tunekit_files = sorted((ROOT / "src" / "tunekit").rglob("*.py"))
    lib = kit.third_party_imports(tunekit_files, LOCAL)
    # the check sees what it must: the test's, the benchmark's and tunekit's lazy imports
    assert {"torch", "pytest", "bitsandbytes", "trl", "datasets", "peft", "transformers", "nox"} <= set(run)
    assert {"liger_kernel", "pydantic", "accelerate", "yaml"} <= set(lib)

    assert not NOT_NEEDED_THERE & set(run), "a GPU test uses an integration the kit does not carry"
    missing = {
        module: sorted(files)[:3]
        for module, files in {**lib, **run}.items()
        if module not in NOT_NEEDED_THERE and kit.dist_of_import(module) not in device.keys() | pins.keys()
    }
    assert not missing, (
        f"imported in a GPU run but neither on the device (scripts/device_packages.txt) nor carried "
        f"(scripts/device_wheels.txt): {missing}; add a pin (or IMPORT_TO_DIST in scripts/device_kit.py when the "
        "distribution is named otherwise)"
    )


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str], files: dict[str, bytes]) -> Path:
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    listed = [*files, f"{dist_info}/METADATA"]
    record = "".join(f"{path},sha256=x,1\n" for path in listed) + f"{dist_info}/RECORD,,\n"
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{dist_info}/METADATA", meta)
        zf.writestr(f"{dist_info}/RECORD", record)
    return wheel


def test_the_wheel_check_finds_unmet_needs_strays_and_missing_pins(tmp_path):
    pins, _ = kit.wheel_pins()
    _fake_wheel(
        tmp_path,
        "trl",
        pins["trl"],
        [
            "datasets>=4.7",  # carried: met
            "accelerate>=99",  # the machine has 1.15: not met
            "no-such-dist>=1",  # nowhere: not met
            "virtualenv>=20; python_version < '3.15'",  # deliberately not carried (device_wheels.txt)
            "tomli>=1; python_version < '3.11'",  # not for python 3.12
            "rich; extra == 'cli'",  # an extra's: ignored
        ],
        {"trl/__init__.py": b""},
    )
    _fake_wheel(tmp_path, "stray", "1.0", [], {"stray/__init__.py": b""})
    problems = kit.check_wheels(tmp_path, "3.12")
    text = "\n".join(problems)
    assert "trl needs accelerate>=99, but accelerate 1.15.0 is what it gets there" in text
    assert "trl needs no-such-dist>=1: neither on the machine nor carried" in text
    assert "stray-1.0-py3-none-any.whl: not pinned" in text
    assert f"datasets=={pins['datasets']}: pinned but no wheel" in text
    assert not any(word in text for word in ("datasets>=4.7", "virtualenv", "tomli", "rich"))
    # exactly: the two unmet needs, the stray, and every pin but trl's without its wheel
    assert len(problems) == 2 + 1 + (len(pins) - 1), text


def test_trimming_keeps_the_cuda13_and_cpu_libraries_and_a_consistent_record(tmp_path):
    libs = {f"bitsandbytes/libbitsandbytes_{v}.so": b"x" * 1000 for v in ("cpu", "cuda118", "cuda130", "rocm72")}
    wheel = _fake_wheel(tmp_path, "bitsandbytes", "0.50.2", [], {"bitsandbytes/__init__.py": b"", **libs})
    dropped, saved = kit.trim_wheel(
        wheel,
        drop=["bitsandbytes/libbitsandbytes_*"],
        keep=["bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda13*.so"],
    )
    assert dropped == 2 and saved > 0
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        record = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert {"bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda130.so"} <= names
    assert not {"bitsandbytes/libbitsandbytes_cuda118.so", "bitsandbytes/libbitsandbytes_rocm72.so"} & names
    assert {line.split(",")[0] for line in record.splitlines()} == names
