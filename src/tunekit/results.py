"""Typed results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunekit.errors import ConfigError
from tunekit.plotting import plot_loss

__all__ = ["FitResult"]


class FitResult(BaseModel):
    """What ``Tuner.fit`` returns.

    ``train_loss`` is the loss of the last logged window (what the model does now);
    ``metrics["train_loss_mean"]`` the mean over the whole run. ``tokens_per_s`` counts real
    (non-pad) tokens. ``skipped_rows`` lists the 1-based rows dropped with
    ``Training(on_bad_rows="skip")`` and ``skipped_reasons`` says why, row by row. A run that
    ended before its planned length has
    ``stopped_early`` set and ``stop_reason`` saying why (``"cancelled"``, an early-stopping
    message, ...); ``checkpoint`` is the last checkpoint it wrote (resume from it with
    ``fit(..., resume=True)``).

    Example:
        >>> result = tuner.fit(rows)  # doctest: +SKIP
        >>> result.train_loss < result.history[0]["loss"]  # doctest: +SKIP
        True
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    history: list[dict[str, Any]]
    metrics: dict[str, float]
    train_loss: float
    eval_loss: float | None
    steps: int
    epochs: float
    runtime_s: float
    tokens_per_s: float
    num_examples: int
    num_tokens: int
    trainable_params: int
    total_params: int
    output_dir: Path | None
    stopped_early: bool = False
    skipped_rows: list[int] = []
    stop_reason: str | None = None
    checkpoint: Path | None = None
    skipped_reasons: dict[int, str] = {}

    @property
    def trainable_share(self) -> float:
        """Trainable parameters as a share of all parameters (0..1)."""
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def plot_loss(self, path: str | Path | None = None) -> Path:
        """Write the loss curve as a PNG (default ``<output_dir>/loss.png``); needs matplotlib."""
        if path is None:
            if self.output_dir is None:
                raise ConfigError("FitResult.plot_loss(): the run had no output_dir; pass a path: plot_loss('a.png')")
            path = self.output_dir / "loss.png"
        return plot_loss(self, path)

    def __str__(self) -> str:
        ev = f", eval loss {self.eval_loss:.4f}" if self.eval_loss is not None else ""
        return (
            f"FitResult({self.steps} steps in {self.runtime_s:.1f}s, train loss {self.train_loss:.4f}{ev}, "
            f"{self.tokens_per_s:,.0f} tokens/s, trainable {self.trainable_params:,} of {self.total_params:,} "
            f"({100 * self.trainable_share:.2f}%))"
        )
