"""The peft translation table (backends/hf/peft_map.py) beyond each option: defaults tunekit chooses, reward models
(sequence classifiers), and the template tokens tunekit adds. Written against the mutants of `nox -s mutation`
(tests/MUTATION.md) the options test lets live: LoRA's default alpha, the task type, the rows of new tokens."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf.peft_map import apply_method


@pytest.fixture(scope="module")
def causal(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype="float32")


@pytest.fixture(scope="module")
def classifier(tiny_llama):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_llama, num_labels=1)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def _apply(model: Any, method: tk.Method, new_tokens: list[int] | None = None) -> Any:
    torch.manual_seed(0)
    return apply_method(copy.deepcopy(model), method, new_tokens or [])


def _config(wrapped: Any) -> Any:
    return wrapped.peft_config["default"]


@pytest.mark.parametrize(("r", "alpha", "expected"), [(4, None, 8), (16, None, 32), (4, 3, 3)])
def test_lora_alpha_defaults_to_twice_the_rank(causal, r, alpha, expected):
    config = _config(_apply(causal, tk.LoRA(r=r, alpha=alpha)))
    assert config.r == r and config.lora_alpha == expected


def test_a_causal_lm_gets_the_causal_task_type(causal):
    assert _config(_apply(causal, tk.LoRA(r=4))).task_type == "CAUSAL_LM"


@pytest.mark.parametrize("method", [tk.LoRA(r=4), tk.LoHa(r=4), tk.IA3()], ids=lambda m: m.name)
def test_a_reward_model_is_a_sequence_classifier_whose_fresh_head_trains(classifier, method):
    wrapped = _apply(classifier, method)
    assert _config(wrapped).task_type == "SEQ_CLS"
    head = [n for n, p in wrapped.named_parameters() if p.requires_grad and "score" in n]
    assert head, "the score head, initialised at random, must train"


def test_freeze_trains_a_reward_models_head_too(classifier):
    model = _apply(classifier, tk.Freeze(last_layers=1))
    assert all(p.requires_grad for p in model.score.parameters())
    assert not model.model.embed_tokens.weight.requires_grad


def test_ia3_auto_feedforward_modules_are_the_targets_that_are_feedforward(causal):
    # llama: peft's IA3 targets are k_proj, v_proj, down_proj; its feed-forward one is down_proj.
    auto = _config(_apply(causal, tk.IA3()))
    assert sorted(auto.feedforward_modules) == ["down_proj"]
    named = _config(_apply(causal, tk.IA3(target_modules=["k_proj", "v_proj"])))
    assert sorted(named.feedforward_modules) == []  # down_proj is not a target
    everything = _config(_apply(causal, tk.IA3(target_modules="all-linear")))
    assert sorted(everything.feedforward_modules) == ["down_proj"]


def test_ia3_names_a_missing_feedforward_module(causal):
    with pytest.raises(tk.ConfigError, match=r"IA3\(feedforward_modules=\['nope'\]\): no module named \['nope'\]"):
        _apply(causal, tk.IA3(target_modules="all-linear", feedforward_modules=["nope"]))


# --- tokens tunekit added (a base without a chat template gets ChatML markers) ---------------------------------------


def test_lora_trains_just_the_rows_of_new_tokens_in_both_untied_matrices(causal):
    assert not causal.config.tie_word_embeddings
    config = _config(_apply(causal, tk.LoRA(r=4), [5, 7]))
    assert config.trainable_token_indices == {"embed_tokens": [5, 7], "lm_head": [5, 7]}
    assert _config(_apply(causal, tk.LoRA(r=4))).trainable_token_indices is None


def test_with_tied_embeddings_only_the_input_matrix_is_named(causal):
    tied = copy.deepcopy(causal)
    tied.config.tie_word_embeddings = True
    config = _config(_apply(tied, tk.LoRA(r=4), [5]))
    assert config.trainable_token_indices == {"embed_tokens": [5]}


def test_adapters_without_token_rows_train_the_embedding_matrices_whole_and_say_so(causal, caplog):
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        config = _config(_apply(causal, tk.LoHa(r=4), [5, 7]))
    assert config.modules_to_save == ["embed_tokens", "lm_head"]
    assert [r.getMessage() for r in caplog.records] == [
        "the chat template added 2 tokens; this method trains the embedding matrices ['embed_tokens', 'lm_head'] "
        "whole so that it can learn them (a larger adapter); LoRA trains only their rows"
    ]
    assert _config(_apply(causal, tk.OFT(block_size=16), [5])).modules_to_save == ["embed_tokens", "lm_head"]
    assert _config(_apply(causal, tk.IA3(), [5])).modules_to_save == ["embed_tokens", "lm_head"]
    assert _config(_apply(causal, tk.LoHa(r=4))).modules_to_save is None


def test_freeze_lets_only_the_new_rows_of_frozen_embeddings_learn(causal):
    model = _apply(causal, tk.Freeze(last_layers=1), [5, 7])
    embed = model.get_input_embeddings().weight
    assert embed.requires_grad
    before = embed.detach().clone()
    loss = model(input_ids=torch.tensor([[3, 5, 7, 9, 11]])).logits.float().pow(2).mean()
    loss.backward()
    grad = embed.grad
    assert grad is not None
    changed = {int(i) for i in grad.abs().sum(dim=1).nonzero().flatten()}
    assert changed == {5, 7}  # rows 3, 9 and 11 were used too: their gradient is masked to zero
    torch.testing.assert_close(embed.detach(), before)
    assert grad[5].abs().sum() > 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("method", [tk.PromptTuning(num_virtual_tokens=4), tk.PrefixTuning(num_virtual_tokens=4)])
def test_prompt_methods_refuse_new_tokens_and_say_what_to_use(causal, method):
    with pytest.raises(tk.IncompatibleError, match=rf"{method.name}.*tk\.LoRA\(\) \(it trains just those rows\)"):
        _apply(causal, method, [5])
