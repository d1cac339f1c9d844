"""tunekit: a typed SDK for fine-tuning language models.

Example:
    >>> import tunekit as tk
    >>> tuner = tk.Tuner("Qwen/Qwen2-0.5B", method=tk.LoRA(r=8), training=tk.Training(epochs=3))
    >>> result = tuner.fit("train.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

from tunekit import events, testing
from tunekit._version import __version__
from tunekit.compare import Comparison, compare
from tunekit.config_file import RunConfig
from tunekit.data.mapping import Data
from tunekit.data.mixture import Mix
from tunekit.data.replies import Reply, ReplyDelta
from tunekit.distributed import DDP, FSDP, DeepSpeed
from tunekit.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    ExportError,
    IncompatibleError,
    MissingDependencyError,
    TrainingError,
    TunekitError,
)
from tunekit.eval_result import EvalResult, EvalRow
from tunekit.export import ExportResult
from tunekit.hooks import Hook, RunContext
from tunekit.hooks_builtin import EarlyStopping, JSONLMetrics, LossPlot, ProgressBar, SampleGenerations
from tunekit.methods import (
    IA3,
    OFT,
    AdaLoRA,
    Freeze,
    Full,
    LoHa,
    LoKr,
    LoRA,
    Method,
    PrefixTuning,
    PromptTuning,
    PTuning,
    VeRA,
)
from tunekit.objectives import DPO, GRPO, KTO, ORPO, RLOO, SFT, CausalLM, Objective, RewardModeling
from tunekit.optimizers import APOLLOOptions, GaLoreOptions, LionOptions, MuonOptions, SGDOptions
from tunekit.pipeline import RLHFResult, rlhf
from tunekit.plan import Plan
from tunekit.plotting import plot_loss
from tunekit.results import FitResult
from tunekit.run import Run
from tunekit.saving import load
from tunekit.training import Training
from tunekit.tuner import Tuner, verify_export

__all__ = [
    "DDP",
    "DPO",
    "FSDP",
    "GRPO",
    "IA3",
    "KTO",
    "OFT",
    "ORPO",
    "RLOO",
    "SFT",
    "APOLLOOptions",
    "AdaLoRA",
    "CausalLM",
    "CheckpointError",
    "Comparison",
    "ConfigError",
    "Data",
    "DatasetError",
    "DeepSpeed",
    "EarlyStopping",
    "EvalResult",
    "EvalRow",
    "ExportError",
    "ExportResult",
    "FitResult",
    "Freeze",
    "Full",
    "GaLoreOptions",
    "Hook",
    "IncompatibleError",
    "JSONLMetrics",
    "LionOptions",
    "LoHa",
    "LoKr",
    "LoRA",
    "LossPlot",
    "Method",
    "MissingDependencyError",
    "Mix",
    "MuonOptions",
    "Objective",
    "PTuning",
    "Plan",
    "PrefixTuning",
    "ProgressBar",
    "PromptTuning",
    "RLHFResult",
    "Reply",
    "ReplyDelta",
    "RewardModeling",
    "Run",
    "RunConfig",
    "RunContext",
    "SGDOptions",
    "SampleGenerations",
    "Training",
    "TrainingError",
    "TunekitError",
    "Tuner",
    "VeRA",
    "__version__",
    "compare",
    "events",
    "load",
    "plot_loss",
    "rlhf",
    "testing",
    "verify_export",
]
