"""Every vision-language family of ``tunekit.testing.families.VISION_FAMILIES``, end to end on its tiny model: LoRA
learns to name the colour of solid-colour images (the held-out loss of the colour's tokens falls below 0.3 of its
start), ``generate`` answers with an image, ``save`` and ``tk.load`` give the same logits and the same answer, and
the merged ``export(format="hf")`` is verified by tunekit on golden prompts with an image and loads in plain
transformers with the trained logits. A family that cannot train through tunekit's shared path
(``VisionFamily.refused``) is refused with a clear IncompatibleError before any training, which is tested instead.

The registry records what is checked here, so the supported-models page cannot claim more than these tests show.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PIL")
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

import tunekit as tk
from tunekit.testing import load_processor, tiny_model
from tunekit.testing.families import VISION_FAMILIES, VisionFamily

from .helpers import cpu

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
QUESTION = "What colour?"
STEPS = 20  # at r=8, lr 1e-2 and batches of 8, every family's held-out colour loss falls below 0.3 of its start


def image(colour: str, size: tuple[int, int] = (20, 20)) -> Any:
    return Image.new("RGB", size, COLOURS[colour])


def question(picture: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": QUESTION}]}]


def colour_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Solid-colour images of varied sizes, each with the question and its colour as the answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name = rng.choice(sorted(COLOURS))
        picture = image(name, (rng.randint(12, 40), rng.randint(12, 40)))
        rows.append({"messages": [*question(picture), {"role": "assistant", "content": name}]})
    return rows


def as_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every content a list of parts, as processors' chat templates read them."""
    return [
        {**m, "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]}
        for m in messages
    ]


def answer_loss(model: Any, processor: Any, rows: list[dict[str, Any]]) -> float:
    """Mean cross-entropy of the colour's tokens (the answer's words, not what the template writes after them),
    each row alone, computed with the processor and the model as plain transformers would."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            messages = as_parts(row["messages"])
            full = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
            prompt = processor.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            ids, n = full["input_ids"][0], prompt["input_ids"].shape[1]
            assert torch.equal(ids[:n], prompt["input_ids"][0]), "the prompt is not a prefix of the conversation"
            colour = row["messages"][-1]["content"]
            m = next(k for k in range(1, len(ids) - n + 1) if processor.decode(ids[n : n + k]).strip() == colour)
            labels = torch.full_like(full["input_ids"], -100)
            labels[0, n : n + m] = ids[n : n + m]
            total += float(model(**full, labels=labels).loss) * m
            count += m
    return total / count


def logits(model: Any, processor: Any, messages: list[dict[str, Any]]) -> torch.Tensor:
    batch = processor.apply_chat_template(
        as_parts(messages), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    model.eval()
    with torch.no_grad():
        return model(**batch).logits[0].float()


def tuner_for(path: Path) -> tk.Tuner:
    training = cpu(max_steps=STEPS, learning_rate=1e-2, batch_size=8)
    return tk.Tuner(path, method=tk.LoRA(r=8), training=training, progress=False)


@pytest.mark.parametrize("family", VISION_FAMILIES, ids=[f.arch for f in VISION_FAMILIES])
def test_vision_family_trains_generates_reloads_and_merges(family: VisionFamily, tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "base", arch=family.arch, initializer_range=0.2)
    tuner = tuner_for(path)
    if family.refused:
        with pytest.raises(tk.IncompatibleError, match=family.refused_match):
            tuner.fit(colour_rows(8, seed=1))
        return

    processor = load_processor(path)
    held = colour_rows(8, seed=2)
    before = answer_loss(AutoModelForImageTextToText.from_pretrained(path), processor, held)
    result = tuner.fit(colour_rows(32, seed=1))
    after = answer_loss(tuner.model, processor, held)
    print(f"\n[vision families] {family.arch}: held-out colour loss {before:.3f} -> {after:.3f}")
    assert after < 0.3 * before, f"{family.name}: held-out colour loss {before:.3f} -> {after:.3f}"
    assert 0 < result.trainable_params < result.total_params

    probe = question(image("red"))
    answer = tuner.generate(probe, max_new_tokens=4)
    assert isinstance(answer, str) and answer.strip(), answer
    trained = logits(tuner.model, processor, probe)

    again = tk.load(tuner.save(tmp_path / "adapter"))
    torch.testing.assert_close(logits(again.model, processor, probe), trained, atol=1e-5, rtol=0)
    assert again.generate(probe, max_new_tokens=4) == answer

    exported = tuner.export(tmp_path / "merged", format="hf", golden_prompts=[probe], max_new_tokens=4)
    assert exported.verification is not None and exported.verification.passed, exported.verification
    plain = AutoModelForImageTextToText.from_pretrained(exported.path, dtype=torch.float32)
    torch.testing.assert_close(logits(plain, load_processor(exported.path), probe), trained, atol=1e-4, rtol=1e-4)
