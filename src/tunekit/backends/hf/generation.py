"""The hf backend's generation: prompts rendered with the template and encoded (with their images, for a
vision-language model), answers generated in batches or streamed from a background thread and parsed into
:class:`~tunekit.data.replies.Reply` objects, and the log-likelihood of continuations (for benchmarks).
:class:`~tunekit.backends.hf.backend.HFBackend` delegates its ``generate``, ``stream``, ``prompt_length`` and
``loglikelihood`` here."""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

from tunekit._quiet import quiet
from tunekit.backends.hf.attention import own_attention
from tunekit.backends.hf.models import Loaded
from tunekit.data.control_tokens import control_tokens, encode_plain, find_control_token, plain_spans
from tunekit.data.replies import Reply, parse_reply
from tunekit.data.templates import render
from tunekit.distributed import shards_parameters
from tunekit.errors import IncompatibleError
from tunekit.inference import prompt_images

__all__ = ["generate_replies", "loglikelihood", "prompt_length", "stream_reply"]


def generate_replies(hf: Loaded, prompts: list[Any], *, chat: bool, options: dict[str, Any]) -> list[str]:
    """Each prompt's answer, generated (greedily by default) in batches, as a :class:`Reply` (HFBackend.generate)."""
    import torch

    tok, model = hf.tokenizer, hf.model
    tools = options.get("tools")
    images = _images(hf, prompts)  # an image for a text-only model: refused before rendering
    texts, spans, opts = _prompts_and_options(hf, prompts, chat=chat, options=options)
    batch_size = int(opts.pop("batch_size", 16))
    limit = int(opts["max_new_tokens"])
    was_training = model.training
    model.eval()
    out: list[str] = []
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        with quiet(), torch.no_grad(), own_attention(model):
            for i in range(0, len(texts), batch_size):
                batch = texts[i : i + batch_size]
                enc = _encode(hf, batch, spans[i : i + batch_size], chat=chat, images=images[i : i + batch_size])
                gen = model.generate(
                    **enc,
                    eos_token_id=model.generation_config.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                    **opts,
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                plain = tok.batch_decode(new, skip_special_tokens=True)
                read = enc["attention_mask"].sum(dim=1).tolist()
                for row, text, n_prompt in zip(new.tolist(), plain, read):
                    out.append(_reply(hf, row, text, int(n_prompt), chat=chat, tools=bool(tools), limit=limit))
    finally:
        tok.padding_side = old_side
        if was_training:
            model.train()
    return out


def stream_reply(hf: Loaded, prompt: Any, *, chat: bool, options: dict[str, Any]) -> Generator[str, None, Reply]:
    """Generation on a background thread, its text handed over by transformers' ``TextIteratorStreamer`` (for a
    chat prompt with special tokens kept, for :class:`~tunekit.data.replies.ReplyStream` to split); returns the
    whole reply, parsed as ``generate`` parses it. On close (or an error, or Ctrl-C while waiting) a stopping
    criterion ends the generation and the thread is joined before this returns."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    tok, model = hf.tokenizer, hf.model
    tools = bool(options.get("tools"))
    images = _images(hf, [prompt])
    texts, spans, opts = _prompts_and_options(hf, [prompt], chat=chat, options=options)
    opts.pop("batch_size", None)
    limit = int(opts["max_new_tokens"])
    stop = threading.Event()
    failed: list[BaseException] = []
    written: list[int] = []

    class _Stopped(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    class _Streamer(TextIteratorStreamer):  # type: ignore[misc]
        """transformers' streamer, also keeping the generated ids (for the reply and its token counts)."""

        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                written.extend(int(t) for t in value.reshape(-1).tolist())
            super().put(value)

    streamer = _Streamer(tok, skip_prompt=True, skip_special_tokens=not chat)

    def work(enc: dict[str, Any]) -> None:
        try:
            with torch.no_grad():
                model.generate(
                    **enc,
                    eos_token_id=model.generation_config.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Stopped()]),
                    **opts,
                )
        except BaseException as e:  # handed to the reader, which raises it
            failed.append(e)
        finally:
            streamer.end()

    was_training = model.training
    model.eval()
    thread: threading.Thread | None = None
    try:
        with quiet(), own_attention(model):
            enc = _encode(hf, texts, spans, chat=chat, images=images)
            thread = threading.Thread(target=work, args=(enc,), name="tunekit-stream", daemon=True)
            thread.start()
            for piece in streamer:
                if piece:
                    yield piece
            thread.join()
            thread = None
            if failed:
                raise failed[0]
            plain = tok.decode(written, skip_special_tokens=True)
            n_prompt = int(enc["attention_mask"].sum())
            return _reply(hf, written, plain, n_prompt, chat=chat, tools=tools, limit=limit)
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        if was_training:
            model.train()


