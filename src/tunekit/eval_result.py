"""``tk.EvalResult``: what ``Tuner.evaluate`` returns: the metrics, the base model's when asked, and every row."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunekit.errors import ConfigError
from tunekit.plotting import require_matplotlib

__all__ = ["EvalResult", "EvalRow"]


class EvalRow(BaseModel):
    """One evaluated row: ``row`` (1-based, as in the data), the ``prompt`` (text or chat messages), the
    ``reference``, the tuned model's ``prediction`` and its ``scores`` per metric, and with ``baseline=True`` the base
    model's ``baseline_prediction`` and ``baseline_scores``. Multiple-choice rows also carry their ``choices``.

    Example:
        >>> row = tk.EvalRow(row=1, prompt="2+2=", reference="4", prediction="4", scores={"exact_match": 1.0})
        >>> row.scores["exact_match"]
        1.0
    """

    model_config = ConfigDict(frozen=True)

    row: int
    prompt: Any
    reference: str
    prediction: str | None = None
    scores: dict[str, float] = {}
    baseline_prediction: str | None = None
    baseline_scores: dict[str, float] | None = None
    choices: list[str] | None = None

    def change(self, metric: str) -> float | None:
        """The tuned score minus the base model's on ``metric`` (None without a baseline)."""
        if self.baseline_scores is None or metric not in self.scores or metric not in self.baseline_scores:
            return None
        return self.scores[metric] - self.baseline_scores[metric]


class EvalResult(BaseModel):
    """What ``Tuner.evaluate`` returns.

    ``metrics``: each metric over the data (the mean of the rows' scores; for ``perplexity``, over all the
    reference tokens). ``baseline``: the same for the base model (adapter disabled, or the
    base reloaded for full fine-tuning) with ``evaluate(..., baseline=True)``, else None. ``rows``: every row
    (:class:`EvalRow`). :attr:`better` and :attr:`worse` list the rows whose first metric rose or fell against the
    base model. ``str(result)`` is a table; :meth:`to_jsonl` writes the rows; :meth:`plot` draws before/after bars.

    Example:
        >>> result = tuner.evaluate("val.jsonl", metrics=["exact_match", "rouge_l"], baseline=True)  # doctest: +SKIP
        >>> print(result)  # doctest: +SKIP
        >>> result.metrics["exact_match"], result.baseline["exact_match"]  # doctest: +SKIP
        (0.95, 0.05)
        >>> result.to_jsonl("predictions.jsonl")  # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True)

    metrics: dict[str, float]
    baseline: dict[str, float] | None = None
    rows: list[EvalRow]
    higher_is_better: dict[str, bool] = {}

    @property
    def primary(self) -> str:
        """The first metric asked for: the one :attr:`better` and :attr:`worse` compare."""
        return next(iter(self.metrics))

    def _changed(self, sign: int) -> list[EvalRow]:
        metric = self.primary
        direction = 1 if self.higher_is_better.get(metric, True) else -1
        out = []
        for r in self.rows:
            delta = r.change(metric)
            if delta is not None and delta * direction * sign > 1e-12:
                out.append(r)
        return out

    @property
    def better(self) -> list[EvalRow]:
        """Rows on which the tuned model scores better than the base model (first metric; empty without baseline)."""
        return self._changed(1)

    @property
    def worse(self) -> list[EvalRow]:
        """Rows on which the tuned model scores worse than the base model (first metric; empty without baseline)."""
        return self._changed(-1)

    def to_jsonl(self, path: str | Path) -> Path:
        """Write one JSON line per row (prompt, reference, prediction, scores, baseline prediction and scores)."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"EvalResult.to_jsonl({str(path)!r}): this is a directory; pass a file path")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for r in self.rows:
                f.write(json.dumps(r.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
        return path

    def to_dict(self) -> dict[str, Any]:
        """The figures as plain data (metrics, baseline, row counts), e.g. for JSON or a model card."""
        return {
            "metrics": dict(self.metrics),
            "baseline": dict(self.baseline) if self.baseline is not None else None,
            "rows": len(self.rows),
            "better": len(self.better) if self.baseline is not None else None,
            "worse": len(self.worse) if self.baseline is not None else None,
        }

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"tunekit evaluate: {len(self.rows)} rows", title_justify="left")
        table.add_column("metric")
        if self.baseline is not None:
            table.add_column("base", justify="right")
        table.add_column("tuned", justify="right")
        if self.baseline is not None:
            table.add_column("change", justify="right")
        for name, value in self.metrics.items():
            cells = [name]
            if self.baseline is not None:
                before = self.baseline.get(name, math.nan)
                cells += [_fmt(before), _fmt(value), _signed(value - before)]
            else:
                cells.append(_fmt(value))
            table.add_row(*cells)
        out = io.StringIO()
        Console(width=100, file=out, color_system=None).print(table)
        text = out.getvalue().rstrip() + "\n"
        if self.baseline is not None:
            text += f"{self.primary}: {len(self.better)} rows better, {len(self.worse)} worse than the base model\n"
        return text

    def plot(self, path: str | Path) -> Path:
        """Write a PNG bar chart of each metric, base model beside tuned model (needs matplotlib)."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ConfigError(f"EvalResult.plot({str(path)!r}): the chart is a PNG; give a path ending in .png")
        require_matplotlib()
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = list(self.metrics)
        fig = Figure(figsize=(1.6 * len(names) + 3, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        xs = list(range(len(names)))
        width = 0.38 if self.baseline is not None else 0.6
        if self.baseline is not None:
            before = [self.baseline.get(n, math.nan) for n in names]
            ax.bar([x - width / 2 for x in xs], before, width, label="base", color="#b0b0b0")
            ax.bar([x + width / 2 for x in xs], [self.metrics[n] for n in names], width, label="tuned", color="#4c72b0")
            ax.legend()
        else:
            ax.bar(xs, [self.metrics[n] for n in names], width, color="#4c72b0")
        ax.set_xticks(xs)
        ax.set_xticklabels(names)
        ax.set_title(f"Evaluation on {len(self.rows)} rows")
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
        return path


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4g}"


def _signed(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:+.4g}"
