"""``Tuner.export``: write an ``hf``, ``adapter`` or ``gguf`` export into a staging directory beside the
target, prove it behaves like the trained model, then move it into place.

A failed export (an error, or a verification that does not match) leaves nothing at the target and
keeps a previous export there untouched; a full disk, whichever library's write meets it, is an ``ExportError``
saying so.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunekit import _fs
from tunekit._quiet import quiet
from tunekit._torch import GGUF_NAMES, count_parameters, dtype_name
from tunekit._version import __version__
from tunekit.backends.base import RunSpec, Trained
from tunekit.data.templates import options_baked_in
from tunekit.errors import ConfigError, ExportError, IncompatibleError
from tunekit.export import checks, merged
from tunekit.export.card import loss_plot, model_card
from tunekit.export.gguf import K_QUANTS, gguf_arch, require_gguf, write_gguf
from tunekit.export.gguf_quant import require_quantizer
from tunekit.export.ollama import modelfile
from tunekit.export.prompts import golden_prompts as pick_prompts
from tunekit.export.prompts import with_images
from tunekit.export.result import ExportResult, Verification, human_size
from tunekit.export.verify import encode_prompts
from tunekit.objectives import CausalLM
from tunekit.save_format import EXPORT_MANIFEST, base_model_of, write_manifest

__all__ = ["EXPORT_MANIFEST", "FORMATS", "check_request", "export_format", "export_trained", "verify_trained"]

logger = logging.getLogger("tunekit")

FORMATS = ("hf", "adapter", "gguf")
_DTYPES = {
    "hf": ("auto", "fp32", "bf16", "fp16"),
    "adapter": ("auto",),
    "gguf": ("auto", "f32", "f16", "bf16", "q8_0", *K_QUANTS),
}


# --- checks before anything loads -----------------------------------------------------------------------
def check_request(
    spec: RunSpec,
    path: Path,
    fmt: str,
    merge: bool,
    dtype: str,
    *,
    max_new_tokens: int = 16,
    num_prompts: int = 4,
) -> None:
    """Refuse an export that cannot be made, before anything loads (an unknown format or dtype, a reward model
    as a merged model, a method that cannot merge, a foreign directory in the way, GGUF without its package)."""
    if max_new_tokens < 1 or num_prompts < 1:
        raise ConfigError(f"export(max_new_tokens={max_new_tokens}, num_prompts={num_prompts}): both must be >= 1")
    if fmt not in FORMATS:
        raise ConfigError(f"export(format={fmt!r}): choose one of {list(FORMATS)}")
    if dtype not in _DTYPES[fmt]:
        raise ConfigError(f"export(format={fmt!r}, dtype={dtype!r}): choose one of {list(_DTYPES[fmt])}")
    method = spec.method
    if spec.objective.model_head != "causal_lm" and fmt != "adapter":
        raise IncompatibleError(
            f"export(format={fmt!r}): this tuner is a reward model (a sequence classifier); it exports with "
            'format="adapter" or tuner.save(path)'
        )
    if fmt == "adapter":
        if not method.is_adapter:
            raise IncompatibleError(
                f'export(format="adapter"): {method.name} trains the model\'s own weights, so there is no adapter; '
                'use format="hf" (the whole model) or "gguf"'
            )
    else:
        if not merge:
            raise ConfigError(
                f"export(format={fmt!r}, merge=False): {fmt} exports hold one full model, so the adapter must be "
                'merged; for the adapter alone use format="adapter"'
            )
        if method.is_adapter and not method.mergeable:
            raise IncompatibleError(
                f"{method.name} cannot be merged into the model, so it cannot be exported as format={fmt!r}: "
                f'{method.not_mergeable_because}. Export it with format="adapter" (peft loads it on the base model)'
            )
    if path.exists() and not path.is_dir():
        raise ExportError(f"export({str(path)!r}): a file is in the way; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not ((path / EXPORT_MANIFEST).exists()):
        raise ExportError(
            f"export({str(path)!r}): the directory is not empty and is not a tunekit export; choose a new or empty "
            "directory (tunekit never overwrites files it did not write)"
        )
    if fmt == "gguf":
        if _vision_ref(spec.model_ref):  # before asking for the gguf package it would not use
            _refuse_vision_gguf(getattr(_config_of(spec.model_ref), "model_type", None))
        require_gguf()
        if dtype in K_QUANTS:
            require_quantizer(dtype)


def _config_of(ref: Any) -> Any:
    """The config of a model object, or of a local checkpoint directory (its config.json, read as JSON: nothing is
    loaded); None for a hub id (not fetched here: the loaded model is checked before anything is written)."""
    if not isinstance(ref, (str, Path)):
        return getattr(ref, "config", None)
    file = Path(ref) / "config.json"
    if not file.is_file():
        return None
    try:
        return SimpleNamespace(**json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _vision_ref(ref: Any) -> bool:
    return getattr(_config_of(ref), "vision_config", None) is not None


def _refuse_vision_gguf(model_type: Any) -> None:
    raise IncompatibleError(
        f'export(format="gguf"): this is a vision-language model ({model_type}); a GGUF file holds the language model '
        "only, and llama.cpp reads the vision tower and projector from a separate mmproj file that tunekit does not "
        'write. Export with format="hf" (the merged model and its processor, for transformers, vLLM or SGLang) or '
        'format="adapter"'
    )


def _resolve_dtype(trained: Trained, fmt: str, dtype: str) -> str:
    if dtype != "auto" or fmt == "adapter":
        return dtype if fmt != "adapter" else trained.loaded.precision
    name = dtype_name(trained.loaded.model.get_input_embeddings().weight.dtype)  # the precision the weights are in
    if trained.spec.method.quantization:
        name = "bf16"  # a 4-bit base has no float precision of its own; 16-bit is what it was trained against
    return GGUF_NAMES[name] if fmt == "gguf" else name


# --- writing -----------------------------------------------------------------------------------------------------
def _dir_size(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def _adapter_size(trained: Trained) -> int | None:
    """Bytes of the trained adapter's weights as ``tuner.save`` writes them (None for whole-model methods)."""
    if not trained.spec.method.is_adapter:
        return None
    with tempfile.TemporaryDirectory(prefix="tunekit-size-") as tmp:
        trained.backend.save(trained.loaded, Path(tmp))
        return _dir_size(Path(tmp), "adapter_model*")


