"""``tk.compare``: the same short training with several methods, side by side, on the user's own data.

Example:
    >>> import tunekit as tk
    >>> table = tk.compare("Qwen/Qwen2-0.5B", methods=[tk.LoRA(), tk.IA3(), tk.PromptTuning()],
    ...                    data="train.jsonl", eval_data="val.jsonl",
    ...                    training=tk.Training(max_steps=100))  # doctest: +SKIP
    >>> print(table)  # doctest: +SKIP
    >>> table.plot("methods.png")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunekit.errors import ConfigError, MissingDependencyError
from tunekit.hooks import Hook
from tunekit.methods import Method
from tunekit.metrics import MetricFunction, check_metrics
from tunekit.objectives import Objective
from tunekit.training import Training
from tunekit.tuner import Tuner

__all__ = ["Comparison", "ComparisonRow", "compare"]

logger = logging.getLogger("tunekit")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class ComparisonRow(BaseModel):
    """One method's run: what trained, how long it took, how well it did, how big the result is."""

    model_config = ConfigDict(frozen=True)

    label: str
    method: str
    options: dict[str, Any]
    trainable_params: int
    total_params: int
    wall_time_s: float
    train_loss: float
    eval_loss: float | None
    adapter_bytes: int
    steps: int
    eval_metrics: dict[str, float] = {}  # compare(metrics=[...]): each metric on eval_data (tuner.evaluate)

    @property
    def trainable_share(self) -> float:
        """Trainable parameters as a share of all parameters (0..1)."""
        return self.trainable_params / self.total_params if self.total_params else 0.0


class Comparison(BaseModel):
    """What :func:`compare` returns: one row per method, in the order given.

    ``str(table)`` is a text table; :meth:`plot` writes a PNG chart (needs matplotlib:
    ``pip install "tunekit[plot]"``).

    Example:
        >>> table = tk.compare(model, methods=[tk.LoRA(), tk.IA3()], data=rows)  # doctest: +SKIP
        >>> print(table)  # doctest: +SKIP
        >>> table["LoRA"].trainable_params  # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True)

    rows: list[ComparisonRow]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, label: str) -> ComparisonRow:
        for row in self.rows:
            if row.label == label or row.method == label:
                return row
        raise KeyError(f"no row {label!r}; the rows are {[r.label for r in self.rows]}")

    @property
    def best(self) -> ComparisonRow:
        """The row with the lowest eval loss (train loss when there was no eval data)."""
        return min(self.rows, key=lambda r: r.eval_loss if r.eval_loss is not None else r.train_loss)

    def to_records(self) -> list[dict[str, Any]]:
        """Plain dicts (with ``trainable_share``), e.g. for ``pandas.DataFrame(table.to_records())``."""
        return [{**r.model_dump(), "trainable_share": r.trainable_share} for r in self.rows]

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="tunekit.compare", title_justify="left")
        for name, justify in [
            ("method", "left"),
            ("trainable", "right"),
            ("share", "right"),
            ("time", "right"),
            ("train loss", "right"),
            ("eval loss", "right"),
            *[(name, "right") for name in self._metric_names()],
            ("size on disk", "right"),
        ]:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for r in self.rows:
            table.add_row(
                r.label,
                f"{r.trainable_params:,}",
                f"{100 * r.trainable_share:.3g}%",
                f"{r.wall_time_s:.1f}s",
                f"{r.train_loss:.4f}",
                f"{r.eval_loss:.4f}" if r.eval_loss is not None else "-",
                *[f"{r.eval_metrics[m]:.4g}" if m in r.eval_metrics else "-" for m in self._metric_names()],
                _human_bytes(r.adapter_bytes),
            )
        out = io.StringIO()
        Console(width=120, file=out, color_system=None).print(table)
        return out.getvalue().rstrip() + "\n"

    def _metric_names(self) -> list[str]:
        return list(dict.fromkeys(name for r in self.rows for name in r.eval_metrics))

    def plot(self, path: str | Path) -> Path:
        """Write a PNG chart: eval (or train) loss, trainable share, wall time and size per method."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise MissingDependencyError(
                'Comparison.plot() needs matplotlib, which is not installed: pip install "tunekit[plot]" '
                "(or pip install matplotlib)"
            ) from None
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ConfigError(f"Comparison.plot({str(path)!r}): the chart is a PNG; give a path ending in .png")
        labels = [r.label for r in self.rows]
        has_eval = all(r.eval_loss is not None for r in self.rows)
        panels = [
            ("eval loss" if has_eval else "train loss", [r.eval_loss if has_eval else r.train_loss for r in self.rows]),
            *[(name, [r.eval_metrics.get(name, 0.0) for r in self.rows]) for name in self._metric_names()],
            ("trainable parameters (%)", [100 * r.trainable_share for r in self.rows]),
            ("wall time (s)", [r.wall_time_s for r in self.rows]),
            ("size on disk (MB)", [r.adapter_bytes / 1e6 for r in self.rows]),
        ]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.5 * len(labels) + 1.8))
        try:
            for ax, (title, values) in zip(axes, panels):
                ax.barh(labels, values, color="#4c72b0")
                ax.set_title(title)
                ax.invert_yaxis()
                if title.startswith("trainable"):
                    ax.set_xscale("log")
            for ax in axes[1:]:
                ax.set_yticklabels([])
            fig.tight_layout()
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format="png", dpi=110)
        finally:
            plt.close(fig)
        return path


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _label(method: Method, seen: dict[str, int]) -> str:
    # The options the user wrote, in field order (not derived ones such as LoRA's alpha).
    dumped = method.model_dump(mode="json")
    options = {k: v for k, v in dumped.items() if k in method.model_fields_set}
    label = method.name + (f"({', '.join(f'{k}={v!r}' for k, v in options.items())})" if options else "")
    seen[label] = seen.get(label, 0) + 1
    return label if seen[label] == 1 else f"{label} #{seen[label]}"


