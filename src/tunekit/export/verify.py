"""The proof that an export behaves like the trained model.

Every export is reloaded from disk the way a user would load it (plain transformers for ``hf``;
transformers' GGUF loader, and llama.cpp when llama-cpp-python is installed, for ``gguf``; peft
for ``adapter``), and its greedy tokens on the golden prompts are compared with those of the
in-memory model. The rules:

- the merge itself is checked in memory: the merged full-precision model must give the trained
  model's greedy tokens (a QLoRA base re-loaded in 16-bit cannot, so there it is reported);
- the reloaded export must give exactly the tokens of the weights it claims to hold: the trained
  model itself for an ``fp32`` export; for a lower precision (bf16, fp16, q8_0) the merged weights
  rounded exactly as written, computed in fp32 on both sides, so the comparison is exact;
- how far rounding moved the outputs from the trained model is reported as ``trained_agreement``
  and never fails an export (a random tiny model flips greedy tokens on near-ties; a real model
  rarely does);
- static checks: the tokenizer has the chat template, and the generation config's (or GGUF's)
  EOS ids include the template's end-of-turn token.

A vision-language model's golden prompts hold images: each is encoded by the model's processor (the image's tokens
in the ids, its pixel values and image grid beside them, as ``generate`` encodes it), and the reloaded export's own
processor must encode it to the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunekit._quiet import quiet
from tunekit.data.templates import find_end_of_turn, render
from tunekit.errors import ExportError
from tunekit.export.result import PromptCheck
from tunekit.inference import prompt_images

__all__ = [
    "Golden",
    "check_eos",
    "check_template",
    "encode_prompts",
    "greedy",
    "mismatch_error",
    "prompt_checks",
    "shown",
]


@dataclass
class Golden:
    """One golden prompt: as shown (an image as ``{"type": "image"}``), its token ids, and the tokens the reference
    model generates; with images, the prompt with them (``source``) and the processor's other inputs (``inputs``:
    pixel values, image grid, ...)."""

    prompt: Any
    ids: list[int]
    expected: list[int] | None = None
    trained: list[int] | None = None
    source: Any = None
    inputs: dict[str, Any] | None = None


def encode_prompt(tokenizer: Any, prompt: Any, *, chat: bool) -> list[int]:
    """Token ids exactly as ``Tuner.generate`` feeds them (template applied for chat objectives)."""
    if chat:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = render(tokenizer, msgs, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def shown(prompt: Any) -> Any:
    """``prompt`` without its images' payloads (each an ``{"type": "image"}`` part): what reports and manifests hold."""
    if not prompt_images(prompt):
        return prompt
    return [
        {**m, "content": [{"type": "image"} if p.get("type") == "image" else p for p in m["content"]]}
        if isinstance(m.get("content"), list)
        else m
        for m in prompt
    ]


def _encode_with_images(processor: Any, prompt: Any) -> Golden:
    text = render(processor.tokenizer, list(prompt), add_generation_prompt=True)
    with quiet():
        enc = processor(text=[text], images=prompt_images(prompt), add_special_tokens=False, return_tensors="pt")
    ids = [int(i) for i in enc["input_ids"][0].tolist()]
    inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    return Golden(shown(prompt), ids, source=prompt, inputs=inputs)


def encode_prompts(tokenizer: Any, prompts: Sequence[Any], *, chat: bool, processor: Any = None) -> list[Golden]:
    """Each prompt's :class:`Golden`; a chat prompt with images through ``processor`` (a vision-language model's)."""
    return [
        _encode_with_images(processor, p)
        if processor is not None and chat and prompt_images(p)
        else Golden(p, encode_prompt(tokenizer, p, chat=chat), source=p)
        for p in prompts
    ]


def greedy(
    model: Any,
    ids: list[int],
    *,
    eos_ids: list[int],
    pad_id: int | None,
    max_new_tokens: int,
    inputs: dict[str, Any] | None = None,
) -> list[int]:
    """The new token ids of greedy decoding from ``ids`` (one prompt, no padding), up to and including EOS;
    ``inputs``: a vision-language model's image inputs for the prompt (pixel values, image grid, ...)."""
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    extra = {k: v.to(device) if hasattr(v, "to") else v for k, v in (inputs or {}).items()}
    with torch.no_grad(), quiet():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **extra,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids or None,
            pad_token_id=pad_id if pad_id is not None else (eos_ids[0] if eos_ids else None),
            temperature=None,
            top_p=None,
            top_k=None,
        )
    return [int(t) for t in out[0, len(ids) :].tolist()]


def _content(content: Any) -> str:
    if not isinstance(content, list):
        return str(content)
    return " ".join("[image]" if p.get("type") == "image" else str(p.get("text", "")) for p in content)


def _short(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else " / ".join(f"{m['role']}: {_content(m['content'])}" for m in prompt)
    return text if len(text) <= 80 else text[:77] + "..."


def prompt_checks(
    golden: list[Golden],
    got: list[list[int]],
    *,
    runtime: str,
    tokenizer: Any,
    expected: list[list[int]] | None = None,
    enforced: bool = True,
) -> list[PromptCheck]:
    """One :class:`PromptCheck` a prompt: the reference tokens (``expected``) against ``got``."""
    checks = []
    for i, (g, ids) in enumerate(zip(golden, got)):
        exp = expected[i] if expected is not None else (g.expected or [])
        checks.append(
            PromptCheck(
                prompt=g.prompt,
                runtime=runtime,
                expected_ids=exp,
                got_ids=ids,
                expected=tokenizer.decode(exp, skip_special_tokens=False),
                got=tokenizer.decode(ids, skip_special_tokens=False),
                match=exp == ids,
                enforced=enforced,
            )
        )
    return checks


def mismatch_error(checks: list[PromptCheck], what: str) -> ExportError | None:
    """An ExportError naming the first prompt whose outputs differ, with both outputs; None when all match."""
    bad = [c for c in checks if not c.match]
    if not bad:
        return None
    c = bad[0]
    return ExportError(
        f"{what} ({c.runtime}) does not behave like the trained model on {len(bad)} of {len(checks)} golden prompts; "
        f"first: prompt {_short(c.prompt)!r}: expected {c.expected!r} (ids {c.expected_ids}), got {c.got!r} "
        f"(ids {c.got_ids}). Nothing was written; report this as a tunekit bug, or pass verify=False to write it "
        "anyway"
    )


def check_template(tokenizer: Any, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError(
            f"{where}: the exported tokenizer has no chat template (tokenizer_config.json / chat_template.jinja), "
            "so a chat model would be prompted in a format it never saw in training; export again"
        )


def end_of_turn_id(tokenizer: Any, where: str) -> int:
    """The id of the exported template's end-of-turn token; ExportError when the template does not render."""
    try:
        return int(tokenizer.convert_tokens_to_ids(find_end_of_turn(tokenizer)))
    except Exception as e:  # a template that does not render is as broken as a missing one
        raise ExportError(f"{where}: the exported chat template does not render a conversation: {e}") from e


def check_eos(eos_ids: Any, eot_id: int, where: str, tokenizer: Any) -> None:
    ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
    if eot_id not in ids:
        raise ExportError(
            f"{where}: the EOS ids {ids} do not include the chat template's end-of-turn token "
            f"{tokenizer.convert_ids_to_tokens(eot_id)!r} (id {eot_id}), so generation would run past the end of "
            "the answer; export again (tunekit writes them from the template)"
        )
