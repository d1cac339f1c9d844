"""The trained model as one full-precision transformers model, and the ``hf`` export directory.

A merge always happens in a full-precision copy: merging into a 4-bit or 8-bit base would round the
trained update away, so a QLoRA run re-loads its base in fp32 and merges there; a bf16 / fp16 run
merges into a copy upcast to fp32 first.
"""

from __future__ import annotations

import copy
import gc
import tempfile
from pathlib import Path
from typing import Any

from tunekit._processors import load_processor
from tunekit._quiet import quiet
from tunekit._torch import is_quantized, torch_dtype
from tunekit.backends.base import Trained
from tunekit.data.templates import options_baked_in
from tunekit.errors import ExportError, IncompatibleError

__all__ = [
    "eos_ids",
    "full_precision_model",
    "held_in_fp32",
    "is_vision",
    "reload_hf",
    "reload_processor",
    "write_hf",
    "written_copy",
]


def _dequantized_base(trained: Trained) -> Any:
    """A QLoRA run's base re-loaded in fp32 with its trained adapter merged in."""
    from peft import PeftModel

    spec, loaded = trained.spec, trained.loaded
    if not isinstance(spec.model_ref, (str, Path)):
        raise IncompatibleError(
            f"{spec.method.name}(quantize=...) was given a quantized model object; export needs the base model's "
            "hub id or directory to re-load it in full precision for the merge (merging into 4-bit weights would "
            "round the trained update away)"
        )
    with tempfile.TemporaryDirectory(prefix="tunekit-qlora-") as tmp, quiet():
        trained.backend.save(loaded, Path(tmp))
        base = trained.backend.load_base(spec, precision="fp32")
        if len(loaded.tokenizer) > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(len(loaded.tokenizer))
            base.config.vocab_size = len(loaded.tokenizer)
        merged = PeftModel.from_pretrained(base, tmp).merge_and_unload()
    merged.eval()
    return merged


def full_precision_model(trained: Trained) -> tuple[Any, bool]:
    """``(model, owned)``: the trained model as one plain transformers model in fp32.

    ``owned`` is true when it is a copy (a merge), false when it is the trained model itself (``Full`` /
    ``Freeze``), which export must then not modify.
    """
    method, model = trained.spec.method, trained.loaded.model
    if not method.is_adapter:
        return model, False
    if not method.mergeable:
        raise IncompatibleError(
            f"{method.name} cannot be exported as a merged model: {method.not_mergeable_because}. "
            'Export the adapter instead: tuner.export(path, format="adapter") (load it with peft on the base model)'
        )
    if is_quantized(model):
        return _dequantized_base(trained), True
    if held_in_fp32(model):
        return trained.backend.merge(trained.loaded, method), True
    return _merged_in_fp32(model), True


def held_in_fp32(model: Any) -> bool:
    """Whether every floating-point weight of ``model`` is fp32 (not a bf16 / fp16 training run)."""
    import torch

    return all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())


def _merged_in_fp32(model: Any) -> Any:
    """The adapter merged into an fp32 copy of a bf16 / fp16 model.

    The copy is upcast before the merge (exact: fp32 holds every bf16 / fp16 value), so the base
    weight plus the adapter's update is summed in fp32; merging in the low precision and upcasting
    afterwards would round the update into the 16-bit weights first, and an fp32 export would hold
    those rounded weights. Rounding happens once, when the export is written in its dtype.
    """
    fp32 = copy.deepcopy(model)
    fp32.float()
    with quiet():
        merged = fp32.merge_and_unload()
    merged.eval()
    return merged


def written_copy(model: Any, owned: bool, dtype: str) -> Any:
    """The model in the export dtype: cast in place when tunekit owns the copy, else a new copy."""

    target = torch_dtype(dtype)
    if all(p.dtype == target for p in model.parameters()):
        return model
    out = model if owned else copy.deepcopy(model)
    return out.to(target)


