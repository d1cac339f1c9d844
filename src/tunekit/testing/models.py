"""Tiny local models and toy tasks for tests and examples: no network, seconds on a CPU."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

from tunekit._quiet import quiet
from tunekit.data.templates import CHATML_TEMPLATE
from tunekit.testing.vision import VISION_ARCHS, VisionArch, tiny_vlm

__all__ = ["CHATML", "DEFAULT_TEXTS", "first_task", "reverse_task", "tiny_model", "train_tokenizer", "write_jsonl"]

DEFAULT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Fine-tuning adapts a pretrained language model to a narrow task.",
    "Reverse the digits: 1 2 3 4 5 6 7 8 9 0",
    "Answer with one word. Yes or no?",
    "今天天气很好，我们去公园散步吧。",
    "请把这句话翻译成英文。",
    "Hello world! How are you today?",
]

_SPECIAL = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

CHATML = CHATML_TEMPLATE  # the tiny models ship tunekit's ChatML (tools and reasoning included) as their own


def train_tokenizer(texts: Iterable[str], vocab_size: int, chat_template: bool, pad_token: bool) -> Any:
    """A byte-level BPE tokenizer (transformers' fast tokenizer) trained on ``texts``, with tunekit's test specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = _SPECIAL if chat_template else [t for t in _SPECIAL if t not in ("<|im_start|>", "<|im_end|>")]
    if not pad_token:
        special = [t for t in special if t != "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    kwargs: dict[str, Any] = {"eos_token": "<|endoftext|>", "bos_token": None}
    if pad_token:
        kwargs["pad_token"] = "<|pad|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if chat_template:
        fast.chat_template = CHATML
    return fast


Arch = Literal[
    "llama",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "mistral",
    "mixtral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "granite",
    "smollm3",
    "glm4",
    "deepseek_v3",
    "gpt_oss",
    "gpt_neox",
    "gpt2",
]
ARCHS: tuple[str, ...] = get_args(Arch)  # the text-only families; VISION_ARCHS (tunekit.testing.vision) the others

# Families whose released checkpoints all tie the output matrix to the embedding: their tiny models do too.
_TIED = ("gemma2", "gemma3_text", "granite", "smollm3", "gpt2")
# Mixture-of-experts sizes: few small experts, two of them per token (the real models route to 2-8 of 8-256).
_EXPERTS, _EXPERTS_PER_TOKEN = 4, 2
# Shared fields a family's config does not have: both attend with one key/value head per query head.
_NOT_IN = {"gpt2": ("intermediate_size", "num_key_value_heads"), "gpt_neox": ("num_key_value_heads",)}


def _family_config(arch: str, hidden_size: int, num_heads: int, max_position_embeddings: int) -> dict[str, Any]:
    """What a tiny model of each newer family sets beyond the shared fields: head sizes spelled out (their configs
    default to the real models' 128 / 256), and settings at the values the real models use."""
    head_dim = hidden_size // num_heads
    if arch == "qwen3":
        return {"head_dim": head_dim}
    if arch == "mistral":
        return {"head_dim": head_dim, "sliding_window": None}
    if arch in ("gemma2", "gemma3_text"):
        # Gemma ties its embeddings (llama.cpp's Gemma graphs have no separate output matrix) and scales queries
        # by query_pre_attn_scalar ** -0.5, which llama.cpp takes to be head_dim ** -0.5 at these sizes.
        return {"head_dim": head_dim, "query_pre_attn_scalar": head_dim, "tie_word_embeddings": True}
    if arch == "phi3":
        return {"original_max_position_embeddings": max_position_embeddings}
    return _newer_family_config(arch, hidden_size, head_dim, max_position_embeddings)


def _newer_family_config(arch: str, hidden_size: int, head_dim: int, max_position_embeddings: int) -> dict[str, Any]:
    """The families added with the supported-models table (tunekit.testing.families)."""
    moe = {"num_experts_per_tok": _EXPERTS_PER_TOKEN}
    tied = {"tie_word_embeddings": True} if arch in _TIED else {}
    if arch == "qwen3_moe":  # every layer sparse, top-k weights renormalised, as Qwen3-30B-A3B
        return {
            "head_dim": head_dim,
            "num_experts": _EXPERTS,
            "moe_intermediate_size": hidden_size // 2,
            "norm_topk_prob": True,
            **moe,
        }
    if arch == "mixtral":
        return {"head_dim": head_dim, "num_local_experts": _EXPERTS, "sliding_window": None, **moe}
    if arch == "granite":
        # Granite 3's scalings (granite-3.1-8b: embeddings x 12, residuals x 0.22, attention 1 / head_dim, logits
        # / 16). Logits / 2 here: random embeddings make logits so small that a larger divisor leaves an adapter
        # nothing it can fit.
        return {
            "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22,
            "attention_multiplier": 1.0 / head_dim,
            "logits_scaling": 2.0,
            **tied,
        }
    if arch == "smollm3":
        # SmolLM3 leaves out RoPE in every 4th layer; every 2nd here, so that a two-layer model has one such layer
        return {"no_rope_layer_interval": 2, **tied}
    if arch == "glm4":  # partial rotary (half of each head) and q/k/v biases stay at GLM-4's defaults
        return {"head_dim": head_dim}
    if arch == "deepseek_v3":
        # Multi-head latent attention with small ranks and query/key heads wider than value heads (DeepSeek-V3:
        # 128 + 64 rotary vs 128), one dense layer first and then mixture-of-experts layers with a shared expert
        # (DeepSeek-V3: 3 dense, 58 sparse; 256 routed experts in 8 groups, top-8)
        return {
            "num_key_value_heads": hidden_size // head_dim,
            "q_lora_rank": hidden_size // 2,
            "kv_lora_rank": hidden_size // 4,
            "qk_rope_head_dim": head_dim // 2,
            "qk_nope_head_dim": head_dim,
            "v_head_dim": head_dim,
            "n_routed_experts": _EXPERTS,
            "n_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
            "moe_intermediate_size": hidden_size // 2,
            "first_k_dense_replace": 1,
            **moe,
        }
    if arch == "gpt_oss":
        # Alternating sliding / full attention with a window shorter than the toy rows, attention sinks, and YaRN
        # RoPE stretched 32 times, as gpt-oss (window 128, 131072 positions from 4096)
        rope = {
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": max(1, max_position_embeddings // 32),
        }
        return {
            "head_dim": head_dim,
            "num_local_experts": _EXPERTS,
            "sliding_window": 16,
            "rope_parameters": rope,
            **moe,
        }
    return tied


def tiny_model(
    path: str | Path,
    arch: Arch | VisionArch = "llama",
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    chat_template: bool = True,
    pad_token: bool = True,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Write a tiny random causal LM, a BPE tokenizer trained on ``texts`` and a chat template.

    Everything is local (no network): the tokenizer is trained with the ``tokenizers`` library and
    the weights are random (seeded). ``chat_template=False`` writes a base model without a template
    (tunekit then adds its built-in one); ``pad_token=False`` one without a pad token. ``arch`` is a
    transformers model type (:data:`ARCHS`): ``"llama"``, ``"qwen2"`` (also Qwen2.5), ``"qwen3"``,
    ``"qwen3_moe"``, ``"mistral"``, ``"mixtral"``, ``"gemma2"``, ``"gemma3_text"`` (Gemma 3, text only),
    ``"phi3"`` (also Phi-4), ``"olmo2"``, ``"granite"``, ``"smollm3"``, ``"glm4"``, ``"deepseek_v3"``,
    ``"gpt_oss"``, ``"gpt_neox"`` or ``"gpt2"``; :mod:`tunekit.testing.families` says what each is tested for.
    Each family keeps what sets it apart, small: mixture-of-experts models have 4 experts, 2 per token
    (DeepSeek-V3 with a shared expert after one dense layer, and multi-head latent attention with small
    ranks), gpt-oss a 16-token sliding window and attention sinks, SmolLM3 a layer without RoPE, Granite its
    multipliers. Gemma, Granite, SmolLM3 and GPT-2 always tie their embeddings, as the released ones do.
    A larger ``initializer_range`` (e.g. 0.2) gives random logits a usable scale, so that methods which
    freeze the head (LoRA and other adapters) can learn a toy task quickly from scratch.

    Vision-language families (:data:`~tunekit.testing.vision.VISION_ARCHS`): ``"qwen2_vl"``, ``"qwen2_5_vl"``,
    ``"qwen3_vl"``, ``"gemma3"`` (Gemma 3 with vision), ``"llava"``, ``"llava_next"``, ``"idefics3"`` and
    ``"smolvlm"`` write an image-text-to-text model with a tiny vision tower (an image is 4 to a few dozen tokens),
    the family's image processor at small sizes, its processor files and the released model's chat template
    (:func:`~tunekit.testing.vision.tiny_vlm`, which takes ``texts``, ``vocab_size``, ``hidden_size``,
    ``num_layers``, ``num_heads``, ``initializer_range`` and ``seed``; the other options are text-only).
    :data:`~tunekit.testing.families.VISION_FAMILIES` says what each is tested for.

    Returns ``path``, loadable by ``tk.Tuner(path)`` or ``transformers.AutoModelForCausalLM`` (vision families:
    ``AutoModelForImageTextToText`` and ``AutoProcessor``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch in VISION_ARCHS:
        text_only = {"intermediate_size": intermediate_size, "max_position_embeddings": max_position_embeddings != 512}
        text_only |= {
            "chat_template": not chat_template,
            "pad_token": not pad_token,
            "tie_word_embeddings": tie_word_embeddings,
        }
        if given := [name for name, value in text_only.items() if value]:
            raise ValueError(f"tiny_model(arch={arch!r}): {', '.join(given)} apply to text-only archs")
        return tiny_vlm(
            path,
            arch,  # type: ignore[arg-type]
            texts,
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            initializer_range=initializer_range,
            seed=seed,
        )
    if arch not in ARCHS:
        raise ValueError(f"tiny_model(arch={arch!r}): choose one of {list(ARCHS) + list(VISION_ARCHS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = list(texts) if texts is not None else list(DEFAULT_TEXTS)
    # Make every digit, letter and common CJK punctuation a token even if the corpus is small.
    corpus += [" ".join("0123456789"), "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?-\n"]
    tokenizer = train_tokenizer(corpus, vocab_size, chat_template, pad_token)
    shared: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": max(1, num_heads // 2),
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "initializer_range": initializer_range,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }
    if arch in ("llama", "qwen2"):  # built exactly as before the newer families came: their files stay identical
        config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**shared)
    else:
        shared.update(_family_config(arch, hidden_size, num_heads, max_position_embeddings))
        for name in _NOT_IN.get(arch, ()):  # fields the family does not have (they would be stored, unused)
            shared.pop(name)
        if arch == "gpt2":  # GPT-2 calls the FFN width n_inner (its config maps the other shared names itself)
            shared["n_inner"] = intermediate_size or hidden_size * 2
        config = AutoConfig.for_model(arch, **shared)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    with quiet():
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def reverse_task(
    n: int, *, seed: int = 0, length: tuple[int, int] = (3, 5), fmt: str = "prompt_completion"
) -> list[dict[str, Any]]:
    """A toy task: reverse a short list of digits. Returns rows in the chosen data format."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(*length))]
        prompt, answer = "reverse: " + " ".join(digits), " ".join(reversed(digits))
        rows.append(_as_format(prompt, answer, fmt))
    return rows


def first_task(
    n: int, *, seed: int = 0, length: tuple[int, int] = (3, 5), fmt: str = "prompt_completion"
) -> list[dict[str, Any]]:
    """A toy task easier than reversal: answer the first digit of a short list (``first: 3 1 4`` -> ``3``).

    An adapter on a random tiny model (``tiny_model(..., initializer_range=0.2)``) learns it in a
    couple of hundred steps, which makes it the quick check that an adapter method learns at all.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(*length))]
        rows.append(_as_format("first: " + " ".join(digits), digits[0], fmt))
    return rows


def _as_format(prompt: str, answer: str, fmt: str) -> dict[str, Any]:
    if fmt == "prompt_completion":
        return {"prompt": prompt, "completion": answer}
    if fmt == "alpaca":
        return {"instruction": prompt, "input": "", "output": answer}
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
    if fmt == "text":
        return {"text": f"{prompt} = {answer}"}
    raise ValueError(f"unknown format {fmt!r}")


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as UTF-8 JSON lines (a helper for tests and examples)."""
    path = Path(path)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
