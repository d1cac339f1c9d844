"""What a method's translation to peft (:mod:`tunekit.backends.hf.peft_map`, :mod:`tunekit.backends.hf.whole_model`)
looks at: the model, its tokenizer and the tokens tunekit added, and the peft task type of the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BuildContext", "task_type"]


@dataclass
class BuildContext:
    """What a translation may look at: the loaded model, its tokenizer, the tokens tunekit added."""

    model: Any
    tokenizer: Any = None
    new_token_ids: list[int] = field(default_factory=list)
    # Steps to run on the wrapped (peft) model once it exists, e.g. PromptTuning's text initialisation.
    after: list[Callable[[Any], None]] = field(default_factory=list)


def task_type(model: Any) -> Any:
    """peft's task type for ``model``: a sequence classifier (reward model) or a causal language model."""
    from peft import TaskType

    # Reward models are sequence classifiers; peft then also trains their fresh score head.
    name = type(model).__name__
    return TaskType.SEQ_CLS if name.endswith("ForSequenceClassification") else TaskType.CAUSAL_LM
