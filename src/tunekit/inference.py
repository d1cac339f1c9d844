"""Using a loaded model: ``Tuner.generate``, ``Tuner.score`` and ``RunContext.generate`` (inside a run's hooks).

What was passed is checked first, before anything loads (:func:`check_prompts`, :func:`check_items`, which
also turn it into a list, once); :func:`generate` and :func:`score` then call the backend with the training
template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunekit.backends.base import Backend, LoadedModel
from tunekit.errors import ConfigError, IncompatibleError
from tunekit.objectives import CausalLM, Objective

__all__ = ["check_items", "check_prompts", "generate", "generate_text", "score"]


def check_prompts(prompt: Any, objective: Objective) -> tuple[list[Any], bool]:
    """``(prompts, single)``: ``prompt`` as a list, and whether one prompt was given (then one text comes back)."""
    single = isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict))
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        return [], False
    for p in prompts:
        if not isinstance(p, (str, list)):
            raise ConfigError(f"generate(): expected a string or a list of chat messages, got {type(p).__name__}")
    if objective.model_head == "sequence_classification":
        raise IncompatibleError(
            f"generate(): this tuner is a reward model ({objective.name}); it scores text and does "
            "not generate: use tuner.score([...])"
        )
    return prompts, single


def generate(
    backend: Backend, loaded: LoadedModel, objective: Objective, prompts: list[Any], *, single: bool, **options: Any
) -> Any:
    """The new text for each of ``prompts`` (as :func:`check_prompts` gave them): one string when ``single``.

    ``chat`` (default: on unless the model was trained with ``CausalLM`` on raw text) renders the
    prompt with the training template; other options go to the backend's generation.
    """
    if not prompts:
        return []
    chat = options.pop("chat", not isinstance(objective, CausalLM))
    outs = backend.generate(loaded, prompts, chat=chat, options=options)
    return outs[0] if single else outs


def generate_text(backend: Backend, loaded: LoadedModel, objective: Objective, prompt: Any, **options: Any) -> Any:
    """``Tuner.generate`` on a loaded model, :func:`check_prompts` then :func:`generate` (``ctx.generate``)."""
    prompts, single = check_prompts(prompt, objective)
    return generate(backend, loaded, objective, prompts, single=single, **options)


def check_items(texts: Sequence[Any], objective: Objective) -> list[Any]:
    """The items to score as a list; raises when the model is no reward model or one item was passed bare."""
    if objective.model_head != "sequence_classification":
        raise IncompatibleError(
            f"score() needs a reward model, and this tuner trains {objective.name}; train one with "
            "objective=tk.RewardModeling() or load one with tk.load(path)"
        )
    if isinstance(texts, (str, tuple, dict)) or (isinstance(texts, list) and texts and isinstance(texts[0], dict)):
        one = "conversation" if isinstance(texts, list) else type(texts).__name__
        raise ConfigError(f"score(): pass a list of items, e.g. score([item]), not a single {one}")
    return list(texts)


def score(backend: Backend, loaded: LoadedModel, items: list[Any], *, max_length: int) -> list[float]:
    """A reward model's score of each of ``items`` (as :func:`check_items` gave them; see ``Tuner.score``)."""
    if not items:
        return []
    return list(backend.score(loaded, items, max_length=max_length))
