"""The models ``tunekit serve`` answers with, and the threads that run them.

Saves are grouped so that each base model loads once: an adapter trained on the base of an adapter already loaded
goes beside it (``Tuner.add_adapter``), and the request's ``model`` picks it (or ``"base"``: the bare base, under the
base's own name). Each group has one worker thread, which runs its requests one at a time: peft switches adapters
on the shared model, so two requests on one model never overlap, and no request sees another's adapter or tokens.
Groups run in parallel. The requests waiting or running, across the server, are bounded (``max_pending``): past
that a request is refused at once (HTTP 429) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tunekit.errors import ConfigError, DatasetError, IncompatibleError
from tunekit.save_format import read_manifest
from tunekit.saving import load
from tunekit.serving.protocol import ApiError
from tunekit.tuner import Tuner

__all__ = ["Job", "ModelPool", "Route", "StopCut", "as_api_error", "sampling"]

logger = logging.getLogger("tunekit.serve")

# Sampling draws from torch's global generator: a seeded request holds it alone (seeded, then restored), and any
# sampling request waits for it, so one group's draws never shift another's seeded ones.
_RNG = threading.Lock()


class Route:
    """What one served ``model`` name answers with: a tuner, the adapter it picks (None: the tuner as loaded, for a
    whole-model save) and the worker that runs it."""

    def __init__(self, name: str, tuner: Tuner, adapter: str | None, worker: _Worker, source: str) -> None:
        self.name, self.tuner, self.adapter, self.worker, self.source = name, tuner, adapter, worker, source


class Job:
    """One request's work, run on its group's worker thread; what it produces reaches the request's event loop as
    events (``("delta", ...)``, ``("end", reply)``, ``("error", exception)``)."""

    def __init__(self, work: Callable[[Job], None], loop: asyncio.AbstractEventLoop) -> None:
        self.work = work
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down): nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def cancel(self) -> None:
        """The client went away: a waiting job is skipped, a running generation stops at its next token."""
        self.cancelled.set()


class _Worker:
    def __init__(self, name: str, done: Callable[[], None]) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.done = done
        self.thread = threading.Thread(target=self._run, name=f"tunekit-serve-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                if not job.cancelled.is_set():
                    job.work(job)
            except BaseException as e:  # handed to the request, which answers with it
                job.emit("error", e)
            finally:
                self.done()

    def stop(self) -> None:
        self.jobs.put(None)


class ModelPool:
    """The served models (``routes``, by name) and the bound on requests in flight.

    Example:
        >>> import tunekit as tk
        >>> from tunekit.serving import ModelPool
        >>> tuner = tk.Tuner("any-name", backend=tk.testing.FakeBackend(), progress=False)
        >>> pool = ModelPool(max_pending=8)
        >>> pool.add("bot", tuner)
        >>> sorted(pool.routes)
        ['bot']
    """

    def __init__(self, *, max_pending: int = 64) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigError(f"max_pending={max_pending!r}: must be a whole number of at least 1")
        self.max_pending = max_pending
        self.routes: dict[str, Route] = {}
        self.pending = 0
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []

    def add(self, name: str, tuner: Tuner, *, adapters: dict[str, str] | None = None, base: str | None = None) -> None:
        """Serve ``tuner`` as ``name``; ``adapters`` (served name -> the adapter's name in the tuner, added with
        ``Tuner.add_adapter``) and ``base`` (a name for the bare base model) share its worker."""
        worker = _Worker(name, self._finished)
        self._workers.append(worker)
        own = "default" if tuner.method.is_adapter else None
        entries = [(name, own), *(adapters or {}).items()]
        if base is not None:
            entries.append((base, "base"))
        for served, adapter in entries:
            if served in self.routes:
                raise ConfigError(f"two models are served as {served!r}; name them apart with NAME=PATH")
            self.routes[served] = Route(served, tuner, adapter, worker, str(tuner.model_ref))

    @classmethod
    def from_saves(
        cls, saves: Sequence[tuple[str, str | Path]], *, max_pending: int = 64, **load_options: Any
    ) -> ModelPool:
        """Load each ``(name, path)`` save once; an adapter whose base (and tokenizer, template, adapter kind) an
        earlier adapter already loaded goes beside it instead of loading the base again. ``load_options`` go to
        ``tk.load`` (trust, hash checks)."""
        pool = cls(max_pending=max_pending)
        names = [n for n, _ in saves]
        for n in names:
            if names.count(n) > 1 or n in ("base", "default"):
                raise ConfigError(
                    f"the served name {n!r} is {'reserved' if n in ('base', 'default') else 'given twice'}; "
                    "name the saves apart with NAME=PATH"
                )
        groups: list[tuple[str, Tuner, dict[str, str]]] = []
        for name, path in saves:
            read_manifest(Path(path))  # a folder that is no tunekit save fails here, naming it
            placed = False
            for _, tuner, extra in groups:
                if not tuner.method.is_adapter:
                    continue
                try:
                    tuner.add_adapter(name, path, verify=load_options.get("verify", True))
                except IncompatibleError as e:
                    logger.info("%s: loaded on its own (%s)", name, e)
                    continue
                extra[name] = name
                placed = True
                break
            if not placed:
                tuner = load(path, **load_options)
                tuner.loaded  # noqa: B018 -- load the weights now: a broken save fails at start, not on a request
                groups.append((name, tuner, {}))
        bases: set[str] = set(names)
        for name, tuner, extra in groups:
            base = None
            if tuner.method.is_adapter:
                base = _base_name(tuner.model_ref)
                base = None if base in bases else base
                if base is not None:
                    bases.add(base)
            pool.add(name, tuner, adapters=extra, base=base)
        return pool

    def route(self, model: str) -> Route:
        found = self.routes.get(model)
        if found is None:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; this server has: {', '.join(sorted(self.routes))}.",
                param="model",
                code="model_not_found",
            )
        return found

    def submit(self, route: Route, job: Job) -> None:
        """Queue ``job`` on its model's worker, or refuse it (429) when ``max_pending`` requests are in flight."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise ApiError(
                    429,
                    f"The server is busy: {self.pending} requests are waiting or running (the bound is "
                    f"{self.max_pending}); retry shortly.",
                    kind="rate_limit_error",
                    code="rate_limit_exceeded",
                )
            self.pending += 1
        route.worker.jobs.put(job)

    def _finished(self) -> None:
        with self._lock:
            self.pending -= 1

    def close(self) -> None:
        """Stop the workers once the jobs queued before are done (a generation running stops when cancelled)."""
        for w in self._workers:
            w.stop()
        for w in self._workers:
            w.thread.join(timeout=30)


