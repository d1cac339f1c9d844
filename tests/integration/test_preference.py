"""Reward models and offline preference optimisation (DPO, KTO, ORPO) learn a toy preference on CPU.

The toy task: "sort: 3 1 2" should be answered "1 2 3" rather than the same digits in another
order. A random tiny model has no preference (about half the held-out pairs either way); each
objective must make it prefer the sorted answer on held-out pairs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import tunekit as tk

from .helpers import cpu
from .toy_tasks import one_thread, prefers_chosen, ranks_chosen, sort_pairs, unpaired


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


TRAIN, HELD = sort_pairs(256, seed=1), sort_pairs(64, seed=2)


# --- reward models --------------------------------------------------------------------------------


def test_reward_model_ranks_held_out_pairs(tiny_llama_init02, tmp_path, prove):
    prove("LoRA", "RewardModeling")
    rm = tk.Tuner(
        tiny_llama_init02,
        method=tk.LoRA(r=8),
        objective=tk.RewardModeling(),
        training=cpu(max_steps=80, learning_rate=3e-3, batch_size=16),
    )
    before = ranks_chosen(rm, HELD)
    result = rm.fit(sort_pairs(512, seed=1))
    after = ranks_chosen(rm, HELD)
    assert 0.3 <= before <= 0.7, before
    assert after >= 0.9, after
    logged = [h for h in result.history if "accuracy" in h]
    assert logged and {"accuracy", "margin", "mean_reward"} <= set(logged[-1])
    assert logged[-1]["margin"] > logged[0]["margin"]

    # It saves as an adapter with its score head, and loads back as a reward model that scores text.
    path = rm.save(tmp_path / "rm")
    manifest = json.loads((path / "tunekit.json").read_text(encoding="utf-8"))
    assert manifest["objective"]["name"] == "RewardModeling"
    again = tk.load(path)
    items: list[Any] = [("sort: 3 1 2", "1 2 3"), {"prompt": "sort: 3 1 2", "completion": "3 1 2"}, "raw text"]
    assert again.score(items) == pytest.approx(rm.score(items), abs=1e-5)
    assert ranks_chosen(again, HELD) == after
    chat = [{"role": "user", "content": "sort: 3 1 2"}, {"role": "assistant", "content": "1 2 3"}]
    assert again.score([chat]) == pytest.approx(again.score([("sort: 3 1 2", "1 2 3")]))
    with pytest.raises(tk.IncompatibleError, match=r"use tuner\.score"):
        again.generate("sort: 3 1 2")
    with pytest.raises(tk.ConfigError, match=r"pass a list of items, e\.g\. score\(\[item\]\), not a single str"):
        again.score("one text")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tiny_llama):
    """A tiny BERT (an encoder) for sequence classification, with the tiny models' tokenizer.

    Its weights come from a fixed seed: an unseeded init made the test pass or fail by the draw."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("method", [tk.Full(), tk.LoRA(r=8)], ids=["full", "lora"])
def test_encoder_reward_model(tiny_bert, tmp_path, method, prove):
    prove(method.name, "RewardModeling")
    rm = tk.Tuner(
        tiny_bert,
        method=method,
        objective=tk.RewardModeling(),
        training=cpu(max_steps=40, learning_rate=1e-3 if isinstance(method, tk.Full) else 3e-3, batch_size=16),
    )
    assert type(rm.model.get_base_model() if method.is_adapter else rm.model).__name__ == (
        "BertForSequenceClassification"
    )
    before = ranks_chosen(rm, HELD)
    result = rm.fit(TRAIN)
    after = ranks_chosen(rm, HELD)
    # One batch of 16 pairs is noisy (a single late batch can score above the first), so compare the
    # first loss with the mean of the last ten.
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert sum(losses[-10:]) / 10 < losses[0] - 0.1, losses
    # Held-out pairs ranked right, before vs after. Over init seeds 0-4: before 0.42-0.77 (the untrained head's
    # luck), after 0.84-0.95 (Full) and 0.73-0.88 (LoRA), a gain of at least 0.11; untrained, after == before.
    assert after >= 0.7 and after >= before + 0.08, (before, after)
    again = tk.load(rm.save(tmp_path / "rm"))
    assert again.score([("sort: 2 1", "1 2"), "x"]) == pytest.approx(rm.score([("sort: 2 1", "1 2"), "x"]), abs=1e-5)


# --- offline preference optimisation ------------------------------------------------------------


