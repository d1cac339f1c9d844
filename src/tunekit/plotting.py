"""The loss curve as a PNG (matplotlib, an optional dependency: ``pip install "tunekit[plot]"``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunekit.errors import ConfigError, MissingDependencyError

__all__ = ["PNG_SOURCE", "loss_series", "plot_loss"]

Series = dict[str, tuple[list[int], list[float]]]


def require_matplotlib() -> None:
    """Raise MissingDependencyError with the pip command when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError(
            'plotting the loss curve needs matplotlib, which is not installed; run: pip install "tunekit[plot]" '
            "(or pip install matplotlib)"
        )


def loss_series(history: Any) -> Series:
    """The ``loss`` and ``eval_loss`` values of a history (or a ``FitResult``) as (steps, values)."""
    entries: Sequence[Mapping[str, Any]] = getattr(history, "history", history)
    series: Series = {}
    for key in ("loss", "eval_loss"):
        pts = [(int(e["step"]), float(e[key])) for e in entries if isinstance(e.get(key), (int, float))]
        if pts:
            series[key] = ([s for s, _ in pts], [v for _, v in pts])
    return series


PNG_SOURCE = "tunekit loss plot"


def plot_loss(history: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Write the training (and evaluation) loss against the step as a PNG at ``path``.

    ``history`` is a ``FitResult`` or its ``history`` list. Returns the path written.

    Example:
        >>> import tunekit as tk
        >>> tk.plot_loss(result, "runs/qa/loss.png")  # doctest: +SKIP
    """
    series = loss_series(history)
    if "loss" not in series and "eval_loss" not in series:
        raise ConfigError(
            "plot_loss(): the history has no 'loss' or 'eval_loss' entries to plot; "
            "log more often with Training(log_every=...) or train for more steps"
        )
    require_matplotlib()
    return _draw(series, Path(path), title=title)


def _draw(series: Series, path: Path, *, title: str | None) -> Path:
    # A Figure with the Agg canvas, not pyplot: no global backend switch, no figure registry,
    # safe in a background thread and in applications that use matplotlib themselves.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = {"loss": "train loss", "eval_loss": "eval loss"}
    for key, (steps, values) in series.items():
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=labels[key])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "Loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", metadata={"Source": PNG_SOURCE})  # how LossPlot knows its own file again
    tmp.replace(path)  # readers (a dashboard polling the file) never see half a PNG
    return path
