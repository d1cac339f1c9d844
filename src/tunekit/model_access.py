"""Who may use a :class:`tunekit.Tuner`'s model, and when: the thread guard around its one copy of the model, and the
adapters added beside its own for serving. The tuner's verbs (``tunekit.tuner``) ask these before they load or
touch the model."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tunekit._config import suggest
from tunekit.errors import ConfigError, IncompatibleError

if TYPE_CHECKING:
    from tunekit.methods import Method
    from tunekit.run import Run

__all__ = ["AddedAdapters", "ModelAccess"]


BUSY = (
    "{what}: this Tuner is in use in another thread (generate(), score(), save(), merge() or export() is running); "
    "call it after that returns (or use a second Tuner)"
)


class ModelAccess:
    """One tuner's guard: one fit or start at a time, and no two threads using the model at once.

    ``use_lock`` is held by fit() for its run and by generate/score/save/merge/export while they work: two threads
    never use the model at once (one would switch it to eval mode, or change the tokenizer's padding side, under the
    other). Re-entrant: a hook, in fit's thread, may generate or save.

    Example:
        >>> access = ModelAccess()
        >>> with access.using("generate()"):
        ...     pass
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one activity at a time: a second fit, or a start, from another thread
        self.use_lock = threading.RLock()
        self.fitting: int | None = None  # the thread running fit(), while it runs
        self.streaming: set[int] = set()  # threads with an open stream() (it holds the use lock)
        # The background run, weakly: an ended run the application dropped (with a failed run's traceback, which
        # holds the trainer) is not kept alive by its tuner; a running one is kept by its own thread.
        self.active_run: weakref.ref[Run] | None = None

    def running(self) -> Run | None:
        """The background run still going, if any."""
        run = self.active_run() if self.active_run is not None else None
        return run if run is not None and not run.done else None

    def begin_fit(self, what: str) -> None:
        """Take the model for a fit in this thread (call it holding ``lock``); refused while another thread uses it."""
        if not self.use_lock.acquire(blocking=False):
            raise ConfigError(BUSY.format(what=what))
        self.fitting = threading.get_ident()

    def end_fit(self) -> None:
        self.fitting = None
        self.use_lock.release()

    def check_free(self, what: str) -> None:
        """Refuse ``what`` (a background start) while another thread uses the model."""
        if not self.use_lock.acquire(blocking=False):
            raise ConfigError(BUSY.format(what=what))
        self.use_lock.release()

    def check_can_fit(self) -> None:
        """Refuse a new run from inside the running fit, or while a fit or background run goes on."""
        if self.fitting == threading.get_ident():
            raise ConfigError(
                "fit() was called from inside the running fit (a hook?); a hook may generate or save, but a new "
                "run starts after this one returns"
            )
        if self.fitting is not None:
            raise ConfigError(
                "this Tuner is already training (fit() is running in another thread); wait for it to return before "
                "fitting again (or use a second Tuner)"
            )
        if self.running() is not None:
            raise ConfigError(
                "this Tuner is already training in the background; wait for it with run.wait() or stop it with "
                "run.cancel() before fitting again (or use a second Tuner)"
            )

    @contextlib.contextmanager
    def using(self, what: str) -> Iterator[None]:
        """Use of the model by ``what``: refused while a run trains in another thread; waits for another thread's
        generate/save/... to finish (so a server may call generate from several threads)."""
        self.check_not_training(what)
        if threading.get_ident() in self.streaming:
            raise ConfigError(f"{what}: a stream() of this Tuner is open in this thread; finish it or close() it first")
        with self.use_lock:
            self.check_not_training(what)  # a fit may have started while this one waited
            yield

    @contextlib.contextmanager
    def stream_open(self) -> Iterator[None]:
        """Mark this thread as holding an open stream() while the block runs."""
        self.streaming.add(threading.get_ident())
        try:
            yield
        finally:
            self.streaming.discard(threading.get_ident())

    def check_not_training(self, what: str) -> None:
        """Refuse ``what`` while a fit runs in another thread: it would switch the shared model to eval mode and
        swap its attention mid-training. A hook (in the training thread, between steps) may call it."""
        fitting = self.fitting
        if fitting is not None and fitting != threading.get_ident():
            raise ConfigError(
                f"{what}: this Tuner is training (fit() is running in another thread); call it after fit returns, "
                "or from a hook, which runs between steps"
            )
        run = self.running()
        if run is not None and not run.owns_current_thread():
            raise ConfigError(
                f"{what}: this Tuner is training in the background; call it after run.wait() (or run.cancel() "
                "and run.wait()), or from a hook, which runs between steps"
            )


class AddedAdapters:
    """The adapters added beside a tuner's own (``Tuner.add_adapter``), for serving, by name.

    Example:
        >>> added = AddedAdapters()
        >>> added.names(is_adapter=True)
        ['default', 'base']
    """

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}

    def names(self, *, is_adapter: bool) -> list[str]:
        """The adapters ``generate(adapter=...)`` can pick; empty for a method that is no adapter."""
        if not is_adapter:
            return []
        return ["default", *self.paths, "base"]

    def check_new(self, name: str, method: Method) -> None:
        """Refuse a taken or empty ``name``, or a tuner whose method is no adapter, before anything loads."""
        if not isinstance(name, str) or not name.strip() or name in ("default", "base") or name in self.paths:
            taken = "is taken" if name in self.paths or name in ("default", "base") else "must be a non-empty name"
            raise ConfigError(f"add_adapter(name={name!r}): the name {taken} ('default' and 'base' are reserved)")
        if not method.is_adapter:
            raise IncompatibleError(
                f"add_adapter({name!r}): this tuner's method ({method.name}) is no adapter; adapters go beside "
                "an adapter on its base (load an adapter save, or train one, first)"
            )

    def check_pick(self, adapter: str | None, method: Method) -> None:
        """Refuse ``adapter=`` naming none of :meth:`names`."""
        if adapter is None:
            return
        names = self.names(is_adapter=method.is_adapter)
        if adapter not in names:
            if not names:
                raise IncompatibleError(
                    f"adapter={adapter!r}: this tuner's method ({method.name}) is no adapter; there is nothing to pick"
                )
            raise ConfigError(f"adapter={adapter!r}: no such adapter; {suggest(str(adapter), names)}")

    def check_single(self, what: str) -> None:
        """Refuse ``what`` on a tuner that serves added adapters (peft would save or train them all)."""
        if self.paths:
            raise IncompatibleError(
                f"{what}: this tuner holds added adapters ({', '.join(self.paths)}) for serving; {what} works "
                "on a tuner with its own adapter only: load the save you want on its own (tk.load) for that"
            )
