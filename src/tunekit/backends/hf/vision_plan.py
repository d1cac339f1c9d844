"""``plan()`` for vision-language models: the tokens the images become, and the vision tower's share of the memory.

How many tokens an image becomes is the processor's business (Qwen-VL: one per 2x2 merged patches of the resized
image; Gemma 3: a fixed count; LLaVA-NeXT and Idefics3 / SmolVLM: per tile of the image's grid) and depends only on
the image's size (after the data layer fitted it to ``Training(max_pixels / min_pixels)``), so the plan asks the
processor once per distinct size, on a blank image of that size, and writes that expansion into the text in place
of each image's placeholder (:class:`CountingProcessor`). The rows then go through the very encoding ``fit`` uses
(:func:`.vision.encode_vision`: the same turns, labels and truncation rules), so the plan's token count is the
collator's, without computing any row's pixel values.

Memory: the tower's and projector's weights are parameters of the model like any other (the plan counts every
parameter, and the gradients and optimizer state of those that train). Activations: the language model's come from
:mod:`.memory`'s per-layer formula (on its decoder layers and text config); a vision tower that trains (LoRA or full,
``LoRA(vision_tower=...)``) also keeps, per patch it encodes, what each of its blocks keeps for the backward
(:func:`tower_bytes`). A frozen tower keeps nothing for the backward (its inputs need no gradient).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from tunekit._torch import unwrap_peft
from tunekit.backends.hf.memory import block_bytes_per_token
from tunekit.backends.hf.vision import VISION_TOWER_NAMES, VisionEncoded, encode_vision, part_of
from tunekit.data.formats import Example
from tunekit.data.rows import IMAGES, TrainerRows
from tunekit.data.templates import image_placeholder

__all__ = [
    "CountingProcessor",
    "VisionCount",
    "count_preference_images",
    "count_vision",
    "tower_bytes",
    "vision_params",
]


@dataclass(frozen=True)
class _Expansion:
    text: str  # what the processor writes for one image of this size in place of its placeholder
    pixel_values: int  # values of the image's pixel tensor(s), as the processor makes them for the tower


class CountingProcessor:
    """Stands in for a vision-language model's processor where only token ids are needed: an image's placeholder is
    replaced by the text the real processor expands it to for an image of that size (asked once per size, on a blank
    image) and the whole piece is tokenised, as processors do; no row's pixel values are computed.

    Example:
        >>> counting = CountingProcessor(processor, image_placeholder(processor.tokenizer))  # doctest: +SKIP
        >>> counting(text=[counting.placeholder + "hi"], images=[image])["input_ids"]  # doctest: +SKIP
    """

    def __init__(self, processor: Any, placeholder: str) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.placeholder = placeholder
        self.sizes: dict[tuple[int, int], _Expansion] = {}

    def expansion(self, size: tuple[int, int]) -> _Expansion:
        """What one image of ``size`` (width, height) becomes, asked of the real processor once."""
        if size not in self.sizes:
            from PIL import Image

            out = self.processor(
                text=[self.placeholder], images=[Image.new("RGB", size)], add_special_tokens=False, return_tensors="pt"
            )
            ids = [int(i) for i in out["input_ids"][0].tolist()]
            text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            pixels = out.get("pixel_values")
            self.sizes[size] = _Expansion(text, int(pixels.numel()) if pixels is not None else 0)
        return self.sizes[size]

    def __call__(self, text: list[str], images: list[Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop("return_tensors", None)
        (piece,) = text
        parts = piece.split(self.placeholder)
        images = list(images or [])
        if len(parts) - 1 != len(images):
            raise ValueError(f"{len(parts) - 1} image placeholders for {len(images)} images")
        expanded = parts[0] + "".join(self.expansion(im.size).text + rest for im, rest in zip(images, parts[1:]))
        ids = self.tokenizer(expanded, add_special_tokens=kwargs.get("add_special_tokens", False))["input_ids"]
        return {"input_ids": [list(ids)]}


@dataclass
class VisionCount:
    """Rows with images as ``fit`` will encode them (``encoded``: token ids and labels, no pixel values; for DPO, the
    rows trl reads, their token count with the images' tokens), with the images' share: how many, how many tokens
    stand for them, and the pixel values each sequence's images hold."""

    encoded: VisionEncoded | TrainerRows
    images: int = 0
    image_tokens: int = 0
    pixel_values: list[int] = field(default_factory=list)  # per sequence


def count_vision(
    processor: Any, tokenizer: Any, examples: Iterable[Example], settings: dict[str, Any], *, image_token_id: Any
) -> VisionCount:
    """Encode ``examples`` as :func:`.vision.encode_vision` does for ``fit`` (``settings``: as ``VisionRows``
    carries them), the images counted by size (:class:`CountingProcessor`). ``image_token_id``: the id the model
    puts image features at (its config's), whose occurrences are the image tokens."""
    counting = CountingProcessor(processor, image_placeholder(tokenizer))
    enc = encode_vision(counting, tokenizer, examples, **settings)
    images = sum(len(imgs) for imgs in enc.images)
    image_tokens = sum(ids.count(image_token_id) for ids in enc.input_ids) if image_token_id is not None else 0
    pixels = [sum(counting.expansion(im.size).pixel_values for im in imgs) for imgs in enc.images]
    return VisionCount(enc, images, image_tokens, pixels)


def count_preference_images(processor: Any, tokenizer: Any, rows: TrainerRows, *, image_token_id: Any) -> VisionCount:
    """Preference rows with images (an ``images`` column, for trl's DPO trainer) with their images counted:
    ``rows.num_tokens`` counted each image's placeholder as text; trl's collator hands the prompt to the processor
    once for the chosen and once for the rejected answer, so each image adds, per answer, the tokens it expands to
    beyond its placeholder's."""
    counting = CountingProcessor(processor, image_placeholder(tokenizer))
    placeholder = len(tokenizer(counting.placeholder, add_special_tokens=False)["input_ids"])
    extra = images = image_tokens = 0
    pixels: list[int] = []
    for record in rows.records:
        found = list(record.get(IMAGES) or [])
        answers = sum(1 for k in ("chosen", "rejected", "completion") if record.get(k) is not None) or 1
        expanded = [counting.expansion(im.size) for im in found]
        ids = [tokenizer(e.text, add_special_tokens=False)["input_ids"] for e in expanded]
        extra += answers * sum(len(i) - placeholder for i in ids)
        images += len(found)
        image_tokens += answers * sum(list(i).count(image_token_id) for i in ids) if image_token_id is not None else 0
        pixels += [sum(e.pixel_values for e in expanded)] * answers
    counted = replace(rows, num_tokens=rows.num_tokens + extra)
    return VisionCount(counted, images, image_tokens, pixels)


def vision_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters of the vision tower and the projector."""
    seen: dict[int, tuple[bool, int]] = {}
    for name, p in unwrap_peft(model).named_parameters():
        if part_of(name) != "language_model":
            seen.setdefault(id(p), (bool(p.requires_grad), int(p.numel())))
    return sum(n for t, n in seen.values() if t), sum(n for _, n in seen.values())


def _tower(model: Any) -> tuple[Any, Any] | None:
    """(the vision tower's repeated blocks, its config), or None where the tower is laid out otherwise."""
    import torch

    base = unwrap_peft(model)
    config = getattr(base.config, "vision_config", None)
    if config is None:
        return None
    depth = int(getattr(config, "depth", None) or getattr(config, "num_hidden_layers", 0) or 0)
    for name, module in base.named_modules():
        parts = name.split(".")
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module) == depth
            and any(p in VISION_TOWER_NAMES for p in parts)
            and part_of(name) == "vision_tower"
        ):
            return module, config
    return None


