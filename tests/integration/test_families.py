"""Every family of the supported-models page (``tunekit.testing.families``), on a tiny random model of its
architecture: LoRA learns the toy task, ``tk.load`` gives the trained logits back, the merged ``hf`` export loads in
plain transformers with the same logits, and GGUF export verifies (families llama.cpp runs) or is refused with a
clear IncompatibleError (the others). What the page records per family (the weights LoRA leaves frozen, packed
batches or not) is checked here, so the page cannot drift from the code.

docs/supported-models.md cites these tests; tests/unit/test_supported_models.py checks that every family has a case
here. The llama.cpp runs of GGUF exports are in the slow tests the page cites (test_export_gguf_families.py, ...).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

import tunekit as tk
from tunekit.backends.hf import attention, fastpath, sft
from tunekit.export.gguf_families import FAMILIES as GGUF_FAMILIES
from tunekit.testing import first_task, tiny_model
from tunekit.testing.families import FAMILIES, Family

from .helpers import cpu, heldout_loss

PROMPTS = ["first: 3 1 4", "first: 7 2"]
STEPS = 30  # at r=8 and lr 1e-2, every family's held-out loss falls to 0.2-0.5 of its start in 30 steps


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    model.eval()  # GPT-2 keeps dropout in its config: compare without it
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def frozen_without_adapter(model: Any) -> set[str]:
    """Weight tensors of the peft ``model`` that got no adapter, named within their layer (``mlp.router.weight``).

    Embeddings, the output head, biases and 1-D tensors (norms) are left out: LoRA's ``all-linear`` never targets
    them. A tensor counts as adapted when peft wrapped its module (``targeted_module_names``) or the tensor itself
    (``targeted_parameter_names``: the fused experts of a mixture-of-experts model).
    """
    inner = model.get_base_model()
    embeddings = {id(m.weight) for m in inner.modules() if isinstance(m, torch.nn.Embedding)}
    embeddings.add(id(inner.get_output_embeddings().weight))
    adapted = {f"{m}.weight" for m in model.targeted_module_names} | set(model.targeted_parameter_names)
    frozen = set()
    for name, p in inner.named_parameters():
        if p.ndim < 2 or id(p) in embeddings or name.endswith("bias") or "lora_" in name or "token_adapter" in name:
            continue
        plain = name.replace(".base_layer", "")
        if plain not in adapted:
            frozen.add(re.sub(r"^.*?\.\d+\.", "", plain))  # the layer's own name: model.layers.3.mlp.x -> mlp.x
    return frozen


def per_example_loss(tuner: tk.Tuner, rows: list[dict[str, Any]]) -> float:
    """The token-weighted mean loss of ``rows``, each example alone (no packing, no padding)."""
    enc, total, count = tuner.prepare(rows), 0.0, 0
    tuner.model.eval()
    with torch.no_grad():
        for ids, labels in zip(enc.input_ids, enc.labels):
            logits = tuner.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count


def packed_loss(tuner: tk.Tuner, rows: list[dict[str, Any]], path: fastpath.FastPath) -> float:
    """The loss of ``rows`` packed into one row, as the fast SFT path trains (its collator and attention)."""
    enc = tuner.prepare(rows)
    batch = sft.packed_collator(tuner.tokenizer, path)(
        [{"input_ids": i, "labels": lab} for i, lab in zip(enc.input_ids, enc.labels)]
    )
    batch.pop("tunekit_real_tokens")
    tuner.model.eval()
    with torch.no_grad(), attention.varlen_attention(tuner.model, path.attention):
        return float(tuner.model(**batch).loss)


def reloads_and_merges(tuner: tk.Tuner, ids: list[int], tmp_path: Any) -> tk.ExportResult:
    """Save and reload give the trained logits; the merged export, verified by tunekit and then loaded the way a user
    would (plain transformers), too. Returns the merged export."""
    trained = _logits(tuner.model, ids)
    again = tk.load(tuner.save(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(again.model, ids), trained, atol=1e-5, rtol=0)
    exported = tuner.export(tmp_path / "merged", format="hf", golden_prompts=PROMPTS, max_new_tokens=6)
    assert exported.verification is not None and exported.verification.passed, exported.verification
    plain = AutoModelForCausalLM.from_pretrained(exported.path, dtype=torch.float32)
    torch.testing.assert_close(_logits(plain, ids), trained, atol=1e-4, rtol=1e-4)
    return exported


@pytest.mark.parametrize("family", FAMILIES, ids=[f.model_type for f in FAMILIES])
def test_family_trains_reloads_and_merges(family: Family, task_texts: list[str], tmp_path) -> None:
    path = tiny_model(
        tmp_path / "base",
        arch=family.arch,
        texts=task_texts,
        initializer_range=0.2,
        chat_template=family.chat_template,
        pad_token=family.chat_template,
    )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == family.model_type
    training = cpu(max_steps=STEPS, learning_rate=1e-2, batch_size=8)
    tuner = tk.Tuner(path, method=tk.LoRA(r=8), training=training, progress=False)
    # A base model without a template gets tunekit's ChatML, its markers added as new tokens.
    assert (len(tuner.tokenizer) > config["vocab_size"]) == (not family.chat_template)
    held = first_task(16, seed=2)
    before = heldout_loss(tuner, held)
    result = tuner.fit(first_task(64, seed=1))
    after = heldout_loss(tuner, held)
    print(f"\n[families] {family.model_type}: {before:.3f} -> {after:.3f} ({after / before:.2f})")
    assert after < 0.6 * before, f"{family.name}: held-out loss {before:.3f} -> {after:.3f}"
    assert 0 < result.trainable_params < result.total_params

    # What the page says about the family.
    assert frozen_without_adapter(tuner.model) == set(family.lora_frozen)
    path_taken = fastpath.choose(tuner.model, tuner.training, torch.device("cpu"))
    assert path_taken.packing == family.packs, path_taken.reason
    if family.packs:
        assert packed_loss(tuner, held[:4], path_taken) == pytest.approx(per_example_loss(tuner, held[:4]), abs=1e-5)

    # Save, reload and merge: the same logits, on a real encoded example (template tokens included).
    exported = reloads_and_merges(tuner, tuner.prepare(held[:1]).input_ids[0], tmp_path)
    # The export's config is the model's own (no training setting left in it: use_cache, MoE router settings), but
    # for the template's end-of-turn id among the EOS ids and, where tunekit added the template, its tokens.
    merged = json.loads((exported.path / "config.json").read_text(encoding="utf-8"))
    changed = {k for k in config.keys() | merged.keys() if config.get(k) != merged.get(k)} - {"transformers_version"}
    assert changed == ({"eos_token_id"} if family.chat_template else {"eos_token_id", "pad_token_id", "vocab_size"})

    if family.model_type in GGUF_FAMILIES:  # the export's own check: transformers on the file (+ llama.cpp if there)
        pytest.importorskip("gguf")
        gguf = tuner.export(tmp_path / "gguf", format="gguf", dtype="f32", golden_prompts=PROMPTS, max_new_tokens=6)
        assert gguf.verification is not None and gguf.verification.passed, gguf.verification
    else:
        with pytest.raises(tk.IncompatibleError, match=rf"{family.model_type}.*convert_hf_to_gguf"):
            tuner.export(tmp_path / "gguf", format="gguf")


EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def test_gpt_oss_experts_train_with_target_parameters(task_texts: list[str], tmp_path) -> None:
    """``LoRA(target_parameters=...)`` adapts the fused expert tensors that ``all-linear`` leaves frozen on gpt-oss:
    they get adapters and change the model, the run learns, and the adapter reloads and merges to the same logits."""
    path = tiny_model(tmp_path / "base", arch="gpt_oss", texts=task_texts, initializer_range=0.2)
    method = tk.LoRA(r=8, target_parameters=EXPERTS)
    tuner = tk.Tuner(path, method=method, training=cpu(max_steps=STEPS, learning_rate=1e-2, batch_size=8))
    held = first_task(16, seed=2)
    before = heldout_loss(tuner, held)
    tuner.fit(first_task(64, seed=1))
    after = heldout_loss(tuner, held)
    assert after < 0.6 * before, f"held-out loss {before:.3f} -> {after:.3f}"
    frozen = frozen_without_adapter(tuner.model)
    assert not frozen & set(EXPERTS) and frozen == {"mlp.router.weight"}, frozen
    # The experts' adapters were trained (B starts at zero): the experts' update is not zero.
    experts_b = [p for n, p in tuner.model.named_parameters() if "experts" in n and "lora_B" in n]
    assert experts_b and all(float(p.detach().abs().sum()) > 0 for p in experts_b)

    reloads_and_merges(tuner, tuner.prepare(held[:1]).input_ids[0], tmp_path)


def test_a_target_parameter_the_model_lacks_names_the_ones_it_has(task_texts: list[str], tmp_path) -> None:
    path = tiny_model(tmp_path / "base", arch="gpt_oss", texts=task_texts)
    tuner = tk.Tuner(path, method=tk.LoRA(target_parameters=["mlp.experts.gate_proj"]), training=cpu(max_steps=1))
    with pytest.raises(
        tk.ConfigError, match=r"no parameter named \['mlp.experts.gate_proj'\].*mlp.experts.gate_up_proj"
    ):
        tuner.fit(first_task(8))