def prompt_length(hf: Loaded, prompt: Any, *, chat: bool, options: dict[str, Any]) -> int:
    """The tokens ``prompt`` takes as the model reads it (with its images)."""
    images = _images(hf, [prompt])
    texts, spans, _ = _prompts_and_options(hf, [prompt], chat=chat, options=dict(options))
    with quiet():
        return int(_encode(hf, texts, spans, chat=chat, images=images)["attention_mask"].sum())


def loglikelihood(
    hf: Loaded, requests: list[tuple[Any, str]], *, chat: bool, batch_size: int
) -> list[tuple[float, int]]:
    """Summed log-probability and count of each continuation's tokens after its prompt (right padding)."""
    import torch

    tok, model = hf.tokenizer, hf.model
    encoded = [_continuation_ids(tok, hf.template.end_of_turn_id, p, c, chat=chat) for p, c in requests]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    try:
        with quiet(), torch.no_grad(), own_attention(model):
            for i in range(0, len(encoded), batch_size):
                batch = encoded[i : i + batch_size]
                width = max(len(ids) for ids, _ in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for j, (row, _) in enumerate(batch):
                    ids[j, : len(row)] = torch.tensor(row)
                    mask[j, : len(row)] = 1
                logits = model(input_ids=ids.to(hf.device), attention_mask=mask.to(hf.device)).logits
                for j, (row, start) in enumerate(batch):  # one row at a time: a vocabulary-wide softmax is big
                    target = torch.tensor(row[start:], device=logits.device)
                    logps = logits[j, start - 1 : len(row) - 1].float().log_softmax(-1)
                    out.append((float(logps.gather(-1, target[:, None]).sum()), len(row) - start))
    finally:
        if was_training:
            model.train()
    return out


def _continuation_ids(
    tok: Any, end_of_turn: int | None, prompt: Any, continuation: str, *, chat: bool
) -> tuple[list[int], int]:
    """``(ids, start)``: the prompt and continuation as one sequence of token ids, the continuation from ``start``.

    With ``chat`` the prompt is rendered with the template's generation prompt and the continuation is the
    assistant's answer, cut after its end-of-turn token (the template's trailing newline is not the answer's).
    """
    if chat:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        head_text = render(tok, msgs, add_generation_prompt=True)
        full_text = render(tok, [*msgs, {"role": "assistant", "content": continuation}], add_generation_prompt=False)
    else:
        head_text, full_text = str(prompt), str(prompt) + continuation
    head = tok(head_text, add_special_tokens=not chat)["input_ids"]
    full = tok(full_text, add_special_tokens=not chat)["input_ids"]
    if full[: len(head)] != head:  # the answer's first token merged with the prompt's last: tokenise them apart
        tail = full_text[len(head_text) :] if full_text.startswith(head_text) else continuation
        full = head + tok(tail, add_special_tokens=False)["input_ids"]
    if chat and end_of_turn is not None and end_of_turn in full[len(head) :]:
        full = full[: full.index(end_of_turn, len(head)) + 1]
    if len(full) == len(head):  # nothing to score (an empty continuation without a template)
        full = [*full, tok.eos_token_id if tok.eos_token_id is not None else 0]
    return full, max(len(head), 1)


def _reply(hf: Loaded, row: list[int], plain: str, n_prompt: int, *, chat: bool, tools: bool, limit: int) -> Reply:
    """One generated row as a :class:`Reply`: cut at the end of turn (markers kept in ``raw``) and parsed for a chat
    prompt, with why it ended and the tokens read and written."""
    tok = hf.tokenizer
    eos = hf.model.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos]) - {None}
    stops = ends | ({tok.pad_token_id} - {None})
    end = next((k for k, t in enumerate(row) if t in stops), None)
    if end is None:
        written, finish = len(row), "length" if len(row) >= limit else "stop"  # else a stop string ended it
    else:
        written, finish = end + (1 if row[end] in ends else 0), "stop"
    if chat:
        raw = tok.decode(row[: written if end is None else end], skip_special_tokens=False)
        reply = parse_reply(raw, control_tokens(tok), tools_offered=tools, plain=plain)
    else:
        reply = Reply(plain)
    return reply.counted(finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=written)


