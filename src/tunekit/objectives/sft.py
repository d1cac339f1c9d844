"""Supervised fine-tuning on prompts and completions (instruction tuning, chat)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tunekit.objectives.base import Objective

__all__ = ["SFT"]


class SFT(Objective):
    """Instruction tuning: learn to produce the completion (or assistant turns) given the prompt.

    The chat template renders every example; the loss covers the assistant tokens only, including
    the end-of-turn token, so the model learns to stop.

    Example:
        >>> import tunekit as tk
        >>> tk.SFT().train_on_prompt
        False
    """

    data_formats: ClassVar[frozenset[str]] = frozenset({"prompt_completion", "alpaca", "messages", "sharegpt"})
    train_on_prompt: bool = Field(False, description="Also put the loss on prompt and user tokens (rarely wanted).")
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        "all_assistant",
        description="Which assistant turns of a conversation train: every one, or the last only. A message's own "
        "'train': false (or a weight of 0) leaves it out either way; 'train': true keeps it in.",
    )
    reasoning: Literal["inference", "keep", "drop"] = Field(
        "inference",
        description="Assistant reasoning (reasoning_content, <think>...</think>): 'inference' trains each turn with "
        "the history a server shows it (earlier user turns' reasoning dropped, as Qwen3 and DeepSeek-R1 do); 'keep' "
        "renders all reasoning in place; 'drop' trains the answers without their reasoning.",
    )
