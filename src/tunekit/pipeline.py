"""RLHF as one call: supervised fine-tuning, then a reward model, then online RL against it.

Each stage is an ordinary :class:`tunekit.Tuner` run whose saved output feeds the next: the SFT
model starts the policy, the SFT model (merged, for adapters) starts the reward model, and the
policy is trained with GRPO or RLOO against the saved reward model.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunekit.errors import ConfigError, IncompatibleError
from tunekit.hooks import Hook
from tunekit.methods import LoRA, Method
from tunekit.objectives import GRPO, SFT, OnlineRL, RewardModeling
from tunekit.results import FitResult
from tunekit.saving import load
from tunekit.training import Training
from tunekit.tuner import Tuner

__all__ = ["RLHFResult", "rlhf"]

logger = logging.getLogger("tunekit")


class RLHFResult(BaseModel):
    """What :func:`tunekit.rlhf` returns: every stage's :class:`FitResult` and saved output.

    ``sft_path``, ``reward_model_path`` and ``policy_path`` are ``Tuner.save`` directories:
    ``tk.load(result.policy_path)`` is the final model, ``tk.load(result.reward_model_path)``
    the reward model (``.score(...)``).

    Example:
        >>> result = tk.rlhf(model, sft_data=sft, preference_data=pairs, prompts=prompts)  # doctest: +SKIP
        >>> result.rl.history[-1]["reward"]  # doctest: +SKIP
        >>> tk.load(result.policy_path).generate("2 + 2 =")  # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True)

    sft: FitResult
    reward_model: FitResult
    rl: FitResult
    sft_path: Path
    reward_model_path: Path
    policy_path: Path
    runtime_s: float

    @property
    def stages(self) -> dict[str, FitResult]:
        """The stages' results in the order they ran."""
        return {"sft": self.sft, "reward_model": self.reward_model, "rl": self.rl}

    def __str__(self) -> str:
        return (
            f"RLHFResult({self.runtime_s:.1f}s: SFT {self.sft.steps} steps, reward model {self.reward_model.steps} "
            f"steps, {self.rl.steps} RL steps; policy at {self.policy_path})"
        )


def _with_reward_model(rl: OnlineRL, path: Path) -> OnlineRL:
    """``rl`` with the trained reward model first among its rewards (weight 1)."""
    weights = None if rl.reward_weights is None else [1.0, *rl.reward_weights]
    return rl.model_copy(update={"reward": [str(path), *rl.reward], "reward_weights": weights})


def _reward_model_start(sft: Any, sft_path: Path, work: Path) -> str:
    """Where the reward model starts: the SFT model, merged into full weights when it is an adapter."""
    if not sft.method.is_adapter:
        return str(sft_path)
    if not sft.method.mergeable:
        logger.warning(
            "%s cannot be merged, so the reward model starts from the base model rather than the SFT model",
            sft.method.name,
        )
        return str(sft.model_ref)
    merged_dir = work / "sft-merged"
    if merged_dir.exists():
        shutil.rmtree(merged_dir)
    merged = sft.merge()
    merged.save_pretrained(merged_dir)
    sft.tokenizer.save_pretrained(merged_dir)
    return str(merged_dir)


