"""Rewards for online RL, and scoring with a reward model.

A reward is a Python function or a reward model. trl calls reward functions with its own
conversational rows and keyword arguments; tunekit wraps the user's function so that it receives
what the user gave: prompts as they were in the data (a string stays a string), completions as
strings, and only the prompt rows' own columns. A reward model path is loaded once, frozen, on the
policy's device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunekit._torch import torch_dtype, unwrap_peft
from tunekit.backends.hf.args import Setup
from tunekit.backends.hf.models import load, load_model, load_tokenizer
from tunekit.data.formats import RESERVED_COLUMNS
from tunekit.data.rows import PROMPT_MESSAGES, PROMPT_TEXT
from tunekit.data.templates import render
from tunekit.errors import ConfigError, IncompatibleError, TrainingError
from tunekit.objectives.online_rl import PY_PREFIX, resolve_reward_name
from tunekit.save_format import MANIFEST, spec_from_save

__all__ = ["load_reward_model", "resolve_rewards", "score_items", "wrap_reward"]

# What trl passes reward functions besides the data columns, and tunekit's own column of the prompt as given.
_NOT_COLUMNS = frozenset({*RESERVED_COLUMNS, PROMPT_TEXT, PROMPT_MESSAGES})


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: the assistant message(s) generated
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _name(fn: Any) -> str:

    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__name__", type(fn).__name__))


def wrap_reward(fn: Any) -> Any:
    """The user's ``fn(prompts, completions, **columns)`` as a trl reward function."""
    name = _name(fn)

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        given = kwargs.get(PROMPT_TEXT)
        messages = kwargs.get(PROMPT_MESSAGES)  # the prompt as messages, when tunekit rendered it (tools)
        prompts = list(messages) if messages is not None else list(prompts)
        shown = [t if t is not None else p for p, t in zip(prompts, given)] if given is not None else prompts
        columns = {k: v for k, v in kwargs.items() if k not in _NOT_COLUMNS}
        texts = [_text(c) for c in completions]
        out = fn(shown, texts, **columns)
        try:
            values = list(out)
        except TypeError:
            raise TrainingError(
                f"reward function {name!r} returned {type(out).__name__}; return a list with one float per completion"
            ) from None
        if len(values) != len(texts):
            raise TrainingError(
                f"reward function {name!r} returned {len(values)} values for {len(texts)} completions; "
                "return one float per completion (None for one that cannot be scored)"
            )
        result: list[float | None] = []
        for k, v in enumerate(values):
            if v is None:
                result.append(None)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise TrainingError(
                    f"reward function {name!r} returned {v!r:.60} for completion {k + 1}; rewards must be numbers"
                ) from None
            if not math.isfinite(f):
                raise TrainingError(
                    f"reward function {name!r} returned {f} for completion {k + 1}; return a finite number "
                    "(or None for a completion that cannot be scored)"
                )
            result.append(f)
        return result

    reward.__name__ = reward.__qualname__ = name
    return reward


def _freeze(model: Any, device: Any) -> Any:
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_reward_model(
    path: str, *, device: Any, dtype: Any = None, trust_remote_code: bool = False, allow_pickle: bool = False
) -> Any:
    """(model, tokenizer) of a reward model: a tunekit save or a sequence-classification checkpoint."""
    p = Path(path)
    if (p / MANIFEST).exists():
        # The save format read back, loaded by the engine's own load; trust is the run's, never the save's.
        spec = spec_from_save(p, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle).spec
        if spec.objective.model_head != "sequence_classification":
            raise IncompatibleError(
                f"reward={path!r}: this save was trained with {spec.objective.name} and is not a reward "
                "model; train one with objective=tk.RewardModeling(), or pass a reward function"
            )
        loaded = load(spec)
        model = loaded.model
        if unwrap_peft(model) is not model:
            # Merged, the reward model is a plain transformers model again (what trl expects), and faster.
            model = model.merge_and_unload()
        return _freeze(model, device), loaded.tokenizer
    from transformers import AutoModelForSequenceClassification

    if not p.exists() and (p.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1):
        raise ConfigError(f"reward={path!r}: no such directory; pass the path of a reward model saved by tunekit")
    model = load_model(
        path,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        auto_class=AutoModelForSequenceClassification,
    )
    if getattr(model.config, "num_labels", None) != 1:
        raise IncompatibleError(
            f"reward={path!r}: a reward model has one output (num_labels=1), this one has "
            f"{model.config.num_labels}; train one with objective=tk.RewardModeling()"
        )
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        raise IncompatibleError(
            f"reward={path!r}: its tokenizer has no chat template, which the prompts and completions are rendered "
            "with; train the reward model with tunekit (objective=tk.RewardModeling()) or add a template"
        )
    return _freeze(model, device), tokenizer


def resolve_rewards(specs: Sequence[Any], setup: Setup) -> tuple[list[Any], list[Any]]:
    """trl's ``reward_funcs`` and ``reward_processing_classes`` for the objective's rewards."""
    funcs: list[Any] = []
    tokenizers: list[Any] = []
    for spec in specs:
        if isinstance(spec, str) and spec.startswith(PY_PREFIX):
            try:
                spec = resolve_reward_name(spec)
            except ValueError as e:
                raise ConfigError(f"{setup.objective.name}(reward=...): {e}") from None
        if callable(spec):
            funcs.append(wrap_reward(spec))
            tokenizers.append(None)
            continue
        model, tokenizer = load_reward_model(
            str(spec),
            device=setup.device,
            dtype=torch_dtype(setup.precision),
            trust_remote_code=setup.training.trust_remote_code,
            allow_pickle=setup.training.allow_pickle,
        )
        funcs.append(model)
        tokenizers.append(tokenizer)
    return funcs, tokenizers


def _as_messages(item: Any) -> list[dict[str, str]] | None:
    """Chat messages for a (prompt, completion) pair, a {"prompt", "completion"} dict or a message list."""
    if isinstance(item, dict) and "prompt" in item and "completion" in item:
        item = (item["prompt"], item["completion"])
    if isinstance(item, tuple) and len(item) == 2:
        prompt, completion = item
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        answer = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
        return msgs + answer
    if isinstance(item, list) and all(isinstance(m, dict) for m in item):
        return list(item)
    return None


def score_items(
    model: Any, tokenizer: Any, items: Sequence[Any], *, device: Any, max_length: int, batch_size: int = 16
) -> list[float]:
    """One score per item: a raw string, a (prompt, completion) pair, or a conversation."""
    import torch

    encoded: list[list[int]] = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            ids = tokenizer(item, truncation=True, max_length=max_length)["input_ids"]
        else:
            msgs = _as_messages(item)
            if msgs is None:
                raise ConfigError(
                    f"score(): item {k + 1} is {type(item).__name__}; pass strings, (prompt, completion) pairs, "
                    "{'prompt': ..., 'completion': ...} dicts or lists of chat messages"
                )
            text = render(tokenizer, msgs, add_generation_prompt=False)
            ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        encoded.append(list(ids))
    scores: list[float] = []
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # the score is read at the last real token
    try:
        with torch.no_grad():
            for i in range(0, len(encoded), batch_size):
                batch = tokenizer.pad({"input_ids": encoded[i : i + batch_size]}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(**batch).logits
                scores += [float(x) for x in logits[:, 0].float().cpu()]
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    return scores
