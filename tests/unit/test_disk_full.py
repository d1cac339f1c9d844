"""``_fs.disk_full``: a full disk recognised in every shape the writing libraries raise it, and nothing else.

The shapes are those met on a real full tmpfs and under a real file size limit
(tests/integration/test_full_disk.py): Python's OSError, safetensors' SafetensorError, the bare
Exception of tokenizers' Rust writer, and torch.save's C++ stream errors, which carry no reason.
"""

from __future__ import annotations

import errno
import itertools
import sys
from types import SimpleNamespace

import pytest
from safetensors import SafetensorError

from tunekit import _fs
from tunekit.backends.hf.checkpoints import _save_failed

FULL = "No space left on device"
TOO_LARGE = "File too large"


def chained(*errors: BaseException) -> BaseException:
    """``errors[0]`` raised while handling ``errors[1]``, itself raised while handling ``errors[2]``, ..."""
    for outer, inner in itertools.pairwise(errors):
        outer.__context__ = inner
    return errors[0]


def torch_stream_error() -> BaseException:
    """What torch.save into a path raises on a full disk (torch 2.x): no errno, no reason."""
    return chained(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 19520 vs 19412"),
        RuntimeError("basic_ios::clear: iostream error"),
    )


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), FULL),
        (OSError(errno.EFBIG, "File too large"), TOO_LARGE),
        (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), FULL),
        (SafetensorError("Error while serializing: I/O error: File too large (os error 27)"), TOO_LARGE),
        (Exception("No space left on device (os error 28)"), FULL),  # tokenizers' writer
        (Exception("File too large (os error 27)"), TOO_LARGE),
        (Exception("There is not enough space on the disk. (os error 112)"), FULL),  # the same on Windows
        # torch.save into a Python file: the stream error, raised while handling the file's OSError
        (chained(RuntimeError("unexpected pos 704 vs 598"), OSError(errno.ENOSPC, "No space left on device")), FULL),
        # a wrapper raised from the library's error
        (chained(RuntimeError("saving failed"), Exception("No space left on device (os error 28)")), FULL),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), None),  # no reason, no path
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_every_shape_of_a_full_disk(error, reason):
    assert _fs.disk_full_reason(error) == reason
    assert _fs.disk_full(error) is (reason is not None)


@pytest.mark.skipif(not hasattr(errno, "EDQUOT"), reason="no EDQUOT on this platform")
def test_a_quota_counts_as_a_full_disk():
    assert _fs.disk_full_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == "Disk quota exceeded"


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        SafetensorError("Error while serializing: tensor invalid"),
        ValueError("the row has no completion"),
        Exception("something else (os error 13)"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_failures_are_not_a_full_disk(error, tmp_path):
    assert _fs.disk_full_reason(error, tmp_path) is None


def test_a_chain_that_loops_is_walked_once():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert _fs.disk_full_reason(a) is None


def test_torchs_reasonless_stream_error_counts_when_the_disk_it_wrote_to_is_full(tmp_path, monkeypatch):
    assert _fs.disk_full_reason(torch_stream_error(), tmp_path) is None  # plenty of room: not a full disk
    monkeypatch.setattr(_fs.shutil, "disk_usage", lambda p: SimpleNamespace(total=1 << 30, used=1 << 30, free=4096))
    assert _fs.disk_full_reason(torch_stream_error(), tmp_path / "staging" / "not-made-yet") == FULL
    assert _fs.disk_full_reason(RuntimeError("CUDA error: an illegal memory access"), tmp_path) is None


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_torchs_reasonless_stream_error_counts_when_a_file_reached_the_size_limit(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "optimizer.pt").write_bytes(b"x" * 1000)
    inf = _fs.resource.RLIM_INFINITY
    monkeypatch.setattr(_fs.resource, "getrlimit", lambda what: (1000, inf))
    assert _fs.disk_full_reason(torch_stream_error(), staging) == TOO_LARGE
    monkeypatch.setattr(_fs.resource, "getrlimit", lambda what: (4000, inf))  # under the limit: another failure
    assert _fs.disk_full_reason(torch_stream_error(), staging) is None


def test_message_of_a_checkpoint_on_a_full_disk(tmp_path):
    error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    message = _save_failed(error, tmp_path / "checkpoint-4", tmp_path, _fs.disk_full_reason(error))
    assert message.startswith(f"could not write checkpoint-4 in {tmp_path} (No space left on device): the disk is full")
    assert message.endswith("there is no earlier checkpoint")
