"""``Tuner.evaluate`` and the metrics of ``Training(eval_metrics=...)``: answer the data's prompts, score the answers.

:func:`read_items` turns evaluation data (anything ``fit`` takes, or multiple-choice rows with ``choices`` and
``answer``) into :class:`EvalItem` (prompt, reference, the row as given); :func:`evaluate` generates in batches with
the training template through the backend, scores with :mod:`tunekit.metrics` and, with ``baseline``, does the same
with the base model (:meth:`tunekit.backends.base.Backend.baseline`).

Example:
    >>> from tunekit.evaluation import read_items
    >>> item = read_items([{"prompt": "2+2=", "completion": "4"}])[0]
    >>> item.prompt_text, item.reference
    ('2+2=', '4')
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunekit.backends.base import Backend, LoadedModel, RunSpec
from tunekit.data import load_rows, normalise
from tunekit.data.formats import Example, NormalisedData
from tunekit.errors import ConfigError, DatasetError, IncompatibleError
from tunekit.eval_result import EvalResult, EvalRow
from tunekit.inference import generate
from tunekit.metrics import Metric, MetricFunction, check_metrics, mean
from tunekit.objectives import CausalLM, Objective

__all__ = [
    "EvalItem",
    "check_evaluation",
    "evaluate",
    "generation_options",
    "items_of",
    "read_items",
    "training_evaluator",
]

_PROMPT_FIELDS = ("prompt", "question", "messages")


@dataclass(frozen=True)
class EvalItem:
    """One row to evaluate: ``prompt`` (chat messages), ``reference`` (None for prompts only, which ``predict``
    answers), the ``data`` row as given (what metric functions receive) and, for multiple choice, ``choices`` and the
    index of the right ``answer``."""

    row: int
    prompt: tuple[dict[str, Any], ...]
    reference: str | None
    data: dict[str, Any]
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    tools: tuple[dict[str, Any], ...] | None = None

    @property
    def prompt_text(self) -> Any:
        """The prompt as the user wrote it: the text of a single user message, else the messages."""
        if len(self.prompt) == 1 and isinstance(self.prompt[0].get("content"), str):
            return self.prompt[0]["content"]
        return [_shown(m) for m in self.prompt]


def _shown(message: dict[str, Any]) -> dict[str, Any]:
    """A prompt message as a result row keeps it: an image part without its pixels (``{"type": "image"}``), so the
    row stays plain JSON."""
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    parts = [{"type": "image"} if p.get("type") == "image" else p for p in content]
    return {**message, "content": parts}


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # parts: the text ones
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    text = str(content or "")
    if not text and message.get("tool_calls"):
        return json.dumps(message["tool_calls"], ensure_ascii=False)
    return text


def _split(messages: Sequence[dict[str, Any]]) -> tuple[tuple[dict[str, Any], ...], str]:
    """A conversation as (the turns before its last assistant message, that message's text)."""
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    return tuple(messages[:last]), _content(messages[last])


def _with_images(prompt: tuple[dict[str, Any], ...], images: tuple[Any, ...]) -> tuple[dict[str, Any], ...]:
    """``prompt`` with each ``{"type": "image"}`` part holding its image, in order (the layout ``generate`` reads).

    Images live in the prompt only (the data layer refuses one in an answer), so the prompt holds every placeholder.
    """
    if not images:
        return prompt
    pending = iter(images)
    out = []
    for m in prompt:
        content = m.get("content")
        if isinstance(content, list):
            content = [{**p, "image": next(pending)} if p.get("type") == "image" else p for p in content]
            m = {**m, "content": content}
        out.append(m)
    return tuple(out)


def _from_example(ex: Example, data: dict[str, Any], need_reference: bool) -> EvalItem:
    if ex.messages is not None and any(m.get("role") == "assistant" for m in ex.messages):
        prompt, reference = _split(ex.messages)
        return EvalItem(ex.row, _with_images(prompt, ex.images), reference, data, tools=ex.tools)
    answer = ex.chosen if ex.chosen is not None else ex.completion
    if ex.prompt is not None and answer is not None:
        return EvalItem(ex.row, _with_images(tuple(ex.prompt), ex.images), _split(answer)[1], data, tools=ex.tools)
    if ex.prompt is not None and not need_reference:
        return EvalItem(ex.row, _with_images(tuple(ex.prompt), ex.images), None, data, tools=ex.tools)
    what = "raw text" if ex.text is not None else "a prompt only"
    raise DatasetError(
        f"row {ex.row} of the evaluation data has no reference answer ({what}): evaluate compares the model's answer "
        "with the row's last assistant turn; give rows with 'prompt' and 'completion', 'instruction' and 'output', "
        "or 'messages' ending with the assistant's answer (multiple choice: 'choices' and 'answer')",
        row=ex.row,
    )


def _choice_row(row: Any, i: int) -> EvalItem:
    if not isinstance(row, dict):
        raise DatasetError(f"row {i}: expected an object with named fields, got {type(row).__name__}", row=i)
    name = next((f for f in _PROMPT_FIELDS if f in row), None)
    if name is None:
        raise DatasetError(
            f"row {i}: a multiple-choice row needs the question in 'prompt' (or 'question'), beside 'choices' and "
            "'answer'",
            row=i,
            field="prompt",
        )
    question = row[name]
    if isinstance(question, str) and question.strip():
        prompt: tuple[dict[str, Any], ...] = ({"role": "user", "content": question},)
    elif isinstance(question, list) and question and all(isinstance(m, dict) for m in question):
        prompt = tuple(question)
    else:
        raise DatasetError(f"row {i}, field {name!r}: expected the question as text, got {question!r:.60}", row=i)
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DatasetError(
            f"row {i}, field 'choices': expected a list of at least two answers as text, got {choices!r:.80}",
            row=i,
            field="choices",
        )
    answer = row.get("answer")
    if isinstance(answer, bool) or answer is None:
        index = None
    elif isinstance(answer, int):
        index = answer if 0 <= answer < len(choices) else None
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in string.ascii_uppercase:
        index = string.ascii_uppercase.index(answer.strip().upper())
        index = index if index < len(choices) else None
    else:
        index = None
    if index is None:
        raise DatasetError(
            f"row {i}, field 'answer': {answer!r} is not one of the {len(choices)} choices; give the right one's "
            f"index (0 to {len(choices) - 1}), its letter (A, B, ...) or its text",
            row=i,
            field="answer",
        )
    return EvalItem(i, prompt, choices[index], row, choices=tuple(choices), answer=index)


def check_evaluation(
    metrics: str | Sequence[str | MetricFunction],
    objective: Objective,
    *,
    baseline: Any,
    max_new_tokens: Any,
    batch_size: Any,
) -> list[Metric]:
    """``Tuner.evaluate``'s options, checked before anything loads: the metrics as :class:`Metric` objects."""
    checked = check_metrics(metrics)
    if baseline not in (True, False):
        raise ConfigError(f"evaluate(baseline={baseline!r}): must be True or False")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"evaluate({name}={value!r}): {name} must be a whole number of at least 1")
    if objective.model_head == "sequence_classification":
        raise IncompatibleError(
            f"evaluate(): this tuner is a reward model ({objective.name}), which scores text and does "
            "not answer; use tuner.score([...])"
        )
    return checked


