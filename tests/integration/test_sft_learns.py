"""LoRA and Full SFT learn the toy task: loss falls and held-out exact match rises."""

from __future__ import annotations

import tunekit as tk
from tunekit.testing import first_task, reverse_task

from .helpers import cpu, exact_match


def test_full_sft_learns_reversal(full_reverse):
    tuner, result, before, held = full_reverse
    after = exact_match(tuner, held)
    assert before <= 0.05
    assert after >= 0.9, after
    assert result.train_loss < 0.2 * result.history[0]["loss"]
    assert result.eval_loss is not None and result.eval_loss < 0.5
    assert result.trainable_params == result.total_params


def test_lora_sft_learns_toy_task(tiny_llama_init02):
    """LoRA on a random tiny model: the first-digit task (reversal needs a pretrained base, see the demo)."""
    train, held = first_task(400, seed=1), first_task(40, seed=2)
    tuner = tk.Tuner(
        tiny_llama_init02, method=tk.LoRA(r=16), training=cpu(max_steps=200, learning_rate=5e-3, batch_size=16)
    )
    before = exact_match(tuner, held)
    result = tuner.fit(train)
    after = exact_match(tuner, held)
    assert before <= 0.2  # ten possible answers: a random model may hit one by chance
    assert after >= 0.9, after
    assert result.train_loss < 0.1 * result.history[0]["loss"]
    assert 0 < result.trainable_params < 0.25 * result.total_params


def test_builtin_template_tokens_are_learned(tiny_base_no_template):
    """A base model without a chat template gets ChatML; its new end-of-turn token must be learned."""
    train, held = reverse_task(400, seed=1), reverse_task(20, seed=2)
    tuner = tk.Tuner(
        tiny_base_no_template, method=tk.Full(), training=cpu(max_steps=200, learning_rate=3e-3, batch_size=16)
    )
    tok = tuner.tokenizer
    assert tuner.loaded.template.builtin and tuner.loaded.template.end_of_turn == "<|im_end|>"
    assert tok.pad_token not in (tok.eos_token, "<|im_end|>")
    tuner.fit(train)
    outs = tuner.generate([r["prompt"] for r in held], max_new_tokens=24)
    # Generation stopped at the end-of-turn token: short answers, no run-on text, no prompt echo.
    assert all(len(o.split()) <= 6 for o in outs), outs
    assert sum(o == r["completion"] for o, r in zip(outs, held)) / len(held) >= 0.8