def _explain(trained: Trained, dtype: str, adapter: int | None, merged: int | None) -> str:
    trainable, total = count_parameters(trained.loaded.model)
    method = trained.spec.method
    if not method.is_adapter:
        return (
            f"{method.name} trains the model's own weights ({trainable:,} of {total:,} parameters), so there is no "
            "small adapter: every export holds the whole model."
        )
    share = 100 * trainable / total if total else 0.0
    full = merged if merged is not None else None
    ratio = f" ({full / adapter:,.0f}x the adapter)" if full and adapter else ""
    merged_text = (
        f"The merged model{ratio} folds the adapter into a full copy of every base weight, so it is as large as the "
        f"base model at {dtype} and runs without peft or the base model."
        if method.mergeable
        else f"{method.name} cannot be merged ({method.not_mergeable_because}), so it is always served as an adapter."
    )
    return (
        f"Why the adapter is small: {method.name} trains only {trainable:,} of the model's {total:,} parameters "
        f"({share:.2f}%), and the adapter stores just those; it needs the base model to run. {merged_text}"
    )


def _write_adapter(trained: Trained, staging: Path) -> None:
    loaded = trained.loaded
    trained.backend.save(loaded, staging)  # the save manifest comes last, once the model card is written
    gen = copy.deepcopy(loaded.model.generation_config)
    # The model's own EOS ids stay: end-of-turn and the tokenizer's EOS are added to them (as for hf exports).
    gen.eos_token_id = merged.eos_ids(gen.eos_token_id, loaded.template.end_of_turn_id, loaded.tokenizer.eos_token_id)
    gen.pad_token_id = loaded.tokenizer.pad_token_id
    gen.save_pretrained(staging)  # peft does not write one: without it a plain load stops at the base's EOS