def read_items(data: Any, *, need_reference: bool = True) -> list[EvalItem]:
    """The rows of ``data`` to evaluate (or, with ``need_reference=False``, to answer): anything ``fit`` takes, the
    reference being the last assistant turn; or multiple-choice rows (``choices`` and ``answer`` beside ``prompt``
    or ``question``). A row without a reference raises DatasetError naming it."""
    rows = load_rows(data, what="eval")
    if rows and isinstance(rows[0], dict) and "choices" in rows[0]:
        return [_choice_row(row, i) for i, row in enumerate(rows, 1)]
    try:
        norm = normalise(rows, on_bad_rows="error")
    except DatasetError as e:
        raise DatasetError(f"evaluation data: {e}", row=e.row, field=e.field) from None
    return [_from_example(ex, rows[ex.row - 1] if ex.row <= len(rows) else {}, need_reference) for ex in norm.examples]


def items_of(norm: NormalisedData, *, what: str = "eval") -> list[EvalItem]:
    """The evaluation items of data already normalised (a fit's eval data, for ``Training(eval_metrics=...)``):
    metric functions receive the row's other columns, when it has any."""
    try:
        return [_from_example(ex, dict(ex.columns or {}), True) for ex in norm.examples]
    except DatasetError as e:
        raise DatasetError(f"Training(eval_metrics=...) scores the {what} data: {e}", row=e.row) from None


