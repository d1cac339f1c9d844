"""Online RL: the policy samples answers to prompts and learns from their rewards (GRPO, RLOO).

A reward is a Python function ``(prompts, completions, **columns) -> list[float]`` (one float per
completion; ``columns`` are the prompt rows' other fields), or the path of a reward model saved
by tunekit (``tk.RewardModeling``) or any transformers sequence-classification model with one label.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from tunekit.errors import ConfigError
from tunekit.objectives.base import Objective

__all__ = ["GRPO", "RLOO", "OnlineRL", "RewardFunction", "resolve_reward_name"]

RewardFunction = Callable[..., list[float]]
Reward = RewardFunction | str

# A function reward is saved (JSON, the manifest of a saved tuner) as "py:<module>:<qualified name>".
PY_PREFIX = "py:"

_REQUIRED = (
    "reward is required: a function (prompts, completions, **columns) -> list[float], the path of a reward model "
    "saved by tunekit, or a list of these"
)


def _function_name(fn: Any) -> str:
    return f"{PY_PREFIX}{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def resolve_reward_name(name: str) -> RewardFunction:
    """Import the function a saved ``"py:module:qualname"`` reward names."""
    module, _, qualname = name[len(PY_PREFIX) :].partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"the reward function {name!r} cannot be imported ({e}); pass the function itself: reward=my_function"
        ) from None
    if not callable(obj):
        raise ValueError(f"{name!r} is not a function; pass reward=my_function")
    return obj  # type: ignore[no-any-return]


class OnlineRL(Objective):
    """Shared options of the online RL objectives (:class:`GRPO`, :class:`RLOO`).

    ``Training.batch_size`` counts completions, not prompts: each step samples
    ``batch_size * grad_accum / num_generations`` prompts, so it must be a multiple of
    ``num_generations``.
    """

    data_formats: ClassVar[frozenset[str]] = frozenset({"prompt_only"})
    tokenised_by_tunekit: ClassVar[bool] = False

    reward: list[Reward] = Field(
        default_factory=list,
        description="Reward functions and/or reward model paths; several are summed (see reward_weights). "
        "Required to train; tk.rlhf adds the reward model it trains.",
    )
    reward_weights: list[float] | None = Field(None, description="One weight per reward; None weighs them all 1.")
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt (the group compared).")
    max_completion_length: int = Field(256, ge=1, description="Most tokens generated per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the generations.")
    beta: float = Field(0.0, ge=0, description="Weight of the KL penalty to the reference model; 0 needs no reference.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clipping range of the policy ratio.")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes over each batch of generations.")

    _aliases: ClassVar[dict[str, str]] = {
        "rewards": "reward",
        "reward_funcs": "reward",
        "reward_model": "reward",
        "reward_fn": "reward",
        "kl_coef": "beta",
        "n_generations": "num_generations",
        "group_size": "num_generations",
        "max_new_tokens": "max_completion_length",
    }

    @field_validator("reward", mode="before")
    @classmethod
    def _reward(cls, v: Any) -> Any:
        if v is None:
            raise ValueError(_REQUIRED)
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        out: list[Any] = []
        for item in items:
            if isinstance(item, Path):
                item = str(item)
            if isinstance(item, str):
                if not item.strip():
                    raise ValueError("reward: an empty string is not a reward model path")
            elif not callable(item):
                raise ValueError(
                    f"reward: {item!r} is neither a function nor a reward model path; pass a function "
                    "(prompts, completions, **columns) -> list[float] or a directory saved by tunekit"
                )
            out.append(item)
        return out

    @model_validator(mode="after")
    def _weights(self) -> OnlineRL:
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} weights for {len(self.reward)} rewards; "
                "give one weight per reward"
            )
        return self

    def check_ready(self) -> None:
        if not self.reward:
            raise ConfigError(f"{self.name}(reward=[]): {_REQUIRED}")

    @field_serializer("reward", when_used="json")
    def _dump_reward(self, reward: list[Reward]) -> list[str]:
        return [r if isinstance(r, str) else _function_name(r) for r in reward]


class GRPO(OnlineRL):
    """Group relative policy optimisation: for each prompt, sample ``num_generations`` answers,
    score them, and push up the ones that beat their group's mean (no value model).

    ``beta=0`` (the default, as in DAPO and Dr. GRPO) needs no reference model; with ``beta > 0``
    the reference is the model as it was before this run (with an adapter: the starting adapter
    weights, no second copy of the model). ``FitResult.history`` has ``reward``, ``reward_std``,
    ``rewards/<name>/mean``, ``completions/mean_length`` and, with ``beta > 0``, ``kl``.

    Example:
        >>> import tunekit as tk
        >>> def short(prompts, completions, **columns):
        ...     return [-len(c) for c in completions]
        >>> tk.GRPO(reward=short, num_generations=4).num_generations
        4
    """

    loss: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] = Field(
        "dapo", description="How token losses are aggregated; 'dapo' avoids the length bias of 'grpo'."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, of the batch, or not at all."
    )


class RLOO(OnlineRL):
    """REINFORCE leave-one-out: each sampled answer's baseline is the mean reward of the other
    answers to the same prompt; the KL penalty (``beta``, default 0.05) is folded into the reward.

    The reference is handled as in :class:`GRPO`. ``FitResult.history`` has ``reward``,
    ``reward_std``, ``rewards/<name>/mean``, ``completions/mean_length`` and ``kl``.

    Example:
        >>> import tunekit as tk
        >>> tk.RLOO(reward="runs/reward-model").beta
        0.05
    """

    beta: float = Field(
        0.05, ge=0, description="Weight of the KL penalty to the reference model; 0 needs no reference."
    )
    normalize_advantages: bool = Field(False, description="Scale the advantages of each batch to unit variance.")
