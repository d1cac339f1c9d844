"""The OpenAI-compatible HTTP API of ``tunekit serve`` (FastAPI): chat and text completions, streamed as
server-sent events or not, the model list and a health check.

Every error is OpenAI's error JSON with a 4xx status (malformed JSON 400, a missing or wrong key 401, an unknown
model 404, a prompt longer than the model takes 400 naming the limit, a busy server 429); a fault of the server
is a 500 with a plain message, its traceback going to the server's log only. Each request is logged as one JSON
line on the ``tunekit.serve`` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunekit.data.replies import Reply
from tunekit.inference import check_options, check_prompts
from tunekit.serving.pool import Job, ModelPool, Route, StopCut, as_api_error, sampling
from tunekit.serving.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    finish_reason,
    parse_request,
    tool_call_out,
    usage,
)

__all__ = ["create_app"]

logger = logging.getLogger("tunekit.serve")

MAX_BODY = 16 * 1024 * 1024  # bytes of one request; past it: 413
_DEFAULT_MAX_TOKENS = 4096  # a model whose config states no context length


def create_app(pool: ModelPool, *, api_key: str | None = None) -> FastAPI:
    """The API over ``pool``'s models; with ``api_key``, every ``/v1`` request needs ``Authorization: Bearer KEY``.

    Example:
        >>> import tunekit as tk
        >>> from tunekit.serving import ModelPool, create_app
        >>> pool = ModelPool()
        >>> pool.add("bot", tk.Tuner("any-name", backend=tk.testing.FakeBackend(), progress=False))
        >>> app = create_app(pool, api_key="secret")  # run it with uvicorn.run(app)
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()  # the workers finish what they run and stop

    app = FastAPI(title="tunekit serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    started = int(time.time())

    @app.middleware("http")
    async def log_and_guard(request: Request, call_next: Any) -> Response:
        request.state.began = time.monotonic()
        request.state.rid = uuid.uuid4().hex
        request.state.fields = {}
        try:
            if request.url.path.startswith("/v1") and api_key is not None:
                given = request.headers.get("authorization", "")
                token = given[7:] if given.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(token.encode(), api_key.encode()):
                    raise ApiError(
                        401,
                        "Incorrect API key provided."
                        if token
                        else "No API key provided: send it as 'Authorization: Bearer KEY'.",
                        code="invalid_api_key",
                    )
            response: Response = await call_next(request)
        except ApiError as e:
            response = _error(e)
        except Exception:
            logger.exception("request %s failed", request.state.rid)
            response = _error(
                ApiError(500, "The server had an error while processing your request.", kind="server_error")
            )
        if not getattr(request.state, "deferred", False):  # a stream logs when it ends
            _log(request, response.status_code)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        text = "Not found." if exc.status_code == 404 else str(exc.detail)
        return _error(ApiError(exc.status_code, f"{text} ({request.method} {request.url.path})"))

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception) -> Response:
        logger.exception("request %s failed", getattr(request.state, "rid", "?"))
        return _error(ApiError(500, "The server had an error while processing your request.", kind="server_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(pool.routes), "pending": pool.pending}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model(r, started) for r in pool.routes.values()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        return _model(pool.route(name), started)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req: ChatRequest = parse_request(ChatRequest, await _body(request))
        route = _routed(request, pool, req.model, req.stream)
        tools = None if req.tool_choice == "none" else req.tools
        options = _options(req, tools=tools)
        try:  # checked here, before the request takes a place in the queue
            check_prompts(req.messages, route.tuner.objective_used)
            check_options({k: v for k, v in options.items() if k != "max_new_tokens"})
        except Exception as e:
            raise as_api_error(e) or e from None
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        cap = req.max_tokens or req.max_completion_tokens
        rid = f"chatcmpl-{request.state.rid}"
        job = _job(route, req.messages, options, cap=cap, stops=stops, seed=req.seed, chat=True, stream=req.stream)
        if not req.stream:
            reply = await _run(pool, route, job)
            _count(request, reply)
            return JSONResponse(chat_response(rid, req.model, reply))
        include = bool(req.stream_options and req.stream_options.include_usage)
        calls: list[int] = []

        def frames(kind: str, value: Any) -> list[dict[str, Any]]:
            if kind == "start":
                return [chat_chunk(rid, req.model, {"role": "assistant", "content": ""})]
            if kind == "delta":
                if value.kind == "reasoning":
                    return [chat_chunk(rid, req.model, {"reasoning_content": value.text})]
                if value.kind == "tool_call":
                    calls.append(len(calls))
                    return [chat_chunk(rid, req.model, {"tool_calls": [tool_call_out(value.call, calls[-1])]})]
                return [chat_chunk(rid, req.model, {"content": value.text})]
            out = [chat_chunk(rid, req.model, {}, finish=finish_reason(value))]
            if include:
                out.append(chat_chunk(rid, req.model, None, use=usage(value)))
            return out

        return await _stream(request, pool, route, job, frames)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = parse_request(CompletionRequest, await _body(request))
        route = _routed(request, pool, req.model, req.stream)
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        options = _options(req, tools=None)
        try:
            check_options(options)
        except Exception as e:
            raise as_api_error(e) or e from None
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        rid = f"cmpl-{request.state.rid}"
        job = _job(
            route, prompt, options, cap=req.max_tokens, stops=stops, seed=req.seed, chat=False, stream=req.stream
        )
        if not req.stream:
            reply = await _run(pool, route, job)
            _count(request, reply)
            return JSONResponse(completion_response(rid, req.model, reply))
        include = bool(req.stream_options and req.stream_options.include_usage)

        def frames(kind: str, value: Any) -> list[dict[str, Any]]:
            if kind == "start":
                return []
            if kind == "delta":
                return [completion_chunk(rid, req.model, value.text)] if value.kind == "content" else []
            out = [completion_chunk(rid, req.model, "", finish=value.finish_reason or "stop")]
            if include:
                out.append(completion_chunk(rid, req.model, None, use=usage(value)))
            return out

        return await _stream(request, pool, route, job, frames)

    return app


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e), status_code=e.status)


