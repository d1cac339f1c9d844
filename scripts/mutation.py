"""Mutation testing (mutmut 3) of the modules where a silent bug costs users most, each against its own tests.

Run through `nox -s mutation` (installs mutmut) or directly on an interpreter that has mutmut and tunekit's test deps:

    python scripts/mutation.py                       # every module, one after the other
    python scripts/mutation.py _fs peft_map          # some modules
    python scripts/mutation.py peft_map --sample 80  # a random sample of 80 mutants (seed 0; --seed to change)
    python scripts/mutation.py peft_map --keep       # after adding tests: rerun the same sample, same work dir

Each module runs in its own scratch copy of the checkout (build/mutation/<module>/), whose pyproject.toml gets a
[tool.mutmut] table mutating that one file and selecting that module's tests only, so one run takes minutes rather
than the hours the whole suite would. One worker (--max-children 1): the machines this runs on are shared. The score
(killed / (killed + survived + timeouts)) and the surviving mutants' names are printed at the end; tests/MUTATION.md
records them, with a reason for each survivor. Not part of CI (too slow).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# module -> (the file mutated, the tests that target it). The tests are chosen to run in seconds each: mutmut reruns
# every test that reaches a mutated function once per mutant.
MODULES: dict[str, tuple[str, list[str]]] = {
    "_fs": (
        "src/tunekit/_fs.py",
        ["tests/unit/test_reliability.py", "tests/unit/test_disk_full.py", "tests/unit/test_fs_primitives.py"],
    ),
    "peft_map": (
        "src/tunekit/backends/hf/peft_map.py",
        [
            "tests/unit/test_options_reach_engine.py",
            "tests/unit/test_method_catalogue.py",
            "tests/unit/test_peft_translation.py",
            "tests/integration/test_save_load.py",
        ],
    ),
    # Full and Freeze (the methods without a peft config), moved out of peft_map.py
    "whole_model": (
        "src/tunekit/backends/hf/whole_model.py",
        [
            "tests/unit/test_options_reach_engine.py",
            "tests/unit/test_method_catalogue.py",
            "tests/integration/test_save_load.py",
        ],
    ),
    "trainers": (
        "src/tunekit/backends/hf/trainers.py",
        ["tests/unit/test_options_reach_engine.py", "tests/unit/test_seam.py", "tests/unit/test_trainer_table.py"],
    ),
    "resume": (
        "src/tunekit/backends/hf/resume.py",
        ["tests/unit/test_reliability.py", "tests/unit/test_resume_identity.py"],
    ),
    "checkpoints": (
        "src/tunekit/backends/hf/checkpoints.py",
        [
            "tests/unit/test_reliability.py",
            "tests/unit/test_resume_identity.py",
            # the checkpoint writer (CheckpointMixin) against a stand-in Trainer: every branch, in milliseconds
            "tests/unit/test_checkpoint_writer.py",
            # ... and inside real training runs: ten short runs, 20 s
            "tests/integration/test_checkpoints.py",
        ],
    ),
    "save_format": (
        "src/tunekit/save_format.py",
        ["tests/integration/test_save_load.py", "tests/unit/test_seam.py", "tests/unit/test_save_format_units.py"],
    ),
    "formats": (
        "src/tunekit/data/formats.py",
        ["tests/unit/test_formats.py", "tests/unit/test_preference_formats.py"],
    ),
    "encoding": (
        "src/tunekit/data/encoding.py",
        ["tests/unit/test_encoding.py"],
    ),
}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _prepare(work: Path, target: str, tests: list[str]) -> Path:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for extra in ("README.md", "docs", "examples"):  # some tests read these
        source = ROOT / extra
        if source.is_dir():
            shutil.copytree(source, work / extra)
        elif source.exists():
            shutil.copy2(source, work / extra)
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    # -p no:randomly: the order mutmut measured the durations in; -x: the first failure kills the mutant.
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list([target])}\n"
        f"also_copy = {_toml_list(['README.md', 'docs', 'examples'])}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        f"pytest_add_cli_args = {_toml_list(['-p', 'no:randomly', '-x', '-q', '-p', 'no:cacheprovider'])}\n"
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
    )
    (work / "pyproject.toml").write_text(config, encoding="utf-8")
    return work


def _results(work: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line and line.strip().startswith("tunekit"):
            key, _, value = line.strip().rpartition(":")
            status[key.strip()] = value.strip()
    return status


def _generate(work: Path, env: dict[str, str]) -> list[str]:
    """Generate the mutants (and mutmut's test-to-function map) without running any: every mutant's name."""
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", "tunekit.no_such_mutant"]
    with open(work / "mutmut.log", "a", encoding="utf-8") as log:
        subprocess.run(cmd, cwd=work, env=env, check=False, stdout=log, stderr=subprocess.STDOUT)
    return sorted(_results(work))


def run(name: str, sample: int | None, seed: int, keep: bool, only: list[str], without: list[str]) -> dict[str, Any]:
    target, tests = MODULES[name]
    tests = [t for t in tests if (ROOT / t).exists() and t not in without]
    work = ROOT / "build" / "mutation" / (name + ("-without" if without else ""))
    if not (keep and (work / "mutants").is_dir()):
        _prepare(work, target, tests)
    env = {**os.environ, "PYTHONPATH": "", "TUNEKIT_MUTATION": "1"}
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "1"]
    names = list(only)
    if sample is not None and not names:
        everything = _generate(work, env)
        names = sorted(random.Random(seed).sample(everything, min(sample, len(everything))))
        (work / "sample.json").write_text(json.dumps({"seed": seed, "of": len(everything), "names": names}), "utf-8")
    elif keep and not names and (work / "sample.json").exists():
        names = json.loads((work / "sample.json").read_text("utf-8"))["names"]  # rerun the same sample
    with open(work / "mutmut.log", "a", encoding="utf-8") as log:  # the progress spinner, kept out of the terminal
        subprocess.run([*cmd, *names], cwd=work, env=env, check=False, stdout=log, stderr=subprocess.STDOUT)
    status = _results(work)
    if (work / "sample.json").exists():
        sampled = set(json.loads((work / "sample.json").read_text("utf-8"))["names"])
        status = {k: v for k, v in status.items() if k in sampled}
    counts: dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    decided = killed + counts.get("survived", 0) + counts.get("no tests", 0)
    score = killed / decided if decided else 0.0
    survivors = sorted(k for k, v in status.items() if v in ("survived", "no tests"))
    report: dict[str, Any] = {
        "module": name,
        "file": target,
        "tests": tests,
        "counts": counts,
        "score": round(score, 3),
    }
    report["sample"] = len(status) if (work / "sample.json").exists() else None
    report["survivors"] = survivors
    (work / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    report["report"] = str((work / "report.json").relative_to(ROOT))
    return report


def show(work: Path) -> None:
    """Print each survivor of the run in ``work`` with the line it changes (what tests/MUTATION.md lists)."""
    report = json.loads((work / "report.json").read_text(encoding="utf-8"))
    for name in report["survivors"]:
        diff = subprocess.run(
            [sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True, check=False
        ).stdout
        changed = [line for line in diff.splitlines() if line[:1] in "-+" and line[:3] not in ("---", "+++")]
        print(f"{name}: " + "  =>  ".join(line[1:].strip() for line in changed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--sample", type=int, default=None, help="run a random sample of N mutants of each module")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="reuse build/mutation/<module> (its sample, its results): after adding "
        "tests, reruns only what is not yet killed",
    )
    parser.add_argument("--mutant", action="append", default=[], help="run only this mutant (repeatable)")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="TEST_FILE",
        help="leave this test file out (repeatable): the score before it; in build/mutation/<module>-without",
    )
    parser.add_argument("--show", action="store_true", help="print the survivors of the last run, with their lines")
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    if args.show:
        for name in args.modules or list(MODULES):
            work = ROOT / "build" / "mutation" / (name + ("-without" if args.without else ""))
            if (work / "report.json").exists():
                show(work)
        return
    reports = [
        run(name, args.sample, args.seed, args.keep, args.mutant, args.without)
        for name in (args.modules or list(MODULES))
    ]
    for report in reports:
        counts = report["counts"]
        sample = f" (a sample of {report['sample']})" if report["sample"] else ""
        where = report["report"]
        print(f"{report['module']}: score {report['score']:.1%}{sample} {counts}; survivors in {where}")


if __name__ == "__main__":
    main()
