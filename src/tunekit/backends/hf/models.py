"""Model and tokenizer loading, device and precision choice, and the one path from a run description to a model.

:func:`build_model` is what both ``fit`` (through :func:`load`) and ``plan`` use: the tokenizer with
the chat template, embeddings resized for the tokens tunekit added, template tokens the base model
never trained started at the mean embedding, and the method applied (or a saved adapter put back).
For ``plan`` it builds the model from its config on the meta device, reading no weights but the
embedding matrices (where the untrained template tokens are found), so a plan counts the parameters
``fit`` trains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunekit._quiet import quiet
from tunekit._torch import torch_dtype
from tunekit.backends.base import RunSpec
from tunekit.backends.hf.peft_map import apply_method, load_adapter
from tunekit.backends.hf.processes import check_distributed, rank_device
from tunekit.backends.hf.quantization import check_before_load, load_quantized, quantize_skeleton
from tunekit.backends.hf.safe_loading import check_weights
from tunekit.backends.hf.untrained import fix_untrained_template_tokens
from tunekit.backends.hf.vision import (
    accept_text_content,
    apply_pixel_budget,
    is_vision_config,
    is_vision_model,
    load_processor,
)
from tunekit.data.templates import PAD, Template, ensure_template
from tunekit.distributed import world
from tunekit.errors import ConfigError, IncompatibleError

__all__ = [
    "Loaded",
    "build_model",
    "check_head",
    "head_kwargs",
    "load",
    "load_model",
    "load_tokenizer",
    "model_class_kwargs",
    "own_rng",
    "resolve_device",
    "resolve_precision",
]

logger = logging.getLogger("tunekit")


def resolve_device(pref: str) -> Any:
    import torch

    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IncompatibleError(f"Training(device={pref!r}): no CUDA device is available; use device='auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise IncompatibleError(
            f"Training(device={pref!r}): this machine has {torch.cuda.device_count()} CUDA device(s), numbered from "
            "0; use device='cuda' or an index below the count"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise IncompatibleError(
            f"Training(device={pref!r}): no Apple MPS device is available (it needs a Mac with Apple silicon and a "
            "torch built with MPS); use device='auto' or 'cpu'"
        )
    return dev


def resolve_precision(pref: str, device: Any) -> str:
    import torch

    if pref != "auto":
        if pref == "fp16" and device.type != "cuda":
            raise IncompatibleError("Training(precision='fp16') needs a CUDA device; use 'fp32' on CPU")
        return pref
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _check_ref(ref: str, markers: tuple[str, ...] = ("config.json",), what: str = "model") -> None:
    p = Path(ref)
    looks_local = p.is_absolute() or ref.startswith((".", "~")) or p.exists() or ref.count("/") > 1
    if looks_local and not p.exists():
        raise ConfigError(f"model path does not exist: {ref!r}; pass a local model directory or a hub id")
    if p.exists() and not any((p / m).exists() for m in markers):
        raise ConfigError(f"{ref!r} is not a {what} directory (none of {list(markers)} in it)")


def load_tokenizer(ref: str, *, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    _check_ref(ref, ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"), "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load the tokenizer of {ref!r}: {e}") from e


def load_model(
    ref: str,
    *,
    dtype: Any,
    trust_remote_code: bool,
    auto_class: Any = None,
    allow_pickle: bool = False,
    **model_kwargs: Any,
) -> Any:
    """Load ``ref`` with ``auto_class`` (default AutoModelForCausalLM); ``model_kwargs`` go to from_pretrained
    (e.g. ``num_labels=1`` for a reward model's score head). Safetensors only, unless ``allow_pickle``."""
    from transformers import AutoModelForCausalLM

    _check_ref(ref)
    check_weights(ref, allow_pickle=allow_pickle)
    cls = auto_class or AutoModelForCausalLM
    try:
        return cls.from_pretrained(
            ref,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **model_kwargs,
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise IncompatibleError(
                f"{ref!r} needs its own Python code to load; if you trust it, pass Training(trust_remote_code=True)"
            ) from e
        raise ConfigError(f"could not load model {ref!r}: {e}") from e
    except OSError as e:
        raise ConfigError(_unloadable(ref, e)) from e


def _unloadable(ref: str, error: OSError) -> str:
    """Why ``ref`` did not load, in the user's terms: a hub id the hub could not give, or a local directory."""
    cause = " ".join(str(error).split())
    p = Path(ref)
    if not p.exists():
        return (
            f"could not load model {ref!r}: there is no local directory {ref!r} (from {Path.cwd()}), and as a hub id "
            f"it could not be found or downloaded ({cause}); pass an existing local model directory, or a hub id "
            "you can reach (check the spelling, the network, and HF_TOKEN for a gated model)"
        )
    if p.is_dir() and any(p.glob("*.bin")):
        return (
            f"could not load model {ref!r}: {cause}. tunekit loads safetensors weights only; "
            "convert .bin checkpoints with transformers' save_pretrained(safe_serialization=True)"
        )
    return f"could not load model {ref!r}: {cause}"


def head_kwargs(objective: Any) -> dict[str, Any]:
    """``load_model`` options for the objective's model head (a score head for reward models)."""
    if getattr(objective, "model_head", "causal_lm") != "sequence_classification":
        return {}
    from transformers import AutoModelForSequenceClassification

    # One label: the scalar reward. A causal LM checkpoint gets a new, randomly initialised score head.
    return {"auto_class": AutoModelForSequenceClassification, "num_labels": 1}


def check_head(model: Any, objective: Any) -> None:
    """A model object given to a Tuner must have the head its objective trains."""
    wants_score = getattr(objective, "model_head", "causal_lm") == "sequence_classification"
    has_score = type(model).__name__.endswith("ForSequenceClassification")
    if wants_score and (not has_score or getattr(model.config, "num_labels", None) != 1):
        raise IncompatibleError(
            f"{objective.name} needs a sequence-classification model with one label (a scalar score), got "
            f"{type(model).__name__} with num_labels={getattr(model.config, 'num_labels', None)}; pass a path, or "
            "AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)"
        )
    if has_score and not wants_score:
        raise IncompatibleError(
            f"{type(model).__name__} is a sequence classifier (a reward model); it trains with "
            f"tk.RewardModeling(), not {objective.name}"
        )


class Loaded:
    """What the backend keeps per tuner once loaded (a :class:`tunekit.backends.base.LoadedModel`)."""

    def __init__(
        self, model: Any, tokenizer: Any, template: Template, device: Any, precision: str, processor: Any = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor  # a vision-language model's processor (its tokenizer is ``tokenizer``), else None
        self.template = template
        self.device = device
        self.precision = precision
        self.engine: Any = None  # the distributed engine of the last fit in several processes (tk.FSDP, ...)


@contextlib.contextmanager
def own_rng(seed: int | None = None) -> Iterator[None]:
    """Run with tunekit's own RNG state and give the caller's global state back afterwards."""

    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    if devices and world().distributed:  # each process owns one GPU: touching the others would open contexts there
        devices = [world().local_rank]
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def load(spec: RunSpec) -> Loaded:
    """The run's model on its device, ready to train or generate (``HFBackend.load``)."""
    training = spec.training
    device = rank_device(training.device, resolve_device(training.device))  # cuda:LOCAL_RANK under torchrun
    precision = resolve_precision(training.precision, device)
    check_before_load(spec.method, spec.model_ref, device)  # e.g. QLoRA without CUDA: fail before loading
    check_distributed(spec.method, training, device)  # e.g. DeepSpeed on CPU, QLoRA under FSDP
    model, tokenizer, template, processor = build_model(spec, precision=precision)
    with quiet():
        model.to(device)
    return Loaded(model, tokenizer, template, device, precision, processor)


def weights_dtype(spec: RunSpec, precision: str) -> Any:
    """The dtype the weights are loaded in: adapters keep a frozen base in the compute dtype; full training
    keeps fp32 master weights."""
    import torch

    return torch_dtype(precision) if (spec.method.is_adapter and precision != "fp32") else torch.float32


def model_class_kwargs(spec: RunSpec) -> dict[str, Any]:
    """``load_model`` options for the model's head: a score head for reward models, ``AutoModelForImageTextToText``
    for a vision-language model (its config is an image-text-to-text one), else none (a causal LM)."""
    kwargs = head_kwargs(spec.objective)
    if not isinstance(spec.model_ref, (str, Path)):
        return kwargs
    if kwargs:
        if _vision_ref(str(spec.model_ref), trust_remote_code=spec.training.trust_remote_code):
            raise IncompatibleError(
                f"{spec.objective.name} trains a score head on the model (a sequence classifier), and "
                f"{str(spec.model_ref)!r} is a vision-language model, which transformers has no such head for: "
                f"{spec.objective.name} cannot train on images. Train a reward model on a text-only model; "
                "vision-language models train with tk.SFT() and tk.DPO()"
            )
        return kwargs
    if _vision_ref(str(spec.model_ref), trust_remote_code=spec.training.trust_remote_code):
        from transformers import AutoModelForImageTextToText

        return {"auto_class": AutoModelForImageTextToText}
    return {}


def _vision_ref(ref: str, *, trust_remote_code: bool) -> bool:
    """Whether the model at ``ref`` is a vision-language one (its config read; False when it cannot be read, and
    loading then says why)."""
    from transformers import AutoConfig

    try:
        with quiet():
            config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return False
    return is_vision_config(config)


def build_model(spec: RunSpec, *, precision: str, meta: bool = False) -> tuple[Any, Any, Template, Any]:
    """``(model, tokenizer, template, processor)`` for ``spec``: the one path for ``fit`` and ``plan``
    (``processor``: a vision-language model's, whose tokenizer is ``tokenizer``; None for a text model).

    The tokenizer gets the chat template (and a pad token); embeddings grow for the tokens tunekit
    added; template tokens the base model has but never trained start at the mean embedding and train
    with the method; the method is applied, or an adapter save is put back on its base. With ``meta``
    the model is built from its config on the meta device (for ``plan``: exact parameter counts and
    dtypes, no weights read but the embedding matrices).
    """
    training = spec.training
    ref = spec.model_ref
    with quiet():
        if meta:
            model = _meta_model(spec, weights_dtype(spec, precision))
        elif isinstance(ref, (str, Path)) and spec.method.quantization is not None:
            with own_rng(training.seed):  # a reward model's new score head is initialised here
                model = load_quantized(
                    str(ref),
                    spec.method,
                    compute_dtype=torch_dtype(precision),
                    device=rank_device(training.device, resolve_device(training.device)),
                    trust_remote_code=training.trust_remote_code,
                    **model_class_kwargs(spec),
                )
        elif isinstance(ref, (str, Path)):
            with own_rng(training.seed):  # a reward model's new score head is initialised here
                model = load_model(
                    str(ref),
                    dtype=weights_dtype(spec, precision),
                    trust_remote_code=training.trust_remote_code,
                    allow_pickle=training.allow_pickle,
                    **model_class_kwargs(spec),
                )
        else:
            model = ref  # a transformers model object, used as it is
            check_head(model, spec.objective)
        processor = _processor_of(spec, model) if is_vision_model(model) else None
        tokenizer = processor.tokenizer if processor is not None else _tokenizer_of(spec, model)
        if processor is not None and spec.template is None and accept_text_content(tokenizer):
            processor.chat_template = tokenizer.chat_template  # saved beside an adapter: the one it trained with
        template, added = ensure_template(tokenizer, spec.template, spec.template_options)
        new_ids = [tokenizer.convert_tokens_to_ids(t) for t in added if t != PAD]
        with own_rng(training.seed):
            # New embedding rows are drawn from tunekit's seeded RNG, never the caller's global state.
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                # New rows start at the mean of the old ones (transformers' mean_resizing), which needs real values:
                # a plan's embeddings that stayed on the meta device grow without it (only their shape matters).
                model.resize_token_embeddings(len(tokenizer), mean_resizing=not _on_meta(model))
                model.config.vocab_size = len(tokenizer)
            if spec.adapter_path is not None and not meta:
                check_weights(spec.adapter_path, allow_pickle=training.allow_pickle, what="adapter")
                model = load_adapter(model, spec.method, spec.adapter_path, training=training)
            else:  # a plan of an adapter save counts the method as a new adapter of the same configuration
                # Template tokens the base model has but never trained train with those tunekit added.
                untrained = _untrained_tokens(model, tokenizer, template, spec)
                new_ids = sorted(set(new_ids) | set(untrained))
                if meta:
                    _drop_embedding_values(model)
                # On the meta device for a plan, so that the adapter's weights are never allocated (moved there
                # afterwards, peft would make AdaLoRA's rank counters trainable parameters).
                with _meta_device(meta):
                    model = apply_method(model, spec.method, new_ids, tokenizer=tokenizer, training=training)
        if not meta:
            gen = getattr(model, "generation_config", None)
            if gen is not None:  # None for reward models (sequence classifiers), which do not generate
                gen.eos_token_id = sorted({template.end_of_turn_id, tokenizer.eos_token_id} - {None})
                gen.pad_token_id = tokenizer.pad_token_id
            model.config.pad_token_id = tokenizer.pad_token_id
            text_config = getattr(model.config, "get_text_config", lambda: None)()
            if text_config is not None and text_config is not model.config:
                text_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, template, processor


def _processor_of(spec: RunSpec, model: Any) -> Any:
    """A vision-language model's processor: the one given as ``Tuner(tokenizer=...)``, or loaded beside the model."""
    tok_ref = spec.tokenizer_ref
    if tok_ref is not None and not isinstance(tok_ref, (str, Path)):
        if getattr(tok_ref, "image_processor", None) is None:
            raise IncompatibleError(
                f"{type(model).__name__} is a vision-language model: pass its processor (AutoProcessor) as "
                f"Tuner(tokenizer=...), not a {type(tok_ref).__name__}"
            )
        return tok_ref
    ref = tok_ref if tok_ref is not None else spec.model_ref
    ref = str(ref) if isinstance(ref, (str, Path)) else getattr(model, "name_or_path", None)
    if not ref:
        raise ConfigError(
            "Tuner(model=<model object>): the vision-language model has no name_or_path to find its processor; "
            "pass tokenizer=<its AutoProcessor>"
        )
    model_type = getattr(model.config, "model_type", None)
    processor = load_processor(str(ref), trust_remote_code=spec.training.trust_remote_code, model_type=model_type)
    apply_pixel_budget(processor, max_pixels=spec.training.max_pixels, min_pixels=spec.training.min_pixels)
    return processor


def _tokenizer_of(spec: RunSpec, model: Any) -> Any:
    ref = spec.model_ref
    tok_ref = spec.tokenizer_ref
    if tok_ref is None:
        tok_ref = str(ref) if isinstance(ref, (str, Path)) else getattr(model, "name_or_path", None)
    if not tok_ref:
        raise ConfigError(
            "Tuner(model=<model object>): the model has no name_or_path to find its tokenizer; "
            "pass tokenizer=... (a tokenizer object or a directory)"
        )
    if isinstance(tok_ref, (str, Path)):
        return load_tokenizer(str(tok_ref), trust_remote_code=spec.training.trust_remote_code)
    return tok_ref


@contextlib.contextmanager
def _meta_device(meta: bool) -> Iterator[None]:
    """New tensors on the meta device while ``meta`` (a plan builds no weights), else where torch puts them."""
    if not meta:
        yield
        return
    import torch

    with torch.device("meta"):
        yield


def _on_meta(model: Any) -> bool:
    """Whether an embedding matrix of ``model`` has no values (a plan's model on the meta device)."""
    matrices = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return any(getattr(m, "weight", None) is None or m.weight.is_meta for m in matrices)


def _drop_embedding_values(model: Any) -> None:
    """Put a plan's embedding matrices back on the meta device once the check of untrained template tokens has read
    them: a plan holds no weights (and peft's preparation of a QLoRA base would upcast them to fp32: 10 GB of RAM
    for a 72B model's)."""
    import torch

    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = getattr(module, "weight", None) if module is not None else None
        if weight is not None and not weight.is_meta:  # a tied matrix is one tensor: swapped once
            empty = torch.empty_like(weight, device="meta")
            torch.utils.swap_tensors(weight, torch.nn.Parameter(empty, requires_grad=weight.requires_grad))


def _untrained_tokens(model: Any, tokenizer: Any, template: Template, spec: RunSpec) -> list[int]:
    """The template tokens the base model never trained (started at the mean embedding here), for the method."""
    if _on_meta(model):
        # A plan whose checkpoint's embeddings could not be read (see _meta_model): nothing to tell apart.
        logger.info("plan: the embedding matrices were not read; template tokens the base never trained not checked")
        return []
    return fix_untrained_template_tokens(model, tokenizer, template.end_of_turn_id, spec.method)


def _meta_model(spec: RunSpec, dtype: Any) -> Any:
    """The model built from its config on the meta device (a QLoRA base as the skeleton of its quantized load), its
    embedding matrices read from the checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    training = spec.training
    ref = str(spec.model_ref)
    config = AutoConfig.from_pretrained(ref, trust_remote_code=training.trust_remote_code)
    kwargs = model_class_kwargs(spec)
    cls = kwargs.pop("auto_class", AutoModelForCausalLM)
    for k, v in kwargs.items():
        setattr(config, k, v)
    with torch.device("meta"):
        model = cls.from_config(config, dtype=dtype, trust_remote_code=training.trust_remote_code)
    if spec.method.quantization is not None:  # QLoRA: the layers a quantized load replaces, nothing quantized
        quantize_skeleton(model, spec.method, compute_dtype=dtype, auto_class=cls)
    if spec.method.trains_token_rows and spec.method.is_adapter:  # only these train rows the check may add
        _read_embeddings(model, ref, dtype)
    return model


def _read_embeddings(model: Any, ref: str, dtype: Any) -> None:
    """Put the checkpoint's embedding matrices into the meta-device ``model`` (tied ones stay tied); leaves them
    on the meta device when the checkpoint is not a local (or cached) safetensors one. Only safetensors are read."""
    import torch
    from safetensors import safe_open

    directory = _local_checkpoint(ref)
    if directory is None:
        return
    names: dict[int, list[str]] = {}  # a tied matrix has two names; the checkpoint stores it under one
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    wanted: dict[int, Any] = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = getattr(module, "weight", None) if module is not None else None
        if weight is not None and id(weight) in names and weight.is_meta:
            wanted[id(weight)] = weight
    index = directory / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        else:
            shards = {n: "model.safetensors" for key in wanted for n in names[key]}
        for key, weight in wanted.items():
            name = next((n for n in names[key] if n in shards and (directory / shards[n]).is_file()), None)
            if name is None:
                continue  # another layout of names than the model's: the plan goes without the check
            with safe_open(str(directory / shards[name]), framework="pt") as f:
                if name not in f.keys():  # safe_open has no __contains__
                    continue
                tensor = f.get_tensor(name).to(dtype)
            if tuple(tensor.shape) != tuple(weight.shape):
                continue
            torch.utils.swap_tensors(weight, torch.nn.Parameter(tensor, requires_grad=weight.requires_grad))
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:  # unreadable: the plan goes without the check
        logger.info("plan: could not read the embedding matrices of %s (%s)", ref, e)


def _local_checkpoint(ref: str) -> Path | None:
    """The directory holding ``ref``'s safetensors files: a local directory, or a hub id's cached snapshot."""
    if Path(ref).is_dir():
        return Path(ref)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # not in the local cache (or not a hub id): plan never downloads
        logger.info("plan: %s is not in the local cache (%s)", ref, type(e).__name__)
        return None
