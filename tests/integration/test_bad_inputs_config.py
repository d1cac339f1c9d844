"""The bad-input catalogue, config part: config values, config files, the command line and generate() options.

Error rows go through ``bad_input_kit.check`` like ``test_bad_inputs.py``; the ``test_correct_*`` tests are the
cases whose right answer is a behaviour (temperature=0 is greedy) or a command's exit code and one-line message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.cli import main
from tunekit.testing import first_task, write_jsonl

from .bad_input_kit import GOOD, Case, Row, check
from .helpers import cpu

ROOT = Path(__file__).resolve().parents[2]
RUN_YAML = "model: tiny\ndata: train.jsonl\noutput_dir: runs/x\ntraining:\n  max_steps: 1\n  batch_size: 4\n"


def _yaml(c: Case, text: str | bytes, name: str = "run.yaml") -> tk.RunConfig:
    return tk.RunConfig.from_yaml(c.file(name, text))


def _cuda_missing(c: Case) -> Any:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    return c.tuner(training={"device": "cuda"}).fit(GOOD)


def _mps_missing(c: Case) -> Any:
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("an MPS device is present")
    return c.tuner(training={"device": "mps"}).fit(GOOD)


def _directory(c: Case) -> tk.RunConfig:
    (c.tmp / "configs").mkdir()
    return tk.RunConfig.from_yaml(c.tmp / "configs")


# id, action, error class, words of the problem, words of the fix
CATALOGUE: list[Row] = [
    # --- config values ---
    ("bool-for-a-number", lambda c: tk.Training(epochs=True), tk.ConfigError,
     r"Training\(epochs=True\): epochs must be a number, got a boolean", "write a number"),
    ("bool-for-a-whole-number", lambda c: tk.LoRA(r=False), tk.ConfigError,
     r"LoRA\(r=False\): r must be a whole number, got a boolean", r"e\.g\. r=8"),
    ("number-for-a-bool", lambda c: tk.Training(trust_remote_code=1), tk.ConfigError,
     r"Training\(trust_remote_code=1\)", "must be True or False"),
    ("bytes-for-a-string", lambda c: tk.PromptTuning(init_text=b"Classify:"), tk.ConfigError,
     "init_text must be a string, got bytes", r"decode it first"),
    ("whole-number-beyond-int64", lambda c: tk.Training(max_steps=2**64), tk.ConfigError,
     r"max_steps=18446744073709551616\): max_steps is too large", r"at most 9223372036854775807"),
    ("seed-beyond-32-bits", lambda c: tk.Training(seed=2**32), tk.ConfigError, r"Training\(seed=4294967296\)",
     "seed must be at most 4294967295"),
    ("tokens-per-batch-too-large", lambda c: tk.Training(tokens_per_batch=2**40), tk.ConfigError,
     r"tokens_per_batch=1099511627776", r"at most 4194304"),
    ("device-mps-missing", _mps_missing, tk.IncompatibleError, r"device='mps'\): no Apple MPS device",
     "use device='auto' or 'cpu'"),
    ("device-cuda-missing", _cuda_missing, tk.IncompatibleError, r"device='cuda'\): no CUDA device",
     "use device='auto' or 'cpu'"),
    ("save-every-without-output-dir",
     lambda c: tk.Tuner(c.model, training=cpu(max_steps=1, save_every=1), progress=False).fit(GOOD),
     tk.ConfigError, r"save_every=1\): this Tuner has no output_dir.*deleted when the run ends",
     r"pass Tuner\(output_dir=\.\.\.\).*or drop save_every"),
    ("eval-every-without-eval-data", lambda c: c.tuner(training={"eval_every": 1}).fit(GOOD), tk.ConfigError,
     r"eval_every=1\): there is no eval data", r"eval_data=\.\.\..*or drop eval_every"),
    # --- generate() options ---
    ("generate-foreign-option", lambda c: tk.Tuner(c.model).generate("reverse: 1 2", max_tokens=5), tk.ConfigError,
     r"generate\(max_tokens=5\): unknown option 'max_tokens'", "did you mean 'max_new_tokens'"),
    ("generate-misspelled-option", lambda c: tk.Tuner(c.model).generate("reverse: 1 2", top_kk=5), tk.ConfigError,
     "unknown option 'top_kk'", "did you mean 'top_k'"),
    ("generate-negative-max-new-tokens", lambda c: tk.Tuner(c.model).generate("hi", max_new_tokens=-1),
     tk.ConfigError, r"generate\(max_new_tokens=-1\)", "must be at least 1"),
    ("generate-negative-temperature", lambda c: tk.Tuner(c.model).generate("hi", temperature=-0.5), tk.ConfigError,
     r"generate\(temperature=-0\.5\)", r"at least 0 \(0: greedy decoding\)"),
    ("generate-several-sequences", lambda c: tk.Tuner(c.model).generate("hi", num_return_sequences=3),
     tk.ConfigError, "generate returns one text per prompt", "pass a prompt several times"),
    ("generate-unknown-role",
     lambda c: tk.Tuner(c.model).generate([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]),
     tk.DatasetError, r"generate\(\): prompt 1, message 2: unknown role 'robot'", "expected one of"),
    # --- config files ---
    ("yaml-duplicate-key", lambda c: _yaml(c, RUN_YAML + "model: other\n"), tk.ConfigError,
     r"key 'model' appears twice in one mapping \(lines 1 and 7\)", "delete or merge one of them"),
    ("yaml-tab", lambda c: _yaml(c, RUN_YAML.replace("  batch_size", "\tbatch_size")), tk.ConfigError,
     r"not valid YAML \(.*found character '\\t'.*line 6, column 1\)", "indent with spaces, not tabs"),
    ("yaml-not-utf8", lambda c: _yaml(c, RUN_YAML.encode() + "# café\n".encode("latin-1")), tk.ConfigError,
     r"not valid UTF-8 \(byte 0xe9 on line 7\)", "save the file as UTF-8"),
    ("yaml-yes-for-a-number", lambda c: _yaml(c, RUN_YAML.replace("max_steps: 1", "max_steps: yes")),
     tk.ConfigError, r"training: Training\(max_steps=True\): max_steps must be a whole number, got a boolean",
     "yes/no/on/off are booleans"),
    ("config-path-is-a-directory", _directory, tk.ConfigError, "is a directory, not a config file",
     "pass the YAML file"),
    ("yaml-model-path-missing", lambda c: _yaml(c, RUN_YAML.replace("model: tiny", "model: ./my-model")),
     tk.ConfigError, r"model path does not exist: './my-model' \(read from the config file's folder",
     "local model directory or a hub id"),
]  # fmt: skip


@pytest.mark.parametrize("row", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(tiny_llama, earlier_run, tmp_path, monkeypatch, row):
    check(tiny_llama, earlier_run, tmp_path, monkeypatch, row)


# --- behaviours ---------------------------------------------------------------------------------------------------


def test_correct_temperature_zero_is_greedy(tiny_llama) -> None:
    """temperature=0 with sampling on means greedy decoding (as in most APIs), not transformers' error."""
    tuner = tk.Tuner(tiny_llama, training=cpu())
    prompts = ["reverse: 1 2 3", "reverse: 4 5", "reverse: 6"]
    greedy = tuner.generate(prompts, max_new_tokens=8)
    assert tuner.generate(prompts, max_new_tokens=8, do_sample=True, temperature=0) == greedy
    assert tuner.generate(prompts, max_new_tokens=8, temperature=0.0) == greedy


