"""Tiny local vision-language models of each family tunekit supports: no network, about a second each on a CPU.

:func:`tiny_vlm` (also reached through ``tiny_model(path, arch="qwen2_vl")`` and the other :data:`VISION_ARCHS`)
writes what a released checkpoint of the family holds, at toy sizes: ``config.json`` (a 2-layer language model of
width 64 and a 2-layer vision tower on 4-pixel patches, so that one image is a few dozen tokens at most), random
seeded weights, a byte-level BPE tokenizer trained locally with the family's special tokens (image, vision start and
end, end of turn), the family's image-processor settings at small sizes, ``processor_config.json`` and the family's
real chat template, copied from the released model (``chat_templates/*.jinja``; :data:`TEMPLATE_SOURCES` says where
each came from).

The directory loads with plain transformers: ``AutoProcessor.from_pretrained(path)`` and
``AutoModelForImageTextToText.from_pretrained(path)``. Where the family's processor also has a video processor
(Qwen-VL, SmolVLM), transformers builds that one with torchvision only; :func:`load_processor` loads the processor
without it when torchvision is missing (images only), which is what the tests use.

Example:
    >>> import tempfile
    >>> from tunekit.testing.vision import tiny_vlm, load_processor
    >>> path = tiny_vlm(tempfile.mkdtemp(), arch="qwen2_vl")  # doctest: +SKIP
    >>> load_processor(path).image_token  # doctest: +SKIP
    '<|image_pad|>'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from tunekit._processors import image_only
from tunekit._processors import load_processor as images_processor
from tunekit._quiet import quiet

__all__ = [
    "TEMPLATE_SOURCES",
    "VISION_ARCHS",
    "VISION_TEXTS",
    "VisionArch",
    "chat_template",
    "image_only",
    "load_processor",
    "tiny_vlm",
]

VisionArch = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "llava", "llava_next", "idefics3", "smolvlm"]
VISION_ARCHS: tuple[str, ...] = get_args(VisionArch)

# Where each family's chat template (chat_templates/<arch>.jinja) was copied from: the processor's template of the
# released checkpoint, verbatim (the hub is not reachable from here: each text was taken from a public copy that
# quotes the file, named in its comment).
TEMPLATE_SOURCES: dict[str, str] = {
    # The processor's and the tokenizer's template of Qwen/Qwen2-VL-2B-Instruct (as dumped with the model's config
    # by a model index, and as OpenVINO GenAI's chat-template table quotes it for that model). The Qwen2.5-VL
    # Instruct checkpoints ship the same text.
    "qwen2_vl": "Qwen/Qwen2-VL-2B-Instruct chat_template.json",
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct chat_template.json (the same text as Qwen2-VL's)",
    # The Instruct template (tools, tool responses with images; the Thinking checkpoints add <think> handling), as
    # NVIDIA's TAO cosmos-rl dataset code quotes it ("byte-identical to ... Qwen/Qwen3-VL-8B-Instruct").
    "qwen3_vl": "Qwen/Qwen3-VL-8B-Instruct chat_template.json",
    # Gemma 3's instruction-tuned template (the same text for the 270M to 27B checkpoints; the text-only ones never
    # see an image part).
    "gemma3": "google/gemma-3-4b-it chat_template.json",
    # llava-hf's conversion, with its {% generation %} markers (OpenVINO GenAI's table: "llava-1.5 ...
    # chat_template.json"; transformers' LLaVA processor tests use the same text).
    "llava": "llava-hf/llava-1.5-7b-hf chat_template.json",
    # OpenVINO GenAI's table ("llava-v1.6-mistral (chat_template.json)"). The released text closes an assistant
    # turn with a literal '<\s> ', not the '</s>' token: kept as is (tunekit reads it as the '</s>' it stands for).
    "llava_next": "llava-hf/llava-v1.6-mistral-7b-hf chat_template.json",
    # Idefics2's template behind the Llama 3 begin-of-text token, as transformers' Idefics3 documentation renders
    # prompts ("<|begin_of_text|>User:<image>...<end_of_utterance>\nAssistant:").
    "idefics3": "HuggingFaceM4/Idefics3-8B-Llama3 chat_template.json",
    # transformers' SmolVLMProcessor DEFAULT_CHAT_TEMPLATE (processing_smolvlm.py), SmolVLM2's template with its
    # video branch.
    "smolvlm": "HuggingFaceTB/SmolVLM2-2.2B-Instruct chat_template.json",
}

# Words of the templates and of the toy tasks, so that the trained BPE has them as tokens (shorter sequences).
VISION_TEXTS = [
    "system user assistant model User Assistant USER ASSISTANT",
    "You are a helpful assistant.",
    "What colour is this image? Name the colour of the image in one word.",
    "red green blue yellow black white orange purple pink brown grey cyan",
    "Describe the picture. The image shows a square.",
    "The quick brown fox jumps over the lazy dog.",
]

# The image every family is sized for: 16 x 16 pixels at the tower's native resolution, 4-pixel patches.
_IMAGE, _PATCH = 16, 4


@dataclass(frozen=True)
class _Family:
    """What one family's tiny model is made of (the module's own table; the registry is tunekit.testing.families)."""

    model_type: str
    processor: str  # transformers' processor class name
    specials: tuple[str, ...]  # special tokens, in id order after the BPE's own
    bos: str | None
    eos: str
    pad: str
    end_of_turn: str  # the token a reply ends with (generation stops on it)
    named: dict[str, str] = field(default_factory=dict)  # the tokenizer's named extra tokens (image_token, ...)
    video: bool = False  # the processor has a video processor (built with torchvision only)


_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_QWEN = {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "end_of_turn": "<|im_end|>", "video": True}
_IDEFICS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)

_FAMILIES: dict[str, _Family] = {
    "qwen2_vl": _Family("qwen2_vl", "Qwen2VLProcessor", _QWEN_SPECIALS, **_QWEN),  # type: ignore[arg-type]
    "qwen2_5_vl": _Family("qwen2_5_vl", "Qwen2_5_VLProcessor", _QWEN_SPECIALS, **_QWEN),  # type: ignore[arg-type]
    "qwen3_vl": _Family("qwen3_vl", "Qwen3VLProcessor", _QWEN_SPECIALS, **_QWEN),  # type: ignore[arg-type]
    "gemma3": _Family(
        "gemma3",
        "Gemma3Processor",
        (
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        end_of_turn="<end_of_turn>",
        named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
    ),
    "llava": _Family(
        "llava",
        "LlavaProcessor",
        ("<unk>", "<s>", "</s>", "<image>", "<pad>"),
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        end_of_turn="</s>",
        named={"image_token": "<image>"},
    ),
    "llava_next": _Family(
        "llava_next",
        "LlavaNextProcessor",
        ("<unk>", "<s>", "</s>", "<image>"),
        bos="<s>",
        eos="</s>",
        pad="<unk>",  # llava-v1.6-mistral pads with <unk>
        end_of_turn="</s>",
        named={"image_token": "<image>"},
    ),
    "idefics3": _Family(
        "idefics3",
        "Idefics3Processor",
        ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", *_IDEFICS),
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<|finetune_right_pad_id|>",
        end_of_turn="<end_of_utterance>",
    ),
    "smolvlm": _Family(
        "smolvlm",
        "SmolVLMProcessor",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>", *_IDEFICS),
        bos="<|im_start|>",
        eos="<end_of_utterance>",
        pad="<|im_end|>",
        end_of_turn="<end_of_utterance>",
        named={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>"}
        | {"end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"},
        video=True,
    ),
}


def chat_template(arch: str) -> str:
    """The chat template of the family ``arch`` (one of :data:`VISION_ARCHS`), as its released processor has it.

    Example:
        >>> from tunekit.testing.vision import chat_template
        >>> "<|image_pad|>" in chat_template("qwen2_vl")
        True
    """
    if arch not in _FAMILIES:
        raise ValueError(f"chat_template({arch!r}): choose one of {list(VISION_ARCHS)}")
    return (resources.files("tunekit.testing") / "chat_templates" / f"{arch}.jinja").read_text(encoding="utf-8")


def _tokenizer(family: _Family, texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on ``texts`` with the family's special tokens first (ids 0, 1, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    kwargs: dict[str, Any] = {"bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad}
    if family.named:
        kwargs["extra_special_tokens"] = dict(family.named)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _text(ids: dict[str, int], tokenizer: Any, hidden: int, layers: int, heads: int, init: float) -> dict[str, Any]:
    """The language model's fields every family shares."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 1024,
        "initializer_range": init,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vision(hidden: int) -> dict[str, Any]:
    """A two-layer vision tower half the language model's width (CLIP / SigLIP / Idefics3 field names)."""
    return {
        "hidden_size": hidden // 2,
        "intermediate_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": _IMAGE,
        "patch_size": _PATCH,
    }