def tower_bytes(model: Any, pixel_values: int, *, mixed: bool, weight_bytes: int) -> int:
    """Bytes the vision tower keeps for the backward when it trains, for images of ``pixel_values`` values in all:
    each block's per-patch bytes (:func:`.memory.block_bytes_per_token`, the language model's formula on the
    tower's block) times the patches (values over ``channels x patch_size^2 x temporal_patch_size``) times the
    blocks. 0 when nothing in the tower trains (a frozen tower's inputs need no gradient, so autograd keeps nothing
    of it), or where its blocks cannot be found."""
    found = _tower(model)
    if found is None or pixel_values <= 0:
        return 0
    blocks, config = found
    if not any(p.requires_grad for p in blocks.parameters()):
        return 0
    width = int(getattr(config, "embed_dim", None) or config.hidden_size)
    heads = int(getattr(config, "num_heads", None) or getattr(config, "num_attention_heads", 1) or 1)
    shape = SimpleNamespace(
        hidden_size=width, num_attention_heads=heads, num_key_value_heads=heads, head_dim=width // heads
    )
    patch = int(getattr(config, "patch_size", 14) or 14)
    per_patch = int(getattr(config, "num_channels", 3) or 3) * patch * patch
    per_patch *= int(getattr(config, "temporal_patch_size", 1) or 1)
    patches = math.ceil(pixel_values / per_patch)
    layer = next((b for b in blocks if any(p.requires_grad for p in b.parameters())), blocks[0])
    per_block = block_bytes_per_token(layer, shape, w=weight_bytes, mixed=mixed)
    # Blocks below the first that trains keep nothing (as in the language model: memory._layers_in_the_graph).
    first = next(i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters()))
    return int(patches * per_block * (len(blocks) - first))
