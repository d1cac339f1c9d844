"""The golden prompts an export is verified on: the user's, else a few kept from the data ``fit`` saw
(:mod:`tunekit.data.summary`), else tunekit's defaults."""

from __future__ import annotations

from typing import Any

from tunekit.data.images import ImageOptions
from tunekit.errors import ConfigError
from tunekit.inference import check_prompts

__all__ = ["DEFAULT_PROMPTS", "IMAGE_PROMPT", "golden_image", "golden_prompts", "with_images"]

# Used only when the tuner has seen no data (e.g. ``tk.load`` of a save made before tunekit kept prompts).
DEFAULT_PROMPTS = ["Hello! Who are you?", "Write one sentence about the sea.", "What is 2 + 3?", "Translate: cheese"]


def golden_prompts(summary: dict[str, Any] | None, given: Any, n: int) -> tuple[list[Any], str]:
    """The prompts to verify on and where they came from: the user's, else up to ``n`` kept from the data."""
    if given is not None:
        if isinstance(given, str) or (isinstance(given, list) and given and isinstance(given[0], dict)):
            given = [given]  # one prompt (a string or one conversation)
        prompts = list(given)
        if not prompts:
            raise ConfigError("export(golden_prompts=[]): pass at least one prompt, or None to sample from the data")
        for p in prompts:
            if not isinstance(p, (str, list)) or (isinstance(p, str) and not p):
                raise ConfigError(
                    f"export(golden_prompts=...): {p!r} is not a prompt; pass non-empty strings or lists of chat "
                    'messages like [{"role": "user", "content": "..."}]'
                )
        return prompts, "given"
    kept = list((summary or {}).get("prompts") or [])
    if kept:
        return kept[:n], f"sampled from the {(summary or {}).get('prompts_from', 'training')} data"
    return DEFAULT_PROMPTS[:n], "tunekit's default prompts (the tuner has seen no data)"


# A vision-language model's export is verified on at least one prompt with an image: this one, when none has one.
IMAGE_PROMPT = "Describe the image."


def golden_image() -> Any:
    """The image a golden prompt gets where it has none of its own (prompts kept from the data keep the places of
    their images, not the pixels): 32 x 32 pixels, four coloured quadrants, the same every time."""
    from PIL import Image

    image = Image.new("RGB", (32, 32), (220, 40, 40))
    image.paste((40, 160, 60), (16, 0, 32, 16))
    image.paste((40, 80, 220), (0, 16, 16, 32))
    image.paste((240, 220, 60), (16, 16, 32, 32))
    return image


def with_images(prompts: list[Any], source: str, objective: Any, training: Any) -> tuple[list[Any], str]:
    """A vision-language model's golden prompts: an image part without its pixels (a prompt kept from the data) gets
    :func:`golden_image`; with no image in any prompt, one that asks about :func:`golden_image` is added; every image is
    read and fitted to the pixel budget as ``generate`` reads it (``training``: ``Training(max_pixels=...)``)."""

    def filled(prompt: Any) -> Any:
        if not isinstance(prompt, list):
            return prompt
        out = []
        for m in prompt:
            content = m.get("content")
            if isinstance(content, list):
                content = [
                    {**p, "image": golden_image()} if p.get("type") == "image" and _no_payload(p) else p
                    for p in content
                ]
            out.append({**m, "content": content})
        return out

    prompts = [filled(p) for p in prompts]
    if not any(isinstance(p, list) and any(_has_image(m) for m in p) for p in prompts):
        image_prompt = [{"role": "user", "content": [{"type": "image", "image": golden_image()},
                                                      {"type": "text", "text": IMAGE_PROMPT}]}]  # fmt: skip
        prompts.append(image_prompt)
        source += f", and {IMAGE_PROMPT!r} about tunekit's test image"
    checked, _ = check_prompts(prompts, objective, images=ImageOptions.of(training))
    return checked, source


def _no_payload(part: dict[str, Any]) -> bool:
    return all(part.get(k) is None for k in ("image", "image_url", "url", "path"))


def _has_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(p.get("type") in ("image", "image_url") for p in content)
