"""Reward modelling: a scalar score head trained on preference pairs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tunekit.objectives.base import Objective

__all__ = ["RewardModeling"]


class RewardModeling(Objective):
    """Train a reward model: the model gets a scalar score head and learns to score the ``chosen``
    answer of each preference pair above the ``rejected`` one (Bradley-Terry loss).

    Any model transformers loads for sequence classification works, decoder or encoder; a causal
    LM checkpoint gets a new score head. The result saves like any tuner and loads back as a reward
    model: ``tk.load(path).score(texts)`` returns one float per text, and ``tk.GRPO(reward=path)``
    trains a policy against it. ``FitResult.history`` has ``accuracy`` (share of pairs ranked
    right) and ``margin`` (mean chosen minus rejected score).

    Example:
        >>> import tunekit as tk
        >>> tk.RewardModeling().center_rewards is None
        True
    """

    data_formats: ClassVar[frozenset[str]] = frozenset({"preference"})
    tokenised_by_tunekit: ClassVar[bool] = False
    model_head: ClassVar[Literal["causal_lm", "sequence_classification"]] = "sequence_classification"

    center_rewards: float | None = Field(
        None,
        ge=0,
        description="Weight of a penalty that keeps scores centred on zero (0.01 is typical); None: no penalty.",
    )

    _aliases: ClassVar[dict[str, str]] = {"center_rewards_coefficient": "center_rewards"}