def _write_model(trained: Trained, model: Any, owned: bool, staging: Path, fmt: str, dtype: str) -> str | None:
    """Write the full model (``hf`` or ``gguf``); returns the GGUF file name.

    ``model`` may already hold the weights rounded to ``dtype`` (the reference rounds in place):
    rounding again is exact (bf16, fp16 and q8_0 rounding are idempotent).
    """
    loaded = trained.loaded
    tokenizer, eot = loaded.tokenizer, loaded.template.end_of_turn_id
    if fmt == "hf":
        written = merged.written_copy(model, owned, dtype)
        merged.write_hf(written, tokenizer, eot, staging, processor=getattr(loaded, "processor", None))
        return None
    name = f"{_safe_name(trained.spec)}-{dtype}.gguf"
    with tempfile.TemporaryDirectory(prefix="tunekit-tok-") as tmp:
        with quiet(), options_baked_in(tokenizer):
            tokenizer.save_pretrained(tmp)
        write_gguf(model, tokenizer, Path(tmp), staging / name, ftype=dtype, end_of_turn_id=eot)
    stops = [loaded.template.end_of_turn, *([tokenizer.eos_token] if tokenizer.eos_token else [])]
    _fs.write_text(staging / "Modelfile", modelfile(name, tokenizer, stops))
    return name


def _safe_name(spec: RunSpec) -> str:
    ref = spec.model_ref
    raw = Path(str(ref)).name if isinstance(ref, (str, Path)) else type(ref).__name__
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw).strip("-.") or "model"
    return f"{clean}-{spec.method.name.lower()}"


def export_trained(
    trained: Trained,
    path: str | Path,
    *,
    format: str = "hf",
    merge: bool = True,
    dtype: str = "auto",
    golden_prompts: Any = None,
    verify: bool = True,
    max_new_tokens: int = 16,
    num_prompts: int = 4,
) -> ExportResult:
    """Export ``trained`` to ``path``; see :meth:`tunekit.Tuner.export`."""
    path = Path(path)
    spec, loaded = trained.spec, trained.loaded
    check_request(spec, path, format, merge, dtype, max_new_tokens=max_new_tokens, num_prompts=num_prompts)
    processor = getattr(loaded, "processor", None)
    if format == "gguf":
        if processor is not None or merged.is_vision(loaded.model):
            _refuse_vision_gguf(getattr(loaded.model.config, "model_type", None))
        gguf_arch(loaded.model.config)  # Llama or Qwen2, before anything is written
    dtype = _resolve_dtype(trained, format, dtype)
    chat = not isinstance(spec.objective, CausalLM)
    prompts, source = pick_prompts(trained.data_summary, golden_prompts, num_prompts)
    if processor is not None and chat:  # a vision-language model is verified on prompts with images
        prompts, source = with_images(prompts, source, spec.objective, spec.training)
    golden = encode_prompts(loaded.tokenizer, prompts, chat=chat, processor=processor)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.export-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        adapter_size = _adapter_size(trained)
        ref, gguf_name = None, None
        if format == "adapter":
            _write_adapter(trained, staging)
            if verify:
                ref = checks.reference(trained, golden, format, dtype, max_new_tokens)
        else:
            model, owned = merged.full_precision_model(trained)
            # Before writing, the merge is checked on the full-precision weights; a k-quant's reference is read back
            # from the file llama.cpp's quantizer wrote (it picks each tensor's type), so it comes after.
            kquant = dtype in K_QUANTS
            if verify and not kquant:
                ref = checks.reference(trained, golden, format, dtype, max_new_tokens, model=model, owned=owned)
            gguf_name = _write_model(trained, model, owned, staging, format, dtype)
            if verify and kquant:
                ref = checks.reference(
                    trained, golden, format, dtype, max_new_tokens, model=model, owned=owned,
                    written=staging / str(gguf_name),
                )  # fmt: skip
            del model
            merged.free(checks.model_size(trained))
        verification = None
        if ref is not None:
            verification = checks.verification(trained, staging, format, golden, ref, max_new_tokens, chat)
            verification = verification.model_copy(update={"notes": [f"golden prompts: {source}", *verification.notes]})
            checks.raise_if_failed(verification, format)
        weights = "*.gguf" if format == "gguf" else "*.safetensors"
        merged_size = _dir_size(staging, weights) if format != "adapter" else None
        explanation = _explain(trained, dtype, adapter_size, merged_size)
        trainable, total = count_parameters(loaded.model)
        if format == "adapter":
            explanation += (
                f" A merged copy at {dtype} would take about {human_size(total * (4 if dtype == 'fp32' else 2))}."
            )
        size_text = "\n".join(
            [
                *([f"- adapter alone: {human_size(adapter_size)}"] if adapter_size is not None else []),
                *([f"- merged model weights ({dtype}): {human_size(merged_size)}"] if merged_size is not None else []),
                "",
                explanation,
            ]
        )
        plot_note = loss_plot(trained.result, staging)
        base = base_model_of(spec)
        card = model_card(
            trained,
            fmt=format,
            dtype=dtype,
            path=path,
            base=base,
            size_text=size_text,
            verification=verification,
            gguf_file=gguf_name,
            plot_note=plot_note,
        )
        _fs.write_text(staging / "README.md", card)  # replaces the card peft writes
        if format == "adapter":  # also a tunekit save: its manifest lists every file with its size, so it goes last
            write_manifest(trained, staging)
        manifest = {
            "tunekit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": format,
            "dtype": dtype,
            "base_model": base,
            "method": spec.method.record(),
            "objective": spec.objective.record(),
            "chat": chat,
            "gguf_file": gguf_name,
            "adapter_size_bytes": adapter_size,
            "verification": verification.model_dump(mode="json") if verification is not None else None,
        }
        _fs.write_json(staging / EXPORT_MANIFEST, manifest)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        size = _dir_size(staging)
        _fs.flush_tree(staging)  # the weights too, as a save's are: the export is on disk before it is in place
        _fs.replace_dir(staging, path)
    except BaseException as e:
        full = _fs.disk_full_reason(e, staging) if isinstance(e, Exception) else None  # before staging goes
        _fs.remove_tree(staging)
        if full is None:
            raise
        fix = "the disk is full; free some space or export elsewhere"
        if full == "File too large":
            fix = "the disk is full or a file reached the size limit (ulimit -f); free some space or export elsewhere"
        raise ExportError(
            f"export({str(path)!r}): could not write the export ({full}): {fix}"
            + ("; the previous export there is intact" if path.exists() else "")
        ) from e
    return ExportResult(
        path=path,
        format=format,  # type: ignore[arg-type]
        dtype=dtype,
        files=files,
        size_bytes=size,
        adapter_size_bytes=adapter_size,
        merged_size_bytes=merged_size,
        trainable_params=trainable,
        total_params=total,
        size_explanation=explanation,
        verification=verification,
        gguf_file=path / gguf_name if gguf_name else None,
    )


