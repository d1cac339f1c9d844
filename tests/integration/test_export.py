"""Exports: every mergeable method reloads in plain transformers with the trained model's greedy outputs;
prompt methods export as adapters; tampered exports and failed verifications are caught."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tunekit as tk
from tunekit.testing import reverse_task

from .helpers import cpu

PROMPTS = ["reverse: 1 2 3", "reverse: 9 8 7 6"]


def _trained(model_path, method, steps=4):
    tuner = tk.Tuner(
        model_path, method=method, training=cpu(max_steps=steps, learning_rate=1e-2, batch_size=8), progress=False
    )
    result = tuner.fit(reverse_task(32, seed=5), eval_data=reverse_task(8, seed=6))
    return tuner, result


def _plain_transformers_outputs(path, prompts, max_new_tokens=8):
    """Greedy continuations from the export loaded the way a user would: no tunekit involved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    outs = []
    for p in prompts:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        outs.append(tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return outs


@pytest.mark.parametrize(
    "method",
    [tk.LoRA(r=4), tk.LoRA(r=4, dora=True), tk.LoHa(r=4), tk.LoKr(r=4), tk.IA3(), tk.Full()],
    ids=["lora", "dora", "loha", "lokr", "ia3", "full"],
)
def test_hf_export_reloads_in_plain_transformers_with_same_greedy_outputs(method, tiny_llama_init02, tmp_path):
    tuner, _ = _trained(tiny_llama_init02, method)
    result = tuner.export(tmp_path / "hf", format="hf", golden_prompts=PROMPTS, max_new_tokens=8)
    assert result.format == "hf" and result.dtype == "fp32"
    assert result.verification is not None and result.verification.passed and result.verification.strict
    assert result.verification.trained_agreement == 1.0
    assert [c.prompt for c in result.verification.checks] == PROMPTS
    files = set(result.files)
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md", "tunekit_export.json"} <= files
    assert any(f.endswith(".safetensors") for f in files) and not any("adapter" in f for f in files)
    # Independently of tunekit's verification: plain transformers gives what tuner.generate gives.
    expected = tuner.generate(PROMPTS, max_new_tokens=8)
    assert _plain_transformers_outputs(result.path, PROMPTS) == expected
    assert len(set(expected)) > 1 or any(expected), "the golden outputs are degenerate; the test would prove little"
    gen = json.loads((result.path / "generation_config.json").read_text(encoding="utf-8"))
    assert tuner.loaded.template.end_of_turn_id in gen["eos_token_id"]
    if method.is_adapter:
        assert result.adapter_size_bytes is not None and result.adapter_size_bytes < result.merged_size_bytes
        assert "Why the adapter is small" in result.size_explanation
    else:
        assert result.adapter_size_bytes is None and "no small adapter" in result.size_explanation


@pytest.fixture(scope="module")
def lora_tuner(tiny_llama_init02):
    return _trained(tiny_llama_init02, tk.LoRA(r=4), steps=6)[0]


@pytest.fixture(scope="module")
def lora_export(lora_tuner, tmp_path_factory):
    return lora_tuner.export(tmp_path_factory.mktemp("exp") / "merged", format="hf", max_new_tokens=8)


def test_golden_prompts_default_to_the_eval_data_and_card_describes_the_run(lora_tuner, lora_export):
    v = lora_export.verification
    assert "golden prompts: sampled from the eval data" in v.notes
    eval_prompts = [r["prompt"] for r in reverse_task(8, seed=6)]
    assert all(c.prompt[0]["content"] in eval_prompts for c in v.checks)
    card = (lora_export.path / "README.md").read_text(encoding="utf-8")
    for text in ("LoRA", "SFT", "training rows | 32", "eval rows | 8", "prompt_completion", "final train loss",
                 "<|im_end|>", "AutoModelForCausalLM.from_pretrained", "ollama create", "llama-cli",
                 "PeftModel.from_pretrained", "Why the adapter is small", "![loss](loss.png)"):  # fmt: skip
        assert text in card, text
    assert (lora_export.path / "loss.png").stat().st_size > 1000
    manifest = json.loads((lora_export.path / "tunekit_export.json").read_text(encoding="utf-8"))
    assert manifest["verification"]["passed"] is True and manifest["format"] == "hf"
    # The method and objective as every manifest records them (saves and checkpoints too: Method.record()).
    assert manifest["method"] == lora_tuner.method.record() and manifest["objective"] == tk.SFT().record()
    assert "golden prompts" in str(lora_export) and "adapter alone" in lora_export.size_report()


def test_tampered_eos_is_caught(lora_tuner, lora_export, tmp_path):
    bad = shutil.copytree(lora_export.path, tmp_path / "bad-eos")
    tk.verify_export(bad, lora_tuner)  # the untouched copy verifies
    gen_file = bad / "generation_config.json"
    gen = json.loads(gen_file.read_text(encoding="utf-8"))
    gen["eos_token_id"] = [lora_tuner.tokenizer.eos_token_id]  # lost the template's end of turn
    gen_file.write_text(json.dumps(gen), encoding="utf-8")
    with pytest.raises(tk.ExportError, match="end-of-turn token '<\\|im_end\\|>'"):
        tk.verify_export(bad, lora_tuner)


def test_missing_template_is_caught(lora_tuner, lora_export, tmp_path):
    bad = shutil.copytree(lora_export.path, tmp_path / "bad-template")
    (bad / "chat_template.jinja").unlink()
    cfg_file = bad / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(tk.ExportError, match="no chat template"):
        tk.verify_export(bad, lora_tuner)


def test_tampered_weights_fail_naming_prompt_and_outputs(lora_tuner, lora_export, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = shutil.copytree(lora_export.path, tmp_path / "bad-weights")
    weights = load_file(bad / "model.safetensors")
    weights = {k: (v.flip(0) if k.endswith("lm_head.weight") else v) for k, v in weights.items()}
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(tk.ExportError, match=r"golden prompts; first: prompt .* expected .* got "):
        tk.verify_export(bad, lora_tuner)


def test_failed_verification_writes_nothing_and_keeps_the_previous_export(lora_tuner, tmp_path, monkeypatch):
    from tunekit.export import merged as hfx

    target = tmp_path / "out"
    first = lora_tuner.export(target, format="hf", golden_prompts=PROMPTS, max_new_tokens=4)
    before = {f: (target / f).read_bytes() for f in first.files}
    real = hfx.write_hf

    def buggy_writer(model, *args, **kwargs):  # a writer that corrupts what it writes
        import copy

        model = copy.deepcopy(model)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(-1)
        real(model, *args, **kwargs)

    monkeypatch.setattr(hfx, "write_hf", buggy_writer)
    with pytest.raises(tk.ExportError, match="does not behave like the trained model"):
        lora_tuner.export(target, format="hf", golden_prompts=PROMPTS, max_new_tokens=4)
    assert {f: (target / f).read_bytes() for f in first.files} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left behind


def test_export_refuses_a_directory_it_did_not_write(lora_tuner, tmp_path):
    (tmp_path / "mine.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(tk.ExportError, match="not a tunekit export"):
        lora_tuner.export(tmp_path, format="hf")
    with pytest.raises(tk.ConfigError, match="choose one of"):
        lora_tuner.export(tmp_path / "x", format="onnx")
    with pytest.raises(tk.ConfigError, match='format="adapter"'):
        lora_tuner.export(tmp_path / "x", format="hf", merge=False)


def test_low_precision_export_is_exact_against_the_rounded_weights(lora_tuner, tmp_path):
    result = lora_tuner.export(tmp_path / "bf16", format="hf", dtype="bf16", golden_prompts=PROMPTS, max_new_tokens=8)
    v = result.verification
    assert v.passed and v.strict and v.reference == "trained, rounded to bf16 as written"
    assert v.trained_agreement is not None  # reported, whatever the rounding did
    from safetensors import safe_open

    with safe_open(result.path / "model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())


@pytest.mark.parametrize(
    "method",
    [tk.PromptTuning(num_virtual_tokens=4), tk.PrefixTuning(num_virtual_tokens=4), tk.PTuning(num_virtual_tokens=4)],
    ids=["prompt", "prefix", "ptuning"],
)
def test_prompt_methods_cannot_merge_and_export_as_adapters(method, tiny_llama_init02, tmp_path):
    tuner, _ = _trained(tiny_llama_init02, method, steps=3)
    for fmt in ("hf", "gguf"):
        with pytest.raises(tk.IncompatibleError, match=r'cannot be merged.*virtual tokens.*format="adapter"'):
            tuner.export(tmp_path / fmt, format=fmt)
    assert not (tmp_path / "hf").exists()
    result = tuner.export(tmp_path / "adapter", format="adapter", golden_prompts=PROMPTS, max_new_tokens=6)
    assert result.verification.passed and result.merged_size_bytes is None
    assert {"adapter_config.json", "adapter_model.safetensors", "tunekit.json", "README.md"} <= set(result.files)
    again = tk.load(result.path)  # an adapter export is also a tunekit save
    assert again.generate(PROMPTS, max_new_tokens=6) == tuner.generate(PROMPTS, max_new_tokens=6)


def test_cli_export_prints_the_size_report(lora_tuner, tmp_path, capsys):
    from tunekit.cli import main

    saved = lora_tuner.save(tmp_path / "saved")
    assert main(["export", str(saved), str(tmp_path / "out"), "--format", "adapter", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "adapter alone:" in out and "Why the adapter is small" in out and "golden prompts" in out
    assert main(["export", str(saved), str(tmp_path / "out2"), "--format", "gguf", "--dtype", "f99"]) == 2


def test_large_models_are_written_in_shards(lora_tuner, tmp_path):
    from tunekit.export import merged as hfx

    model, _ = hfx.full_precision_model(lora_tuner._trained())
    hfx.write_hf(
        model, lora_tuner.tokenizer, lora_tuner.loaded.template.end_of_turn_id, tmp_path, max_shard_size="100KB"
    )
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    again, _, _ = hfx.reload_hf(tmp_path, device="cpu")
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_raw_text_export_verifies_on_text_prompts(tiny_llama_init02, tmp_path):
    tuner = tk.Tuner(
        tiny_llama_init02,
        method=tk.LoRA(r=4),
        objective=tk.CausalLM(),
        training=cpu(max_steps=3, learning_rate=1e-2, batch_size=8),
        progress=False,
    )
    tuner.fit(reverse_task(16, seed=5, fmt="text"))
    result = tuner.export(tmp_path / "hf", max_new_tokens=6)
    v = result.verification
    assert v.passed and all(isinstance(c.prompt, str) and c.prompt.startswith("reverse:") for c in v.checks)
    saved = tk.load(tuner.save(tmp_path / "saved"))  # the data summary travels with a save
    assert saved.data_summary["train"] == {
        "rows": 16,
        "format": "text",
        "skipped_rows": 0,
        "tokens": tuner.last_result.num_tokens,
    }


def test_a_quantized_base_is_reloaded_in_full_precision_for_the_merge(lora_tuner, monkeypatch):
    """QLoRA needs CUDA; the merge path for a quantized base is exercised here by declaring the model quantized."""
    from tunekit.export import merged as hfx

    expected = lora_tuner.merge().state_dict()
    monkeypatch.setattr(hfx, "is_quantized", lambda model: model is lora_tuner.model)
    merged, owned = hfx.full_precision_model(
        lora_tuner._trained()
    )  # never tuner.merge(): that would merge into 4-bit weights
    assert owned and type(merged).__name__ == "LlamaForCausalLM"
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    torch.testing.assert_close(merged.state_dict(), expected, rtol=0, atol=1e-6)
