"""``Tuner.benchmark``: lm-evaluation-harness tasks on the tuner's own model, tokenizer and chat template, in-process.

The model is handed to lm-evaluation-harness as it is in memory (``HFLM(pretrained=model, tokenizer=tokenizer)``):
no save, no reload, the adapter applied. Chat-trained tuners (every objective but ``CausalLM``) get their prompts
rendered with the training template (``apply_chat_template``, which reads the template tunekit installed on the
tokenizer). Needs the ``eval`` extra: ``pip install "tunekit[eval]"``.

Example:
    >>> scores = tuner.benchmark(["gsm8k", "mmlu"], limit=100)  # doctest: +SKIP
    >>> scores["gsm8k"]["exact_match,strict-match"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunekit._quiet import quiet
from tunekit.backends.base import LoadedModel
from tunekit.errors import ConfigError, IncompatibleError, MissingDependencyError

__all__ = ["check_tasks", "run_benchmark"]

logger = logging.getLogger("tunekit")


def check_tasks(tasks: str | Sequence[str], limit: float | None) -> list[str]:
    """``tasks`` as a list of names, checked before anything loads."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names or not all(isinstance(t, str) and t.strip() for t in names):
        raise ConfigError(f"benchmark(tasks={tasks!r}): name at least one lm-evaluation-harness task, e.g. ['gsm8k']")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError(f"benchmark(limit={limit!r}): limit must be a positive number of examples (or a fraction)")
    return [t.strip() for t in names]


def _harness() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise MissingDependencyError(
            'benchmark() needs lm-evaluation-harness, which is not installed: pip install "tunekit[eval]" '
            "(or pip install lm-eval)"
        ) from None
    return lm_eval


def run_benchmark(
    loaded: LoadedModel,
    tasks: list[str],
    *,
    chat: bool,
    limit: float | None = None,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """Run ``tasks`` on ``loaded``'s model; returns lm-evaluation-harness's results, task by task
    (``{"task": {"acc,none": 0.61, "acc_stderr,none": 0.02, ...}}``)."""
    lm_eval = _harness()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = loaded.model
    if not hasattr(model, "generate") or not hasattr(model, "config"):
        raise IncompatibleError("benchmark() runs a transformers causal language model; this tuner's model is not one")
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            f"benchmark(tasks=[..., {unknown[0]!r}, ...]): lm-evaluation-harness has no such task"
            + (f" (nor {str(include_path)!r})" if include_path is not None else "")
            + "; list them with `lm-eval ls tasks`, or pass include_path= a directory of your own task YAML files"
        )
    was_training = model.training
    model.eval()
    try:
        with quiet():
            lm = HFLM(pretrained=model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=str(loaded.device))
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                apply_chat_template=chat,
                log_samples=False,
                verbosity="ERROR",
            )
    finally:
        model.train(was_training)
    results = out.get("results", {}) if out else {}
    return {task: {k: v for k, v in metrics.items() if k != "alias"} for task, metrics in results.items()}
