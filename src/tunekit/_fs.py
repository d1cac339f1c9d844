"""Filesystem primitives for saves, checkpoints and exports: atomic, verifiable, and safe on Windows.

Shared by ``Tuner.save`` (:mod:`tunekit.save_format`), the trainer's checkpoints
(:mod:`tunekit.backends.hf.checkpoints`) and ``Tuner.export`` (:mod:`tunekit.export.core`). The rules
they follow:

- Write into a staging directory beside the target (same filesystem, so a rename is atomic),
  flush every file to disk, write the manifest last, then rename the directory into place.
- Never ``os.open`` a directory where the platform refuses it (Windows: PermissionError); a
  directory fsync is a POSIX-only durability extra, skipped wherever it fails.
- A rename or delete that meets a briefly locked file (antivirus, search indexers, a memory-mapped
  safetensors file on Windows) is retried with exponential back-off, for up to 10 s in all
  (``TUNEKIT_FS_RETRY_SECONDS``), before giving up.
- Nothing is deleted outside the directory it belongs to: paths read from a manifest are checked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tunekit.errors import CheckpointError, ConfigError, TunekitError

if sys.platform != "win32":
    import resource

__all__ = [
    "check_writable",
    "disk_full",
    "disk_full_reason",
    "flush_tree",
    "fsync_dir",
    "fsync_file",
    "inside",
    "locked_hint",
    "read_manifest",
    "release_frames",
    "remove_tree",
    "replace_dir",
    "retry",
    "retry_seconds",
    "sha256_file",
    "verify_files",
    "write_json",
    "write_text",
]

T = TypeVar("T")

logger = logging.getLogger("tunekit")

# errno values a Windows lock (or a busy NFS / SMB file) shows as, besides PermissionError (Windows' "[WinError 32]
# The process cannot access the file because it is being used by another process" and "[WinError 5] Access is
# denied" are PermissionErrors, errno EACCES).
_TRANSIENT = {errno.EACCES, errno.EBUSY, errno.EAGAIN}
# How long, in all, a rename or delete waits for a locked file before the lock is taken as permanent. Antivirus
# scanners hold a freshly written multi-GB file for seconds (the whole file is read), longer than a few doublings of a
# short delay; a lock that outlasts the window fails the save, which loses nothing (the previous one stays).
RETRY_ENV = "TUNEKIT_FS_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 10.0
MAX_WAIT = 1.0  # the longest single wait: the delay doubles from 0.05 s up to this, then the file is tried each second


def retry_seconds() -> float:
    """The retry window in seconds: ``$TUNEKIT_FS_RETRY_SECONDS`` (0 turns retrying off), else 10; a value that is not
    a number of seconds raises :class:`ConfigError`."""
    raw = os.environ.get(RETRY_ENV, "")
    if not raw.strip():
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(
            f"{RETRY_ENV}={raw!r}: must be a number of seconds, 0 or more (how long a locked file is waited for, "
            f"e.g. 30); unset it for the default of {DEFAULT_RETRY_SECONDS:g}"
        )
    return seconds


def locked_hint() -> str:
    """What to do about a file that stayed locked through the retry window (for the messages of failed saves)."""
    try:
        waited = f"waited {retry_seconds():g} s for it"
    except ConfigError:
        waited = "could not wait for it"
    return (
        f"tunekit {waited}; if antivirus or a sync client (OneDrive) holds new files, exclude the folder from "
        f"real-time scanning or wait longer with {RETRY_ENV}=30"
    )


def retry(fn: Callable[[], T], *, seconds: float | None = None, delay: float = 0.05) -> T:
    """Call ``fn``; on an error a briefly locked file raises, wait and call again, the wait doubling from ``delay`` up
    to :data:`MAX_WAIT`, until ``seconds`` of waiting in all (default: :func:`retry_seconds`) have not been enough."""
    window = retry_seconds() if seconds is None else seconds
    waited, wait = 0.0, delay
    while True:
        try:
            return fn()
        except OSError as e:
            transient = isinstance(e, PermissionError) or e.errno in _TRANSIENT
            left = window - waited
            if not transient or left <= 1e-9:
                raise
            pause = min(wait, left)
            time.sleep(pause)
            waited += pause
            wait = min(wait * 2, MAX_WAIT)


# How a full disk (or a file over the process's size limit, ``ulimit -f``) shows through the libraries that write
# saves, checkpoints and exports: an OSError (Python's own writes, ``torch.save`` into a Python file), safetensors'
# ``SafetensorError`` and tokenizers' bare ``Exception`` carrying the OS message with Rust's "(os error N)".
_FULL_ERRNO = {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large"}
if hasattr(errno, "EDQUOT"):
    _FULL_ERRNO[errno.EDQUOT] = "Disk quota exceeded"
_FULL_TEXT = (
    (re.compile(r"no space left on device|os error 28\b|not enough space on the disk|os error 112\b", re.I),
     "No space left on device"),
    (re.compile(r"file too large|os error 27\b", re.I), "File too large"),
    (re.compile(r"disk quota exceeded|os error 122\b", re.I), "Disk quota exceeded"),
)  # fmt: skip
# torch.save into a path writes through a C++ stream that reports no reason: "basic_ios::clear: iostream error",
# then "[enforce fail at inline_container.cc] unexpected pos N vs M" (older releases: "PytorchStreamWriter failed
# writing file ...: file write failed"). Such a failure is a full disk when the disk it wrote to is full.
_OPAQUE_WRITE = re.compile(r"PytorchStreamWriter failed writing|file write failed|iostream error|unexpected pos \d+ vs")
_NEARLY_FULL = 1 << 20  # bytes free on the disk after a failed write that count as none


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and every exception it was raised from or during (``__cause__`` and ``__context__``), once each."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [e]
    while todo:
        err = todo.pop(0)
        if any(err is s for s in seen):
            continue
        seen.append(err)
        todo.extend(x for x in (err.__cause__, err.__context__) if x is not None)
    return seen


def release_frames(e: BaseException) -> None:
    """Let go of what the frames of a failed write hold (every traceback in ``e``'s chain keeps its locals, the
    line numbers stay): torch.save's writer, kept alive there, keeps its half-written file open, and a deleted
    file's space on a full disk is only freed once it is closed."""
    for err in _chain(e):
        traceback.clear_frames(err.__traceback__)


