"""``Tuner.export``: write an ``hf``, ``adapter`` or ``gguf`` export into a staging directory beside the
target, prove it behaves like the trained model, then move it into place.

A failed export (an error, or a verification that does not match) leaves nothing at the target and
keeps a previous export there untouched.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunekit.errors import ConfigError, ExportError, IncompatibleError
from tunekit.export import checks
from tunekit.export import hf as hfx
from tunekit.export.result import ExportResult, Verification, human_size
from tunekit.export.verify import encode_prompts

__all__ = ["EXPORT_MANIFEST", "export_tuner", "verify_export"]

logger = logging.getLogger("tunekit")

EXPORT_MANIFEST = "tunekit_export.json"
FORMATS = ("hf", "adapter", "gguf")
_DTYPES = {"hf": ("auto", "fp32", "bf16", "fp16"), "adapter": ("auto",), "gguf": ("auto", "f32", "f16", "bf16", "q8_0")}


# --- checks before anything loads -----------------------------------------------------------------------
def _check_request(tuner: Any, path: Path, fmt: str, merge: bool, dtype: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"export(format={fmt!r}): choose one of {list(FORMATS)}")
    if dtype not in _DTYPES[fmt]:
        raise ConfigError(f"export(format={fmt!r}, dtype={dtype!r}): choose one of {list(_DTYPES[fmt])}")
    method = tuner.method
    if getattr(tuner.objective_used, "model_head", "causal_lm") != "causal_lm" and fmt != "adapter":
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


def _resolve_dtype(tuner: Any, fmt: str, dtype: str) -> str:
    if dtype != "auto" or fmt == "adapter":
        return dtype if fmt != "adapter" else tuner.loaded.precision
    base = tuner.model.get_input_embeddings().weight.dtype  # the precision the weights are held in
    name = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(base), "fp32")
    if getattr(tuner.method, "quantize", None):
        name = "bf16"  # a 4-bit base has no float precision of its own; 16-bit is what it was trained against
    return {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[name] if fmt == "gguf" else name


# --- writing -----------------------------------------------------------------------------------------------------
def _dir_size(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def _adapter_size(tuner: Any) -> int | None:
    """Bytes of the trained adapter's weights as ``tuner.save`` writes them (None for whole-model methods)."""
    if not tuner.method.is_adapter:
        return None
    with tempfile.TemporaryDirectory(prefix="tunekit-size-") as tmp:
        tuner.backend.save(tuner.loaded, Path(tmp))
        return _dir_size(Path(tmp), "adapter_model*")


def _explain(tuner: Any, fmt: str, dtype: str, adapter: int | None, merged: int | None) -> str:
    from tunekit.backends.hf.peft_map import count_parameters

    trainable, total = count_parameters(tuner.model)
    method = tuner.method
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


def _write_adapter(tuner: Any, staging: Path) -> None:
    loaded = tuner.loaded
    tuner.backend.save(loaded, staging)  # the save manifest comes last, once the model card is written
    gen = copy.deepcopy(tuner.model.generation_config)
    # The model's own EOS ids stay: end-of-turn and the tokenizer's EOS are added to them (as for hf exports).
    eos = {loaded.template.end_of_turn_id, tuner.tokenizer.eos_token_id} | hfx._ids(gen.eos_token_id)
    gen.eos_token_id = sorted(eos - {None})
    gen.pad_token_id = tuner.tokenizer.pad_token_id
    gen.save_pretrained(staging)  # peft does not write one: without it a plain load stops at the base's EOS


def _write_model(tuner: Any, model: Any, owned: bool, staging: Path, fmt: str, dtype: str) -> str | None:
    """Write the full model (``hf`` or ``gguf``); returns the GGUF file name.

    ``model`` may already hold the weights rounded to ``dtype`` (the reference rounds in place):
    rounding again is exact (bf16, fp16 and q8_0 rounding are idempotent).
    """
    loaded = tuner.loaded
    eot = loaded.template.end_of_turn_id
    if fmt == "hf":
        written = hfx.written_copy(model, owned, dtype)
        hfx.write_hf(written, tuner.tokenizer, eot, staging)
        return None
    from tunekit.export.gguf import write_gguf
    from tunekit.export.ollama import modelfile

    name = f"{_safe_name(tuner)}-{dtype}.gguf"
    with tempfile.TemporaryDirectory(prefix="tunekit-tok-") as tmp:
        with _quiet():
            tuner.tokenizer.save_pretrained(tmp)
        write_gguf(model, tuner.tokenizer, Path(tmp), staging / name, ftype=dtype, end_of_turn_id=eot)
    stops = [loaded.template.end_of_turn, *([tuner.tokenizer.eos_token] if tuner.tokenizer.eos_token else [])]
    (staging / "Modelfile").write_text(modelfile(name, tuner.tokenizer, stops), encoding="utf-8")
    return name


def _quiet() -> Any:
    from tunekit._quiet import quiet

    return quiet()


def _safe_name(tuner: Any) -> str:
    ref = tuner.model_ref
    raw = Path(str(ref)).name if isinstance(ref, (str, Path)) else type(ref).__name__
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw).strip("-.") or "model"
    return f"{clean}-{tuner.method.name.lower()}"


def _base_name(tuner: Any) -> str | None:
    from tunekit.saving import _base_ref, _read_manifest

    if tuner.adapter_path is not None and tuner.method.is_adapter:
        return _read_manifest(tuner.adapter_path).get("base_model")
    return _base_ref(tuner)