DPO_METRICS = {"rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"}
KTO_METRICS = {"rewards/chosen", "rewards/rejected", "logps/chosen", "kl"}
ORPO_METRICS = {"rewards/margins", "rewards/accuracies", "logps/chosen", "nll_loss"}
LEARNS = [
    # (objective, data, metrics in history, method, learning rate, steps)
    pytest.param(tk.DPO(), TRAIN, DPO_METRICS, tk.LoRA(r=8), 3e-3, 40, id="dpo-lora"),
    pytest.param(tk.KTO(), unpaired(TRAIN), KTO_METRICS, tk.LoRA(r=8), 3e-3, 40, id="kto-lora"),
    pytest.param(tk.ORPO(), TRAIN, ORPO_METRICS, tk.LoRA(r=8), 3e-3, 50, id="orpo-lora"),
    pytest.param(tk.DPO(), TRAIN, DPO_METRICS, tk.Full(), 5e-4, 30, id="dpo-full"),
    pytest.param(tk.KTO(), unpaired(TRAIN), KTO_METRICS, tk.Full(), 5e-4, 30, id="kto-full"),
    pytest.param(tk.ORPO(), TRAIN, ORPO_METRICS, tk.Full(), 1e-3, 30, id="orpo-full"),
]


@pytest.mark.parametrize(("objective", "data", "metrics", "method", "lr", "steps"), LEARNS)
def test_policy_learns_to_prefer_chosen(tiny_llama_init02, prove, objective, data, metrics, method, lr, steps):
    prove(method.name, objective.name)
    tuner = tk.Tuner(
        tiny_llama_init02,
        method=method,
        objective=objective,
        training=cpu(max_steps=steps, learning_rate=lr, batch_size=16),
    )
    before = prefers_chosen(tuner, HELD)
    result = tuner.fit(data)
    after = prefers_chosen(tuner, HELD)
    assert 0.3 <= before <= 0.7, before
    assert after >= 0.85, after
    assert metrics <= set(result.history[-1]), sorted(result.history[-1])
    assert result.steps == steps and result.num_examples == len(data) and result.num_tokens > 0
    assert 0 < result.trainable_params <= result.total_params
    assert isinstance(tuner.generate("sort: 4 2 3", max_new_tokens=6), str)


# --- every objective with Full and LoRA: hooks, FitResult, generate, save ----------------------


class Recorder(tk.Hook):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.objective = ""

    def on_fit_start(self, ctx):
        self.events.append("fit_start")
        self.objective = ctx.objective

    def on_step_end(self, ctx):
        self.events.append(f"step_{ctx.step}")

    def on_log(self, ctx, logs):
        self.events.append("log")

    def on_evaluate(self, ctx, metrics):
        self.events.append("evaluate")

    def on_fit_end(self, ctx, result):
        self.events.append("fit_end")


OFFLINE = {
    "RewardModeling": (tk.RewardModeling(), TRAIN[:32]),
    "DPO": (tk.DPO(), TRAIN[:32]),
    "DPO-ipo": (tk.DPO(loss="ipo"), TRAIN[:32]),
    "DPO-simpo": (tk.DPO(loss="simpo"), TRAIN[:32]),
    "KTO": (tk.KTO(), unpaired(TRAIN[:32])),
    "KTO-pairs": (tk.KTO(), TRAIN[:32]),  # pairs work too: trl unpairs them
    "ORPO": (tk.ORPO(), TRAIN[:32]),
}


# Every objective with both methods; loss variants and pair data for KTO with LoRA only.
MATRIX = [
    pytest.param(name, method, id=f"{name}-{label}")
    for name in OFFLINE
    for method, label in ((tk.Full(), "full"), (tk.LoRA(r=4), "lora"))
    if label == "lora" or name not in ("DPO-ipo", "KTO-pairs")
]


@pytest.mark.parametrize(("name", "method"), MATRIX)
def test_objective_runs_with_full_and_lora(tiny_llama, tmp_path, name, method):
    objective, data = OFFLINE[name]
    rec = Recorder()
    tuner = tk.Tuner(
        tiny_llama,
        method=method,
        objective=objective,
        hooks=[rec],
        training=cpu(max_steps=2, batch_size=8, eval_every=2),
    )
    result = tuner.fit(data, eval_data=data[:8])
    assert rec.objective == objective.name
    assert rec.events[0] == "fit_start" and rec.events[-1] == "fit_end"
    assert [e for e in rec.events if e.startswith("step_")] == ["step_1", "step_2"]
    assert "evaluate" in rec.events and "log" in rec.events
    assert result.steps == 2 and result.eval_loss is not None and result.history[0]["step"] == 1
    assert all("loss" in h or "eval_loss" in h for h in result.history)
    if method.is_adapter:
        assert "ref" not in tuner.model.peft_config  # trl's reference adapter is gone after training
    path = tuner.save(tmp_path / "out")
    assert not (path / "ref").exists()
    if isinstance(objective, tk.RewardModeling):
        assert len(tuner.score([("sort: 2 1", "1 2")])) == 1
    else:
        assert isinstance(tuner.generate("sort: 2 1", max_new_tokens=4), str)
        again = tk.load(path)
        assert again.objective_used == objective
        assert again.generate("sort: 2 1", max_new_tokens=4) == tuner.generate("sort: 2 1", max_new_tokens=4)