def _free_bytes(where: Path) -> int | None:
    """Bytes free on the disk holding ``where`` (its nearest existing parent), or None when it cannot be read."""
    for p in (where, *where.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _at_size_limit(where: Path) -> bool:
    """Whether a file at or under ``where`` has reached this process's file size limit (``ulimit -f``)."""
    if sys.platform == "win32":
        return False
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return False
    try:
        files = [where] if where.is_file() else [p for p in where.rglob("*") if p.is_file()]
        return any(p.stat().st_size >= soft for p in files)
    except OSError:
        return False


def disk_full_reason(e: BaseException, where: Path | None = None) -> str | None:
    """Why a write failed, when the failure is a full disk: "No space left on device", "File too large" (the file
    size limit) or "Disk quota exceeded"; None for any other failure.

    Recognised anywhere in ``e``'s chain: an OSError with ENOSPC, EFBIG or EDQUOT, and the libraries' own
    exceptions carrying that message (safetensors' ``SafetensorError``, the bare ``Exception`` of tokenizers'
    writer). torch's stream writer says only that a write failed; with ``where`` (the directory being written),
    such a failure counts when that disk has (almost) nothing left, or a file there has reached the size limit.
    """
    opaque = False
    for err in _chain(e):
        if isinstance(err, OSError) and err.errno in _FULL_ERRNO:
            return _FULL_ERRNO[err.errno]
        text = str(err)
        for pattern, reason in _FULL_TEXT:
            if pattern.search(text):
                return reason
        opaque = opaque or bool(_OPAQUE_WRITE.search(text))
    if not opaque or where is None:
        return None
    if _at_size_limit(where):
        return "File too large"
    free = _free_bytes(where)
    return "No space left on device" if free is not None and free < _NEARLY_FULL else None


def disk_full(e: BaseException, where: Path | None = None) -> bool:
    """Whether the failed write ``e`` is a full disk (see :func:`disk_full_reason`)."""
    return disk_full_reason(e, where) is not None


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (best effort: a file that cannot be reopened is left to the OS)."""
    try:
        # Windows' fsync (_commit) needs a handle opened for writing; "rb+" works on both platforms.
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as e:  # a file system that cannot flush (some network shares): the write itself stands
        logger.debug("fsync of %s skipped: %s", path, e)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable: POSIX only, and skipped wherever the platform refuses.

    Windows cannot open a directory with ``os.open`` (PermissionError), and NTFS makes renames durable
    on its own; some network filesystems refuse a directory fsync too. Either way the rename stands.
    """
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        logger.debug("fsync of the directory %s skipped: %s", path, e)
        return
    try:
        os.fsync(fd)
    except OSError as e:  # a durability extra: some file systems refuse it
        logger.debug("fsync of the directory %s skipped: %s", path, e)
    finally:
        os.close(fd)


def check_writable(directory: Path, what: str) -> None:
    """Fail early, before any training, when ``directory`` cannot be created or written to (or the retry window of
    its later saves, ``$TUNEKIT_FS_RETRY_SECONDS``, is not a number of seconds)."""
    retry_seconds()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tunekit-write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"{what}: cannot write to {directory} ({e.strerror or e}); choose a directory you can write to, or "
            "change its permissions"
        ) from None