def export_tuner(
    tuner: Any,
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
    """See :meth:`tunekit.Tuner.export`."""
    from tunekit import __version__
    from tunekit.backends.hf.peft_map import count_parameters
    from tunekit.export.card import loss_plot, model_card
    from tunekit.export.prompts import golden_prompts as pick_prompts
    from tunekit.objectives import CausalLM
    from tunekit.saving import _replace_dir

    path = Path(path)
    if max_new_tokens < 1 or num_prompts < 1:
        raise ConfigError(f"export(max_new_tokens={max_new_tokens}, num_prompts={num_prompts}): both must be >= 1")
    _check_request(tuner, path, format, merge, dtype)
    if format == "gguf":
        from tunekit.export.gguf import _arch, require_gguf

        require_gguf()
        _arch(tuner.model.config)  # Llama or Qwen2, before anything is written
    dtype = _resolve_dtype(tuner, format, dtype)
    chat = not isinstance(tuner.objective_used, CausalLM)
    prompts, source = pick_prompts(tuner, golden_prompts, num_prompts)
    golden = encode_prompts(tuner.tokenizer, prompts, chat=chat)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.export-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        adapter_size = _adapter_size(tuner)
        ref, gguf_name = None, None
        if format == "adapter":
            _write_adapter(tuner, staging)
            if verify:
                ref = checks.reference(tuner, golden, format, dtype, max_new_tokens)
        else:
            model, owned = hfx.full_precision_model(tuner)
            if verify:  # before writing: the merge is checked on the full-precision weights
                ref = checks.reference(tuner, golden, format, dtype, max_new_tokens, model=model, owned=owned)
            gguf_name = _write_model(tuner, model, owned, staging, format, dtype)
            del model
            hfx.free(checks.model_size(tuner))
        verification = None
        if ref is not None:
            verification = checks.verification(tuner, staging, format, golden, ref, max_new_tokens, chat)
            verification = verification.model_copy(update={"notes": [f"golden prompts: {source}", *verification.notes]})
            checks.raise_if_failed(verification, format)
        weights = "*.gguf" if format == "gguf" else "*.safetensors"
        merged_size = _dir_size(staging, weights) if format != "adapter" else None
        explanation = _explain(tuner, format, dtype, adapter_size, merged_size)
        if format == "adapter":
            _, total = count_parameters(tuner.model)
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
        plot_note = loss_plot(tuner, staging)
        base = _base_name(tuner)
        card = model_card(
            tuner,
            fmt=format,
            dtype=dtype,
            path=path,
            base=base,
            size_text=size_text,
            verification=verification,
            gguf_file=gguf_name,
            plot_note=plot_note,
        )
        (staging / "README.md").write_text(card, encoding="utf-8")  # replaces the card peft writes
        if format == "adapter":  # also a tunekit save: its manifest lists every file with its size, so it goes last
            from tunekit.saving import write_manifest

            write_manifest(tuner, staging)
        trainable, total = count_parameters(tuner.model)
        manifest = {
            "tunekit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": format,
            "dtype": dtype,
            "base_model": base,
            "method": {"name": tuner.method.name, "options": tuner.method.model_dump(mode="json")},
            "objective": tuner.objective_used.name,
            "chat": chat,
            "gguf_file": gguf_name,
            "adapter_size_bytes": adapter_size,
            "verification": verification.model_dump(mode="json") if verification is not None else None,
        }
        (staging / EXPORT_MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        size = _dir_size(staging)
        _replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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


def verify_export(
    path: str | Path, tuner: Any, *, golden_prompts: Any = None, max_new_tokens: int = 16, num_prompts: int = 4
) -> Verification:
    """Reload an export from disk and check it against ``tuner``'s in-memory model; raises ExportError on a mismatch.

    Runs the same checks as ``Tuner.export(verify=True)``: the chat template is there, the EOS ids
    include the template's end-of-turn token, the tokenizer encodes the golden prompts as in training,
    and greedy decoding gives the reference tokens (see :mod:`tunekit.export.verify` for the rules).

    Example:
        >>> tuner.export("out/merged")  # doctest: +SKIP
        >>> tk.verify_export("out/merged", tuner).passed  # doctest: +SKIP
        True
    """
    from tunekit.export.prompts import golden_prompts as pick_prompts
    from tunekit.objectives import CausalLM

    path = Path(path)
    manifest_file = path / EXPORT_MANIFEST
    if not manifest_file.exists():
        raise ExportError(f"verify_export({str(path)!r}): not a tunekit export (no {EXPORT_MANIFEST})")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        fmt, dtype = manifest["format"], manifest["dtype"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ExportError(f"{manifest_file} is corrupt ({e}); export again") from None
    if fmt not in FORMATS:
        raise ExportError(f"{manifest_file}: unknown format {fmt!r}")
    chat = not isinstance(tuner.objective_used, CausalLM)
    prompts, source = pick_prompts(tuner, golden_prompts, num_prompts)
    golden = encode_prompts(tuner.tokenizer, prompts, chat=chat)
    ref = checks.reference(tuner, golden, fmt, dtype, max_new_tokens)
    v = checks.verification(tuner, path, fmt, golden, ref, max_new_tokens, chat)
    v = v.model_copy(update={"notes": [f"golden prompts: {source}", *v.notes]})
    checks.raise_if_failed(v, fmt)
    return v