def _qwen_config(arch: str, ids: dict[str, int], text: dict[str, Any], seed_hidden: int) -> dict[str, Any]:
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    head_dim = hidden // heads
    # M-RoPE splits each head's rotary half (head_dim / 2 frequencies) into temporal, height and width sections.
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    patches = {"patch_size": _PATCH, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    if arch == "qwen2_vl":
        rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section}
        vision = {"depth": 2, "embed_dim": hidden // 2, "hidden_size": hidden, "num_heads": 2, "mlp_ratio": 2}
        return {"text_config": {**text, "rope_parameters": rope}, "vision_config": {**vision, **patches}, **tokens}
    if arch == "qwen2_5_vl":
        rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section}
        vision = {
            "depth": 2,
            "hidden_size": hidden // 2,
            "intermediate_size": hidden,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "window_size": _PATCH * 4,  # windowed attention over 2 x 2 merged patches; the last layer attends fully
            "fullatt_block_indexes": [1],
        }
        return {"text_config": {**text, "rope_parameters": rope}, "vision_config": {**vision, **patches}, **tokens}
    # qwen3_vl: interleaved M-RoPE, q/k norms, DeepStack features from the tower's first layer
    rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": section, "mrope_interleaved": True}
    vision = {
        "depth": 2,
        "hidden_size": hidden // 2,
        "intermediate_size": hidden,
        "num_heads": 2,
        "out_hidden_size": hidden,
        "num_position_embeddings": 16,  # a 4 x 4 grid of learned positions, interpolated to the image's
        "deepstack_visual_indexes": [0],
    }
    text = {**text, "head_dim": head_dim, "rope_parameters": rope}
    return {"text_config": text, "vision_config": {**vision, **patches}, **tokens}