def _base_name(ref: Any) -> str:
    text = str(ref)
    return Path(text).name if Path(text).is_dir() else text


class StopCut:
    """OpenAI's ``stop``: the answer ends before the first stop string, which is not returned. transformers stops
    generating at it (``stop_strings``) but keeps it in the text; this cuts it, holding back, while streaming,
    text that could still become a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.hit = False

    def feed(self, piece: str) -> str:
        """What of the answer is certain once ``piece`` is added ("" after a stop string)."""
        if self.hit:
            return ""
        self.text += piece
        cut = self._first()
        if cut is not None:
            self.hit = True
            return self._take(cut)
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._take(len(self.text) - hold)

    def finish(self) -> str:
        return "" if self.hit else self._take(len(self.text))

    def cut(self, text: str) -> str:
        """The whole ``text`` cut before its first stop string."""
        self.text = text
        found = self._first()
        return text if found is None else text[:found]

    def _first(self) -> int | None:
        found = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _take(self, end: int) -> str:
        out = self.text[self.sent : max(end, self.sent)]
        self.sent = max(end, self.sent)
        return out


@contextlib.contextmanager
def sampling(options: dict[str, Any], seed: int | None) -> Iterator[None]:
    """Greedy decoding runs free; sampling holds torch's global generator (seeded with ``seed``, then restored)."""
    if not options.get("do_sample"):
        yield
        return
    import torch

    with _RNG:
        if seed is None:
            yield
            return
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            torch.manual_seed(seed)
            yield


def as_api_error(e: BaseException) -> ApiError | None:
    """What the request asked for and tunekit refused (a bad message, an unknown tool, an option out of range) as a
    400; None for anything else (a fault of the server)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, (ConfigError, DatasetError, IncompatibleError)):
        return ApiError(400, str(e))
    return None
