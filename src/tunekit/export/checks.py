"""The reference an export must reproduce, and reloading each format to compare with it (rules in verify.py)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit._quiet import quiet
from tunekit._torch import count_parameters, is_quantized, torch_dtype
from tunekit.backends.base import Trained
from tunekit.errors import ExportError
from tunekit.export import gguf_check, merged
from tunekit.export.gguf import round_like_gguf
from tunekit.export.result import Verification
from tunekit.export.verify import (
    Golden,
    check_eos,
    check_template,
    encode_prompts,
    end_of_turn_id,
    greedy,
    mismatch_error,
    prompt_checks,
)

__all__ = ["Reference", "model_size", "raise_if_failed", "reference", "token_agreement", "verification"]

logger = logging.getLogger("tunekit")


@dataclass
class Reference:
    """The reference tokens for each golden prompt, and what they are."""

    expected: list[list[int]]
    trained: list[list[int]]
    label: str
    dtype: str = "fp32"
    notes: list[str] = field(default_factory=list)


def model_size(trained: Trained) -> int:
    """Parameters of the trained model (tied weights once): how much memory a copy of it frees."""
    return count_parameters(trained.loaded.model)[1]


def _eos_of(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


# --- the reference ----------------------------------------------------------------------------------------
def reference(
    trained: Trained,
    golden: list[Golden],
    fmt: str,
    dtype: str,
    max_new: int,
    model: Any = None,
    owned: bool = False,
    written: Path | None = None,
) -> Reference:
    """The in-memory model's greedy tokens, and the tokens the export must reproduce (see verify.py).

    ``written``: the GGUF file, for a k-quant (its weights are read back from it)."""
    tok, in_memory, method = trained.loaded.tokenizer, trained.loaded.model, trained.spec.method
    eos, pad = _eos_of(in_memory), tok.pad_token_id
    was_training = in_memory.training
    in_memory.eval()
    try:
        tokens = [
            greedy(in_memory, g.ids, eos_ids=eos, pad_id=pad, max_new_tokens=max_new, inputs=g.inputs) for g in golden
        ]
    finally:
        in_memory.train(was_training)
    if fmt == "adapter":
        return Reference(tokens, tokens, "trained")
    quantized = is_quantized(in_memory)
    if model is None:
        model, owned = merged.full_precision_model(trained)
    notes: list[str] = []
    expected = tokens
    # The merge is enforced only when like is compared with like: a model held in fp32 against its fp32 merge.
    # A bf16 / fp16 model is merged in fp32 (merged.full_precision_model), which computes in another precision,
    # so greedy tokens may differ for precision alone: reported, not enforced (as for QLoRA).
    low_precision = not quantized and not merged.held_in_fp32(in_memory)
    if method.is_adapter:  # the merge itself, in memory, in fp32
        merged_tokens = [
            greedy(model, g.ids, eos_ids=eos, pad_id=pad, max_new_tokens=max_new, inputs=g.inputs) for g in golden
        ]
        if merged_tokens != tokens and low_precision:
            notes.append(
                "the model was trained in 16-bit and merged in fp32; the fp32 merge differs from the 16-bit trained "
                f"model on {sum(a != b for a, b in zip(merged_tokens, tokens))} golden prompt(s), from precision alone "
                "(reported, not enforced); the export is compared with the fp32 merge"
            )
        elif merged_tokens != tokens and not quantized:
            bad = next(i for i, (a, b) in enumerate(zip(merged_tokens, tokens)) if a != b)
            raise ExportError(
                f"merging {method.name} into the base weights changed the model's outputs on the golden prompt "
                f"{golden[bad].prompt!r}: trained {tok.decode(tokens[bad])!r}, "
                f"merged {tok.decode(merged_tokens[bad])!r}; nothing was written;"
                ' export the adapter with format="adapter" and report this as a tunekit bug'
            )
        if quantized:
            notes.append(
                "the QLoRA base was re-loaded in full precision for the merge, so the export is compared with that "
                "merged model; its agreement with the 4-bit trained model is reported, not enforced"
            )
        expected = merged_tokens
    rounded = dtype not in ("fp32", "f32")
    if rounded:
        ref = model if owned else copy.deepcopy(model)
        if fmt == "gguf":
            round_like_gguf(ref, dtype, written)
        else:
            ref.to(torch_dtype(dtype)).float()
        expected = [
            greedy(ref, g.ids, eos_ids=eos, pad_id=pad, max_new_tokens=max_new, inputs=g.inputs) for g in golden
        ]
        del ref
    label = "trained" if not rounded else f"trained, rounded to {dtype} as written"
    if quantized:
        label = "trained adapter merged into the base re-loaded in fp32" + (f", rounded to {dtype}" if rounded else "")
    return Reference(expected, tokens, label, dtype=dtype, notes=notes)


def token_agreement(got: list[list[int]], trained: list[list[int]]) -> float:
    """Greedy tokens equal position by position, over the longer answer of each pair (an answer that stops early, or
    runs on, counts its missing tokens as disagreements); 1.0 when every answer is identical."""
    same = sum(sum(a == b for a, b in zip(g, t)) for g, t in zip(got, trained))
    total = sum(max(len(g), len(t)) for g, t in zip(got, trained))
    return same / total if total else 1.0


# --- reloading each format ----------------------------------------------------------------------------------
def _reload_and_generate(
    trained: Trained, staging: Path, fmt: str, golden: list[Golden], ref: Reference, max_new: int, chat: bool
) -> tuple[list[Any], list[str]]:
    """Reload the export from disk, run the static checks, and return per-runtime prompt checks."""
    tokenizer = trained.loaded.tokenizer
    where = f"export at {staging.name}"
    checks: list[Any] = []
    notes: list[str] = []
    device = trained.loaded.device
    if fmt == "gguf":
        file = next(staging.glob("*.gguf"))
        meta = gguf_check.gguf_metadata(file)
        eot = trained.loaded.template.end_of_turn_id
        eos = [int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
        if not meta.get("tokenizer.chat_template"):
            raise ExportError(f"{where}: the GGUF file has no tokenizer.chat_template; export again")
        check_eos(eos, eot, where + " (GGUF tokenizer.ggml.eos/eot_token_id)", tokenizer)
        model = gguf_check.reload_gguf_transformers(file, device=device)
        got = [greedy(model, g.ids, eos_ids=eos, pad_id=None, max_new_tokens=max_new, inputs=g.inputs) for g in golden]
        del model
        merged.free(model_size(trained))
        checks += prompt_checks(golden, got, runtime="transformers", tokenizer=tokenizer, expected=ref.expected)
        if gguf_check.has_llama_cpp():
            texts = [tokenizer.decode(g.ids, skip_special_tokens=False) for g in golden] if chat else None
            outs, same = gguf_check.llama_cpp_greedy(file, golden, eos_ids=eos, max_new_tokens=max_new, texts=texts)
            # Enforced for f32 only: for f16, bf16 and q8_0 weights llama.cpp also rounds the activations to that
            # type in its dot products, so a near-tie between two tokens may flip; those checks are reported.
            checks += prompt_checks(
                golden, outs, runtime="llama.cpp", tokenizer=tokenizer, expected=ref.expected,
                enforced=ref.dtype == "f32",
            )  # fmt: skip
            if texts is not None:
                notes.append(
                    f"llama.cpp tokenises {sum(same)}/{len(same)} golden prompts' text exactly as transformers"
                )
        else:
            notes.append(
                "llama-cpp-python is not installed, so the file was checked with transformers' GGUF loader only"
            )
        return checks, notes
    processor = None
    if fmt == "hf":
        model, tok, processor = merged.reload_hf(staging, device=device)
        eos = _eos_of(model)
    else:  # adapter: plain peft on the base, as the model card says
        model, tok, eos, skip = _reload_adapter(trained, staging, device)
        if skip:
            return [], [skip]
        if merged.is_vision(model):  # a vision-language model's adapter has its processor beside it
            processor = merged.reload_processor(staging, model.config.model_type)
            tok = processor.tokenizer
    check_template(tok, where)
    check_eos(eos, end_of_turn_id(tok, where), where + " (generation_config.json eos_token_id)", tok)
    if any(g.inputs for g in golden) and processor is None:
        raise ExportError(f"{where}: the export has no processor (processor_config.json) to read images; export again")
    # A vision-language model's export is checked with its own processor: the images' tokens and pixel values too.
    again = encode_prompts(tok, [g.source for g in golden], chat=chat, processor=processor)
    for g, a in zip(golden, again):
        if a.ids != g.ids:
            raise ExportError(
                f"{where}: the exported tokenizer and template encode the golden prompt {g.prompt!r} differently from "
                f"the trained model's (ids {a.ids} instead of {g.ids}); export again"
            )
    got = [
        greedy(model, a.ids, eos_ids=eos, pad_id=tok.pad_token_id, max_new_tokens=max_new, inputs=a.inputs)
        for a in again
    ]
    del model
    merged.free(model_size(trained))
    return prompt_checks(golden, got, runtime="transformers", tokenizer=tok, expected=ref.expected), notes


def _reload_adapter(trained: Trained, staging: Path, device: Any) -> tuple[Any, Any, list[int], str | None]:
    """The exported adapter on its base, loaded as the model card says (plain peft), with its tokenizer and EOS ids;
    or a note saying why it could not be reloaded."""
    from transformers import AutoTokenizer, GenerationConfig

    spec = trained.spec
    ref = spec.model_ref
    if not isinstance(ref, (str, Path)) or is_quantized(trained.loaded.model):
        why = "the base was given as a model object" if not isinstance(ref, (str, Path)) else "the base is quantized"
        return None, None, [], f"the adapter was not reloaded for a generation check: {why}; its files were checked"
    from peft import PeftModel

    with quiet():
        tok = AutoTokenizer.from_pretrained(staging)
        base = trained.backend.load_base(spec, precision=trained.loaded.precision)
        if len(tok) > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(len(tok))
        model = PeftModel.from_pretrained(base, str(staging))
        gen = GenerationConfig.from_pretrained(staging)
    model.to(device)
    model.eval()
    eos = gen.eos_token_id
    return model, tok, ([eos] if isinstance(eos, int) else list(eos or [])), None


def verification(
    trained: Trained, staging: Path, fmt: str, golden: list[Golden], ref: Reference, max_new: int, chat: bool
) -> Verification:
    """Reload the export at ``staging`` and compare it with the reference: the checks and their verdict."""
    checks, notes = _reload_and_generate(trained, staging, fmt, golden, ref, max_new, chat)
    tf = [c for c in checks if c.runtime == "transformers"]
    agreement = sum(c.got_ids == t for c, t in zip(tf, ref.trained)) / len(tf) if tf else None
    lc = [c for c in checks if c.runtime == "llama.cpp"]
    lc_prompts = sum(c.got_ids == t for c, t in zip(lc, ref.trained)) / len(lc) if lc else None
    lc_tokens = token_agreement([c.got_ids for c in lc], ref.trained) if lc else None
    if lc:
        exact = sum(c.got_ids == t for c, t in zip(lc, ref.trained))
        notes.append(
            f"llama.cpp ({ref.dtype}) against the trained model: {exact}/{len(lc)} golden prompts give exactly the "
            f"same greedy tokens, {100 * (lc_tokens or 0.0):.1f}% of the tokens agree position by position"
        )
    loose = [c for c in checks if not c.enforced]
    if loose:
        notes.append(
            f"llama.cpp gives the reference tokens on {sum(c.match for c in loose)}/{len(loose)} prompts "
            f"(reported, not enforced, for {ref.dtype}: llama.cpp rounds activations to the weight type)"
        )
    return Verification(
        passed=all(c.match for c in checks if c.enforced),
        strict=not loose,
        reference=ref.label,
        checks=checks,
        trained_agreement=agreement,
        llama_cpp_agreement=lc_prompts,
        llama_cpp_token_agreement=lc_tokens,
        notes=ref.notes + notes,
    )


def raise_if_failed(v: Verification, fmt: str) -> None:
    """Raise the ExportError of the first enforced check that failed; log the checks that are only reported."""
    err = mismatch_error([c for c in v.checks if c.enforced], f"the {fmt} export")
    if err is not None:
        raise err
    if any(not c.match for c in v.checks):
        logger.warning("export verification: %s; %s", v, "; ".join(v.notes))