def rlhf(
    model: str | Path,
    *,
    sft_data: Any,
    preference_data: Any,
    prompts: Any,
    output_dir: str | Path,
    method: Method | None = None,
    reward_method: Method | None = None,
    sft: SFT | None = None,
    reward_model: RewardModeling | None = None,
    rl: OnlineRL | None = None,
    training: Training | None = None,
    sft_training: Training | None = None,
    reward_training: Training | None = None,
    rl_training: Training | None = None,
    hooks: Sequence[Hook] = (),
    template: str | None = None,
) -> RLHFResult:
    """Run the RLHF recipe: SFT on demonstrations, a reward model on preference pairs, then online
    RL of the SFT model against that reward model.

    Args:
        model: the base model (a hub id or a local directory).
        sft_data: demonstrations (any SFT format: prompt/completion, messages, ...).
        preference_data: pairs (``prompt``, ``chosen``, ``rejected``) for the reward model.
        prompts: prompt rows (``prompt`` plus any columns the extra rewards read) for RL.
        output_dir: the stages' saves go to ``sft/``, ``reward_model/`` and ``policy/`` here (and
            their run directories to ``runs/``).
        method: how the policy trains in SFT and RL (default ``tk.LoRA()``).
        reward_method: how the reward model trains (default: ``method``).
        sft: the SFT stage's objective (default ``tk.SFT()``).
        reward_model: the reward stage's objective (default ``tk.RewardModeling()``).
        rl: the online RL objective (default ``tk.GRPO()``); the trained reward model is added as
            its first reward, beside any reward functions it already has.
        training: hyper-parameters of every stage; ``sft_training``, ``reward_training`` and
            ``rl_training`` override it per stage.
        hooks: application callbacks, called in every stage (``ctx.objective`` names the stage).
        template: a chat template to use instead of the tokenizer's.

    Example:
        >>> import tunekit as tk
        >>> result = tk.rlhf(  # doctest: +SKIP
        ...     "Qwen/Qwen2-0.5B", sft_data="sft.jsonl", preference_data="pairs.jsonl",
        ...     prompts="prompts.jsonl", output_dir="runs/rlhf", rl=tk.GRPO(num_generations=8),
        ... )
        >>> tk.load(result.policy_path).generate("Write a haiku about autumn")  # doctest: +SKIP
    """
    if not isinstance(model, (str, Path)):
        raise ConfigError(
            f"rlhf(model=<{type(model).__name__}>): pass a hub id or a local directory; every stage loads the "
            "model afresh"
        )
    method = method or LoRA()
    reward_method = reward_method or method
    rl = rl if rl is not None else GRPO()
    if not isinstance(rl, OnlineRL):
        raise ConfigError(f"rlhf(rl={rl!r}): expected an online RL objective, tk.GRPO(...) or tk.RLOO(...)")
    for name, m in (("method", method), ("reward_method", reward_method)):
        if not isinstance(m, Method):
            raise ConfigError(f"rlhf({name}={m!r}): expected a tunekit method such as tk.LoRA() or tk.Full()")
    for objective, m in ((sft or SFT(), method), (reward_model or RewardModeling(), reward_method), (rl, method)):
        if not m.supports(objective.name):
            raise IncompatibleError(
                f"rlhf(): {m.name} does not support the {objective.name} stage; "
                f"it supports {sorted(m.objectives or [])}; pass another method"
            )
    work = Path(output_dir)
    if work.exists() and not work.is_dir():
        raise ConfigError(f"rlhf(output_dir={str(output_dir)!r}): this path is a file, not a directory")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def stage_training(override: Training | None) -> Training:
        return override or training or Training()

    logger.info("rlhf: stage 1 of 3, SFT")
    sft_tuner = Tuner(
        model,
        method=method,
        objective=sft or SFT(),
        training=stage_training(sft_training),
        hooks=hooks,
        output_dir=work / "runs" / "sft",
        template=template,
    )
    sft_result = sft_tuner.fit(sft_data)
    sft_path = sft_tuner.save(work / "sft")

    logger.info("rlhf: stage 2 of 3, reward model")
    rm_tuner = Tuner(
        _reward_model_start(sft_tuner, sft_path, work),
        method=reward_method,
        objective=reward_model or RewardModeling(),
        training=stage_training(reward_training),
        hooks=hooks,
        output_dir=work / "runs" / "reward_model",
        template=sft_tuner.loaded.template.chat_template,
    )
    del sft_tuner  # free the SFT model before the next stage loads its own
    rm_result = rm_tuner.fit(preference_data)
    rm_path = rm_tuner.save(work / "reward_model")
    del rm_tuner

    logger.info("rlhf: stage 3 of 3, %s against the reward model", rl.name)
    policy = load(
        sft_path, training=stage_training(rl_training), hooks=hooks, objective=_with_reward_model(rl, rm_path)
    )
    policy.output_dir = work / "runs" / "rl"
    rl_result = policy.fit(prompts)
    policy_path = policy.save(work / "policy")
    return RLHFResult(
        sft=sft_result,
        reward_model=rm_result,
        rl=rl_result,
        sft_path=sft_path,
        reward_model_path=rm_path,
        policy_path=policy_path,
        runtime_s=time.perf_counter() - start,
    )
