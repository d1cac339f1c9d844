"""The Objective base: what signal trains the parameters. Pure configuration."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from tunekit._config import Config

__all__ = ["Objective"]


class Objective(Config):
    """Base class of objectives.

    Class-level facts the backend and the Tuner read:

    - ``data_formats``: the record formats it trains on (see :mod:`tunekit.data.formats`).
    - ``tokenised_by_tunekit``: tunekit tokenises the data itself (SFT, CausalLM: labels masked by
      position); otherwise the normalised rows go to the trainer, which renders them with the same
      chat template.
    - ``model_head``: ``"causal_lm"`` (a language model) or ``"sequence_classification"`` (a model
      with a scalar score head, for reward models).

    Example:
        >>> import tunekit as tk
        >>> isinstance(tk.DPO(), tk.Objective), sorted(tk.DPO.data_formats)
        (True, ['preference'])
    """

    data_formats: ClassVar[frozenset[str]] = frozenset()
    tokenised_by_tunekit: ClassVar[bool] = True
    # Whether the trainer renders a row's tool schemas (a 'tools' column) with its prompt.
    reads_tools: ClassVar[bool] = True
    model_head: ClassVar[Literal["causal_lm", "sequence_classification"]] = "causal_lm"

    @property
    def name(self) -> str:
        return type(self).__name__

    def record(self) -> dict[str, Any]:
        """``{"name": ..., "options": {...}}`` (JSON): how saves, checkpoints and exports record the objective."""
        return {"name": self.name, "options": self.model_dump(mode="json")}

    def check_ready(self) -> None:
        """Raise :class:`tunekit.ConfigError` when the objective lacks something it needs to train
        (e.g. an online RL objective without a reward). Called by ``tk.Tuner``."""
