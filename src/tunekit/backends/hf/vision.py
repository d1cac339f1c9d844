"""Vision-language models: loading with their processor, encoding rows with images, the collator, which parts train.

A model whose config is an image-text-to-text one (transformers' ``AutoModelForImageTextToText`` mapping: Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, Gemma 3, LLaVA, LLaVA-NeXT, Idefics3 / SmolVLM, ...) loads with that auto class and with
``AutoProcessor``; tunekit's tokenizer is ``processor.tokenizer`` with the processor's chat template, so every text
path (template checks, pad token, generation) works on it unchanged.

Rows with images (``Example.images`` and ``{"type": "image"}`` content parts) are rendered with the chat template
and cut into the same prompt / answer pieces as text rows (:mod:`tunekit.data.turns`); each piece goes through the
processor, which expands its image placeholders into the image's tokens (how many depends on the image and the
family), so labels are exact without knowing any family's expansion: prompt pieces and every image token are -100,
answer pieces (end of turn included) are labelled. trl's ``DataCollatorForVisionLanguageModeling`` does the same
piece by piece for prompt/completion rows, but re-renders conversations itself and masks assistant turns only with
templates that carry ``{% generation %}`` markers; tunekit keeps its own turn finding (``SFT(train_on=...)``,
reasoning, per-turn ``"train": false``) and uses the processor for what only it knows.

Which parts train (:func:`part_of`): every parameter is in the vision tower, the projector (the layers that map
image features into the language model's embedding space) or the language model (the rest: embeddings, decoder,
head). Module names differ by family; the names below cover the families transformers ships.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tunekit._processors import load_processor as images_processor
from tunekit.data.control_tokens import control_tokens, find_control_token
from tunekit.data.encoding import IGNORE
from tunekit.data.formats import Example
from tunekit.data.templates import image_placeholder
from tunekit.data.turns import render_turns, supervised_turns
from tunekit.errors import DatasetError, IncompatibleError

__all__ = [
    "IMAGES_KEY",
    "PROJECTOR_NAMES",
    "VISION_TOWER_NAMES",
    "VisionCollator",
    "VisionEncoded",
    "VisionSource",
    "encode_vision",
    "images_of",
    "is_vision_config",
    "is_vision_model",
    "load_processor",
    "part_of",
    "vision_inputs",
]

logger = logging.getLogger("tunekit")

Part = Literal["vision_tower", "projector", "language_model"]

# Module names of the image encoder, by family: LLaVA / LLaVA-NeXT / Gemma 3 ("vision_tower"), Qwen2-VL / 2.5-VL / 3-VL
# ("visual"), Idefics3 / SmolVLM / Mllama ("vision_model"), others ("vision_encoder", "image_encoder").
VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
# The projector: LLaVA / Gemma 3 ("multi_modal_projector"), Idefics3 / SmolVLM ("connector"), Qwen-VL (the tower's
# "merger", Qwen3-VL's "deepstack_merger_list" too), others ("mm_projector", "multi_modal_projection").
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "merger", "deepstack_merger_list", "mm_projector")


def is_vision_config(config: Any) -> bool:
    """Whether ``config`` is an image-text-to-text model's (loaded by ``AutoModelForImageTextToText``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and (
        getattr(config, "vision_config", None) is not None
    )


def is_vision_model(model: Any) -> bool:
    """Whether ``model`` (a peft model or a plain one) is a vision-language model."""
    return is_vision_config(getattr(model, "config", None))


def part_of(name: str) -> Part:
    """Which part of a vision-language model the parameter or module ``name`` belongs to."""
    parts = name.split(".")
    if any(p in PROJECTOR_NAMES for p in parts):  # before the tower: Qwen-VL's merger sits inside ``visual``
        return "projector"
    if any(p in VISION_TOWER_NAMES for p in parts):
        return "vision_tower"
    return "language_model"