def export_format(path: str | Path) -> tuple[str, str]:
    """``(format, dtype)`` of the export at ``path``, from its manifest; ExportError when it is not a tunekit export."""
    manifest_file = Path(path) / EXPORT_MANIFEST
    manifest = _fs.read_manifest(
        manifest_file,
        missing=f"verify_export({str(path)!r}): not a tunekit export (no {EXPORT_MANIFEST})",
        fix="export again",
        error=ExportError,
    )
    fmt, dtype = manifest.get("format"), manifest.get("dtype")
    if fmt not in FORMATS:
        raise ExportError(f"{manifest_file}: unknown format {fmt!r}")
    if not isinstance(dtype, str):
        raise ExportError(f"{manifest_file} is corrupt (no dtype); export again")
    return str(fmt), dtype


def verify_trained(
    path: str | Path, trained: Trained, *, golden_prompts: Any = None, max_new_tokens: int = 16, num_prompts: int = 4
) -> Verification:
    """Reload the export at ``path`` and check it against ``trained``; see :func:`tunekit.verify_export`."""
    path = Path(path)
    fmt, dtype = export_format(path)
    chat = not isinstance(trained.spec.objective, CausalLM)
    prompts, source = pick_prompts(trained.data_summary, golden_prompts, num_prompts)
    golden = encode_prompts(trained.loaded.tokenizer, prompts, chat=chat)
    written = next(path.glob("*.gguf"), None) if fmt == "gguf" else None
    ref = checks.reference(trained, golden, fmt, dtype, max_new_tokens, written=written)
    v = checks.verification(trained, path, fmt, golden, ref, max_new_tokens, chat)
    v = v.model_copy(update={"notes": [f"golden prompts: {source}", *v.notes]})
    checks.raise_if_failed(v, fmt)
    return v
