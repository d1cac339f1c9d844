"""A bf16-trained adapter exported at fp32 holds the fp32 merge, not a merge rounded to bf16 and upcast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tunekit as tk
from tunekit.export import merged as hfx


def test_a_bf16_adapter_is_merged_in_fp32(tiny_llama_init02: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tuner = tk.Tuner(str(tiny_llama_init02), method=tk.LoRA(r=4), training=tk.Training(device="cpu", precision="bf16"))
    assert not hfx.held_in_fp32(tuner.model)
    g = torch.Generator().manual_seed(0)
    expected, rounded = {}, {}
    with torch.no_grad():
        for name, module in tuner.model.named_modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                b = module.lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)  # a trained-looking, non-zero update
                a = module.lora_A["default"].weight
                delta = (b.float() @ a.float()) * module.scaling["default"]
                base = module.base_layer.weight
                key = name.split("base_model.model.", 1)[1] + ".weight"
                expected[key] = base.float() + delta  # fp32 weights of the bf16 base, plus the update in fp32
                rounded[key] = (base + delta.to(base.dtype)).float()  # merged in bf16, upcast afterwards
    assert expected
    result = tuner.export(tmp_path / "out", dtype="fp32", golden_prompts=["What is 2+2?"], max_new_tokens=4)
    written = {}
    for f in Path(result.path).glob("*.safetensors"):
        written.update(load_file(f))
    for key, want in expected.items():
        assert written[key].dtype == torch.float32
        torch.testing.assert_close(written[key], want, rtol=0, atol=1e-6)
    assert any(not torch.equal(expected[k], rounded[k]) for k in expected)  # the bf16 merge would differ
    assert all(p.dtype == torch.bfloat16 for n, p in tuner.model.named_parameters() if "lora" not in n)


def test_the_merge_check_is_reported_not_enforced_for_a_16_bit_model(
    tiny_llama_init02: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy tokens of the bf16 model and its fp32 merge may differ by precision alone: a note, not an error."""
    from tunekit.export import checks
    from tunekit.export.verify import encode_prompts

    tuner = tk.Tuner(str(tiny_llama_init02), method=tk.LoRA(r=4), training=tk.Training(device="cpu", precision="bf16"))
    golden = encode_prompts(tuner.tokenizer, ["What is 2+2?"], chat=True)
    real_greedy = checks.greedy
    calls = []

    def greedy(model, ids, **kw):  # the second call is the merged model: make it disagree
        calls.append(model)
        out = real_greedy(model, ids, **kw)
        return [*out, 0] if len(calls) == 2 else out

    monkeypatch.setattr(checks, "greedy", greedy)
    ref = checks.reference(tuner._trained(), golden, "hf", "fp32", 4)
    assert any("reported, not enforced" in n for n in ref.notes)
    assert ref.expected != ref.trained
