"""A full disk, for real: checkpoints, saves and exports written onto a small filesystem that fills up.

No fault is faked: the kernel refuses the libraries' own writes (safetensors, tokenizers' Rust writer,
torch.save, tunekit's manifest). Two mechanisms:

- ``tmpfs``: a small tmpfs mounted in the test's directory (needs root and CAP_SYS_ADMIN; skipped
  elsewhere), filled so that exactly the chosen file of the new checkpoint / save / export does not
  fit: ENOSPC, "No space left on device";
- ``fsize``: a file size limit (``RLIMIT_FSIZE``, ``ulimit -f``) with SIGXFSZ ignored (POSIX): a
  write past the limit fails with EFBIG, "File too large".

Each case checks the promised error (``CheckpointError`` / ``ExportError`` saying "the disk is full",
with the path), that the previous checkpoint / save / export is byte-for-byte as it was, and that no
staging directory is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors import SafetensorError

import tunekit as tk
from tunekit.testing import reverse_task

from .helpers import cpu

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="tmpfs and RLIMIT_FSIZE are POSIX")

if sys.platform != "win32":
    import resource

DATA = reverse_task(8, seed=5)
PAGE = 4096  # tmpfs allocates whole pages
DISK_SIZE = 4 << 20  # the previous state and the filler fit; the new write meets the end of the disk


def pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> sha256."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def written_before(previous: Path, name: str) -> tuple[list[Path], Path]:
    """The files of ``previous`` (a checkpoint, save or export written the same way) written before ``name``, in
    the order they were written, and ``name`` itself."""
    files = sorted((p for p in previous.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    names = [p.name for p in files]
    return files[: names.index(name)], previous / name


class Disk:
    """Where the test writes, and the fault: ``fill(previous, name)`` makes ``name`` the first file that fails."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root = kind, root
        self._limit: tuple[int, int] | None = None
        self._sigxfsz: object = None

    def fill(self, previous: Path, name: str) -> None:
        before, target = written_before(previous, name)
        if self.kind == "tmpfs":  # room for the files before it and half of it
            room = sum(pages(p.stat().st_size) for p in before) + pages(target.stat().st_size // 2) - PAGE
            free = shutil.disk_usage(self.root).free
            with open(self.root / "filler", "ab") as f:
                f.write(b"\0" * (free - max(room, 0)))
            assert shutil.disk_usage(self.root).free == max(room, 0)
        else:  # every file may be as large as half of it
            limit = target.stat().st_size // 2
            too_big = [p.name for p in before if p.stat().st_size >= limit]
            assert not too_big, f"the layout changed: {too_big} are written before {name} and are larger"
            self._limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            self._sigxfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, self._limit[1]))

    def release(self) -> None:
        if self._limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, self._limit)
            signal.signal(signal.SIGXFSZ, self._sigxfsz)  # type: ignore[arg-type]
            self._limit = None
        (self.root / "filler").unlink(missing_ok=True)

    @property
    def reason(self) -> str:
        return "No space left on device" if self.kind == "tmpfs" else "File too large"


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", f"tunekit-test-{uuid.uuid4().hex[:8]}", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)  # still busy: detached, never left mounted


@pytest.fixture
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    with contextlib.ExitStack() as stack:
        if request.param == "tmpfs":
            root = stack.enter_context(tmpfs(tmp_path / "disk"))
        else:
            root = tmp_path / "disk"
            root.mkdir()
        d = Disk(request.param, root)
        stack.callback(d.release)
        yield d


@pytest.fixture(scope="module")
def trained(tiny_llama: Path) -> tk.Tuner:
    t = tk.Tuner(tiny_llama, method=tk.LoRA(r=4), training=cpu(max_steps=1, batch_size=4), progress=False)
    t.fit(DATA)
    return t


