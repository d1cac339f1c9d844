"""Online RL (GRPO, RLOO) raises the reward of a verifiable toy task, with a function and with a reward model.

The toy task: answer anything; the verifiable reward counts the 7s in the answer. A random tiny
model says a 7 now and then; RL must make it say them much more often on held-out prompts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import tunekit as tk

from .helpers import cpu
from .toy_tasks import (
    mean_reward,
    one_thread,
    ranks_chosen,
    sample_answers,
    say_prompts,
    sevens,
    sevens_pairs,
)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


PROMPTS, HELD = say_prompts(128, seed=1), say_prompts(32, seed=99)


@pytest.fixture(scope="module")
def sevens_reward_model(tiny_llama_init02, tmp_path_factory):
    """A reward model of the 7s task, saved by tunekit: trained on the policy's own sampled answers,
    paired and labelled by the verifiable reward (as people label a policy's samples in RLHF)."""
    with one_thread():
        policy = tk.Tuner(tiny_llama_init02)
        train, held = say_prompts(512, seed=1), say_prompts(64, seed=2)
        rm = tk.Tuner(
            tiny_llama_init02,
            method=tk.LoRA(r=8),
            objective=tk.RewardModeling(),
            training=cpu(max_steps=80, learning_rate=3e-3, batch_size=16, log_every=20),
        )
        rm.fit(sevens_pairs(train, sample_answers(policy, train, seed=1), seed=1))
        accuracy = ranks_chosen(rm, sevens_pairs(held, sample_answers(policy, held, seed=2), seed=2))
        assert accuracy >= 0.8  # a sanity check; the RL tests are the proof
        return rm.save(tmp_path_factory.mktemp("sevens-rm") / "rm")


CASES = [
    # (objective class, options, method, learning rate, steps)
    pytest.param(tk.GRPO, {}, tk.Full(), 1e-3, 30, id="grpo-function-full"),
    pytest.param(tk.RLOO, {"normalize_advantages": True}, tk.LoRA(r=8), 1e-2, 40, id="rloo-function-lora"),
    pytest.param(tk.GRPO, {}, tk.LoRA(r=8), 1e-2, 40, id="grpo-reward_model-lora"),
    pytest.param(tk.RLOO, {}, tk.Full(), 1e-3, 30, id="rloo-reward_model-full"),
]


@pytest.mark.parametrize(("algo", "options", "method", "lr", "steps"), CASES)
def test_rl_raises_held_out_reward(request, tiny_llama_init02, prove, algo, options, method, lr, steps):
    prove(method.name, algo.__name__)
    reward: Any = request.getfixturevalue("sevens_reward_model") if "reward_model" in request.node.name else sevens
    objective = algo(reward=reward, num_generations=4, max_completion_length=8, **options)
    tuner = tk.Tuner(
        tiny_llama_init02,
        method=method,
        objective=objective,
        training=cpu(max_steps=steps, learning_rate=lr, batch_size=16),
    )
    before = mean_reward(tuner, HELD)
    result = tuner.fit(PROMPTS)
    after = mean_reward(tuner, HELD)
    assert before > 0
    assert after >= 1.5 * before, (before, after)
    last = result.history[-1]
    assert {"reward", "reward_std", "completions/mean_length"} <= set(last), sorted(last)
    assert any(k.startswith("rewards/") and k.endswith("/mean") for k in last)
    if objective.beta > 0:
        assert "kl" in last
    assert result.steps == steps and result.num_examples == len(PROMPTS) and result.tokens_per_s > 0


class Recorder(tk.Hook):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.objectives: list[str] = []

    def on_fit_start(self, ctx):
        self.events.append("fit_start")
        self.objectives.append(ctx.objective)

    def on_step_end(self, ctx):
        self.events.append(f"step_{ctx.step}")

    def on_fit_end(self, ctx, result):
        self.events.append("fit_end")


@pytest.mark.parametrize("method", [tk.Full(), tk.LoRA(r=4)], ids=["full", "lora"])
@pytest.mark.parametrize(
    "objective",
    [
        tk.GRPO(reward=sevens, num_generations=4, max_completion_length=4),
        tk.GRPO(reward=sevens, num_generations=4, max_completion_length=4, beta=0.04),  # with a reference
        tk.RLOO(reward=sevens, num_generations=4, max_completion_length=4),
    ],
    ids=["grpo", "grpo-kl", "rloo"],
)
def test_online_rl_runs_with_full_and_lora(tiny_llama, tmp_path, objective, method):
    rec = Recorder()
    tuner = tk.Tuner(
        tiny_llama, method=method, objective=objective, hooks=[rec], training=cpu(max_steps=2, batch_size=8)
    )
    result = tuner.fit(PROMPTS[:16], eval_data=PROMPTS[:4])
    assert rec.events == ["fit_start", "step_1", "step_2", "fit_end"] and rec.objectives == [objective.name]
    assert result.steps == 2 and result.eval_loss is not None
    if objective.beta > 0:
        assert "kl" in result.history[-2]
    if method.is_adapter:
        assert set(tuner.model.peft_config) == {"default"}
    answer = tuner.generate("say: a b c", max_new_tokens=4)
    again = tk.load(tuner.save(tmp_path / "policy"))
    assert again.objective_used.name == objective.name
    assert again.generate("say: a b c", max_new_tokens=4) == answer
    manifest = json.loads((tmp_path / "policy" / "tunekit.json").read_text(encoding="utf-8"))
    assert manifest["objective"]["options"]["reward"] == ["py:tests.integration.toy_tasks:sevens"]


def test_reward_functions_get_the_data_as_given(tiny_llama):
    seen: list[dict[str, Any]] = []

    def spy(prompts, completions, **columns):
        seen.append({"prompts": prompts, "completions": completions, "columns": columns})
        return [float(len(c)) for c in completions]

    rows = [{"prompt": f"say: {i}", "answer": i, "tags": ["x"]} for i in range(8)]
    tuner = tk.Tuner(
        tiny_llama,
        objective=tk.GRPO(reward=spy, num_generations=4, max_completion_length=4),
        training=cpu(max_steps=1, batch_size=8),
    )
    tuner.fit(rows)
    call = seen[0]
    assert len(call["prompts"]) == len(call["completions"]) == 8
    assert all(isinstance(p, str) and p.startswith("say: ") for p in call["prompts"])  # strings stay strings
    assert all(isinstance(c, str) for c in call["completions"])
    assert set(call["columns"]) == {"answer", "tags"}
    assert [int(p.split()[1]) for p in call["prompts"]] == call["columns"]["answer"]

    seen.clear()
    chat = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}] * 8
    tk.Tuner(
        tiny_llama,
        objective=tk.RLOO(reward=spy, num_generations=4, max_completion_length=4),
        training=cpu(max_steps=1, batch_size=8),
    ).fit(chat)
    assert seen[0]["prompts"][0] == chat[0]["prompt"]  # chat prompts arrive as the messages given


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda prompts, completions, **kw: [1.0], r"returned 1 values for 8 completions"),
        (lambda prompts, completions, **kw: ["high"] * len(completions), r"returned 'high' for completion 1"),
        (lambda prompts, completions, **kw: 3.0, r"returned float; return a list"),
        (lambda prompts, completions, **kw: [float("nan")] * len(completions), r"returned nan for completion 1"),
    ],
)
def test_bad_reward_function_stops_with_a_clear_error(tiny_llama, bad, message):
    tuner = tk.Tuner(
        tiny_llama,
        objective=tk.GRPO(reward=bad, num_generations=4, max_completion_length=4),
        training=cpu(max_steps=1, batch_size=8),
    )
    with pytest.raises(tk.TrainingError, match=r"reward function '<lambda>' " + message):
        tuner.fit(PROMPTS[:8])


