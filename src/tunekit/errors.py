"""The tunekit error tree.

Every error tunekit raises on purpose is a :class:`TunekitError`::

    TunekitError
    ├── ConfigError (ValueError)        a config value is invalid or misspelled
    ├── DatasetError (ValueError)       a data row or file is malformed (names the row and field)
    ├── IncompatibleError (ValueError)  a combination that cannot work (method x objective x model)
    ├── CheckpointError                 a checkpoint or saved tuner cannot be read or written
    ├── TrainingError (RuntimeError)    training itself failed (non-finite loss, a hook that broke the run)
    ├── ExportError                     an export failed or did not behave like the trained model
    └── MissingDependencyError (ImportError)  an optional package is needed

Messages say what is wrong, the value received and the fix, in the user's own option names.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "ExportError",
    "IncompatibleError",
    "MissingDependencyError",
    "TrainingError",
    "TunekitError",
]


class TunekitError(Exception):
    """Base class of every error tunekit raises on purpose.

    Example:
        >>> import tunekit as tk
        >>> try:
        ...     tk.Training(lr=1e-4)
        ... except tk.TunekitError as e:
        ...     print(type(e).__name__)
        ConfigError
    """


class ConfigError(TunekitError, ValueError):
    """A configuration value is invalid, out of range or misspelled.

    Example:
        >>> import tunekit as tk
        >>> tk.LoRA(r=0)  # doctest: +SKIP
        ConfigError: LoRA(r=0): r must be at least 1 ...
    """


class DatasetError(TunekitError, ValueError):
    """A data file or row is malformed.

    ``row`` is the 1-based row number (``None`` for file-level problems) and ``field`` the offending
    field, when there is one.

    Example:
        >>> import tunekit as tk
        >>> try:
        ...     tk.Tuner("Qwen/Qwen2-0.5B").fit([{"prompt": "2 + 2 =", "completion": ""}])
        ... except tk.DatasetError as e:
        ...     print(e.row, e.field)
        1 completion
    """

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.field = field


class IncompatibleError(TunekitError, ValueError):
    """A combination of method, objective, model or device that cannot work.

    Example:
        >>> import tunekit as tk
        >>> tk.Tuner("Qwen/Qwen2-0.5B", method=tk.PromptTuning(), objective=tk.DPO())  # doctest: +SKIP
        IncompatibleError: PromptTuning does not support the DPO objective; it supports ['CausalLM', 'SFT']
    """


class CheckpointError(TunekitError):
    """A checkpoint or a saved tuner cannot be written or read back.

    Example:
        >>> import tunekit as tk
        >>> tk.load("not/a/save")  # doctest: +SKIP
        CheckpointError: load('not/a/save'): no such directory
    """


class TrainingError(TunekitError, RuntimeError):
    """Training failed: a non-finite loss, or a hook that ended the run.

    Example:
        >>> try:  # doctest: +SKIP
        ...     tuner.fit("train.jsonl")
        ... except tk.TrainingError as e:
        ...     print(e)  # e.g. the hook that raised, and at which step
    """


class ExportError(TunekitError):
    """An export failed, or the exported model does not behave like the trained one.

    Example:
        >>> try:  # doctest: +SKIP
        ...     tuner.merge().save_pretrained("merged")
        ... except tk.ExportError as e:
        ...     print(e)
    """


class MissingDependencyError(TunekitError, ImportError):
    """An optional dependency is needed for what was asked; the message names the pip command.

    Example:
        >>> tk.plot_loss(result, "loss.png")  # without matplotlib installed  # doctest: +SKIP
        MissingDependencyError: ... pip install "tunekit[plot]"
    """