def _checked(value: Any, metric: Metric, item: EvalItem) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"metric {metric.name!r} returned {value!r:.60} on row {item.row}; a metric returns a finite number"
        )
    return float(value)


def _score(metric: Metric, prediction: str, item: EvalItem) -> float:
    assert item.reference is not None
    try:
        value = metric.score(prediction, item.reference, dict(item.data))
    except Exception as e:
        if not metric.custom:
            raise
        raise ConfigError(
            f"metric {metric.name!r} raised {type(e).__name__} on row {item.row} (prediction {prediction!r:.60}, "
            f"reference {item.reference!r:.60}): {e}"
        ) from e
    return _checked(value, metric, item)


@dataclass
class _Scored:
    predictions: list[str | None]
    scores: list[dict[str, float]]
    metrics: dict[str, float]


def _prompts(items: Sequence[EvalItem], objective: Objective) -> list[Any]:
    if isinstance(objective, CausalLM):  # a model trained on raw text continues the prompt's text
        return ["\n".join(_content(m) for m in item.prompt) for item in items]
    return [list(item.prompt) for item in items]


def _generate(
    backend: Backend, loaded: LoadedModel, objective: Objective, items: Sequence[EvalItem], options: dict[str, Any]
) -> list[str]:
    """Batched answers, in the items' order; rows offering tools are generated with them (grouped by tool set)."""
    prompts = _prompts(items, objective)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(json.dumps(item.tools, sort_keys=True, default=str), []).append(i)
    out: list[str] = [""] * len(items)
    for indices in groups.values():
        tools = items[indices[0]].tools
        extra = {"tools": list(tools)} if tools else {}
        answers = generate(backend, loaded, objective, [prompts[i] for i in indices], single=False, **options, **extra)
        for i, answer in zip(indices, answers):
            out[i] = str(answer)
    return out


def _run(
    backend: Backend,
    loaded: LoadedModel,
    objective: Objective,
    items: Sequence[EvalItem],
    metrics: Sequence[Metric],
    options: dict[str, Any],
) -> _Scored:
    chat = not isinstance(objective, CausalLM)
    batch = int(options.get("batch_size", 8))
    scores: list[dict[str, float]] = [{} for _ in items]
    totals: dict[str, float] = {}
    predictions: list[str | None] = [None] * len(items)
    text = [m for m in metrics if m.kind == "text"]
    if text:
        predictions = list(_generate(backend, loaded, objective, items, options))
        for metric in text:
            values = [_score(metric, p or "", item) for p, item in zip(predictions, items)]
            for s, v in zip(scores, values):
                s[metric.name] = v
            totals[metric.name] = mean(values)
    for metric in metrics:
        if metric.kind == "choice":
            requests = [(_prompts([item], objective)[0], c) for item in items for c in item.choices or ()]
            lls = backend.loglikelihood(loaded, requests, chat=chat, batch_size=batch)
            k = 0
            for item, s, i in zip(items, scores, range(len(items))):
                n = len(item.choices or ())
                picked = max(range(n), key=lambda j: lls[k + j][0])
                k += n
                s[metric.name] = float(picked == item.answer)
                if not text:
                    predictions[i] = (item.choices or ())[picked]
            totals[metric.name] = mean([s[metric.name] for s in scores])
        elif metric.kind == "likelihood":
            requests = [(_prompts([item], objective)[0], item.reference or "") for item in items]
            lls = backend.loglikelihood(loaded, requests, chat=chat, batch_size=batch)
            for s, (logp, n) in zip(scores, lls):
                s[metric.name] = math.exp(-logp / n)
            nll = -math.fsum(logp for logp, _ in lls) / max(sum(n for _, n in lls), 1)
            totals[metric.name] = math.exp(nll)
    ordered = {m.name: totals[m.name] for m in metrics}
    return _Scored(predictions, scores, ordered)