def test_rl_configuration_errors(tiny_llama, tmp_path):
    grpo = tk.GRPO(reward=sevens, num_generations=4, max_completion_length=4)
    with pytest.raises(
        tk.IncompatibleError, match=r"batch_size \* grad_accum \(6\) must be a multiple of num_generations"
    ):
        tk.Tuner(tiny_llama, objective=grpo, training=cpu(max_steps=1, batch_size=6)).fit(PROMPTS[:8])
    sft = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4))
    sft.fit([{"prompt": "a", "completion": "b"}] * 4)
    sft_path = sft.save(tmp_path / "sft")
    not_a_reward_model = tk.GRPO(reward=sft_path, num_generations=4, max_completion_length=4)
    with pytest.raises(tk.IncompatibleError, match=r"was trained with SFT and is not a reward model"):
        tk.Tuner(tiny_llama, objective=not_a_reward_model, training=cpu(max_steps=1, batch_size=8)).fit(PROMPTS[:8])
    missing = tk.GRPO(reward=str(tmp_path / "nowhere"), num_generations=4)
    with pytest.raises(tk.ConfigError, match=r"no such directory"):
        tk.Tuner(tiny_llama, objective=missing, training=cpu(max_steps=1, batch_size=8)).fit(PROMPTS[:8])
