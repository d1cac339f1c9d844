"""Using a loaded model: ``Tuner.generate``, ``Tuner.score`` and ``RunContext.generate`` (inside a run's hooks).

What was passed is checked first, before anything loads (:func:`check_prompts`, :func:`check_items`, which
also turn it into a list, once); :func:`generate` and :func:`score` then call the backend with the training
template.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from tunekit._config import suggest
from tunekit.backends.base import Backend, LoadedModel
from tunekit.data.control_tokens import control_tokens
from tunekit.data.formats import normalise_row
from tunekit.data.images import ImageOptions
from tunekit.data.messages import parse_tools
from tunekit.data.replies import Reply, ReplyDelta, ReplyStream
from tunekit.data.templates import render
from tunekit.errors import ConfigError, DatasetError, IncompatibleError
from tunekit.objectives import CausalLM, Objective

__all__ = [
    "check_items",
    "check_options",
    "check_prompts",
    "check_tools",
    "generate",
    "generate_text",
    "prompt_images",
    "score",
    "stream",
]

# The generation options used most, checked here; any other option transformers' GenerationConfig knows is passed on.
_OPTIONS = (
    "chat", "batch_size", "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_p", "top_k", "min_p",
    "typical_p", "repetition_penalty", "no_repeat_ngram_size", "num_beams", "length_penalty", "early_stopping",
    "stop_strings", "max_time", "use_cache", "allow_control_tokens", "tools",
)  # fmt: skip
# Names other libraries (OpenAI, vLLM, llama.cpp) use for an option, so the error suggests tunekit's.
_FOREIGN = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "max_output_tokens": "max_new_tokens",
    "n_predict": "max_new_tokens",
    "num_predict": "max_new_tokens",
    "max_length": "max_new_tokens",  # a total length, silently overridden by max_new_tokens (always set)
    "stop": "stop_strings",
    "frequency_penalty": "repetition_penalty",
    "presence_penalty": "repetition_penalty",
    "repeat_penalty": "repetition_penalty",
    "sample": "do_sample",
    "sampling": "do_sample",
    "beams": "num_beams",
}
# Options tunekit sets itself, or that would change what generate returns.
_REFUSED = {
    "eos_token_id": "generation stops at the template's end-of-turn token, which tunekit sets",
    "pad_token_id": "tunekit pads with the tokenizer's pad token",
    "num_return_sequences": "generate returns one text per prompt; pass a prompt several times (with do_sample=True) "
    "for several samples",
    "return_dict_in_generate": "generate returns the new text only",
    "output_scores": "generate returns the new text only",
    "output_logits": "generate returns the new text only",
    "streamer": "use tuner.stream(prompt), or tuner.model.generate(...) directly",
}


def _known_to_transformers(name: str) -> bool:
    from transformers import GenerationConfig

    return not name.startswith("_") and name in GenerationConfig().to_dict()


def _number(name: str, value: Any, *, whole: bool = False) -> float:
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        what = "a whole number" if whole else "a finite number"
        raise ConfigError(f"generate({name}={value!r}): {name} must be {what}")
    return float(value)


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """``generate()``'s options checked before anything loads: unknown names (with the nearest valid one), values
    out of range. ``temperature=0`` means greedy decoding (as in most APIs): it turns sampling off."""
    out = dict(options)
    for name, value in options.items():
        if name in _REFUSED:
            raise ConfigError(f"generate({name}={value!r}): not a generate() option: {_REFUSED[name]}")
        if name in _FOREIGN or (name not in _OPTIONS and not _known_to_transformers(name)):
            raise ConfigError(
                f"generate({name}={value!r}): unknown option {name!r}; {suggest(name, list(_OPTIONS), _FOREIGN)}"
            )
    for name in ("max_new_tokens", "batch_size", "num_beams"):
        if name in out and _number(name, out[name], whole=True) < 1:
            raise ConfigError(f"generate({name}={out[name]!r}): {name} must be at least 1")
    for name in ("min_new_tokens", "top_k", "no_repeat_ngram_size"):
        if name in out and _number(name, out[name], whole=True) < 0:
            raise ConfigError(f"generate({name}={out[name]!r}): {name} must be at least 0")
    for name in ("chat", "do_sample", "use_cache", "allow_control_tokens"):
        if name in out and not isinstance(out[name], bool):
            raise ConfigError(f"generate({name}={out[name]!r}): {name} must be True or False")
    if "temperature" in out and _number("temperature", out["temperature"]) < 0:
        raise ConfigError(
            f"generate(temperature={out['temperature']!r}): temperature must be at least 0 (0: greedy decoding)"
        )
    for name in ("top_p", "min_p", "typical_p"):
        if name in out and not 0 < _number(name, out[name]) <= 1:
            raise ConfigError(f"generate({name}={out[name]!r}): {name} must be greater than 0 and at most 1")
    if "repetition_penalty" in out and _number("repetition_penalty", out["repetition_penalty"]) <= 0:
        raise ConfigError(
            f"generate(repetition_penalty={out['repetition_penalty']!r}): repetition_penalty must be greater than 0 "
            "(1.0: no penalty)"
        )
    if "tools" in out:
        out["tools"] = check_tools(out["tools"])
    if out.get("temperature") == 0:  # greedy: the most likely token each step, whatever do_sample says
        del out["temperature"]
        out["do_sample"] = False
    return out


def check_tools(tools: Any) -> tuple[dict[str, Any], ...] | None:
    """``generate(tools=...)``: function schemas (OpenAI's shape or bare ``{"name", "parameters"}``) or Python
    functions with type hints and a Google-style docstring (turned into schemas by transformers' ``get_json_schema``),
    as the chat template receives them; None for none."""
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise ConfigError(f"generate(tools={tools!r:.60}): pass a list of function schemas or Python functions")
    schemas: list[Any] = []
    for tool in tools:
        if callable(tool) and not isinstance(tool, dict):
            from transformers.utils import get_json_schema

            try:
                schemas.append(get_json_schema(tool))
            except Exception as e:  # transformers' TypeHintParsingException / DocstringParsingException
                raise ConfigError(f"generate(tools=[{getattr(tool, '__name__', tool)!r}]): {e}") from None
        else:
            schemas.append(tool)
    try:
        return parse_tools(schemas, 1) if schemas else None
    except DatasetError as e:
        raise ConfigError(str(e).replace("row 1, field 'tools'", "generate(tools=...)", 1)) from None


def check_prompts(prompt: Any, objective: Objective, images: ImageOptions | None = None) -> tuple[list[Any], bool]:
    """``(prompts, single)``: ``prompt`` as a list, and whether one prompt was given (then one text comes back).

    A chat prompt with images (the layout of the training data: OpenAI image parts with a PIL image, a path, a URL
    or bytes) comes back with each image read and checked as training data is (``images``: the pixel budget), in
    the normalised form, each ``{"type": "image"}`` part holding its PIL image under ``"image"``
    (:func:`prompt_images` gives them back in order)."""
    single = isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict))
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        return [], False
    for i, p in enumerate(prompts, 1):
        if not isinstance(p, (str, list)):
            raise ConfigError(f"generate(): expected a string or a list of chat messages, got {type(p).__name__}")
        if isinstance(p, list):
            try:  # the checks a prompt in the training data gets: roles, their order, a user turn last
                ex = normalise_row("prompt_only", {"prompt": p}, i, images=images)
            except DatasetError as e:
                message = str(e).replace(f"row {i}, field 'prompt'", f"generate(): prompt {i}", 1)
                raise DatasetError(message, row=i, field="prompt") from None
            if ex.images and ex.prompt is not None:
                prompts[i - 1] = _with_payload(ex.prompt, ex.images)
    if objective.model_head == "sequence_classification":
        raise IncompatibleError(
            f"generate(): this tuner is a reward model ({objective.name}); it scores text and does "
            "not generate: use tuner.score([...])"
        )
    return prompts, single


def _with_payload(messages: Sequence[dict[str, Any]], images: Sequence[Any]) -> list[dict[str, Any]]:
    """Normalised messages whose ``{"type": "image"}`` parts hold their image (in order) under ``"image"``."""
    read = iter(images)
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{**part, "image": next(read)} if part.get("type") == "image" else part for part in content]
            m = {**m, "content": content}
        out.append(m)
    return out


def prompt_images(prompt: Any) -> list[Any]:
    """The images of a prompt :func:`check_prompts` gave back, in order (empty for a text prompt)."""
    if not isinstance(prompt, list):
        return []
    return [
        part["image"]
        for m in prompt
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") == "image" and "image" in part
    ]


def generate(
    backend: Backend, loaded: LoadedModel, objective: Objective, prompts: list[Any], *, single: bool, **options: Any
) -> Any:
    """The new text for each of ``prompts`` (as :func:`check_prompts` gave them): one string when ``single``.

    ``chat`` (default: on unless the model was trained with ``CausalLM`` on raw text) renders the
    prompt with the training template; other options go to the backend's generation.
    """
    if not prompts:
        return []
    options = check_options(options)
    chat = options.pop("chat", not isinstance(objective, CausalLM))
    outs = backend.generate(loaded, prompts, chat=chat, options=options)
    return outs[0] if single else outs


def stream(
    backend: Backend, loaded: LoadedModel, objective: Objective, prompt: Any, **options: Any
) -> Iterator[ReplyDelta]:
    """One prompt's reply (as :func:`check_prompts` gave it) in pieces as the backend generates it: reasoning, answer
    and tool calls split as ``generate`` splits them (:class:`~tunekit.data.replies.ReplyStream`), then an ``"end"``
    piece with the whole :class:`~tunekit.data.replies.Reply`."""
    options = check_options(options)
    chat = options.pop("chat", not isinstance(objective, CausalLM))
    options.pop("batch_size", None)  # one prompt
    splitter: ReplyStream | None = None
    if prompt_images(prompt) and getattr(loaded, "processor", "unknown") is None:
        backend.prompt_length(loaded, prompt, chat=chat, options=dict(options))  # the backend refuses it, clearly
    if chat:
        tok = loaded.tokenizer
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        opened = render(tok, messages, add_generation_prompt=True, tools=options.get("tools")).rstrip()
        splitter = ReplyStream(
            control_tokens(tok), tools_offered=bool(options.get("tools")), opened=opened.endswith("<think>")
        )
    pieces = backend.stream(loaded, prompt, chat=chat, options=options)
    try:
        while True:
            try:
                piece = next(pieces)
            except StopIteration as done:
                final = done.value
                break
            if splitter is None:
                yield ReplyDelta("content", piece)
            else:
                yield from splitter.feed(piece)
        reply = final if isinstance(final, Reply) else Reply(str(final))
        if splitter is not None:
            yield from splitter.finish(reply)
        yield ReplyDelta("end", reply=reply)
    finally:
        pieces.close()


def generate_text(backend: Backend, loaded: LoadedModel, objective: Objective, prompt: Any, **options: Any) -> Any:
    """``Tuner.generate`` on a loaded model, :func:`check_prompts` then :func:`generate` (``ctx.generate``)."""
    prompts, single = check_prompts(prompt, objective)
    return generate(backend, loaded, objective, prompts, single=single, **options)


def check_items(texts: Sequence[Any], objective: Objective) -> list[Any]:
    """The items to score as a list; raises when the model is no reward model or one item was passed bare."""
    if objective.model_head != "sequence_classification":
        raise IncompatibleError(
            f"score() needs a reward model, and this tuner trains {objective.name}; train one with "
            "objective=tk.RewardModeling() or load one with tk.load(path)"
        )
    if isinstance(texts, (str, tuple, dict)) or (isinstance(texts, list) and texts and isinstance(texts[0], dict)):
        one = "conversation" if isinstance(texts, list) else type(texts).__name__
        raise ConfigError(f"score(): pass a list of items, e.g. score([item]), not a single {one}")
    return list(texts)


def score(backend: Backend, loaded: LoadedModel, items: list[Any], *, max_length: int) -> list[float]:
    """A reward model's score of each of ``items`` (as :func:`check_items` gave them; see ``Tuner.score``)."""
    if not items:
        return []
    return list(backend.score(loaded, items, max_length=max_length))