def load_processor(ref: str, *, trust_remote_code: bool, model_type: str | None = None) -> Any:
    """The processor of the vision-language model at ``ref`` (without its video processor where transformers cannot
    build that one: ``tunekit._processors.load_processor``); IncompatibleError when there is none usable."""
    family = model_type or "this model"
    try:
        processor = images_processor(ref, model_type=model_type, trust_remote_code=trust_remote_code)
    except (ImportError, OSError, ValueError) as e:
        raise IncompatibleError(
            f"{ref!r} is a vision-language model ({family}) but its processor could not be loaded ({e}); tunekit "
            "needs the processor (image processor and tokenizer) beside the weights"
        ) from e
    check_processor(processor, ref, family)
    return processor


def check_processor(processor: Any, ref: Any, family: str) -> None:
    """A processor tunekit can train with: an image processor, a tokenizer, a chat template."""
    missing = [a for a in ("image_processor", "tokenizer") if getattr(processor, a, None) is None]
    if missing:
        raise IncompatibleError(
            f"the processor of {ref!r} ({family}, {type(processor).__name__}) has no {' or '.join(missing)}; tunekit "
            "trains vision-language models whose processor pairs an image processor with a tokenizer"
        )
    tok = processor.tokenizer
    if getattr(tok, "chat_template", None) is None and getattr(processor, "chat_template", None):
        tok.chat_template = processor.chat_template  # the processor's template is the one its model was trained on


def images_of(ex: Example) -> tuple[Any, ...]:
    """The row's images (``Example.images``: empty for a text row)."""
    return tuple(getattr(ex, "images", ()) or ())


@dataclass(frozen=True)
class _Probe:
    """What encoding needs to know of the processor once: the text its chat template writes for one image, and the
    token ids an image becomes (never labelled)."""

    placeholder: str
    image_ids: frozenset[int]


def _probe(processor: Any, tokenizer: Any) -> _Probe:
    from PIL import Image

    placeholder = image_placeholder(tokenizer)
    if not placeholder:
        raise IncompatibleError(
            f"the chat template of this {type(processor).__name__} writes nothing for an image part "
            "({'type': 'image'}); tunekit needs a template that places the image tokens"
        )
    expanded = processor(text=[placeholder], images=[Image.new("RGB", (64, 64))], add_special_tokens=False)
    ids = _as_list(expanded["input_ids"])
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids or [])
    return _Probe(placeholder, frozenset(i for i in ids if i in added))


def _as_list(value: Any) -> list[int]:
    row = value[0] if len(value) and not isinstance(value[0], int) else value
    return [int(x) for x in (row.tolist() if hasattr(row, "tolist") else row)]