def test_reference_is_never_a_second_model_with_lora(tiny_llama, tmp_path):
    """LoRA: trl keeps no reference model (a frozen copy of the starting adapter, inside the same
    model). Full: the reference is a frozen copy of the policy as it is in memory."""
    from tunekit.backends.hf.trainers import build_trainer, release_trainer

    for method in (tk.LoRA(r=4), tk.Full()):
        tuner = tk.Tuner(tiny_llama, method=method, objective=tk.DPO(), training=cpu(max_steps=1, batch_size=4))
        rows = tuner.prepare(TRAIN[:8])
        loaded = tuner.loaded
        trainer = build_trainer(
            tuner.objective_used,
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            train_dataset=rows.to_dataset(),
            eval_dataset=None,
            training=tuner.training,
            output_dir=str(tmp_path),
            precision="fp32",
            device=loaded.device,
            learning_rate=1e-3,
            callbacks=[],
        )
        if method.is_adapter:
            assert trainer.ref_model is None
            assert set(loaded.model.peft_config) == {"default", "ref"}
        else:
            ref = trainer.ref_model
            assert ref is not None and ref is not loaded.model
            assert not any(p.requires_grad for p in ref.parameters())
            assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ref.parameters(), loaded.model.parameters()))
        release_trainer(trainer, loaded.model)
        assert "forward" not in vars(loaded.model)
        if method.is_adapter:
            assert set(loaded.model.peft_config) == {"default"}


@pytest.mark.parametrize("method", [tk.Full(), tk.LoRA(r=4)], ids=["full", "lora"])
def test_dpo_on_a_base_model_that_got_template_tokens(tiny_base_no_template, method):
    """tunekit adds ChatML tokens to a base model without a template; their rows must train under DPO too."""
    tuner = tk.Tuner(
        tiny_base_no_template,
        method=method,
        objective=tk.DPO(),
        training=cpu(max_steps=3, batch_size=8, learning_rate=1e-3),
    )
    head = tuner.model.get_output_embeddings()
    eot = tuner.tokenizer.convert_tokens_to_ids("<|im_end|>")
    before = head.weight[eot].detach().clone()
    tuner.fit(TRAIN[:32])
    assert not head.weight[eot].detach().equal(before)
    assert isinstance(tuner.generate("sort: 2 1", max_new_tokens=4), str)


# --- data through fit -------------------------------------------------------------------------------


def test_objective_inferred_from_the_columns(tiny_llama):
    dpo = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4))
    dpo.fit(TRAIN[:8])
    assert isinstance(dpo.objective_used, tk.DPO)
    kto = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4))
    kto.fit(unpaired(TRAIN[:8]))
    assert isinstance(kto.objective_used, tk.KTO)
    with pytest.raises(tk.IncompatibleError, match=r"prompts only .* pass objective=tk\.GRPO\(reward=\.\.\.\)"):
        tk.Tuner(tiny_llama).fit([{"prompt": "sort: 2 1"}])
    with pytest.raises(tk.IncompatibleError, match=r"in the 'preference' format, which SFT cannot train on"):
        tk.Tuner(tiny_llama, objective=tk.SFT()).fit(TRAIN[:4])
    with pytest.raises(tk.IncompatibleError, match=r"in the 'prompt_completion' format, which DPO cannot train on"):
        tk.Tuner(tiny_llama, objective=tk.DPO()).fit([{"prompt": "a", "completion": "b"}])


def test_bad_preference_rows_name_row_and_field(tiny_llama):
    rows = [dict(r) for r in TRAIN[:8]]
    rows[4]["rejected"] = rows[4]["chosen"]
    tuner = tk.Tuner(tiny_llama, objective=tk.DPO(), training=cpu(max_steps=1, batch_size=4))
    with pytest.raises(tk.DatasetError, match=r"row 5, field 'rejected': identical to 'chosen'") as info:
        tuner.fit(rows)
    assert (info.value.row, info.value.field) == (5, "rejected")
    rows[6] = {"prompt": "sort: " + "1 " * 300, "chosen": "1", "rejected": "2"}
    skip = tk.Tuner(
        tiny_llama, objective=tk.DPO(), training=cpu(max_steps=1, batch_size=4, on_bad_rows="skip", max_length=64)
    )
    result = skip.fit(rows)
    assert result.skipped_rows == [5, 7] and result.num_examples == 6
    bad_label = unpaired(TRAIN[:4])
    bad_label[2]["label"] = "perhaps"
    with pytest.raises(tk.DatasetError, match=r"row 3, field 'label': expected True .* got 'perhaps'"):
        tk.Tuner(tiny_llama, objective=tk.KTO(), training=cpu(max_steps=1)).fit(bad_label)