def _has_image(item: EvalItem) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(p.get("type") == "image" for p in m["content"]) for m in item.prompt
    )


def _check_fit(items: Sequence[EvalItem], metrics: Sequence[Metric]) -> None:
    for metric in metrics:
        if metric.kind != "text":
            pictured = next((item for item in items if _has_image(item)), None)
            if pictured is not None:
                raise IncompatibleError(
                    f"metric {metric.name!r} scores the likelihood of the reference, which tunekit does not yet "
                    f"compute with images, and row {pictured.row} has one: score rows with images with a text metric "
                    "(exact_match, contains, rouge_l, ...), which compares the generated answer"
                )
        if metric.kind == "choice":
            bare = next((item for item in items if item.choices is None), None)
            if bare is not None:
                raise ConfigError(
                    f"metric {metric.name!r} scores multiple-choice rows, and row {bare.row} has no 'choices': give "
                    "rows with 'prompt', 'choices' (the answers) and 'answer' (the right one's index), or use a text "
                    "metric such as 'exact_match'"
                )


def generation_options(
    loaded: LoadedModel, items: Sequence[EvalItem], *, max_new_tokens: int | None, batch_size: int | None
) -> dict[str, Any]:
    """Greedy decoding; ``max_new_tokens`` by default enough for the longest reference (and 16 tokens more)."""
    if max_new_tokens is None:
        refs = [item.reference for item in items if item.reference]
        longest = max((len(loaded.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs), default=48)
        max_new_tokens = min(longest + 16, 1024)
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    if batch_size is not None:
        options["batch_size"] = batch_size
    return options


def evaluate(
    backend: Backend,
    spec: RunSpec,
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    metrics: Sequence[Metric],
    *,
    baseline: bool,
    options: dict[str, Any],
) -> EvalResult:
    """Score ``items`` with ``metrics`` on the loaded model (and, with ``baseline``, on the base model)."""
    _check_fit(items, metrics)
    tuned = _run(backend, loaded, spec.objective, items, metrics, options)
    base: _Scored | None = None
    if baseline:
        with backend.baseline(spec, loaded) as base_model:
            base = _run(backend, base_model, spec.objective, items, metrics, options)
    rows = [
        EvalRow(
            row=item.row,
            prompt=item.prompt_text,
            reference=item.reference or "",
            prediction=tuned.predictions[i],
            scores=tuned.scores[i],
            baseline_prediction=base.predictions[i] if base is not None else None,
            baseline_scores=base.scores[i] if base is not None else None,
            choices=list(item.choices) if item.choices is not None else None,
        )
        for i, item in enumerate(items)
    ]
    return EvalResult(
        metrics=tuned.metrics,
        baseline=base.metrics if base is not None else None,
        rows=rows,
        higher_is_better={m.name: m.higher_is_better for m in metrics},
    )


def training_evaluator(
    backend: Backend,
    loaded: LoadedModel,
    objective: Objective,
    items: Sequence[EvalItem],
    metrics: Sequence[str | MetricFunction],
    *,
    max_new_tokens: int | None = None,
) -> Any:
    """A function of no arguments that scores ``items`` on the model as it is now: ``{"eval_<metric>": value}``,
    what ``Training(eval_metrics=...)`` adds to each evaluation."""
    checked = check_metrics(list(metrics), where="Training(eval_metrics=...)")
    _check_fit(items, checked)
    options = generation_options(loaded, items, max_new_tokens=max_new_tokens, batch_size=None)

    def run() -> dict[str, float]:
        scored = _run(backend, loaded, objective, items, checked, options)
        return {f"eval_{name}": value for name, value in scored.metrics.items()}

    return run
