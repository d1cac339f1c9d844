"""SFT with images on a tiny Qwen2-VL: the model learns to name the colour of an image it has not seen (loss falls,
held-out answers become right), mixed vision and text rows train together, generate / stream read images in the
training layout, and the save reloads with ``tk.load`` and with plain peft to the same outputs and logits."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("PIL")
from PIL import Image

import tunekit as tk
from tunekit.testing import tiny_model

from .helpers import cpu

COLOURS = {"red": (220, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 220)}


def prompt(colour: str, rng: random.Random) -> list[dict[str, Any]]:
    """A solid image of ``colour``, its shade and size varied, and the question."""
    r, g, b = (max(0, min(255, c + rng.randint(-30, 30))) for c in COLOURS[colour])
    side = rng.choice((16, 24, 32))
    image = Image.new("RGB", (side, side), (r, g, b))
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour?"}]}]


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = list(COLOURS)
    out = []
    for k in range(n):
        colour = names[k % len(names)]
        out.append({"messages": [*prompt(colour, rng), {"role": "assistant", "content": colour}]})
    return out


def answers_right(tuner: tk.Tuner, held: list[dict[str, Any]]) -> float:
    outs = tuner.generate([r["messages"][:1] for r in held], max_new_tokens=4)
    return sum(str(o) == r["messages"][1]["content"] for o, r in zip(outs, held)) / len(held)


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("qwen2-vl"), arch="qwen2_vl", initializer_range=0.2)


@pytest.fixture(scope="module")
def trained(qwen2_vl: Path) -> tuple[tk.Tuner, tk.FitResult, float, list[dict[str, Any]]]:
    train, held = rows(48, seed=1), rows(12, seed=2)
    text = [{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}] * 4
    tuner = tk.Tuner(
        qwen2_vl, method=tk.LoRA(r=8), training=cpu(max_steps=40, learning_rate=5e-3, batch_size=8), progress=False
    )
    before = answers_right(tuner, held)
    result = tuner.fit(train + text)  # vision and text rows in one dataset
    return tuner, result, before, held


def test_lora_learns_the_colour_of_unseen_images(trained: Any) -> None:
    tuner, result, before, held = trained
    assert before <= 0.34  # three colours: a random model may hit one by chance
    assert answers_right(tuner, held) >= 0.9
    assert result.train_loss < 0.2 * result.history[0]["loss"]
    assert result.num_examples == 52 and result.skipped_rows == []


def test_stream_reads_the_image_like_generate(trained: Any) -> None:
    tuner, _, _, held = trained
    message = held[0]["messages"][:1]
    assert "".join(tuner.stream(message, max_new_tokens=4)) == str(tuner.generate(message, max_new_tokens=4))


def test_save_reloads_to_the_same_outputs_and_logits(trained: Any, qwen2_vl: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    tuner, _, _, held = trained
    tuner.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "processor_config.json").is_file()  # the processor saved beside the adapter
    again = tk.load(tmp_path / "adapter")
    prompts = [r["messages"][:1] for r in held[:3]]
    assert [str(o) for o in again.generate(prompts, max_new_tokens=4)] == [
        str(o) for o in tuner.generate(prompts, max_new_tokens=4)
    ]
    processor = again.loaded.processor
    text = tuner.tokenizer.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)
    image = prompts[0][0]["content"][0]["image"]
    inputs = processor(text=[text], images=[[image]], add_special_tokens=False, return_tensors="pt")
    plain = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(qwen2_vl), tmp_path / "adapter")
    with torch.no_grad():
        expected = tuner.model.eval()(**inputs).logits
        got = plain.eval()(**inputs).logits
    torch.testing.assert_close(got, expected)


def test_evaluate_reads_the_images_and_scores_like_generate(trained: Any, tmp_path: Path) -> None:
    tuner, _, _, held = trained
    result = tuner.evaluate(held, metrics=["exact_match"])
    assert result.metrics["exact_match"] == answers_right(tuner, held) >= 0.9  # the images reached the model
    assert result.rows[0].prompt == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}
    ]  # a result row holds no pixels: it writes as plain JSON
    lines = result.to_jsonl(tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(held)
    with pytest.raises(tk.IncompatibleError, match=r"perplexity.*row 1 has one"):
        tuner.evaluate(held, metrics=["perplexity"])
