"""Template tokens a base model has but never trained (all-zero rows, as in Llama 3 base) are started at the
mean embedding and trained, so that the model learns to end its turn under LoRA."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf import models as hf_models
from tunekit.testing import first_task, tiny_model

from .helpers import cpu

MARKERS = ("<|im_start|>", "<|im_end|>")


@pytest.fixture(scope="module")
def untrained_base(tmp_path_factory: pytest.TempPathFactory, task_texts: list[str]) -> Path:
    """A tiny model whose ChatML markers are in the vocabulary with zero rows in both embeddings (untied)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model(tmp_path_factory.mktemp("untrained"), "llama", texts=task_texts, initializer_range=0.2)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.convert_tokens_to_ids(list(MARKERS))
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = 0
        model.get_output_embeddings().weight[ids] = 0
    model.save_pretrained(path)
    return path


def _rows(tuner: tk.Tuner) -> tuple[torch.Tensor, torch.Tensor]:
    """The markers' rows of the input and output embeddings, as the model computes with them."""
    model = tuner.model
    ids = tuner.tokenizer.convert_tokens_to_ids(list(MARKERS))
    inp = model.get_input_embeddings()(torch.tensor(ids)).detach().clone()
    out = model.get_output_embeddings()
    hidden = torch.eye(model.config.hidden_size)  # logits of unit hidden states: the output rows, through any wrapper
    return inp, out(hidden)[:, ids].T.detach().clone()


def test_untrained_template_tokens_are_started_at_the_mean_and_learned(untrained_base, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        tuner = tk.Tuner(
            untrained_base, method=tk.LoRA(r=16), training=cpu(max_steps=150, learning_rate=5e-3, batch_size=16)
        )
        inp0, out0 = _rows(tuner)
    assert any(
        "never trained the chat template's tokens ['<|im_start|>', '<|im_end|>']" in r.message for r in caplog.records
    )
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(untrained_base)
    for got, matrix in ((inp0, base.get_input_embeddings().weight), (out0, base.get_output_embeddings().weight)):
        trained = matrix[matrix.norm(dim=1) > 0]  # untrained rows stay out of the mean
        assert len(matrix) - 3 <= len(trained) <= len(matrix) - 2  # the markers, and the input side's pad row
        for row in got:
            torch.testing.assert_close(row, trained.mean(dim=0).detach())  # started at the mean trained row
    held = first_task(30, seed=2)
    result = tuner.fit(first_task(400, seed=1))
    inp1, out1 = _rows(tuner)
    assert (inp1 - inp0).abs().max() > 1e-3 and (out1 - out0).abs().max() > 1e-3  # the rows trained
    outs = tuner.generate([r["prompt"] for r in held], max_new_tokens=12)
    # The answer is one digit: generation must end right after it, at <|im_end|>, not run on to the limit.
    assert sum(o == r["completion"] for o, r in zip(outs, held)) / len(held) >= 0.9, outs
    assert result.train_loss < 0.1 * result.history[0]["loss"]
    again = tk.load(tuner.save(tmp_path / "adapter"))  # the rows travel with the adapter
    assert again.generate([r["prompt"] for r in held], max_new_tokens=12) == outs


def test_without_the_fix_the_end_of_turn_logit_cannot_move(untrained_base, monkeypatch):
    """The failure it prevents: under LoRA the zero output row stays zero, so <|im_end|>'s logit is 0 for ever."""
    monkeypatch.setattr(hf_models, "fix_untrained_template_tokens", lambda *args: [])
    tuner = tk.Tuner(untrained_base, method=tk.LoRA(r=16), training=cpu(max_steps=5, learning_rate=5e-3))
    tuner.fit(first_task(40, seed=1))
    inp, out = _rows(tuner)
    assert inp.abs().max() == 0 and out.abs().max() == 0


def test_trained_template_tokens_are_left_alone(tiny_llama, caplog):
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        tuner = tk.Tuner(tiny_llama, method=tk.LoRA(r=4), training=cpu())
        tuner.model  # noqa: B018 - loads it
    assert not [r for r in caplog.records if "never trained" in r.message]
    assert tuner.model.peft_config["default"].trainable_token_indices is None


@pytest.mark.parametrize("method", [tk.PromptTuning(num_virtual_tokens=4), tk.LoHa(r=4)], ids=["prompt", "loha"])
def test_methods_that_cannot_train_just_those_rows_say_so(untrained_base, caplog, method):
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        tuner = tk.Tuner(untrained_base, method=method, training=cpu())
        inp, _ = _rows(tuner)
    assert inp.norm(dim=1).min() > 0  # started at the mean all the same
    assert any(f"but {method.name} cannot train just those rows" in r.message for r in caplog.records)
    trainable = {n for n, p in tuner.model.named_parameters() if p.requires_grad}
    assert not [n for n in trainable if "embed_tokens" in n or "lm_head" in n]  # no whole-matrix training


def test_only_the_untrained_side_of_a_token_is_reset(tmp_path, task_texts):
    """Untied embeddings: a token whose output row was never trained keeps its trained input row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model(tmp_path / "m", "llama", texts=task_texts)
    model = AutoModelForCausalLM.from_pretrained(path)
    end = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.get_output_embeddings().weight[end] = 0
    model.save_pretrained(path)
    trained_input = model.get_input_embeddings().weight[end].detach().clone()
    tuner = tk.Tuner(path, method=tk.LoRA(r=4), training=cpu())
    inp, out = _rows(tuner)
    torch.testing.assert_close(inp[1], trained_input)
    assert out[1].norm() > 0