def _weights_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES))


def compare(
    model: Any,
    *,
    methods: Sequence[Method],
    data: Any,
    eval_data: Any = None,
    training: Training | None = None,
    objective: Objective | None = None,
    tokenizer: Any = None,
    template: str | None = None,
    hooks: Sequence[Hook] = (),
    output_dir: str | Path | None = None,
    save_png: str | Path | None = None,
    metrics: Sequence[str | MetricFunction] = (),
) -> Comparison:
    """Train ``model`` once per method with the same data, objective and training, and tabulate.

    Each row holds the trainable parameters and their share, wall time (loading, training,
    evaluation), final train loss and eval loss (when ``eval_data`` is given), and the size of the
    saved weights: the adapter, or the whole model for ``Full`` and ``Freeze``. With
    ``output_dir``, each method's save is kept in ``output_dir/<n>-<method>``; otherwise it is
    written to a temporary directory only to be measured. ``save_png`` also writes the chart. ``metrics``
    (names or functions, as ``Tuner.evaluate`` takes them) scores each method's answers on ``eval_data``, in the
    table, the chart and each row's ``eval_metrics``.

    Keep ``training`` short (``Training(max_steps=...)``): the point is the trade-offs, quickly.

    Example:
        >>> import tunekit as tk
        >>> table = tk.compare(  # doctest: +SKIP
        ...     "Qwen/Qwen2-0.5B", methods=[tk.LoRA(), tk.LoRA(dora=True), tk.IA3()],
        ...     data="train.jsonl", eval_data="val.jsonl", training=tk.Training(max_steps=100),
        ... )
        >>> print(table)  # trainable share, time, train / eval loss, size on disk  # doctest: +SKIP
    """
    methods = list(methods)
    if not methods:
        raise ConfigError("compare(methods=[]): give at least one method, e.g. methods=[tk.LoRA(), tk.IA3()]")
    for m in methods:
        if not isinstance(m, Method):
            raise ConfigError(f"compare(methods=[..., {m!r}, ...]): expected tunekit methods such as tk.LoRA()")
    if save_png is not None and Path(save_png).suffix.lower() != ".png":
        raise ConfigError(f"compare(save_png={str(save_png)!r}): give a path ending in .png")
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics:
        check_metrics(metrics, where="compare")
        if eval_data is None:
            raise ConfigError("compare(metrics=[...]): the metrics score answers on eval_data; pass eval_data=...")
    training = training or Training()
    rows: list[ComparisonRow] = []
    seen: dict[str, int] = {}
    for i, method in enumerate(methods, 1):
        label = _label(method, seen)
        # A model object would be changed in place by each method's wrapping: give each its own copy.
        ref = model if isinstance(model, (str, Path)) else copy.deepcopy(model)
        logger.info("compare: %d/%d %s", i, len(methods), label)
        start = time.perf_counter()
        tuner = Tuner(
            ref,
            method=method,
            objective=objective,
            training=training,
            tokenizer=tokenizer,
            template=template,
            hooks=hooks,
        )
        result = tuner.fit(data, eval_data=eval_data)
        wall = time.perf_counter() - start
        scores = tuner.evaluate(eval_data, metrics=list(metrics)).metrics if metrics else {}
        with tempfile.TemporaryDirectory(prefix="tunekit-compare-") as tmp:
            target = Path(output_dir) / f"{i}-{method.name}" if output_dir is not None else Path(tmp) / "saved"
            tuner.save(target)
            size = _weights_size(target)
        rows.append(
            ComparisonRow(
                label=label,
                method=method.name,
                options=method.model_dump(mode="json"),
                trainable_params=result.trainable_params,
                total_params=result.total_params,
                wall_time_s=wall,
                train_loss=result.train_loss,
                eval_loss=result.eval_loss,
                adapter_bytes=size,
                steps=result.steps,
                eval_metrics=scores,
            )
        )
        del tuner  # free the model before the next method loads its own
    table = Comparison(rows=rows)
    if save_png is not None:
        table.plot(save_png)
    return table
