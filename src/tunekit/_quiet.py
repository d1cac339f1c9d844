"""Keep the libraries underneath from printing: tunekit speaks only through hooks and its logger."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

logger = logging.getLogger("tunekit")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers/datasets progress bars and chatter for the duration, then restore them."""
    import datasets
    import transformers

    tf_log = transformers.utils.logging
    bars_were_on = tf_log.is_progress_bar_enabled()
    ds_bars_were_on = datasets.utils.logging.is_progress_bar_enabled()
    verbosity = tf_log.get_verbosity()
    tf_log.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    tf_log.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(transformers|trl|peft|accelerate|torch)\b.*")
            yield
    finally:
        tf_log.set_verbosity(verbosity)
        if bars_were_on:
            tf_log.enable_progress_bar()
        if ds_bars_were_on:
            datasets.utils.logging.enable_progress_bar()