def _config(arch: str, ids: dict[str, int], tokenizer: Any, text: dict[str, Any]) -> dict[str, Any]:
    """The family's config fields (transformers' names), around the shared language-model fields ``text``."""
    hidden = text["hidden_size"]
    if arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        return _qwen_config(arch, ids, text, hidden)
    if arch == "gemma3":
        head_dim = hidden // text["num_attention_heads"]
        gemma = {
            **text,
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        }
        vision = {**_vision(hidden), "vision_use_head": False, "model_type": "siglip_vision_model"}
        return {
            "text_config": gemma,
            "vision_config": vision,
            "mm_tokens_per_image": 4,  # the 4 x 4 patch grid pooled to 2 x 2
            "boi_token_index": ids["<start_of_image>"],
            "eoi_token_index": ids["<end_of_image>"],
            "image_token_index": ids["<image_soft_token>"],
            "tie_word_embeddings": True,
        }
    if arch in ("llava", "llava_next"):
        vision = {**_vision(hidden), "projection_dim": hidden // 2, "model_type": "clip_vision_model"}
        config: dict[str, Any] = {
            "text_config": {**text, "model_type": "llama" if arch == "llava" else "mistral"},
            "vision_config": vision,
            "image_token_id": ids["<image>"],
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -2,
            "image_seq_length": (_IMAGE // _PATCH) ** 2,
        }
        if arch == "llava_next":
            config["text_config"]["sliding_window"] = None
            config["image_grid_pinpoints"] = _PINPOINTS
        return config
    # idefics3, smolvlm: a pixel shuffle folds 2 x 2 patches into one token
    vision = {**_vision(hidden), "model_type": f"{arch}_vision"}
    return {
        "text_config": {**text, "model_type": "llama"},
        "vision_config": vision,
        "scale_factor": 2,
        "image_token_id": ids["<image>"],
    }


# LLaVA-NeXT's "any resolution" grid: an image is one tile of the tower's size, or 1 x 2 or 2 x 1 tiles.
_PINPOINTS = [[_IMAGE, _IMAGE], [_IMAGE, 2 * _IMAGE], [2 * _IMAGE, _IMAGE]]


def _image_processor(arch: str) -> tuple[Any, dict[str, Any]]:
    """The family's image processor (transformers' PIL one: no torchvision needed) at small sizes, and the
    processor's own settings (``processor_config.json``)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    settings: dict[str, Any]
    if arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        # Sides rounded to multiples of 8 (patch x merge), 64 to 1024 pixels: 1 to 16 tokens an image.
        pixels = {"min_pixels": 8 * 8, "max_pixels": 32 * 32}
        settings = {"patch_size": _PATCH, "temporal_patch_size": 2, "merge_size": 2, **pixels}
        settings["size"] = {"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}
        return Qwen2VLImageProcessorPil(**settings), {}
    if arch == "gemma3":  # a 16 x 16 image, its 4 x 4 patches pooled to 2 x 2 tokens
        return Gemma3ImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}), {"image_seq_length": 4}
    if arch in ("llava", "llava_next"):
        # the tower's CLS token is one more than the patches, and the "default" strategy drops it
        processor = {
            "patch_size": _PATCH,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
        }
        settings = {"crop_size": {"height": _IMAGE, "width": _IMAGE}, "size": {"shortest_edge": _IMAGE}}
        if arch == "llava":
            return CLIPImageProcessorPil(**settings), processor
        return LlavaNextImageProcessorPil(image_grid_pinpoints=_PINPOINTS, **settings), processor
    # idefics3, smolvlm: the image resized to a longest side of 32, cut into 16 x 16 tiles plus the whole image,
    # each tile 16 patches folded into 4 tokens
    settings = {"size": {"longest_edge": 2 * _IMAGE}, "max_image_size": {"longest_edge": _IMAGE}}
    cls: Any = Idefics3ImageProcessorPil if arch == "idefics3" else SmolVLMImageProcessorPil
    return cls(do_image_splitting=True, **settings), {"image_seq_len": (_IMAGE // _PATCH) ** 2 // 4}


def load_processor(path: str | Path) -> Any:
    """``AutoProcessor.from_pretrained(path)``; without torchvision, a video-capable family's processor is loaded
    without its video processor (:func:`image_only`), which transformers cannot build then. Images work the same.

    Example:
        >>> from tunekit.testing.vision import load_processor
        >>> load_processor("path/to/a/tiny/qwen2_vl")  # doctest: +SKIP
    """
    with quiet():
        return images_processor(path)


def tiny_vlm(
    path: str | Path,
    arch: VisionArch = "qwen2_vl",
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Write a tiny random vision-language model of the family ``arch`` (one of :data:`VISION_ARCHS`) to ``path``.

    ``"qwen2_vl"``, ``"qwen2_5_vl"``, ``"qwen3_vl"``, ``"gemma3"`` (Gemma 3 with vision), ``"llava"`` (LLaVA-1.5,
    a Llama), ``"llava_next"`` (LLaVA-NeXT on Mistral, any-resolution tiles), ``"idefics3"`` or ``"smolvlm"``
    (SmolVLM2); :data:`tunekit.testing.families.VISION_FAMILIES` says what each is tested for. The language model
    is ``num_layers`` layers of width ``hidden_size``; the vision tower two layers on 4-pixel patches of 16-pixel
    images (Qwen-VL: any size up to 32 x 32, merged 2 x 2), so an image is 4 to 16 tokens (LLaVA-NeXT and the
    Idefics3 family add tiles, up to about 50). The tokenizer is trained on ``texts`` (plus the templates' words)
    with the family's special tokens; the chat template is the released model's (:func:`chat_template`). Weights
    are random, seeded by ``seed``: the same seed writes the same files.

    Returns ``path``, loadable with ``AutoModelForImageTextToText`` and (see :func:`load_processor`)
    ``AutoProcessor``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if arch not in _FAMILIES:
        raise ValueError(f"tiny_vlm(arch={arch!r}): choose one of {list(VISION_ARCHS)}")
    family = _FAMILIES[arch]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = [*(texts if texts is not None else []), *VISION_TEXTS]
    corpus += [" ".join("0123456789"), "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?-\n"]
    tokenizer = _tokenizer(family, corpus, vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in family.specials}
    text = _text(ids, tokenizer, hidden_size, num_layers, num_heads, initializer_range)
    config = AutoConfig.for_model(family.model_type, **_config(arch, ids, tokenizer, text))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    stop = sorted({tokenizer.eos_token_id, ids[family.end_of_turn]})
    model.generation_config.eos_token_id = stop if len(stop) > 1 else stop[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    image_processor, processor_kwargs = _image_processor(arch)
    import transformers

    processor_class: type = getattr(transformers, family.processor)
    if family.video:
        processor_class = image_only(processor_class)
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template(arch), **processor_kwargs
    )
    with quiet():
        model.save_pretrained(path)
        processor.save_pretrained(path)
    if family.video:  # the video processor's settings, as the image processor's, for a loader that has torchvision
        _add_video_processor(path, arch, image_processor.to_dict())
    return path


def _add_video_processor(path: Path, arch: str, image: dict[str, Any]) -> None:
    """Add the family's video-processor settings to ``processor_config.json``: the image processor's sizes under
    the video processor's type, which transformers builds (with torchvision) instead of its defaults for the
    released model's sizes. Without torchvision they are not read (:func:`load_processor`)."""
    kind = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2VL", "qwen3_vl": "Qwen3VL", "smolvlm": "SmolVLM"}[arch]
    keep = ("size", "max_image_size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    video = {"video_processor_type": f"{kind}VideoProcessor", **{k: image[k] for k in keep if k in image}}
    file = path / "processor_config.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    config["video_processor"] = video
    file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