def _log(request: Request, status: int, **extra: Any) -> None:
    fields = {
        "id": getattr(request.state, "rid", None),
        "method": request.method,
        "path": request.url.path,
        "status": status,
        **getattr(request.state, "fields", {}),
        **extra,
        "ms": round((time.monotonic() - getattr(request.state, "began", time.monotonic())) * 1000, 1),
    }
    logger.info(json.dumps(fields, ensure_ascii=False))


def _count(request: Request, reply: Reply) -> None:
    request.state.fields.update(usage(reply), finish_reason=reply.finish_reason)


async def _body(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:  # refused before it is read
        raise ApiError(413, f"The request body is {declared} bytes; the limit is {MAX_BODY}.")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"The request body is {len(raw)} bytes; the limit is {MAX_BODY}.")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"We could not parse the JSON body of your request ({e}).") from None


def _routed(request: Request, pool: ModelPool, model: str, stream: bool) -> Route:
    request.state.fields.update(model=model, stream=stream)
    return pool.route(model)


def _model(route: Route, created: int) -> dict[str, Any]:
    kind = "base" if route.adapter == "base" else "adapter" if route.adapter else "model"
    return {"id": route.name, "object": "model", "created": created, "owned_by": "tunekit", "root": route.source,
            "kind": kind}  # fmt: skip


