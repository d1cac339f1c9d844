"""Images in rows: where each image sits in the conversation, read into the example's images.

Every chat format (``messages``, ``conversations``, prompt / completion, Alpaca, preference pairs, KTO rows and RL
prompts) places images the same three ways, mixed freely within a dataset:

- an image part that holds the image: ``{"type": "image", "image": ...}`` (a path, URL, PIL image or bytes; ``url``
  or ``path`` for ``image`` as transformers writes them), OpenAI's ``{"type": "image_url", "image_url": {"url":
  ...}}`` (base64 ``data:`` URLs too) or the Responses API's ``{"type": "input_image", "image_url": ...}``;
- ``<image>`` in a user turn's text, filled from the row's ``images`` column in order (LLaMA-Factory's layout);
- an image part with no image, ``{"type": "image"}``, filled from the ``images`` column in order (TRL's layout,
  where ``images`` holds PIL images, paths or the ``{"bytes", "path"}`` objects ``datasets`` stores).

An ``image`` column holds one image (TRL's single-image layout). When the row has an ``images`` (or ``image``)
column, the number of places (``<image>`` markers and empty image parts) must equal the number of images it lists,
else the row is a :class:`tunekit.DatasetError` (TRL puts the images of a row with no places before its first user
turn's text; tunekit does not guess which turn an image belongs to). Without such a column, ``<image>`` is plain
text: text-only data reads exactly as before. Images go in user turns only: an assistant, system or tool turn with
one, and an answer (a preference pair's ``chosen`` / ``rejected``, a ``completion``) with one, is refused.

The result is the normalised form the rest of tunekit reads: the example's ``images`` (read and checked by
:func:`tunekit.data.images.load_image`, in the order of their places across the conversation) and each message that
holds images with ``content`` as a list of ``{"type": "image"}`` and ``{"type": "text", "text": ...}`` parts;
messages without images keep ``content`` a string.

Example:
    >>> import io
    >>> from PIL import Image
    >>> from tunekit.data import normalise
    >>> png = io.BytesIO()
    >>> Image.new("RGB", (8, 8), "blue").save(png, format="PNG")
    >>> row = {"messages": [{"role": "user", "content": "<image>What colour?"},
    ...                     {"role": "assistant", "content": "blue"}], "images": [png.getvalue()]}
    >>> ex = normalise([row]).examples[0]
    >>> ex.messages[0]["content"], ex.images[0].size
    ([{'type': 'image'}, {'type': 'text', 'text': 'What colour?'}], (8, 8))
"""

from __future__ import annotations

from typing import Any

from tunekit.data.columns import IMAGE_COLUMNS, filled, parse_json_cell
from tunekit.data.images import ImageOptions, load_image
from tunekit.errors import DatasetError

__all__ = ["PLACEHOLDER", "place_images"]

PLACEHOLDER = "<image>"
Messages = tuple[dict[str, Any], ...]
_SLOT = object()  # a place filled from the images column


def _column(row: dict[str, Any], i: int) -> tuple[str | None, list[Any]]:
    """The image column the row has (``images``, else ``image``; None: neither) and the images it lists."""
    present = [c for c in IMAGE_COLUMNS if c in row]
    given = [c for c in present if filled(row[c])]
    if len(given) > 1:
        raise DatasetError(
            f"row {i}: both an 'images' and an 'image' column; keep one ('images' lists the row's images, 'image' "
            "holds one)",
            row=i,
            field="image",
        )
    if not present:
        return None, []
    name = given[0] if given else present[0]
    value = row[name]
    if isinstance(value, str) and value.strip().startswith("["):
        value = parse_json_cell(value, i, name)  # a CSV cell holding the JSON list
    if not filled(value):
        return name, []
    if isinstance(value, (list, tuple)):
        if name == "image" and len(value) != 1:
            raise DatasetError(
                f"row {i}, field 'image': a list of {len(value)} images; the 'image' column holds one image, an "
                "'images' column a list of them: rename the column",
                row=i,
                field="image",
            )
        return name, list(value)
    return name, [value]