def test_correct_save_every_without_output_dir_when_a_hook_keeps_the_checkpoints(tiny_llama, tmp_path) -> None:
    """A hook that handles each checkpoint (here: copies it away) is a use of save_every with no output_dir."""
    import shutil

    class Keep(tk.Hook):
        def on_checkpoint(self, ctx: tk.RunContext, path: Path) -> None:
            shutil.copytree(path, tmp_path / path.name)

    tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4, save_every=1), hooks=[Keep()], progress=False).fit(
        GOOD
    )
    assert (tmp_path / "checkpoint-1").is_dir() and (tmp_path / "checkpoint-2").is_dir()


# --- the command line: one line on stderr, the documented exit code, no traceback -----------------------------------


def _tunekit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "tunekit", *args],
        capture_output=True, text=True, encoding="utf-8", env=env, cwd=cwd, timeout=300, check=False,
    )  # fmt: skip


def _one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], err


def test_correct_cli_non_utf8_config_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_bytes(RUN_YAML.encode() + "# café\n".encode("latin-1"))
    proc = _tunekit("fit", "run.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, "run.yaml: not valid UTF-8", "save the file as UTF-8")


def test_correct_cli_validate_data_not_a_model_is_one_line_exit_2(tmp_path: Path) -> None:
    data = write_jsonl(first_task(4), tmp_path / "d.jsonl")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model", encoding="utf-8")
    proc = _tunekit("validate-data", str(data), "--model", "notes", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, "--model notes: is not a model or tokenizer directory")


@pytest.mark.parametrize("value", ["-5", "0"])
def test_correct_cli_validate_data_max_length_below_1(tmp_path: Path, tiny_llama, value: str, capsys) -> None:
    data = write_jsonl(first_task(4), tmp_path / "d.jsonl")
    assert main(["validate-data", str(data), "--model", str(tiny_llama), "--max-length", value]) == 2
    _one_line(capsys.readouterr().err, f"--max-length {value}: must be at least 1")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["plan", "{config}", "--jsn"], ["unknown option '--jsn' for `tunekit plan`", "did you mean '--json'?"]),
        (["fit", "{config}", "--verbose"], ["unknown option '--verbose' for `tunekit fit`", "--print-config"]),
        (["fit", "{config}", "--print-confg"], ["did you mean '--print-config'?"]),
    ],
)
def test_correct_cli_unknown_flag_after_the_config(argv: list[str], words: list[str], capsys) -> None:
    config = str(ROOT / "examples" / "configs" / "sft_lora.yaml")
    assert main([a.replace("{config}", config) for a in argv]) == 2
    _one_line(capsys.readouterr().err, *words)


def test_correct_cli_top_level_keys_after_the_config_stay_overrides(tmp_path: Path, capsys) -> None:
    config = str(ROOT / "examples" / "configs" / "sft_lora.yaml")
    assert main(["fit", "--print-config", config, "--output_dir", str(tmp_path), "--save", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"output_dir: {tmp_path}" in out and f"save: {tmp_path / 's'}" in out


def test_correct_cli_missing_model_path_is_exit_2_like_a_missing_data_file(tmp_path: Path, capsys) -> None:
    """`model: ./my-model` that is not there: the config's mistake (exit 2), read from the file's folder, not a hub
    id with advice about .bin files."""
    (tmp_path / "run.yaml").write_text(RUN_YAML.replace("model: tiny", "model: ./my-model"), encoding="utf-8")
    assert main(["fit", str(tmp_path / "run.yaml")]) == 2
    _one_line(capsys.readouterr().err, "model path does not exist: './my-model'", str(tmp_path / "my-model"))


def test_correct_cli_config_path_is_a_directory(tmp_path: Path, capsys) -> None:
    assert main(["fit", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "is a directory, not a config file")
