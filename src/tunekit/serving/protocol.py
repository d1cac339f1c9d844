"""The OpenAI API's request and response shapes, as ``tunekit serve`` speaks them.

Requests are pydantic models that forbid unknown fields (as OpenAI does: "Unrecognized request argument"), and a
value tunekit cannot honour (``n=2``, a presence penalty, log-probabilities, a forced tool) is refused with a 400
naming the parameter rather than ignored. Responses are plain dicts in OpenAI's shape (``chat.completion``,
``chat.completion.chunk``, ``text_completion``), so the official ``openai`` client reads them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunekit.data.replies import Reply

__all__ = [
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_request",
    "tool_call_out",
    "usage",
]


class ApiError(Exception):
    """An error the server answers with OpenAI's error JSON and an HTTP status (never a traceback)."""

    def __init__(
        self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(_Common):
    """``POST /v1/completions`` (plain text continued, no chat template)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None


def parse_request(cls: type[_Common], body: Any) -> Any:
    """The request ``body`` (parsed JSON) as ``cls``, with every value tunekit cannot honour refused (a 400 naming
    the parameter)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = cls.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param=param) from None
        if first["type"] == "missing":
            raise ApiError(400, f"Missing required parameter: '{param}'.", param=param) from None
        raise ApiError(400, f"Invalid value for '{param}': {first['msg']}.", param=param) from None
    _refuse_unsupported(req)
    return req


def _unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"'{param}' is not supported by tunekit serve: {why}.", param=param)


def _refuse_unsupported(req: _Common) -> None:
    if req.n != 1:
        raise _unsupported("n", "one choice per request; send the request several times (with a temperature above 0)")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise _unsupported(name, "only 0 (no penalty)")
    if req.logit_bias:
        raise _unsupported("logit_bias", "only none")
    if getattr(req, "logprobs", None) or getattr(req, "top_logprobs", None):
        raise _unsupported("logprobs", "log-probabilities are not returned")
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "Invalid value for 'stop': up to 4 non-empty strings.", param="stop")
    if isinstance(req, ChatRequest):
        if req.tool_choice not in (None, "auto", "none"):
            raise _unsupported("tool_choice", "only 'auto' or 'none' (the model chooses whether to call a tool)")
        if req.response_format not in (None, {"type": "text"}):
            raise _unsupported("response_format", "only {'type': 'text'}")
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise ApiError(400, "Pass one of 'max_tokens' and 'max_completion_tokens'.", param="max_tokens")
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise _unsupported("echo", "only false")
        if req.suffix:
            raise _unsupported("suffix", "only none")
        if req.best_of not in (None, 1):
            raise _unsupported("best_of", "only 1")
        if isinstance(req.prompt, list) and len(req.prompt) != 1:
            raise _unsupported("prompt", "one prompt per request (a string, or a list of one string)")


def usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.prompt_tokens or 0, reply.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def tool_call_out(call: dict[str, Any], index: int) -> dict[str, Any]:
    """A parsed call (:class:`Reply`'s shape, arguments as an object) in OpenAI's response shape: an id, and the
    arguments as a JSON string."""
    fn = call["function"]
    return {
        "index": index,
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": fn["name"], "arguments": json.dumps(fn["arguments"], ensure_ascii=False)},
    }


def finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else reply.finish_reason or "stop"


def chat_response(rid: str, model: str, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": str(reply) if str(reply) or not reply.tool_calls else None,
    }
    if reply.tool_calls:
        message["tool_calls"] = [tool_call_out(c, i) for i, c in enumerate(reply.tool_calls)]
        for c in message["tool_calls"]:
            del c["index"]
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reply), "logprobs": None}],
        "usage": usage(reply),
        "system_fingerprint": None,
    }


def chat_chunk(
    rid: str, model: str, delta: dict[str, Any] | None, *, finish: str | None = None, use: dict[str, int] | None = None
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    out: dict[str, Any] = {
        "id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": choices,
        "system_fingerprint": None,
    }  # fmt: skip
    if use is not None:
        out["usage"] = use
    return out


def completion_response(rid: str, model: str, reply: Reply) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": str(reply), "finish_reason": reply.finish_reason or "stop", "logprobs": None}],
        "usage": usage(reply),
    }


def completion_chunk(
    rid: str, model: str, text: str | None, *, finish: str | None = None, use: dict[str, int] | None = None
) -> dict[str, Any]:
    choices = [] if text is None else [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]
    out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                           "choices": choices}  # fmt: skip
    if use is not None:
        out["usage"] = use
    return out


Kind = Literal["chat", "completion"]