def set_generation_eos(model: Any, tokenizer: Any, end_of_turn_id: int) -> list[int]:
    """EOS ids of the generation config: the model's own EOS ids, the template's end-of-turn token and the
    tokenizer's EOS (added to the model's, never replacing them: a model that stops on several tokens
    keeps stopping on each)."""
    gen = model.generation_config
    eos = eos_ids(end_of_turn_id, tokenizer.eos_token_id, gen.eos_token_id, getattr(model.config, "eos_token_id", None))
    gen.eos_token_id = eos
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False  # greedy, as tuner.generate() and the verification decode; users may sample
    for k in ("temperature", "top_p", "top_k"):
        setattr(gen, k, None)
    # A vision-language model's config holds its language model's as text_config (where generation reads them).
    for config in {id(c): c for c in (model.config, _text_config(model.config))}.values():
        config.eos_token_id = eos[0] if len(eos) == 1 else eos
        config.pad_token_id = tokenizer.pad_token_id
    return eos


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def eos_ids(*values: Any) -> list[int]:
    """The EOS ids of several sources (each None, an id, or a list of ids, as configs hold them), once each, sorted."""
    out: set[int] = set()
    for value in values:
        out |= _ids(value)
    return sorted(out)


def _ids(value: Any) -> set[int]:
    """A config's ``eos_token_id`` (None, an int or a list of ints) as a set."""
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value if v is not None}


def write_hf(
    model: Any, tokenizer: Any, end_of_turn_id: int, out: Path, *, max_shard_size: str = "4GB", processor: Any = None
) -> None:
    """The transformers directory: safetensors weights (sharded above ``max_shard_size``), config,
    generation config with the template's EOS ids, tokenizer and chat template; a vision-language model's
    ``processor`` too (its image processor's settings, the processor's chat template), so that
    ``AutoProcessor.from_pretrained`` reads the export."""
    # Written from a copy of the configs, so that exporting tuner.model itself (Full) leaves it as it was.
    configs = list({id(c): c for c in (model.config, _text_config(model.config))}.values())
    saved = copy.deepcopy(model.generation_config), [copy.deepcopy(c.to_dict()) for c in configs]
    set_generation_eos(model, tokenizer, end_of_turn_id)
    try:
        with quiet():
            model.save_pretrained(out, max_shard_size=max_shard_size)
            if processor is not None:  # first: the tokenizer written next (options baked in) is the one kept
                processor.save_pretrained(out)
            with options_baked_in(tokenizer):
                tokenizer.save_pretrained(out)
    finally:
        model.generation_config = saved[0]
        for config, before in zip(configs, saved[1]):
            for key in ("eos_token_id", "pad_token_id"):
                if key in before:
                    setattr(config, key, before[key])
                elif key in config.__dict__:
                    delattr(config, key)
    if not any(out.glob("*.safetensors")):
        raise ExportError(f"{out}: transformers wrote no safetensors weights; export again")


def is_vision(model: Any) -> bool:
    """Whether ``model`` (or the base under a peft model) is a vision-language model (its config has a tower's)."""
    return getattr(getattr(model, "config", None), "vision_config", None) is not None


def reload_processor(path: Path, model_type: str | None = None) -> Any:
    """``AutoProcessor.from_pretrained(path)``; where transformers builds a family's video processor with
    torchvision only and it is missing (then the export has no video processor either), the processor without it
    (images only), as the engine loads it (``tunekit._processors.load_processor``)."""
    return load_processor(path, model_type=model_type)


def reload_hf(path: Path, *, device: Any) -> tuple[Any, Any, Any]:
    """The exported directory loaded by plain transformers (fp32): the model, its tokenizer, and a
    vision-language model's processor (``AutoModelForImageTextToText`` and ``AutoProcessor``; None for a text
    model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    processor = None
    with quiet():
        try:
            vision = getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None
            if vision:
                processor = reload_processor(path)
                tokenizer = processor.tokenizer
                model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
            else:
                tokenizer = AutoTokenizer.from_pretrained(path)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError, ImportError) as e:
            raise ExportError(f"{path}: transformers cannot load the export: {e}") from e
    model.to(device)
    model.eval()
    return model, tokenizer, processor


def free(n_params: int = 0) -> None:
    """Give memory back after dropping a model (the caller deletes its references first).

    Only for large models: a full ``gc.collect()`` costs about half a second in a process with
    many objects, which tiny models (tests) do not need; refcounting frees them already.
    """
    if n_params < 50_000_000:
        return
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
