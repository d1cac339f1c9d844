"""The public surface is a contract: pin it."""

from __future__ import annotations

import subprocess
import sys

import tunekit as tk

EXPECTED = {
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


def test_cli_version_and_help():
    from tunekit.cli import main

    assert main(["version"]) == 0
    assert main([]) == 2