def _options(req: ChatRequest | CompletionRequest, *, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The request's sampling as ``generate`` options: OpenAI's defaults (temperature 1, top_p 1); temperature 0 is
    greedy decoding."""
    temperature = 1.0 if req.temperature is None else req.temperature
    options: dict[str, Any] = {"temperature": temperature, "do_sample": temperature > 0}
    if req.top_p is not None and temperature > 0:
        options["top_p"] = req.top_p
    if req.stop:
        options["stop_strings"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if tools:
        options["tools"] = tools
    return options


def _job(
    route: Route, prompt: Any, options: dict[str, Any], *, cap: int | None, stops: list[str], seed: int | None,
    chat: bool, stream: bool,
) -> Job:  # fmt: skip
    """The work of one request, run on its model's worker thread."""
    tuner, adapter = route.tuner, route.adapter

    def work(job: Job) -> None:
        checked = check_options(dict(options))
        length_options = {"tools": checked.get("tools"), "allow_control_tokens": tuner.training.allow_control_tokens}
        n_prompt = tuner.backend.prompt_length(tuner.loaded, prompt, chat=chat, options=length_options)
        limit = tuner.backend.context_length(tuner.loaded)
        room = limit - n_prompt if limit is not None else _DEFAULT_MAX_TOKENS
        wanted = cap if cap is not None else room
        what = "messages" if chat else "prompt"
        if limit is not None and room < 1:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your {what} resulted in {n_prompt} "
                f"tokens. Please reduce the length of the {what}.",
                param=what,
                code="context_length_exceeded",
            )
        if limit is not None and wanted > room:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested {n_prompt + wanted} "
                f"tokens ({n_prompt} in the {what}, {wanted} in the completion). Please reduce the length of the "
                f"{what} or completion.",
                param=what,
                code="context_length_exceeded",
            )
        run = dict(options, max_new_tokens=wanted, chat=chat)
        cut = StopCut(stops)
        with sampling(checked, seed):
            if not stream:
                reply = tuner.generate(prompt, adapter=adapter, **run)
                job.emit("end", _cut(reply, cut) if stops else reply)
                return
            job.emit("start", n_prompt)
            pieces = tuner.stream(prompt, adapter=adapter, parts=True, **run)
            try:
                for delta in pieces:
                    if job.cancelled.is_set():
                        return
                    if delta.kind == "end":
                        tail = cut.finish()
                        if tail:
                            job.emit("delta", _Text(tail))
                        job.emit("end", _cut(delta.reply, cut) if stops else delta.reply)
                        return
                    if delta.kind == "content" and stops:  # after a stop string, generation ends within a token
                        text = cut.feed(delta.text)
                        if text:
                            job.emit("delta", _Text(text))
                        continue
                    job.emit("delta", delta)
            finally:
                pieces.close()

    return Job(work, asyncio.get_running_loop())


class _Text:
    """A content delta (the answer's text) after stop strings were cut."""

    kind = "content"

    def __init__(self, text: str) -> None:
        self.text = text


def _cut(reply: Reply, cut: StopCut) -> Reply:
    """``reply`` with its answer cut before the first stop string (then it ended by that stop)."""
    text = cut.cut(str(reply))
    return Reply(
        text,
        reasoning=reply.reasoning,
        tool_calls=reply.tool_calls,
        raw=reply.raw,
        finish_reason="stop" if text != str(reply) else reply.finish_reason,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
    )


async def _run(pool: ModelPool, route: Route, job: Job) -> Reply:
    """Queue ``job`` and wait for its reply; an error it raised comes back as the API's error."""
    pool.submit(route, job)
    try:
        while True:
            kind, value = await job.events.get()
            if kind == "error":
                raise _api(value)
            if kind == "end":
                return value  # type: ignore[no-any-return]
    finally:
        job.cancel()  # the client went away (this task was cancelled), or nothing more is wanted


def _api(e: BaseException) -> BaseException:
    found = as_api_error(e)
    if found is not None:
        return found
    logger.error("generation failed", exc_info=(type(e), e, e.__traceback__))
    return ApiError(500, "The server had an error while processing your request.", kind="server_error")


async def _stream(request: Request, pool: ModelPool, route: Route, job: Job, frames: Any) -> Response:
    """Queue ``job``; once it has started (a request it refuses is still a plain 4xx), answer with its events as
    server-sent events, ``data: [DONE]`` last. The client going away stops the generation."""
    pool.submit(route, job)
    try:
        kind, value = await job.events.get()
        if kind == "error":
            raise _api(value)
    except BaseException:
        job.cancel()
        raise
    first = frames(kind, value)
    request.state.deferred = True

    async def events() -> AsyncIterator[bytes]:
        status = 200
        try:
            for frame in first:
                yield _sse(frame)
            while True:
                kind, value = await job.events.get()
                if kind == "error":
                    error = _api(value)
                    status = error.status if isinstance(error, ApiError) else 500
                    body = error_body(error) if isinstance(error, ApiError) else {"error": {"message": str(error)}}
                    yield _sse(body)
                    break
                for frame in frames(kind, value):
                    yield _sse(frame)
                if kind == "end":
                    _count(request, value)
                    break
            yield b"data: [DONE]\n\n"
        finally:
            job.cancel()
            _log(request, status)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()