def _split(text: str) -> list[Any]:
    """Text parts and places (``<image>`` markers), in order; empty text between them dropped."""
    out: list[Any] = []
    for k, piece in enumerate(text.split(PLACEHOLDER)):
        if k:
            out.append(_SLOT)
        if piece:
            out.append({"type": "text", "text": piece})
    return out


def _pieces(content: Any, splits: bool) -> list[Any] | None:
    """The message's text parts, images (the image as given) and places, in order; None when it holds none."""
    if isinstance(content, str):
        return _split(content) if splits and PLACEHOLDER in content else None
    if not isinstance(content, list):
        return None
    out: list[Any] = []
    for part in content:
        if part["type"] == "image":
            out.append(_SLOT if part.get("image") is None else part)
        elif splits and PLACEHOLDER in part["text"]:
            out += _split(part["text"])
        else:
            out.append(part)
    return out


def place_images(
    fields: list[tuple[str, Messages | None]],
    row: dict[str, Any],
    i: int,
    options: ImageOptions | None,
    *,
    answers: frozenset[str] = frozenset(),
) -> tuple[list[Messages | None], tuple[Any, ...]]:
    """The messages of each field (in the order given: prompt first, then answers) with their images in the
    normalised form, and the images read in that order. ``answers``: the fields that may not hold an image
    (preference answers). Messages without images are returned as they are."""
    column, listed = _column(row, i)
    splits = column is not None
    found: list[tuple[str, int, list[Any]]] = []  # (field, message index, pieces) of the messages with images
    slots = 0
    for name, msgs in fields:
        for j, m in enumerate(msgs or ()):
            pieces = _pieces(m.get("content"), splits)
            if pieces is None or not any(p is _SLOT or p.get("type") == "image" for p in pieces):
                continue
            where = f"row {i}, field {name!r}, message {j + 1}"
            if m["role"] != "user":
                raise DatasetError(
                    f"{where}: {PLACEHOLDER!r} in the {m['role']}'s message; images go in user turns (the model reads "
                    "them, and writes text)",
                    row=i,
                    field=name,
                )
            if name in answers:
                raise DatasetError(
                    f"{where}: an image in the answer; a preference pair's images go in the prompt (the answers are "
                    "the text the model writes)",
                    row=i,
                    field=name,
                )
            if column is None and any(p is _SLOT for p in pieces):
                raise DatasetError(
                    f"{where}: an image part with no image ({{'type': 'image'}}); give the image in it "
                    "({'type': 'image', 'image': 'photo.png'}), or list the row's images in an 'images' column",
                    row=i,
                    field=name,
                )
            slots += sum(p is _SLOT for p in pieces)
            found.append((name, j, pieces))
    if column is not None and slots != len(listed):
        raise DatasetError(
            f"row {i}, field {column!r}: {len(listed)} image{'s' * (len(listed) != 1)} listed but {slots} "
            f"place{'s' * (slots != 1)} for images in the conversation ({PLACEHOLDER!r} in the text, or "
            "{'type': 'image'} parts); each image needs its place, in order: add or remove the markers, or fix the "
            "list",
            row=i,
            field=column,
        )
    if not found:
        return [msgs for _, msgs in fields], ()
    images: list[Any] = []
    filled_slots = 0
    content: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for name, j, pieces in found:
        parts: list[dict[str, Any]] = []
        for piece in pieces:
            if piece is _SLOT:
                filled_slots += 1
                where = f"row {i}, field {column!r}, image {filled_slots}"
                images.append(load_image(listed[filled_slots - 1], options, where=where, row=i, field=column))
            elif piece["type"] == "image":
                where = f"row {i}, field {name!r}, message {j + 1}, image {len(images) + 1}"
                images.append(load_image(piece["image"], options, where=where, row=i, field=name))
            else:
                parts.append(piece)
                continue
            parts.append({"type": "image"})
        content[(name, j)] = parts
    out = [
        None if msgs is None else tuple(
            {**m, "content": content[(name, j)]} if (name, j) in content else m for j, m in enumerate(msgs)
        )
        for name, msgs in fields
    ]  # fmt: skip
    return out, tuple(images)
