"""The engine for vision-language models (backends/hf/vision.py): loading with the processor, the label mask of a
collated batch (prompt and image tokens -100, every answer token labelled), max_length never cutting an image,
which parameters train (LoRA's vision_tower / projector, Full, Freeze), and images sent to a text-only model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PIL")
from PIL import Image

import tunekit as tk
from tunekit.backends.hf.vision import VisionCollator, encode_vision, part_of
from tunekit.data import normalise
from tunekit.errors import DatasetError, IncompatibleError
from tunekit.testing import tiny_model

COLOURS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255)}
IGNORE = -100


def image_row(colour: str, size: int = 32) -> dict[str, Any]:
    image = Image.new("RGB", (size, size), COLOURS[colour])
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": colour},
        ]
    }


TEXT_ROW = {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}]}


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("qwen2-vl"), arch="qwen2_vl")


@pytest.fixture(scope="module")
def tuner(qwen2_vl: Path) -> tk.Tuner:
    return tk.Tuner(qwen2_vl, method=tk.LoRA(), progress=False)


def test_loads_as_image_text_to_text_with_its_processor(tuner: tk.Tuner) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    base = tuner.model.get_base_model()
    assert type(base).__name__ == MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES["qwen2_vl"]
    processor = tuner.loaded.processor
    assert processor is not None and processor.tokenizer is tuner.tokenizer
    assert tuner.tokenizer.chat_template == processor.chat_template
    assert tuner.tokenizer.pad_token_id != tuner.tokenizer.eos_token_id
    assert tuner.loaded.template.end_of_turn == "<|im_end|>"


def _encoded(tuner: tk.Tuner, rows: list[dict[str, Any]], **settings: Any) -> Any:
    processor = tuner.loaded.processor
    examples = normalise(rows).examples
    return encode_vision(processor, tuner.tokenizer, examples, max_length=settings.pop("max_length", 512), **settings)


def _batch(tuner: tk.Tuner, rows: list[dict[str, Any]], **settings: Any) -> tuple[Any, dict[str, Any]]:
    enc = _encoded(tuner, rows, **settings)
    data = enc.to_dataset()
    collator = VisionCollator([data.tunekit_vision], tuner.tokenizer.pad_token_id)
    return enc, collator([data[i] for i in range(len(data))])


def test_collated_labels_cover_the_answer_only(tuner: tk.Tuner) -> None:
    """Prompt and image positions are -100; every token of the answer, end of turn included, is labelled."""
    tok = tuner.tokenizer
    image_id = tuner.model.config.image_token_id
    _, batch = _batch(tuner, [image_row("red"), TEXT_ROW])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert {"pixel_values", "image_grid_thw", "mm_token_type_ids"} <= set(batch)
    for row, answer in ((0, "red"), (1, "hi there")):
        n = int(mask[row].sum())
        row_ids, row_labels = ids[row, :n].tolist(), labels[row, :n].tolist()
        labelled = [t for t, lab in zip(row_ids, row_labels) if lab != IGNORE]
        assert labelled == [t for t, lab in zip(row_ids, row_labels) if lab == t]  # labels are the ids, unshifted
        assert tok.decode(labelled) == answer + "<|im_end|>"  # the whole answer and its end of turn
        start = row_ids.index(labelled[0])
        assert all(lab == IGNORE for lab in row_labels[:start])  # the prompt
        assert labels[row, n:].eq(IGNORE).all()  # the padding
    images = ids[0].eq(image_id)
    n_tokens = int(batch["image_grid_thw"][0].prod()) // 4  # Qwen2-VL merges 2 x 2 patches into a token
    assert int(images.sum()) == n_tokens > 0
    assert labels[0][images].eq(IGNORE).all()
    assert batch["mm_token_type_ids"][0][images].eq(1).all() and batch["mm_token_type_ids"][1].eq(0).all()


def test_train_on_prompt_still_masks_image_tokens(tuner: tk.Tuner) -> None:
    image_id = tuner.model.config.image_token_id
    enc = _encoded(tuner, [image_row("blue")], train_on_prompt=True)
    ids, labels = enc.input_ids[0], enc.labels[0]
    assert all(lab == IGNORE for t, lab in zip(ids, labels) if t == image_id)
    assert sum(lab != IGNORE for lab in labels) > len(tuner.tokenizer("blue<|im_end|>")["input_ids"])


def test_max_length_never_cuts_inside_an_image(tuner: tk.Tuner) -> None:
    full = _encoded(tuner, [image_row("red")])
    length = len(full.input_ids[0])
    vision_end = tuner.tokenizer.convert_tokens_to_ids("<|vision_end|>")  # the image's tokens end with it
    image_end = full.input_ids[0].index(vision_end) + 1
    inside = image_end - 1  # the image's last token would be cut off
    with pytest.raises(DatasetError, match=rf"row 1: its image tokens run to position {image_end}, .*={inside}") as e:
        _encoded(tuner, [image_row("red")], max_length=inside)
    assert e.value.row == 1 and "Training(max_pixels" in str(e.value)
    skipped = _encoded(tuner, [image_row("red"), TEXT_ROW], max_length=inside, on_bad_rows="skip")
    assert skipped.rows == [2] and skipped.skipped[0][0] == 1
    cut = _encoded(tuner, [image_row("red")], max_length=length - 1)  # after the image: cut like a text row
    assert len(cut.input_ids[0]) == length - 1 and cut.truncated == 1 and image_end < length - 1


def _trainable(model: Any) -> dict[str, set[str]]:
    """Which parts hold trainable parameters: LoRA matrices, or whole weights."""
    out: dict[str, set[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(part_of(name), set()).add("lora" if "lora_" in name else "whole")
    return out


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"language_model": {"lora"}}),
        ({"vision_tower": "lora"}, {"language_model": {"lora"}, "vision_tower": {"lora"}}),
        ({"projector": "lora"}, {"language_model": {"lora"}, "projector": {"lora"}}),
        ({"projector": "full"}, {"language_model": {"lora"}, "projector": {"whole"}}),
        ({"vision_tower": "full"}, {"language_model": {"lora"}, "vision_tower": {"whole"}}),  # merger stays frozen
        (
            {"vision_tower": "full", "projector": "full"},
            {"language_model": {"lora"}, "vision_tower": {"whole"}, "projector": {"whole"}},
        ),
    ],
)
def test_lora_trains_the_language_model_unless_told(qwen2_vl: Path, options: dict[str, str], expected: Any) -> None:
    tuner = tk.Tuner(qwen2_vl, method=tk.LoRA(**options), progress=False)
    assert _trainable(tuner.model) == expected
    wrapped = {n for n, m in tuner.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped and all(part_of(n) != "vision_tower" for n in wrapped) == (options.get("vision_tower") != "lora")


def test_lora_parts_refused_where_they_cannot_apply(qwen2_vl: Path, tmp_path: Path) -> None:
    with pytest.raises(IncompatibleError, match=r"projector is inside the vision tower"):
        _ = tk.Tuner(qwen2_vl, method=tk.LoRA(vision_tower="full", projector="lora"), progress=False).model
    text_model = tiny_model(tmp_path / "llama")
    with pytest.raises(IncompatibleError, match=r"text-only model, it has no vision tower"):
        _ = tk.Tuner(text_model, method=tk.LoRA(vision_tower="lora"), progress=False).model


def test_full_and_freeze_on_a_vision_model(qwen2_vl: Path) -> None:
    full = tk.Tuner(qwen2_vl, method=tk.Full(), progress=False)
    assert _trainable(full.model) == {p: {"whole"} for p in ("language_model", "vision_tower", "projector")}
    frozen = tk.Tuner(qwen2_vl, method=tk.Freeze(last_layers=1), progress=False)
    names = [n for n, p in frozen.model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("model.language_model.layers.1.") for n in names)  # the decoder's last block


def test_image_rows_for_a_text_only_model(tmp_path: Path) -> None:
    text_model = tiny_model(tmp_path / "llama")
    tuner = tk.Tuner(text_model, training=tk.Training(max_steps=1), progress=False)
    with pytest.raises(IncompatibleError, match=r"row 2 holds an image, but .*llama.* is a text-only model") as e:
        tuner.fit([TEXT_ROW, image_row("red")])
    assert "use a vision-language model" in str(e.value) and "AutoModelForImageTextToText" in str(e.value)
    with pytest.raises(IncompatibleError, match=r"generate\(\): prompt 1 holds an image, but this model .* text-only"):
        tuner.generate(image_row("red")["messages"][:1])


def test_images_with_an_objective_that_cannot_read_them(qwen2_vl: Path) -> None:
    image = Image.new("RGB", (32, 32), COLOURS["red"])
    prompt = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]}]
    rows = [{"prompt": prompt, "chosen": "red", "rejected": "blue"}]
    # DPO reads images (tests/integration/test_vision_dpo.py); its SimPO loss (trl's CPO trainer) does not.
    tuner = tk.Tuner(qwen2_vl, objective=tk.DPO(loss="simpo"), training=tk.Training(max_steps=1), progress=False)
    with pytest.raises(IncompatibleError, match=r"row 1 holds an image, and DPO cannot train on images: .*SimPO"):
        tuner.fit(rows)


def test_train_on_last_assistant_with_images(tuner: tk.Tuner) -> None:
    image = Image.new("RGB", (32, 32), COLOURS["green"])
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": "green"},
            {"role": "user", "content": "Sure?"},
            {"role": "assistant", "content": "yes"},
        ]
    }
    tok = tuner.tokenizer
    for train_on, answers in (("all_assistant", "green<|im_end|>yes<|im_end|>"), ("last_assistant", "yes<|im_end|>")):
        enc = _encoded(tuner, [row], train_on=train_on)
        labelled = [lab for lab in enc.labels[0] if lab != IGNORE]
        assert tok.decode(labelled) == answers


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "gemma3", "llava", "llava_next", "idefics3", "smolvlm"])
def test_every_family_labels_the_answer_only(arch: str, tmp_path: Path) -> None:
    """Each family's processor expands its images its own way; the answer (and its end of turn) is all that trains,
    the image tokens the model fills with image features are never labelled, and the batch gives a finite loss."""
    import torch

    tuner = tk.Tuner(tiny_model(tmp_path / arch, arch=arch), method=tk.LoRA(), progress=False)
    _, batch = _batch(tuner, [image_row("red"), TEXT_ROW])
    config = tuner.model.config
    image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    ids, labels = batch["input_ids"], batch["labels"]
    assert int(ids[0].eq(image_id).sum()) > 0 and labels[ids.eq(image_id)].eq(IGNORE).all()
    for row, answer in ((0, "red"), (1, "hi there")):
        labelled = [int(t) for t, lab in zip(ids[row], labels[row]) if lab != IGNORE]
        text = tuner.tokenizer.decode(labelled)
        assert text.strip().startswith(answer) and labelled[-1] in tuner.model.generation_config.eos_token_id
    with torch.no_grad():
        loss = tuner.model(**{k: v for k, v in batch.items() if not k.startswith("tunekit_")}).loss
    assert torch.isfinite(loss)


def test_stream_refuses_an_image_for_a_text_only_model(tmp_path: Path) -> None:
    tuner = tk.Tuner(tiny_model(tmp_path / "llama"), progress=False)
    with pytest.raises(IncompatibleError, match=r"prompt 1 holds an image, but this model .* is text-only"):
        list(tuner.stream(image_row("red")["messages"][:1], max_new_tokens=2))


def test_pixel_budget_reaches_qwen_vl_image_processor(qwen2_vl: Path) -> None:
    tuner = tk.Tuner(qwen2_vl, training=tk.Training(max_pixels=32 * 32, min_pixels=16 * 16), progress=False)
    processor = tuner.loaded.processor
    assert (processor.image_processor.size.longest_edge, processor.image_processor.size.shortest_edge) == (1024, 256)
    grid = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (64, 64))])
    patch = tuner.model.config.vision_config.patch_size
    assert int(grid["image_grid_thw"][0][1:].prod()) * patch * patch <= 32 * 32  # within max_pixels


def test_a_vision_model_tunekit_cannot_train_is_refused_with_the_reason(tmp_path: Path) -> None:
    """A model that loads through the image-text-to-text auto classes but cannot go through the shared path: no
    processor beside the weights, or a chat template that writes nothing for an image part."""
    rows = [image_row("red"), image_row("blue")]
    training = tk.Training(max_steps=1, batch_size=2, device="cpu")
    no_processor = tiny_model(tmp_path / "no-processor", arch="qwen2_vl")
    (no_processor / "processor_config.json").unlink()
    with pytest.raises(IncompatibleError, match=r"vision-language model \(qwen2_vl\) but its processor could not be"):
        tk.Tuner(no_processor, training=training, progress=False).fit(rows)
    blind = tiny_model(tmp_path / "blind-template", arch="qwen2_vl")
    text_only = (  # renders a part's text and drops an image part: the model would never see its image
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
        "{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (blind / "chat_template.jinja").write_text(text_only, encoding="utf-8")
    with pytest.raises(IncompatibleError, match=r"writes nothing for an image part"):
        tk.Tuner(blind, training=training, progress=False).fit(rows)
