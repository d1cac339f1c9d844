"""The `tunekit` command: fit from YAML (every example config), generate, validate-data, schema, plan, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.testing import first_task, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))


def tunekit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would, from a checkout (tunekit importable from src/)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "tunekit", *args],
        capture_output=True, text=True, encoding="utf-8", env=env, cwd=cwd, timeout=600, check=False,
    )  # fmt: skip


def test_there_are_example_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"sft_lora.yaml", "dpo.yaml"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    out = {}
    for config in CONFIGS:
        run_dir = tmp_path_factory.mktemp(config.stem)
        out[config.stem] = (tunekit("fit", str(config.relative_to(ROOT)), "--output_dir", str(run_dir)), run_dir)
    return out


@pytest.mark.parametrize("name", [p.stem for p in CONFIGS])
def test_fit_every_example_config_learns_and_saves(fitted, name: str) -> None:
    proc, run_dir = fitted[name]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = float(re.search(r"^step 1/\d+  loss ([\d.]+)", proc.stdout, re.M).group(1))
    last = float(re.search(r"FitResult\(.*train loss ([\d.]+)", proc.stdout).group(1))
    assert last < 0.5 * first, proc.stdout  # it learned
    assert (run_dir / "final" / "tunekit.json").is_file()
    assert f"saved to {run_dir / 'final'}" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_generate_answers_with_the_saved_tuner(fitted, capsys) -> None:
    _proc, run_dir = fitted["sft_lora"]
    prompts = ["Say the first digit of the list.\n\n4 2 7", "请说出列表中的第一个数字。\n\n8 1 2"]
    assert main(["generate", str(run_dir / "final"), *prompts, "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "8" and "\n4\n" in out, out


def test_misspelled_key_fails_with_the_nearest_name_and_exit_code_2(tmp_path: Path) -> None:
    config = (ROOT / "examples" / "configs" / "sft_lora.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.replace("learning_rate:", "learning_rat:"), encoding="utf-8")
    proc = tunekit("fit", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: training: Training(learning_rat=0.005): unknown option 'learning_rat'; "
        "did you mean 'learning_rate'?"
    ]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "missing.yaml"], "error: config file not found: missing.yaml"),
        (["fit", "{config}", "--trainig.epochs", "1"], "unknown option 'trainig'; did you mean 'training'?"),
        (["fit", "{config}", "--method.rank", "4"], "method: LoRA(rank=4): unknown option 'rank'; did you mean 'r'?"),
        (["fit", "{config}", "--training.epochs"], "override --training.epochs needs a value"),
        (["fit", "{config}", "stray"], "unexpected argument 'stray'"),
        (["generate", "no/such/dir", "hi"], "load('no/such/dir'): no such directory"),
        (["validate-data", "nope.jsonl"], "data file not found: nope.jsonl"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv: list[str], message: str, capsys) -> None:
    config = str(ROOT / "examples" / "configs" / "sft_lora.yaml")
    assert main([a.replace("{config}", config) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_overrides_reach_the_config(capsys) -> None:
    config = str(ROOT / "examples" / "configs" / "sft_lora.yaml")
    argv = ["fit", "--print-config", config, "--training.learning_rate", "1e-4", "method.r=4", "--training.epochs=2"]
    assert main(argv) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["training"]["learning_rate"] == 1e-4 and printed["training"]["epochs"] == 2
    assert printed["method"]["r"] == 4 and printed["method"]["name"] == "LoRA"
    assert Path(printed["data"]) == ROOT / "examples" / "data" / "alpaca_train.jsonl"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["plan", "CONFIG", "--json"], "json"),
        (["plan", "--json", "CONFIG"], "json"),
        (["plan", "CONFIG", "method.r=4", "--json", "--training.epochs", "2"], "json"),
        (["fit", "CONFIG", "--print-config"], "print_config"),
        (["fit", "--print-config", "CONFIG", "--training.epochs=2"], "print_config"),
    ],
)
def test_own_flags_before_or_after_the_config(argv: list[str], flag: str) -> None:
    """`tunekit plan run.yaml --json` and `tunekit fit run.yaml --print-config` work like the flag-first forms."""
    from tunekit.cli import build_parser
    from tunekit.cli.fit import _own_flags, parse_overrides

    args = build_parser().parse_args([a.replace("CONFIG", "run.yaml") for a in argv])
    _own_flags(args)
    assert args.config == "run.yaml" and getattr(args, flag) is True
    expected = [o for o in ("method.r=4", "training.epochs=2") if any(o.split("=")[0] in a for a in argv)]
    assert parse_overrides(args.overrides) == expected


def test_print_config_after_the_config(capsys) -> None:
    config = str(ROOT / "examples" / "configs" / "sft_lora.yaml")
    assert main(["fit", config, "--training.epochs", "2", "--print-config"]) == 0
    import yaml

    assert yaml.safe_load(capsys.readouterr().out)["training"]["epochs"] == 2


def test_validate_data_reports_format_rows_lengths_and_bad_rows(tmp_path: Path, tiny_llama, capsys) -> None:
    rows = first_task(30, seed=1, fmt="alpaca")
    rows[3]["output"] = ""
    rows[7] = {"instruction": 5, "output": "x"}
    data = write_jsonl(rows, tmp_path / "d.jsonl")
    assert main(["validate-data", str(data)]) == 1  # bad rows: a non-zero exit for scripts and CI
    out = capsys.readouterr().out
    assert re.search(r"format\s+alpaca", out) and re.search(r"rows\s+30 \(28 valid, 2 bad\)", out)
    assert "row 4, field 'output': empty string" in out and "row 8, field 'instruction': expected a string" in out
    assert re.search(r"words\s+min \d", out)

    good = write_jsonl(first_task(20, seed=1), tmp_path / "good.jsonl")
    assert main(["validate-data", str(good), "--model", str(tiny_llama), "--max-length", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "prompt_completion" and report["rows"] == report["valid_rows"] == 20
    tokens = report["tokens"]
    assert 8 < tokens["min"] <= tokens["median"] <= tokens["max"] < 64
    # Counted as fit counts them: the templated conversation, end-of-turn token included.
    tuner = tk.Tuner(tiny_llama)
    assert tokens["total"] == tuner.prepare(good).num_tokens
    assert report["longer_than_max_length"]["rows"] == sum(len(ids) > 16 for ids in tuner.prepare(good).input_ids)


def test_schema_is_the_config_json_schema(tmp_path: Path, capsys) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "tunekit run config" and "training" in schema["properties"]
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == schema


def test_plan_prints_the_plan_without_training(tmp_path: Path, capsys) -> None:
    config = str(ROOT / "examples" / "configs" / "sft_lora.yaml")
    assert main(["plan", config, "--output_dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "LoRA" in table and not (tmp_path / "final").exists()
    assert main(["plan", "--json", config, "--output_dir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)

    # The keys and types Plan.to_dict() documents: counts, flags, then memory in bytes (weights ... total).
    types = {
        "method": str,
        "objective": str,
        "device": str,
        "precision": str,
        "trainable_params": int,
        "total_params": int,
        "examples": int,
        "tokens": int,
        "steps": int,
        "micro_batch_tokens": int,
        "packing": bool,
        "gradient_checkpointing": bool,
        "device_memory_bytes": int,  # on the CPU: the RAM available when planned
        "fits": bool,
        "optimizer": str,  # Training(optimizer=...); memory["optimizer"] is its state's bytes
        "activation_offload": bool,
        "sources": list,  # a tk.Mix's sources (rows, drawn rows, tokens); empty for one source
        "images": int,  # a vision-language model's images, their tokens, its tower's and projector's parameters
        "image_tokens": int,
        "vision_params": int,
        "vision_trainable_params": int,
        "trainable_fraction": float,
        "memory": dict,
    }
    assert set(printed) == set(types)
    for key, kind in types.items():
        assert type(printed[key]) is kind, (key, printed[key])
    assert set(printed["memory"]) == {"weights", "gradients", "optimizer", "activations", "total"}
    assert all(type(v) is int and v > 0 for v in printed["memory"].values()), printed["memory"]
    parts = ("weights", "gradients", "optimizer", "activations")
    assert printed["memory"]["total"] == sum(printed["memory"][k] for k in parts)

    # The figures are tuner.plan()'s for the same config (the RAM available is read afresh, so it may move).
    from tunekit.config_file import RunConfig

    cfg = RunConfig.from_yaml(config, [f"output_dir={tmp_path}"])
    plan = cfg.to_tuner(progress=False).plan(cfg.data, eval_data=cfg.eval_data)
    expected = plan.to_dict()
    assert expected["memory"] == {
        "weights": plan.weights_bytes,
        "gradients": plan.gradients_bytes,
        "optimizer": plan.optimizer_bytes,
        "activations": plan.activations_bytes,
        "total": plan.total_bytes,
    }
    for key in ("device_memory_bytes", "fits"):
        printed.pop(key), expected.pop(key)
    assert printed == expected
    assert (printed["method"], printed["objective"], printed["device"]) == ("LoRA", "SFT", "cpu")
    assert 0 < printed["trainable_params"] < printed["total_params"]
    assert printed["steps"] == 100 and printed["examples"] > 0 and printed["tokens"] > printed["examples"]


def test_fit_needs_somewhere_to_save(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny\ndata: train.jsonl\n", encoding="utf-8")
    assert main(["fit", str(config)]) == 2
    assert "set output_dir (or save)" in capsys.readouterr().err
    assert main(["fit", "--print-config", str(config)]) == 0  # printing the config needs no output_dir
    assert "model: tiny" in capsys.readouterr().out


def test_an_unreadable_model_is_one_line_with_exit_1(tmp_path: Path, tiny_llama, capsys, monkeypatch) -> None:
    import transformers

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tiny_llama / "tokenizer.json"))

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreadable)
    data = write_jsonl(first_task(4), tmp_path / "d.jsonl")
    assert main(["validate-data", str(data), "--model", str(tiny_llama)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "TUNEKIT_TRACEBACK=1" in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_model_path_is_a_config_error_with_exit_2(tmp_path: Path, capsys) -> None:
    """As in `tunekit fit` (and like a missing data or config file): a wrong argument, exit 2, not exit 1."""
    data = write_jsonl(first_task(4), tmp_path / "d.jsonl")
    assert main(["validate-data", str(data), "--model", str(tmp_path / "no-such-model")]) == 2
    err = capsys.readouterr().err
    assert "model path does not exist" in err and len(err.strip().splitlines()) == 1, err


def test_doctor_json_as_a_user_runs_it() -> None:
    """`tunekit doctor --json`: the documented fields (docs/cli.md), and exit code 1 exactly when there is an error."""
    proc = tunekit("doctor", "--json")
    report = json.loads(proc.stdout)
    assert set(report) == {
        "schema", "ok", "tunekit", "python", "platform", "torch", "dependencies", "features", "extras", "problems",
    }  # fmt: skip
    assert report["tunekit"] == tk.__version__ and isinstance(report["torch"]["cuda_available"], bool)
    assert {d["name"] for d in report["dependencies"]} >= {"transformers", "trl", "peft", "accelerate", "datasets"}
    assert proc.returncode == (0 if report["ok"] else 1), proc.stderr
    assert report["ok"] == (not [p for p in report["problems"] if p["severity"] == "error"])
    assert "Traceback" not in proc.stderr
