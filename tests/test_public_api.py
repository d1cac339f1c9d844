"""The public surface is a contract: pin it."""

from __future__ import annotations

import subprocess
import sys

import tunekit as tk

EXPECTED = {
    "APOLLOOptions",
    "GaLoreOptions",
    "LionOptions",
    "MuonOptions",
    "SGDOptions",
    "EvalResult",
    "EvalRow",
    "SFT",
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "ExportError",
    "FitResult",
    "Full",
    "Hook",
    "IncompatibleError",
    "LoRA",
    "Method",
    "MissingDependencyError",
    "Objective",
    "RunContext",
    "Training",
    "TrainingError",
    "Tuner",
    "TunekitError",
    "__version__",
    "load",
    "testing",
    # speed and memory (issue 7)
    "Plan",
    # the method catalogue (issue 3)
    "AdaLoRA",
    "Comparison",
    "Freeze",
    "IA3",
    "LoHa",
    "LoKr",
    "OFT",
    "PTuning",
    "PrefixTuning",
    "PromptTuning",
    "VeRA",
    "compare",
    # preference optimisation and RLHF (issue 4)
    "DPO",
    "GRPO",
    "KTO",
    "ORPO",
    "RLHFResult",
    "RLOO",
    "RewardModeling",
    "rlhf",
    # embedding in applications (issue 6)
    "EarlyStopping",
    "JSONLMetrics",
    "LossPlot",
    "ProgressBar",
    "Run",
    "SampleGenerations",
    "events",
    "plot_loss",
    # scale-out (issue 9)
    "DDP",
    "DeepSpeed",
    "FSDP",
    # export and serving (issue 10)
    "ExportResult",
    "verify_export",
    # YAML run configs and the CLI (issue 8)
    "RunConfig",
    # data layouts and mappings, chat replies with tool calls and reasoning (issue 16)
    "Data",
    "Reply",
    "ReplyDelta",
    # data at scale: several sources mixed by weight or count (issue 24)
    "Mix",
}


def test_all_is_pinned():
    assert set(tk.__all__) == EXPECTED
    for name in tk.__all__:
        assert getattr(tk, name) is not None


def test_import_is_light():
    code = (
        "import sys, tunekit; print(any(m.split('.')[0] in {'torch','transformers','trl','peft'} for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_error_tree():
    for cls in (tk.ConfigError, tk.DatasetError, tk.IncompatibleError):
        assert issubclass(cls, tk.TunekitError) and issubclass(cls, ValueError)
    for cls in (tk.CheckpointError, tk.TrainingError, tk.ExportError, tk.MissingDependencyError):
        assert issubclass(cls, tk.TunekitError)


def test_cli_version_and_help(capsys):
    import re
    import subprocess
    import sys
    from pathlib import Path

    from tunekit.cli import build_parser, main

    # `tunekit version` prints "tunekit <version>" (docs/cli.md), the package's own version, which is pyproject's.
    assert main(["version"]) == 0
    out = capsys.readouterr()
    assert out.out == f"tunekit {tk.__version__}\n" and out.err == ""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^version = "([^"]+)"$', pyproject, re.M)[1] == tk.__version__  # no tomllib on 3.10
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", tk.__version__)
    # the same through the module entry point, in a fresh process
    run = subprocess.run([sys.executable, "-m", "tunekit", "version"], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout) == (0, f"tunekit {tk.__version__}\n"), run.stderr

    # no command: the help, listing every command, and exit code 2
    assert main([]) == 2
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: tunekit")
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"version", "fit", "plan", "export", "generate", "demo", "methods"} <= set(commands)
    for command in commands:
        assert command in help_text, command