def _prompts_and_options(
    hf: Loaded, prompts: list[Any], *, chat: bool, options: dict[str, Any]
) -> tuple[list[str], list[Any], dict[str, Any]]:
    """The prompts as text (rendered with the template when ``chat``), the plain-text spans of each (control tokens
    typed in a prompt are text unless ``allow_control_tokens``) and transformers' generation options."""
    tok = hf.tokenizer
    # A control token typed in a prompt is the text it is (data/control_tokens.py), unless the caller allows it.
    tokens = () if options.pop("allow_control_tokens", False) else control_tokens(tok)
    texts, spans = [], []
    tools = options.pop("tools", None)
    for p in prompts:
        if chat:
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            texts.append(render(tok, msgs, add_generation_prompt=True, tools=tools))
            spans.append(
                plain_spans(
                    lambda ms: render(tok, ms, add_generation_prompt=True, tools=tools),
                    msgs,
                    tokens,
                    where="generate()",
                )
            )
        else:
            texts.append(p)
            spans.append([(0, len(p))] if find_control_token([p], tokens) else [])
    opts: dict[str, Any] = {"max_new_tokens": 256, "do_sample": False}
    if shards_parameters(hf.engine):  # every process runs each forward until all are done
        opts["synced_gpus"] = True
    opts.update(options)
    if opts.get("stop_strings"):  # transformers matches stop strings on the tokenizer's pieces
        opts["tokenizer"] = tok
    if not opts.get("do_sample"):
        opts.pop("temperature", None)
        opts.pop("top_p", None)
    return texts, spans, opts


def _images(hf: Loaded, prompts: list[Any]) -> list[list[Any]]:
    """Each prompt's images (:func:`~tunekit.inference.prompt_images`); an image for a text-only model is refused."""
    images = [prompt_images(p) for p in prompts]
    if any(images) and hf.processor is None:
        at = next(k for k, imgs in enumerate(images) if imgs) + 1
        model_type = getattr(getattr(hf.model, "config", None), "model_type", None)
        raise IncompatibleError(
            f"generate(): prompt {at} holds an image, but this model (model type {model_type!r}) is text-only: it has "
            "no vision tower to read images; use a vision-language model (one that transformers loads with "
            "AutoModelForImageTextToText, e.g. Qwen2.5-VL, Gemma 3, SmolVLM), or drop the images"
        )
    return images


def _encode(
    hf: Loaded, texts: list[str], spans: list[Any], *, chat: bool, images: list[list[Any]] | None = None
) -> dict[str, Any]:
    """A batch of prompts as input ids and attention mask on the model's device (padded on the tokenizer's side);
    with images, everything the processor makes for them too (pixel values, image grids, image-token types)."""
    tok = hf.tokenizer
    if images and any(images):
        # The processor expands each image placeholder into the image's tokens, as encode_vision did in training
        # (a control token typed in a text part is not kept as text here).
        enc = hf.processor(text=texts, images=images, padding=True, add_special_tokens=not chat, return_tensors="pt")
        return {k: v.to(hf.device) if hasattr(v, "to") else v for k, v in enc.items()}
    if any(spans):
        ids = [encode_plain(tok, t, sp, add_special_tokens=not chat) for t, sp in zip(texts, spans)]
        enc = tok.pad({"input_ids": ids}, return_tensors="pt", padding=True)
    else:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    return {k: v.to(hf.device) for k, v in enc.items()}
