"""RewardModeling, DPO, KTO, ORPO, GRPO and RLOO are typed, frozen configs with errors in the user's words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.objectives import OBJECTIVES, Objective


def short(prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
    return [-float(len(c)) for c in completions]


@pytest.mark.parametrize(
    ("obj", "formats", "head"),
    [
        (tk.RewardModeling(), {"preference"}, "sequence_classification"),
        (tk.DPO(), {"preference"}, "causal_lm"),
        (tk.KTO(), {"unpaired_preference", "preference"}, "causal_lm"),
        (tk.ORPO(), {"preference"}, "causal_lm"),
        (tk.GRPO(reward=short), {"prompt_only"}, "causal_lm"),
        (tk.RLOO(reward=short), {"prompt_only"}, "causal_lm"),
    ],
)
def test_objective_facts(obj: Objective, formats: set[str], head: str) -> None:
    assert isinstance(obj, Objective)
    assert obj.data_formats == formats and obj.model_head == head
    assert obj.tokenised_by_tunekit is False  # trl renders these rows with tunekit's template
    assert OBJECTIVES[obj.name] is type(obj)


def test_defaults_follow_trl() -> None:
    assert tk.DPO().model_dump() == {"beta": 0.1, "loss": "sigmoid", "label_smoothing": 0.0, "simpo_gamma": 0.5}
    assert tk.KTO().model_dump() == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0, "loss": "kto"}
    assert tk.ORPO().beta == 0.1
    assert tk.GRPO(reward=short).beta == 0.0 and tk.RLOO(reward=short).beta == 0.05
    assert tk.GRPO(reward=short).loss == "dapo"


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "robust", "simpo", "apo_zero", "discopop"])
def test_dpo_loss_variants(loss: str) -> None:
    assert tk.DPO(loss=loss).loss == loss


def test_errors_name_the_value_and_the_fix() -> None:
    with pytest.raises(tk.ConfigError) as info:
        tk.DPO(loss_type="ipo")
    assert str(info.value) == "DPO(loss_type='ipo'): unknown option 'loss_type'; did you mean 'loss'?"
    with pytest.raises(tk.ConfigError, match=r"^DPO\(beta=0\): beta must be greater than 0$"):
        tk.DPO(beta=0)
    with pytest.raises(tk.ConfigError, match=r"loss='exo_pair' needs label_smoothing > 0 \(the EXO paper suggests"):
        tk.DPO(loss="exo_pair")
    with pytest.raises(tk.ConfigError, match=r"^DPO\(loss='kto'\): loss must be one of 'sigmoid', 'hinge'"):
        tk.DPO(loss="kto")
    with pytest.raises(tk.ConfigError, match=r"^KTO\(desirable_weight=-1\): desirable_weight must be greater than 0"):
        tk.KTO(desirable_weight=-1)
    with pytest.raises(tk.ConfigError) as info:
        tk.GRPO(reward_funcs=short)
    assert "unknown option 'reward_funcs'; did you mean 'reward'?" in str(info.value)
    with pytest.raises(tk.ConfigError, match=r"^GRPO\(num_generations=1\): num_generations must be at least 2$"):
        tk.GRPO(reward=short, num_generations=1)
    with pytest.raises(tk.ConfigError, match="reward: 3 is neither a function nor a reward model path"):
        tk.RLOO(reward=3)
    with pytest.raises(tk.ConfigError, match="reward_weights has 2 weights for 1 rewards; give one weight per reward"):
        tk.GRPO(reward=short, reward_weights=[1.0, 2.0])


def test_online_rl_needs_a_reward_to_train(tmp_path: Path) -> None:
    grpo = tk.GRPO(num_generations=4)  # a valid config (tk.rlhf adds its reward model) ...
    assert grpo.reward == []
    with pytest.raises(tk.ConfigError, match=r"^GRPO\(reward=\[\]\): reward is required: a function \(prompts, "):
        tk.Tuner(str(tmp_path), objective=grpo)  # ... but not one a Tuner can train


def test_rewards_are_functions_or_paths(tmp_path: Path) -> None:
    grpo = tk.GRPO(reward=[short, tmp_path / "rm", "org/reward-model"], reward_weights=[1, 0.5, 0.5])
    assert grpo.reward == [short, str(tmp_path / "rm"), "org/reward-model"]
    assert tk.GRPO(reward=short).reward == [short]


def test_configs_round_trip_through_json() -> None:
    for obj in (tk.RewardModeling(center_rewards=0.01), tk.DPO(loss="simpo", simpo_gamma=1.0), tk.KTO(), tk.ORPO()):
        assert type(obj).model_validate_json(obj.model_dump_json()) == obj
    # a reward function is saved by name, and imported again only when training
    grpo = tk.GRPO(reward=[short, "runs/rm"], num_generations=4)
    dumped = json.loads(grpo.model_dump_json())
    assert dumped["reward"] == [f"py:{__name__}:short", "runs/rm"]
    again = tk.GRPO.model_validate(dumped)
    assert again.reward == [f"py:{__name__}:short", "runs/rm"] and again.num_generations == 4
    from tunekit.objectives.online_rl import resolve_reward_name

    assert resolve_reward_name(f"py:{__name__}:short") is short
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_reward_name("py:no_such_module:f")


def test_configs_are_frozen() -> None:
    with pytest.raises(tk.ConfigError, match="configs are frozen"):
        tk.DPO().beta = 0.5  # type: ignore[misc]
