"""Keep the libraries underneath from printing: tunekit speaks only through hooks and its logger.

While tunekit works (loading, training, generating), :func:`quiet`:

- turns off the progress bars of transformers, datasets and huggingface_hub, so the application
  sees one progress display (tunekit's ``ProgressBar``, or its own from ``Run.progress``);
- routes the log records of transformers, datasets, trl, peft, accelerate and huggingface_hub to
  the ``tunekit.libs.<library>`` loggers, each distinct message once: at DEBUG, or WARNING for
  their errors. An application that wants them configures the ``tunekit`` logger;
- ignores Python warnings raised from inside those libraries (deprecations aimed at their
  callers, which here is tunekit itself).

Everything is restored when the outermost ``quiet()`` ends. The state is process-wide and
reference-counted, so overlapping uses (a background run while the application calls
``generate`` on another tuner) restore it only when the last one ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any, cast

logger = logging.getLogger("tunekit")

_LIBRARIES = ("transformers", "datasets", "trl", "peft", "accelerate", "huggingface_hub", "bitsandbytes")
_WARNING_MODULES = r"(transformers|trl|peft|accelerate|torch|datasets|huggingface_hub|bitsandbytes)\b.*"

_lock = threading.Lock()
_depth = 0
_restore: list[Any] = []  # undo actions of the outermost quiet(), run in reverse order


class _Route(logging.Handler):
    """Re-log a library's records on ``tunekit.libs.<library>``, each distinct message once."""

    def __init__(self, library: str) -> None:
        super().__init__(logging.DEBUG)
        self.target = logging.getLogger(f"tunekit.libs.{library}")
        self.seen: set[tuple[int, str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed log call must not break training
            return
        key = (record.levelno, message)
        if key in self.seen:
            return
        self.seen.add(key)
        level = logging.WARNING if record.levelno >= logging.ERROR else logging.DEBUG
        self.target.log(level, "%s", message)


def _silence() -> None:
    """Enter the quiet state; push the undo actions on ``_restore``."""
    with contextlib.suppress(ImportError):
        import transformers

        tf_log = transformers.utils.logging
        if tf_log.is_progress_bar_enabled():
            tf_log.disable_progress_bar()
            _restore.append(tf_log.enable_progress_bar)
    with contextlib.suppress(ImportError):
        import datasets

        ds_log = datasets.utils.logging
        if ds_log.is_progress_bar_enabled():
            ds_log.disable_progress_bar()
            _restore.append(ds_log.enable_progress_bar)
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            _restore.append(enable_progress_bars)
    for name in _LIBRARIES:
        lib = logging.getLogger(name)
        saved = (lib.handlers[:], lib.propagate, lib.level)
        lib.handlers = [_Route(name)]
        lib.propagate = False
        lib.setLevel(logging.WARNING)  # their INFO chatter is not worth routing

        def undo(lib: logging.Logger = lib, saved: tuple[Any, ...] = saved) -> None:
            lib.handlers, lib.propagate = saved[0], saved[1]
            lib.setLevel(saved[2])

        _restore.append(undo)
    # One entry at the front of the filter list, removed again at the end (not catch_warnings(),
    # which swaps the whole list and is not safe when a background run overlaps other work).
    warnings.filterwarnings("ignore", module=_WARNING_MODULES)
    entry = warnings.filters[0]

    def drop_filter() -> None:
        with contextlib.suppress(ValueError):
            cast(list[Any], warnings.filters).remove(entry)
            warnings._filters_mutated()  # type: ignore[attr-defined]

    _restore.append(drop_filter)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the libraries' progress bars, route their logs and warnings, then restore them."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            try:
                _silence()
            except Exception:
                logger.debug("could not quiet the underlying libraries", exc_info=True)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                while _restore:
                    action = _restore.pop()
                    try:
                        action()
                    except Exception:
                        logger.debug("could not restore a library's output settings", exc_info=True)
