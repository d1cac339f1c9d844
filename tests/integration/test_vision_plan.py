"""plan() of a vision-language model: the images' tokens in the token count (equal to what the collator builds for
the same rows, in every family), the vision tower's and projector's parameters in the counts and the memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.backends.hf.backend import encode_images
from tunekit.backends.hf.vision import VisionCollator, part_of
from tunekit.testing.families import VISION_FAMILIES
from tunekit.testing.vision import tiny_vlm
from tunekit.training_data import encode_for

PIL = pytest.importorskip("PIL.Image")


def _image(size: tuple[int, int], rgb: tuple[int, int, int]) -> Any:
    return PIL.new("RGB", size, rgb)


def _rows() -> list[dict[str, Any]]:
    """Images of several sizes (one over the pixel budget below, one under it), two images in a row, a text row,
    a two-turn conversation."""
    ask = {"type": "text", "text": "What colour is this image?"}
    return [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": _image((16, 16), (250, 0, 0))}, ask]},
                      {"role": "assistant", "content": "red"}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": _image((40, 24), (0, 250, 0))}, ask]},
                      {"role": "assistant", "content": "green"}]},
        {"messages": [{"role": "user", "content": [
            {"type": "image", "image": _image((64, 48), (0, 0, 250))},  # over max_pixels: downscaled when read
            {"type": "image", "image": _image((7, 50), (250, 250, 0))}, ask]},
            {"role": "assistant", "content": "blue and yellow"}]},
        {"messages": [{"role": "user", "content": "Say red."}, {"role": "assistant", "content": "red"}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": _image((20, 20), (9, 9, 9))}, ask]},
                      {"role": "assistant", "content": "black"},
                      {"role": "user", "content": "And in French?"}, {"role": "assistant", "content": "noir"}]},
    ]  # fmt: skip


# Every family tunekit trains (tests/integration/test_vision_families.py); a refused one never gets to plan.
_ARCHS = [f.arch for f in VISION_FAMILIES if not f.refused]


@pytest.mark.parametrize("arch", _ARCHS)
def test_plan_counts_the_tokens_the_collator_builds(arch: str, tmp_path: Path) -> None:
    path = tiny_vlm(tmp_path / arch, arch=arch)  # type: ignore[arg-type]
    rows = _rows()
    training = tk.Training(device="cpu", batch_size=2, max_steps=1, max_pixels=1600, max_length=512)
    tuner = tk.Tuner(str(path), method=tk.LoRA(r=4), training=training)
    plan = tuner.plan(rows)
    assert tuner._loaded is None  # planned on the meta device: no weights read, no pixel values computed

    # The same rows as fit encodes and batches them, through the collator that feeds the model.
    loaded = tuner._model_for_run()
    spec = tuner._spec()
    encoded = encode_images(spec, loaded, encode_for(spec, tuner._normalise(rows, "training"), loaded.tokenizer))
    dataset = encoded.to_dataset()
    batch = VisionCollator([dataset.tunekit_vision], loaded.tokenizer.pad_token_id)(list(dataset))
    image_token = loaded.model.config.image_token_id
    assert plan.tokens == int(batch["attention_mask"].sum()) == encoded.num_tokens
    again = tuner.plan(rows)  # planned on the loaded model and its processor: the same figures
    assert (again.tokens, again.image_tokens, again.total_params) == (plan.tokens, plan.image_tokens, plan.total_params)
    assert plan.examples == len(rows) and plan.images == 5
    assert plan.image_tokens == int((batch["input_ids"] == image_token).sum()) > 0
    # Each image's tokens are the processor's for its size: the row of two images has more than the others.
    per_row = (batch["input_ids"] == image_token).sum(dim=1).tolist()
    assert per_row[3] == 0 and per_row[2] > max(per_row[0], per_row[1]) and "image tokens" in str(plan)


def _tower_and_projector(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters outside the language model."""
    params = {id(p): p for n, p in model.named_parameters() if part_of(n) != "language_model"}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def test_plan_counts_the_tower_and_its_training(tmp_path: Path) -> None:
    path = tiny_vlm(tmp_path / "qwen2_vl", arch="qwen2_vl")
    rows = _rows()[:3]
    training = tk.Training(device="cpu", batch_size=3, max_steps=1)
    frozen = tk.Tuner(str(path), method=tk.LoRA(r=4), training=training)
    lora_tower = tk.Tuner(str(path), method=tk.LoRA(r=4, vision_tower="lora", projector="full"), training=training)
    p_frozen, p_tower = frozen.plan(rows), lora_tower.plan(rows)

    # The tower and projector are parameters of the plan's model: their weights are in weights_bytes (fp32 here).
    trainable, total = _tower_and_projector(frozen._model_for_run().model)
    assert p_frozen.vision_params == total > 0 and p_frozen.vision_trainable_params == trainable == 0
    assert p_frozen.weights_bytes == 4 * p_frozen.total_params
    trainable, total = _tower_and_projector(lora_tower._model_for_run().model)
    assert p_tower.vision_params == total > p_frozen.vision_params and p_tower.vision_trainable_params == trainable > 0
    # Trained: their gradients and AdamW moments join the estimate, and the tower keeps activations for its patches.
    extra = p_tower.trainable_params - p_frozen.trainable_params
    assert extra == p_tower.vision_trainable_params
    assert p_tower.gradients_bytes - p_frozen.gradients_bytes == 4 * extra
    assert p_tower.optimizer_bytes - p_frozen.optimizer_bytes >= 8 * extra
    assert p_tower.activations_bytes > p_frozen.activations_bytes
    # The plan equals what fit trains.
    result = lora_tower.fit(rows)
    assert (result.trainable_params, result.total_params) == (p_tower.trainable_params, p_tower.total_params)
    assert result.num_tokens == p_tower.tokens


def test_plan_refuses_images_for_a_text_model(tiny_llama: Path) -> None:
    rows = _rows()[:1]
    with pytest.raises(tk.IncompatibleError, match=r"row 1 holds an image.*text-only"):
        tk.Tuner(str(tiny_llama), training=tk.Training(device="cpu")).plan(rows)
