"""Exports of a vision-language model: ``format="hf"`` writes the merged model with its processor and is verified on
golden prompts that hold an image; ``format="gguf"`` is refused before anything is done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.testing.vision import load_processor, tiny_vlm

PIL = pytest.importorskip("PIL.Image")

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (20, 40, 230)}


def _row(name: str, size: int) -> dict[str, Any]:
    image = PIL.new("RGB", (size, size), COLOURS[name])
    return {"messages": [{"role": "user", "content": [{"type": "image", "image": image},
                                                      {"type": "text", "text": "What colour is this image?"}]},
                         {"role": "assistant", "content": name}]}  # fmt: skip


@pytest.fixture(scope="module")
def vlm_tuner(tmp_path_factory: pytest.TempPathFactory) -> tk.Tuner:
    path = tiny_vlm(tmp_path_factory.mktemp("vlm") / "qwen2_vl", arch="qwen2_vl")
    rows = [_row(name, size) for name in COLOURS for size in (16, 20, 24)]
    training = tk.Training(device="cpu", max_steps=6, batch_size=3, learning_rate=1e-2, seed=1)
    tuner = tk.Tuner(str(path), method=tk.LoRA(r=4), training=training, progress=False)
    tuner.fit(rows)
    return tuner


def _ask(image: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour?"}]}]


def test_hf_export_writes_the_processor_and_is_verified_on_image_prompts(vlm_tuner: tk.Tuner, tmp_path: Path) -> None:
    image = PIL.new("RGB", (18, 18), (200, 30, 30))
    result = vlm_tuner.export(tmp_path / "hf", format="hf", golden_prompts=[_ask(image), "Say hi."], max_new_tokens=6)
    v = result.verification
    assert v is not None and v.passed and v.strict and v.trained_agreement == 1.0
    # The image prompt is checked (and recorded without its pixels), beside the text one.
    assert v.checks[0].prompt == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}
    ]
    files = set(result.files)
    assert {"config.json", "tokenizer.json"} <= files and files & {"processor_config.json", "preprocessor_config.json"}
    json.loads((tmp_path / "hf" / "tunekit_export.json").read_text(encoding="utf-8"))  # JSON: no image in it

    # Independently of tunekit: plain transformers with the exported processor gives what tuner.generate gives.
    from transformers import AutoModelForImageTextToText

    processor = load_processor(tmp_path / "hf")  # AutoProcessor, without the video processor torchvision builds
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf")
    enc = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
        add_generation_prompt=True, tokenize=False,
    )  # fmt: skip
    inputs = processor(text=[enc], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    plain = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert plain == vlm_tuner.generate(_ask(image), max_new_tokens=6)


def test_golden_prompts_from_the_data_get_an_image(vlm_tuner: tk.Tuner, tmp_path: Path) -> None:
    result = vlm_tuner.export(tmp_path / "hf", format="hf", max_new_tokens=4)
    v = result.verification
    assert v is not None and v.passed
    shown = [c.prompt for c in v.checks]
    assert any(isinstance(p, list) and {"type": "image"} in p[0]["content"] for p in shown), shown


def test_a_broken_processor_export_is_caught(vlm_tuner: tk.Tuner, tmp_path: Path, monkeypatch) -> None:
    from tunekit.export import merged

    real = merged.write_hf

    def without_processor(*args: Any, **kwargs: Any) -> None:
        real(*args, **{**kwargs, "processor": None})
        for f in Path(args[3]).glob("*processor_config.json"):
            f.unlink()

    monkeypatch.setattr(merged, "write_hf", without_processor)
    with pytest.raises(tk.ExportError, match=r"cannot load the export|no processor"):
        vlm_tuner.export(tmp_path / "hf", format="hf", golden_prompts=[_ask(PIL.new("RGB", (16, 16)))])
    assert not (tmp_path / "hf").exists()


def test_gguf_is_refused_for_a_vision_model_before_anything_is_done(vlm_tuner: tk.Tuner, tmp_path: Path) -> None:
    # Before anything else: also before asking for the gguf package, which it would not use.
    with pytest.raises(tk.IncompatibleError, match=r'format="gguf".*vision-language model.*mmproj.*format="hf"'):
        vlm_tuner.export(tmp_path / "gguf", format="gguf")
    assert not (tmp_path / "gguf").exists() and list(tmp_path.iterdir()) == []


def test_adapter_export_is_verified_with_its_processor(vlm_tuner: tk.Tuner, tmp_path: Path) -> None:
    image = PIL.new("RGB", (16, 16), (20, 200, 40))
    result = vlm_tuner.export(tmp_path / "adapter", format="adapter", golden_prompts=[_ask(image)], max_new_tokens=4)
    assert result.verification is not None and result.verification.passed
    assert "processor_config.json" in result.files and "adapter_model.safetensors" in result.files


def test_gguf_is_refused_before_loading_a_vision_model(tmp_path: Path) -> None:
    path = tiny_vlm(tmp_path / "qwen2_vl", arch="qwen2_vl")
    tuner = tk.Tuner(str(path), training=tk.Training(device="cpu"))
    with pytest.raises(tk.IncompatibleError, match=r'format="gguf".*vision-language model \(qwen2_vl\)'):
        tuner.export(tmp_path / "gguf", format="gguf")
    assert tuner._loaded is None and not (tmp_path / "gguf").exists()