def write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 and flush it to disk (within a staging directory, so no temp file)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as UTF-8 JSON and flush it to disk (within a staging directory, so no temp file)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_manifest(file: Path, *, missing: str, fix: str, error: type[TunekitError] = CheckpointError) -> dict[str, Any]:
    """A JSON object tunekit wrote (the manifest of a save, a checkpoint or an export), read back.

    Every manifest reads alike: a missing file raises ``error(missing)``; one that cannot be read,
    is not JSON or not an object raises ``error`` saying the file is corrupt, followed by ``fix``.
    """
    if not file.is_file():
        raise error(missing)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{file} is corrupt ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{file} is corrupt (expected a JSON object); {fix}")
    return data


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_files(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` (relative POSIX path -> size and sha256), each flushed to disk on the way."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fsync_file(p)
            out[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def flush_tree(root: Path) -> None:
    """Flush every file under ``root``, then its directories, to disk (before ``root`` is renamed into place)."""
    directories = [root]
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fsync_file(p)
        elif p.is_dir():
            directories.append(p)
    for d in reversed(directories):
        fsync_dir(d)


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing absolute paths and any ``..`` that would leave ``root``."""
    rel = Path(relative)
    if rel.is_absolute() or rel.drive or ".." in rel.parts or not relative.strip():
        raise CheckpointError(f"{root}: the manifest names the path {relative!r}, which is outside its directory")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise CheckpointError(f"{root}: the manifest names the path {relative!r}, which leads outside its directory")
    return root / rel


def verify_files(root: Path, files: Any, *, hashes: bool) -> str | None:
    """Why the files under ``root`` do not match ``files`` (the manifest's list), or None when they do."""
    if not isinstance(files, dict) or not files:
        return "the manifest lists no files"
    for rel, meta in files.items():
        try:
            p = inside(root, str(rel))
        except CheckpointError as e:
            return str(e)
        if not isinstance(meta, dict) or not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != meta.get("size"):
            return f"{rel} is {size} bytes, the manifest says {meta.get('size')}"
        if hashes and sha256_file(p) != meta.get("sha256"):
            return f"{rel} does not match its sha256 in the manifest (changed or corrupted)"
    return None


def _chmod_and_retry(func: Callable[..., Any], path: str, _exc: Any) -> None:
    # Windows refuses to delete read-only files; make it writable and try once more.
    if func not in (os.unlink, os.remove, os.rmdir):
        return
    try:
        os.chmod(path, stat.S_IWRITE)
        func(path)
    except OSError as e:  # left for remove_tree's retry, which reports what it cannot remove
        logger.debug("could not remove %s: %s", path, e)


def remove_tree(path: Path, *, within: Path | None = None) -> None:
    """Delete the directory ``path`` (retrying briefly locked files); with ``within``, only inside it."""
    if within is not None and not path.resolve().is_relative_to(within.resolve()):
        raise CheckpointError(f"refusing to delete {path}: it is outside {within}")
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return

    def rm() -> None:
        if path.exists():
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=_chmod_and_retry)
            else:
                shutil.rmtree(path, onerror=_chmod_and_retry)
        if path.exists():  # a file was still locked: let retry() wait and go again
            raise PermissionError(errno.EACCES, "still in use", str(path))

    try:
        retry(rm)
    except OSError as e:  # a leftover is cleaned up by the next run; never fail a save for it
        logger.warning("could not remove %s (%s); delete it by hand if it stays", path, e)


def replace_dir(src: Path, dst: Path, *, trash: Path | None = None) -> None:
    """Move the complete directory ``src`` to ``dst``; an existing ``dst`` is replaced only once ``src`` is in place.

    ``trash`` is where the old ``dst`` waits meanwhile (default: a new hidden name beside it, same
    filesystem); if moving ``src`` fails, the old ``dst`` is put back. A crash in between leaves the
    old one in ``trash`` (checkpoints name theirs so that :func:`tunekit.backends.hf.checkpoints.recover`
    restores it).
    """
    aside = trash if trash is not None else dst.with_name(f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    old = None
    if dst.exists():
        retry(lambda: os.replace(dst, aside))
        old = aside
    try:
        retry(lambda: os.replace(src, dst))
    except BaseException:
        if old is not None:  # a failed save must lose nothing
            retry(lambda: os.replace(old, dst))
        raise
    fsync_dir(dst.parent)
    if old is not None:
        remove_tree(old)
