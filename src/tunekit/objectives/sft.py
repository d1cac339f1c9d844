"""Supervised fine-tuning on prompts and completions (instruction tuning, chat)."""

from __future__ import annotations

from typing import ClassVar

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
