"""The tiny vision-language models of ``tunekit.testing`` (one per family of ``VISION_FAMILIES``): each builds from
nothing local in about a tenth of a second, loads with transformers' auto classes, turns an image conversation into
the family's tokens through its real chat template (as many image tokens as the processor says an image takes),
gives a finite loss and generates; the same seed writes the same weights."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PIL")
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from tunekit.testing import VISION_ARCHS, load_processor, tiny_model
from tunekit.testing.families import VISION_FAMILIES, VisionFamily
from tunekit.testing.vision import TEMPLATE_SOURCES, chat_template, image_only, tiny_vlm

IDS = [f.arch for f in VISION_FAMILIES]


def conversation(image: Any, answer: str | None = "red") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour?"}]}
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def image_token_id(processor: Any) -> int:
    """The id repeated once per image token (Gemma 3's processor names its start-of-image token image_token)."""
    token = getattr(processor.tokenizer, "image_token", None) or processor.image_token
    return int(processor.tokenizer.convert_tokens_to_ids(token))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """Every family's tiny model, built once for the module, with its build time."""
    tiny_vlm(tmp_path_factory.mktemp("warm"), arch="llava")  # the imports, out of the timings
    out = {}
    for family in VISION_FAMILIES:
        start = time.perf_counter()
        path = tiny_model(tmp_path_factory.mktemp(family.arch), arch=family.arch)
        out[family.arch] = (path, time.perf_counter() - start)
    return out


def test_every_vision_arch_is_a_family_with_its_template_source() -> None:
    assert sorted(IDS) == sorted(VISION_ARCHS)
    assert all(f.arch == f.model_type for f in VISION_FAMILIES)
    assert set(TEMPLATE_SOURCES) == set(VISION_ARCHS)
    assert all(f.template_source for f in VISION_FAMILIES)


@pytest.mark.parametrize("family", VISION_FAMILIES, ids=IDS)
def test_family_builds_loads_and_processes_an_image(family: VisionFamily, built: dict[str, tuple[Path, float]]) -> None:
    path, seconds = built[family.arch]
    assert seconds < 2.0, f"{family.arch}: built in {seconds:.2f} s"
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == family.model_type
    assert config["text_config"]["hidden_size"] == 64 and config["text_config"]["num_hidden_layers"] == 2

    processor = load_processor(path)
    assert type(processor).__name__ == family.processor
    assert processor.chat_template == chat_template(family.arch)  # the released model's template, as shipped
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == family.model_type

    image = Image.new("RGB", (40, 30), (200, 30, 30))
    batch = processor.apply_chat_template(conversation(image), tokenize=True, return_dict=True, return_tensors="pt")
    expected = processor._get_num_multimodal_tokens(image_sizes=[(30, 40)])["num_image_tokens"][0]
    assert int((batch["input_ids"] == image_token_id(processor)).sum()) == expected
    assert 1 <= expected <= 50  # a few dozen image tokens at most
    text = processor.apply_chat_template(conversation(image), tokenize=False)
    assert "red" in text and "What colour?" in text

    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss) and loss > 0

    prompt = processor.apply_chat_template(
        conversation(image, answer=None),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 3


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    def digest(path: Path) -> str:
        return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    one = tiny_vlm(tmp_path / "one", arch="qwen2_vl", seed=3)
    two = tiny_vlm(tmp_path / "two", arch="qwen2_vl", seed=3)
    three = tiny_vlm(tmp_path / "three", arch="qwen2_vl", seed=4)
    assert digest(one) == digest(two) != digest(three)
    for name in ("tokenizer.json", "processor_config.json", "chat_template.jinja", "config.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_text_only_options_and_unknown_archs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"arch='qwen2_vl'.*chat_template.*text-only"):
        tiny_model(tmp_path, arch="qwen2_vl", chat_template=False)
    with pytest.raises(ValueError, match=r"choose one of .*'smolvlm'"):
        tiny_model(tmp_path, arch="pixtral")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"choose one of .*'gemma3'"):
        chat_template("pixtral")


def test_an_image_only_processor_keeps_the_family_name_and_settings() -> None:
    import transformers

    cls = image_only(transformers.SmolVLMProcessor)
    assert cls.__name__ == "SmolVLMProcessor" and cls.get_attributes() == ["image_processor", "tokenizer"]
    assert issubclass(cls, transformers.SmolVLMProcessor)