@dataclass
class VisionEncoded:
    """Rows with images (and text rows beside them) as the trainer reads them: like :class:`~tunekit.data.encoding
    .Encoded`, plus each row's images, its per-token processor fields (``mm_token_type_ids``, ``token_type_ids``)
    and the placeholder text the collator hands the processor for the image tensors."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    rows: list[int]
    images: list[tuple[Any, ...]] = field(default_factory=list)
    extras: list[dict[str, list[int]]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truncated: int = 0
    processor: Any = None
    placeholder: str = ""

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def to_dataset(self) -> Any:
        """A ``datasets.Dataset`` of the token ids, labels and per-token fields (what trl's trainer takes), each row
        with a key to its images; the images themselves stay PIL images in ``dataset.tunekit_vision``
        (:class:`VisionSource`), never written to Arrow."""
        from datasets import Dataset

        prefix = uuid.uuid4().hex[:8]
        keys = [f"{prefix}:{i}" for i in range(len(self.input_ids))]
        columns: dict[str, list[Any]] = {"input_ids": self.input_ids, "labels": self.labels, IMAGES_KEY: keys}
        for name in sorted({k for e in self.extras for k in e}):
            columns[name] = [e.get(name) or [0] * len(ids) for e, ids in zip(self.extras, self.input_ids)]
        data = Dataset.from_dict(columns)
        data.tunekit_vision = VisionSource(self.processor, self.placeholder, dict(zip(keys, self.images)))
        return data


IMAGES_KEY = "tunekit_images"  # the dataset column naming each row's images in its VisionSource


@dataclass
class VisionSource:
    """What the collator needs beside a vision dataset's rows: the processor, the placeholder text of one image, and
    each row's images by key."""

    processor: Any
    placeholder: str
    images: dict[str, tuple[Any, ...]]


def _pieces(text: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    bounds = [0]
    for start, end in spans:
        bounds += [start, end]
    bounds.append(len(text))
    return [text[a:b] for a, b in itertools.pairwise(bounds)]  # prompt, turn, ..., turn, what follows


def _check_parts(ex: Example, tokens: tuple[str, ...]) -> None:
    """Images in user (or system) turns only; no control token typed in a text part."""
    for k, m in enumerate(ex.messages or ()):
        content = m.get("content")
        if not isinstance(content, list):
            continue
        if m["role"] == "assistant" and any(p.get("type") == "image" for p in content):
            raise DatasetError(
                f"row {ex.row}, message {k + 1}: an assistant message holds an image; the model writes text only, "
                "so images go in user (or system) messages",
                row=ex.row,
            )
        texts = [p.get("text", "") for p in content if p.get("type") == "text"]
        found = find_control_token(texts, tokens)
        if found is not None:
            raise DatasetError(
                f"row {ex.row}, message {k + 1}: a text part holds the control token {found!r}; remove it, or pass "
                "Training(allow_control_tokens=True) if it is meant as one",
                row=ex.row,
            )


def encode_vision(
    processor: Any,
    tokenizer: Any,
    examples: Iterable[Example],
    *,
    max_length: int,
    train_on_prompt: bool = False,
    train_on: Any = "all_assistant",
    reasoning: Any = "inference",
    add_eos: bool = True,
    on_bad_rows: str = "error",
    allow_control_tokens: bool = False,
) -> VisionEncoded:
    """Encode ``examples`` (rows with images, and text rows beside them) with the processor.

    A sequence longer than ``max_length`` is cut only after its last image token: cutting inside an image would
    leave the model fewer image tokens than image features (transformers refuses that batch). Such a row is a bad
    row (skipped with ``on_bad_rows="skip"``, else a DatasetError naming it and the fix)."""
    probe = _probe(processor, tokenizer)
    out = VisionEncoded([], [], [], processor=processor, placeholder=probe.placeholder)
    tokens = () if allow_control_tokens else control_tokens(tokenizer)
    for ex in examples:
        images = images_of(ex)
        if ex.messages is None:  # a raw text row beside the vision rows (CausalLM): every token trains
            text_ids = [int(i) for i in tokenizer(ex.text or "", add_special_tokens=True)["input_ids"]]
            eos = tokenizer.eos_token_id
            if add_eos and eos is not None and (not text_ids or text_ids[-1] != eos):
                text_ids.append(eos)
            _add(out, ex.row, text_ids, list(text_ids), (), {}, probe, max_length=max_length, on_bad_rows=on_bad_rows)
            continue
        _check_parts(ex, tokens)
        turns = supervised_turns(ex.messages, ex.trained, train_on, row=ex.row)
        sequences = render_turns(tokenizer, ex.messages, turns, tools=ex.tools, reasoning=reasoning, row=ex.row)
        for seq in sequences:
            pieces = _pieces(seq.text, seq.spans)
            counts = [p.count(probe.placeholder) for p in pieces]
            shown = sum(counts)
            if shown > len(images):
                raise DatasetError(
                    f"row {ex.row}: the chat template wrote {shown} image placeholders ({probe.placeholder!r}) for "
                    f"{len(images)} image(s); give one {{'type': 'image'}} part per image",
                    row=ex.row,
                )
            # A sequence of its own (a turn trained with the history a server shows) holds the images up to it.
            seq_images = images[:shown]
            ids: list[int] = []
            labels: list[int] = []
            extras: dict[str, list[int]] = {}
            used = 0
            for k, (piece, n) in enumerate(zip(pieces, counts)):
                if not piece:
                    continue
                enc = processor(
                    text=[piece], images=list(seq_images[used : used + n]) or None, add_special_tokens=False
                )
                used += n
                piece_ids = _as_list(enc["input_ids"])
                for key, value in enc.items():
                    if key in ("input_ids", "attention_mask"):
                        continue
                    row_values = _maybe_per_token(value, len(piece_ids))
                    if row_values is not None:
                        extras.setdefault(key, [0] * len(ids)).extend(row_values)
                for key in extras:
                    if len(extras[key]) < len(ids) + len(piece_ids):
                        extras[key].extend([0] * (len(ids) + len(piece_ids) - len(extras[key])))
                trained = k % 2 == 1 or train_on_prompt
                ids += piece_ids
                labels += [t if trained and t not in probe.image_ids else IGNORE for t in piece_ids]
            _add(out, ex.row, ids, labels, seq_images, extras, probe, max_length=max_length, on_bad_rows=on_bad_rows)
    if not out.input_ids:
        first = f", the first as {out.skipped[0][1]}" if out.skipped else ""
        raise DatasetError(f"no row left to train on: every row was skipped{first}")
    return out


def _maybe_per_token(value: Any, length: int) -> list[int] | None:
    """A processor field with one value per token (``mm_token_type_ids``, ``token_type_ids``), as a list."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return _as_list(value) if len(shape) == 2 and shape[0] == 1 and shape[1] == length else None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list) and len(value[0]) == length:
        return [int(x) for x in value[0]]
    return None


def _add(
    out: VisionEncoded,
    row: int,
    ids: list[int],
    labels: list[int],
    images: tuple[Any, ...],
    extras: dict[str, list[int]],
    probe: _Probe,
    *,
    max_length: int,
    on_bad_rows: str,
) -> None:
    reason = None
    if len(ids) > max_length:
        last_image = max((k for k, t in enumerate(ids) if t in probe.image_ids), default=-1)
        if last_image >= max_length:
            reason = (
                f"row {row}: its image tokens run to position {last_image + 1}, past max_length={max_length}, and a "
                "sequence is never cut inside an image; raise Training(max_length=...), or lower "
                "Training(max_pixels=...) so that each image makes fewer tokens"
            )
        else:
            ids, labels = ids[:max_length], labels[:max_length]
            extras = {k: v[:max_length] for k, v in extras.items()}
            out.truncated += 1
    if reason is None and all(lab == IGNORE for lab in labels[1:]):
        reason = (
            f"row {row}: no supervised token left after truncation to max_length={max_length}; raise "
            "Training(max_length=...) or shorten the prompt"
        )
    if reason is not None:
        if on_bad_rows == "skip":
            out.skipped.append((row, reason))
            return
        raise DatasetError(reason, row=row)
    out.input_ids.append(ids)
    out.labels.append(labels)
    out.rows.append(row)
    out.images.append(tuple(images))
    out.extras.append(extras)


class VisionCollator:
    """Pads tunekit's encoded rows (right side) and adds the image tensors the processor makes for the batch's images
    (``pixel_values`` and, by family, ``image_grid_thw``, ``pixel_attention_mask``, ``image_sizes``...)."""

    def __init__(self, sources: Sequence[VisionSource], pad_token_id: int) -> None:
        self.processor = sources[0].processor
        self.placeholder = sources[0].placeholder
        self.images = {k: v for s in sources for k, v in s.images.items()}
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        skip = {"input_ids", "labels", IMAGES_KEY}
        extra_keys = sorted({k for f in features for k in f if k not in skip and not k.startswith("tunekit_")})

        def padded(rows: list[list[int]], fill: int) -> Any:
            return torch.tensor([list(r) + [fill] * (width - len(r)) for r in rows], dtype=torch.long)

        lengths = [len(f["input_ids"]) for f in features]
        batch: dict[str, Any] = {
            "input_ids": padded([f["input_ids"] for f in features], self.pad_token_id),
            "labels": padded([f["labels"] for f in features], IGNORE),
            "attention_mask": padded([[1] * n for n in lengths], 0),
        }
        for key in extra_keys:
            batch[key] = padded([f.get(key) or [0] * n for f, n in zip(features, lengths)], 0)
        images = [list(self.images.get(f.get(IMAGES_KEY, ""), ())) for f in features]
        if any(images):
            batch.update(vision_inputs(self.processor, self.placeholder, images))
        batch["tunekit_real_tokens"] = sum(lengths)
        return batch


def vision_inputs(processor: Any, placeholder: str, images: list[list[Any]]) -> dict[str, Any]:
    """The image tensors of a batch, made by the processor as it makes them at inference (each family nests, pads and
    sizes them its own way); the token ids it makes beside them are tunekit's already."""
    texts = [placeholder * len(imgs) for imgs in images]
    out = processor(text=texts, images=images, padding=True, add_special_tokens=False, return_tensors="pt")
    skip = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}
    return {k: v for k, v in out.items() if k not in skip}


def apply_pixel_budget(processor: Any, *, max_pixels: int | None, min_pixels: int | None) -> None:
    """``Training(max_pixels=..., min_pixels=...)`` for image processors with a pixel budget of their own (Qwen-VL's
    ``size`` is one: its ``longest_edge`` / ``shortest_edge`` count pixels), so that the processor does not resize
    again what the data layer fitted. Other families resize to a fixed size and keep their settings."""
    ip = getattr(processor, "image_processor", None)
    if ip is None or (max_pixels is None and min_pixels is None) or "qwen" not in type(ip).__module__:
        return
    size = ip.size
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels


# Put before a chat template that reads every message's content as a list of parts (LLaVA's, Idefics3's, SmolVLM's):
# a message whose content is a string becomes one text part, so that tunekit's text paths (template checks, text
# rows, prompts) render through it. With ``tunekit_eos``, an assistant message's text also ends with the EOS token, for
# templates that end an assistant turn with no control token (LLaVA's): the model learns to stop, as its original
# training taught it. A list's parts otherwise render as the template writes them.
def _prefix(eos: bool) -> str:
    answer = (
        "{%- if m['role'] == 'assistant' and m['content'] is not none -%}"
        "{%- if m['content'] is string -%}{%- set text = m['content'] -%}"
        "{%- else -%}{%- set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
        "| join('') -%}{%- endif -%}"
        "{%- set tunekit_ns.messages = tunekit_ns.messages + [dict(m, content=[{'type': 'text', 'text': text + "
        "eos_token}])] -%}"
        "{%- elif m['content'] is string -%}"
        if eos
        else "{%- if m['content'] is string -%}"
    )
    return (
        "{#- tunekit: text content as parts -#}"
        "{%- set tunekit_ns = namespace(messages=[]) -%}"
        "{%- for m in messages -%}" + answer + "{%- set tunekit_ns.messages = tunekit_ns.messages + [dict(m, "
        "content=[{'type': 'text', 'text': m['content']}])] -%}"
        "{%- else -%}{%- set tunekit_ns.messages = tunekit_ns.messages + [m] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = tunekit_ns.messages -%}"
    )


_MARK = "{#- tunekit: text content as parts -#}"


def accept_text_content(tokenizer: Any) -> bool:
    """Let a vision-language model's chat template render messages whose content is a string, when it reads content
    as a list of parts only, and end each assistant turn with EOS when it ends them with no control token (both
    checked by rendering a short conversation); True when the template was changed."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or template.startswith(_MARK):
        return False
    typo = "<\\s>"  # LLaVA-NeXT (Mistral)'s released template ends an answer with the text '<\s>', meaning '</s>'
    if tokenizer.eos_token == "</s>" and typo in template:
        template = template.replace(typo, "</s>")
        tokenizer.chat_template = template
        changed = True
    else:
        changed = False
    probe = [{"role": "user", "content": "tunekit-q"}, {"role": "assistant", "content": "tunekit-a"}]
    text = _try_render(tokenizer, probe)
    strings_ok = text is not None and "tunekit-q" in text and "tunekit-a" in text
    if not strings_ok:
        tokenizer.chat_template = _prefix(eos=False) + template
        text = _try_render(tokenizer, probe)
    markers = [t for t in (getattr(tokenizer, "all_special_tokens", None) or []) if t]
    markers += [str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()]
    tail = text.split("tunekit-a", 1)[1] if text is not None and "tunekit-a" in text else ""
    if text is not None and tokenizer.eos_token and not any(m in tail for m in markers):
        tokenizer.chat_template = _prefix(eos=True) + template
        return True
    return changed or not strings_ok


def _try_render(tokenizer: Any, messages: list[dict[str, Any]]) -> str | None:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    except Exception:  # the template failed on this content (e.g. 'str object' has no attribute 'text')
        return None