def open_files(root: Path) -> list[str]:
    """Files under ``root`` this process holds open (Linux; elsewhere nothing is checked)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return []
    found = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(root)):
                found.append(target)
    return found


def leftovers(root: Path, *expected: str) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in {"filler", *expected})


# Which library's write meets the full disk (the first file that does not fit), and what it raises today.
CHECKPOINT_CASES = {
    "safetensors": ("adapter_model.safetensors", SafetensorError),
    "tokenizers": ("tokenizer.json", Exception),
    "torch.save": ("optimizer.pt", RuntimeError),
    "manifest": ("tunekit-checkpoint.json", OSError),
}


def cases(table: dict[str, object], fsize: set[str]) -> list[tuple[str, str]]:
    """(disk, case): every case on a full tmpfs; under a file size limit only those whose file can fail first (a
    larger file written before it would meet the limit instead)."""
    return [("tmpfs", c) for c in table] + [("fsize", c) for c in table if c in fsize]


@pytest.mark.parametrize(("disk", "case"), cases(CHECKPOINT_CASES, {"safetensors", "torch.save"}), indirect=["disk"])
def test_checkpoint_on_a_full_disk(disk: Disk, tiny_llama: Path, case: str) -> None:
    name, library_error = CHECKPOINT_CASES[case]
    out = disk.root / "out"
    state: dict[str, str] = {}

    class FillAfterTheFirst(tk.Hook):
        def on_checkpoint(self, ctx: tk.RunContext, path: Path) -> None:
            if ctx.step == 1:
                state.update(tree(path))
                disk.fill(path, name)

    t = tk.Tuner(
        tiny_llama, method=tk.LoRA(r=4), training=cpu(max_steps=2, batch_size=4, save_every=1), output_dir=out,
        hooks=[FillAfterTheFirst()], progress=False,
    )  # fmt: skip
    with pytest.raises(tk.CheckpointError) as info:
        t.fit(DATA)
    disk.release()
    message = str(info.value)
    assert "the disk is full" in message and disk.reason in message, message
    assert f"checkpoint-2 in {out}" in message and "checkpoint-1 is intact" in message, message
    assert isinstance(info.value.__cause__, library_error), repr(info.value.__cause__)
    assert tree(out / "checkpoint-1") == state  # byte for byte
    assert leftovers(out) == ["checkpoint-1", "tunekit-output.json"]  # no checkpoint-2, no staging
    assert leftovers(disk.root) == ["out"]
    # The space is given back while the error is held: no half-written file stays open (torch.save's writer).
    assert open_files(disk.root) == []


SAVE_CASES = {
    "safetensors": ("adapter_model.safetensors", SafetensorError),
    "tokenizers": ("tokenizer.json", Exception),
    "manifest": ("tunekit.json", OSError),
}


@pytest.mark.parametrize(("disk", "case"), cases(SAVE_CASES, {"safetensors"}), indirect=["disk"])
def test_save_over_a_previous_save_on_a_full_disk(disk: Disk, trained: tk.Tuner, case: str) -> None:
    name, library_error = SAVE_CASES[case]
    path = disk.root / "saved"
    trained.save(path)
    before = tree(path)
    disk.fill(path, name)
    with pytest.raises(tk.CheckpointError) as info:
        trained.save(path)
    disk.release()
    message = str(info.value)
    assert "the disk is full" in message and disk.reason in message, message
    assert str(path) in message and "the previous save there is intact" in message, message
    assert isinstance(info.value.__cause__, library_error), repr(info.value.__cause__)
    assert tree(path) == before
    assert leftovers(disk.root) == ["saved"]
    assert open_files(disk.root) == []
    tk.load(path)  # and it still loads


EXPORT_CASES = {
    "safetensors": ("model.safetensors", SafetensorError),
    "tokenizers": ("tokenizer.json", Exception),
    "manifest": ("tunekit_export.json", OSError),
}


@pytest.mark.parametrize(("disk", "case"), cases(EXPORT_CASES, {"safetensors"}), indirect=["disk"])
def test_export_over_a_previous_export_on_a_full_disk(disk: Disk, trained: tk.Tuner, case: str) -> None:
    name, library_error = EXPORT_CASES[case]
    path = disk.root / "exported"
    trained.export(path, format="hf", verify=False)
    before = tree(path)
    disk.fill(path, name)
    with pytest.raises(tk.ExportError) as info:
        trained.export(path, format="hf", verify=False)
    disk.release()
    message = str(info.value)
    assert "the disk is full" in message and disk.reason in message, message
    assert str(path) in message and "the previous export there is intact" in message, message
    assert isinstance(info.value.__cause__, library_error), repr(info.value.__cause__)
    assert tree(path) == before
    assert leftovers(disk.root) == ["exported"]
    assert open_files(disk.root) == []
