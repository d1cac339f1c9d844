"""The corners of the method catalogue: template tokens with non-LoRA methods, prompt adapters trained
further after a reload, prefix tuning asked for gradient checkpointing."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.testing import reverse_task

from ._threads import one_thread  # noqa: F401  (autouse)
from .helpers import cpu, heldout_loss


def logits_of(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_prefix_tuning_trains_when_gradient_checkpointing_is_asked_for(tiny_llama_init02, caplog) -> None:
    tuner = tk.Tuner(
        tiny_llama_init02,
        method=tk.PrefixTuning(num_virtual_tokens=4),
        training=cpu(max_steps=20, batch_size=8, learning_rate=3e-2, gradient_checkpointing=True),
    )
    data = reverse_task(32)
    before = heldout_loss(tuner, data)
    with caplog.at_level("WARNING", logger="tunekit"):
        result = tuner.fit(data)
    assert result.steps == 20
    # It trains: the loss on its data falls (to 0.957-0.973 of before over seeds 0-4; 1.0 with a zero learning rate).
    after = heldout_loss(tuner, data)
    assert after < 0.985 * before, (before, after)
    assert "PrefixTuning does not work with gradient checkpointing" in caplog.text
    assert tuner.training.gradient_checkpointing  # the user's config is left as it was


@pytest.mark.parametrize("method", [tk.PTuning(num_virtual_tokens=4), tk.PrefixTuning(num_virtual_tokens=4)])
def test_a_reloaded_prompt_adapter_trains_further(tiny_llama_init02, tmp_path, method) -> None:
    train = reverse_task(32, seed=5)
    tuner = tk.Tuner(tiny_llama_init02, method=method, training=cpu(max_steps=3, batch_size=8, learning_rate=1e-2))
    tuner.fit(train)
    ids = torch.tensor([tuner.prepare(train[:1]).input_ids[0]])
    again = tk.load(tuner.save(tmp_path / "a"), training=cpu(max_steps=3, batch_size=8, learning_rate=1e-2))
    before = logits_of(again.model, ids)
    torch.testing.assert_close(before, logits_of(tuner.model, ids), rtol=0, atol=1e-5)
    assert again.fit(train).steps == 3
    after = logits_of(again.model, ids)
    assert not torch.allclose(before, after)
    third = tk.load(again.save(tmp_path / "b"))
    torch.testing.assert_close(logits_of(third.model, ids), after, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", [tk.LoHa(), tk.IA3()])
def test_template_tokens_train_with_adapters_other_than_lora(tiny_base_no_template, tmp_path, method) -> None:
    """A base without a chat template gets ChatML tokens; the adapter must learn them and save them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuner = tk.Tuner(tiny_base_no_template, method=method, training=cpu(max_steps=4, batch_size=8, learning_rate=1e-2))
    new_id = tuner.tokenizer.convert_tokens_to_ids("<|im_end|>")
    start = tuner.model.get_input_embeddings().weight[new_id].detach().clone()
    tuner.fit(reverse_task(32, seed=5))
    assert not torch.equal(tuner.model.get_input_embeddings().weight[new_id], start)
    ids = torch.tensor([tuner.prepare(reverse_task(1, seed=9)).input_ids[0]])
    path = tuner.save(tmp_path / "adapter")
    torch.testing.assert_close(logits_of(tk.load(path).model, ids), logits_of(tuner.model, ids), rtol=0, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_no_template)
    base.resize_token_embeddings(len(AutoTokenizer.from_pretrained(path)))
    plain = PeftModel.from_pretrained(base, path)
    torch.testing.assert_close(logits_of(plain, ids), logits_of(tuner.model, ids), rtol=0, atol=1e-5)


def test_freeze_trains_the_template_token_rows_and_nothing_else_of_the_embeddings(tiny_base_no_template) -> None:
    tuner = tk.Tuner(
        tiny_base_no_template,
        method=tk.Freeze(last_layers=1),
        training=cpu(max_steps=4, batch_size=8, learning_rate=1e-2),
    )
    new_ids = [tuner.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")]
    emb = tuner.model.get_input_embeddings().weight
    layer0 = tuner.model.model.layers[0].mlp.up_proj.weight
    before, layer0_before = emb.detach().clone(), layer0.detach().clone()
    tuner.fit(reverse_task(32, seed=5))
    changed = (emb.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(new_ids), changed
    assert torch.equal(layer0, layer0_before)  # block 0 stays frozen


@pytest.mark.parametrize("method", [tk.PromptTuning(), tk.PrefixTuning(), tk.PTuning()])
def test_prompt_methods_cannot_learn_added_template_tokens(tiny_base_no_template, method) -> None:
    tuner = tk.Tuner(tiny_base_no_template, method=method, training=cpu())
    with pytest.raises(tk.IncompatibleError) as info:
        tuner.model  # noqa: B018
    text = str(info.value)
    assert text.startswith(f"{method.name} keeps every weight of the base model frozen")
    markers = "['<|im_start|>', '<|im_end|>', '<tool_call>', '</tool_call>', '<think>', '</think>']"
    assert markers in text and "tk.LoRA()" in text


def test_adalora_orthogonal_regulariser_reaches_the_loss(tiny_llama_init02) -> None:
    losses = []
    for weight in (0.0, 50.0):
        tuner = tk.Tuner(
            tiny_llama_init02,
            method=tk.AdaLoRA(orth_reg_weight=weight),
            training=cpu(max_steps=2, batch_size=8, learning_rate=1e-2),
        )
        losses.append([h["loss"] for h in tuner.fit(reverse_task(16, seed=5)).history if "loss" in h])
    assert losses[0] != losses[1]
