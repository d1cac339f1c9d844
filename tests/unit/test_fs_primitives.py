"""tunekit._fs, primitive by primitive: what each writes, flushes, retries, removes and refuses, exactly.

Written against the mutants of `nox -s mutation` (tests/MUTATION.md) that the reliability tests let live: a retry
that waits the wrong time or gives up early, a fsync on the wrong file, a tree removal that follows a link out, a
manifest written with other whitespace.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import stat
import sys
from pathlib import Path

import pytest

import tunekit as tk
from tunekit import _fs

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX behaviour")


# --- retry -----------------------------------------------------------------------------------------------------------


def _flaky(fails: int, error: OSError):
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= fails:
            raise error
        return "done"

    return fn, calls


@pytest.mark.parametrize("code", [errno.EACCES, errno.EBUSY, errno.EAGAIN])
def test_retry_waits_doubling_delays_on_every_transient_errno(monkeypatch, code):
    slept: list[float] = []
    monkeypatch.setattr(_fs.time, "sleep", slept.append)
    fn, calls = _flaky(3, OSError(code, "busy"))
    assert _fs.retry(fn) == "done"
    assert len(calls) == 4 and slept == [0.05, 0.1, 0.2]


def test_retry_gives_up_after_its_window_and_raises_the_last_error(monkeypatch):
    monkeypatch.delenv(_fs.RETRY_ENV, raising=False)
    slept: list[float] = []
    monkeypatch.setattr(_fs.time, "sleep", slept.append)
    fn, calls = _flaky(100, PermissionError(errno.EPERM, "locked"))
    with pytest.raises(PermissionError, match="locked"):
        _fs.retry(fn)
    # 0.05, 0.1, ... 0.8, then once a second, the last wait cut to end the window at 10 s: no sleep after the last try
    assert slept == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, *[1.0] * 8, 0.45])
    assert _fs.DEFAULT_RETRY_SECONDS == 10.0 and sum(slept) == pytest.approx(10.0) and len(calls) == len(slept) + 1
    slept.clear()
    fn, calls = _flaky(100, PermissionError(errno.EPERM, "locked"))
    with pytest.raises(PermissionError):
        _fs.retry(fn, seconds=1.5, delay=1.0)
    assert slept == [1.0, 0.5] and len(calls) == 3
    fn, calls = _flaky(1, PermissionError(errno.EPERM, "locked"))
    assert _fs.retry(fn, seconds=0.05) == "done"
    fn, calls = _flaky(1, PermissionError(errno.EPERM, "locked"))
    with pytest.raises(PermissionError):
        _fs.retry(fn, seconds=0)  # no window: no retry
    assert len(calls) == 1


def _windows_lock(seconds: float, slept: list[float]):
    """A file a scanner holds for ``seconds``: Windows' [WinError 32] until that much time has been waited."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if sum(slept) < seconds:
            err = PermissionError(
                errno.EACCES, "The process cannot access the file because it is being used by another process"
            )
            err.winerror = 32  # type: ignore[attr-defined]  # as Windows sets it
            raise err
        return "moved"

    return fn, calls


def test_retry_outlasts_a_scanner_holding_a_new_file_for_seconds(monkeypatch):
    """Antivirus reads a freshly written multi-GB file for seconds: the old window (about 1.5 s) gave up, 10 s waits."""
    monkeypatch.delenv(_fs.RETRY_ENV, raising=False)
    slept: list[float] = []
    monkeypatch.setattr(_fs.time, "sleep", slept.append)
    fn, calls = _windows_lock(6.0, slept)
    assert _fs.retry(fn) == "moved" and 6.0 <= sum(slept) < 7.0 and len(calls) > 6  # more tries than before
    slept.clear()
    fn, _ = _windows_lock(6.0, slept)
    with pytest.raises(PermissionError, match="being used by another process"):
        _fs.retry(fn, seconds=1.55)  # what 6 doubling attempts from 0.05 s waited before
    slept.clear()
    fn, _ = _windows_lock(25.0, slept)
    with pytest.raises(PermissionError):  # longer than the default window: given up after 10 s
        _fs.retry(fn)
    assert sum(slept) == pytest.approx(10.0)


def test_the_retry_window_is_set_by_an_environment_variable(monkeypatch, tmp_path):
    slept: list[float] = []
    monkeypatch.setattr(_fs.time, "sleep", slept.append)
    monkeypatch.setenv(_fs.RETRY_ENV, "30")
    assert _fs.retry_seconds() == 30.0
    fn, _ = _windows_lock(25.0, slept)
    assert _fs.retry(fn) == "moved"  # a slow scanner: waited for with a longer window
    monkeypatch.setenv(_fs.RETRY_ENV, "0")
    slept.clear()
    fn, calls = _windows_lock(1.0, slept)
    with pytest.raises(PermissionError):
        _fs.retry(fn)
    assert slept == [] and len(calls) == 1
    monkeypatch.setenv(_fs.RETRY_ENV, " ")
    assert _fs.retry_seconds() == _fs.DEFAULT_RETRY_SECONDS
    for bad in ("ten", "-1", "inf", "nan"):
        monkeypatch.setenv(_fs.RETRY_ENV, bad)
        with pytest.raises(tk.ConfigError, match=rf"TUNEKIT_FS_RETRY_SECONDS='{bad}': must be a number of seconds"):
            _fs.retry(lambda: None)
        with pytest.raises(tk.ConfigError, match="TUNEKIT_FS_RETRY_SECONDS"):  # before training, not at its first save
            _fs.check_writable(tmp_path / "out", "Tuner(output_dir=...)")


def test_retry_raises_other_errors_at_once(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(_fs.time, "sleep", slept.append)
    fn, calls = _flaky(5, OSError(errno.ENOENT, "gone"))
    with pytest.raises(FileNotFoundError):
        _fs.retry(fn)
    assert len(calls) == 1 and slept == []


# --- writing and flushing ---------------------------------------------------------------------------------------------


def test_write_text_and_write_json_write_exactly_this_and_flush_it(tmp_path, monkeypatch):
    flushed: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(fd), real(fd))[1])
    _fs.write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    assert len(flushed) == 1
    _fs.write_json(tmp_path / "m.json", {"name": "é", "n": [1, 2]})
    assert (tmp_path / "m.json").read_bytes() == (
        json.dumps({"name": "é", "n": [1, 2]}, indent=2, ensure_ascii=False) + "\n"
    ).encode()
    assert len(flushed) == 2


def test_fsync_file_flushes_that_file_and_skips_one_it_cannot_open(tmp_path, monkeypatch, caplog):
    target = tmp_path / "f.bin"
    target.write_bytes(b"data")
    flushed: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: flushed.append(os.readlink(f"/proc/self/fd/{fd}")))
    if sys.platform == "linux":
        _fs.fsync_file(target)
        assert flushed == [str(target)]
        assert target.read_bytes() == b"data"  # opened for writing, not truncated
    with caplog.at_level(logging.DEBUG, logger="tunekit"):
        _fs.fsync_file(tmp_path / "missing")
    assert "fsync of" in caplog.text and "missing" in caplog.text


@posix_only
def test_fsync_dir_flushes_the_directory_itself_on_posix(tmp_path, monkeypatch, caplog):
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, *a, **k):
        opened.append((str(path), flags))
        return real_open(path, flags, *a, **k)

    flushed: list[int] = []
    monkeypatch.setattr(os, "open", spy)
    monkeypatch.setattr(os, "fsync", flushed.append)
    _fs.fsync_dir(tmp_path)
    assert opened == [(str(tmp_path), os.O_RDONLY)] and len(flushed) == 1

    def refuse(fd):
        raise OSError(errno.EINVAL, "not supported")

    monkeypatch.setattr(os, "fsync", refuse)
    with caplog.at_level(logging.DEBUG, logger="tunekit"):
        _fs.fsync_dir(tmp_path)  # refused: logged, not raised, and the descriptor closed
    assert "fsync of the directory" in caplog.text


def test_flush_tree_flushes_every_file_then_every_directory_deepest_first(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("x", "a/y", "a/b/z"):
        (tmp_path / rel).write_text(rel, encoding="utf-8")
    files: list[Path] = []
    dirs: list[Path] = []
    monkeypatch.setattr(_fs, "fsync_file", files.append)
    monkeypatch.setattr(_fs, "fsync_dir", dirs.append)
    _fs.flush_tree(tmp_path)
    assert sorted(files) == sorted(tmp_path / r for r in ("x", "a/y", "a/b/z"))
    assert dirs == [tmp_path / "a" / "b", tmp_path / "a", tmp_path]


def test_list_files_gives_size_and_sha256_of_every_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"abc")
    (tmp_path / "c.json").write_bytes(b"{}")
    listed = _fs.list_files(tmp_path)
    assert listed == {
        "c.json": {"size": 2, "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
        "d/w.bin": {"size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    }


def test_sha256_file_reads_every_chunk(tmp_path):
    import hashlib

    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert _fs.sha256_file(tmp_path / "f") == want
    assert _fs.sha256_file(tmp_path / "f", chunk=7) == want  # many chunks, the last one short


# --- manifests -----------------------------------------------------------------------------------------------------


def test_read_manifest_reads_an_object_and_names_every_failure(tmp_path):
    path = tmp_path / "m.json"
    with pytest.raises(tk.CheckpointError) as info:
        _fs.read_manifest(path, missing="no manifest here", fix="save again")
    assert str(info.value) == "no manifest here"
    with pytest.raises(tk.ConfigError, match=r"^gone$"):
        _fs.read_manifest(path, missing="gone", fix="x", error=tk.ConfigError)
    path.write_text('{"a": 1}', encoding="utf-8")
    assert _fs.read_manifest(path, missing="m", fix="f") == {"a": 1}
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(tk.CheckpointError) as info:
        _fs.read_manifest(path, missing="m", fix="save again")
    assert str(info.value) == f"{path} is corrupt (expected a JSON object); save again"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(tk.CheckpointError, match=r"m\.json is corrupt \(.*\); save again$"):
        _fs.read_manifest(path, missing="m", fix="save again")
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(tk.CheckpointError, match="is corrupt"):
        _fs.read_manifest(path, missing="m", fix="save again")


def test_verify_files_checks_sizes_always_and_hashes_when_asked(tmp_path):
    (tmp_path / "w").write_bytes(b"1234")
    good = {"w": {"size": 4, "sha256": _fs.sha256_file(tmp_path / "w")}}
    assert _fs.verify_files(tmp_path, good, hashes=True) is None
    wrong_hash = {"w": {"size": 4, "sha256": "0" * 64}}
    assert _fs.verify_files(tmp_path, wrong_hash, hashes=False) is None  # sizes only
    assert "does not match its sha256" in (_fs.verify_files(tmp_path, wrong_hash, hashes=True) or "")
    assert _fs.verify_files(tmp_path, {"w": {"size": 5, "sha256": ""}}, hashes=False) == (
        "w is 4 bytes, the manifest says 5"
    )
    assert _fs.verify_files(tmp_path, {"w": "not a dict"}, hashes=False) == "w is missing"
    assert _fs.verify_files(tmp_path, {}, hashes=True) == "the manifest lists no files"
    assert _fs.verify_files(tmp_path, ["w"], hashes=True) == "the manifest lists no files"


def test_inside_returns_the_path_under_root(tmp_path):
    assert _fs.inside(tmp_path, "a/b.json") == tmp_path / "a" / "b.json"
    (tmp_path / "out").symlink_to("/")
    with pytest.raises(tk.CheckpointError, match="leads outside its directory"):
        _fs.inside(tmp_path, "out/etc")
    with pytest.raises(tk.CheckpointError, match="which is outside its directory"):
        _fs.inside(tmp_path, "   ")


# --- removing and replacing -----------------------------------------------------------------------------------------


def test_remove_tree_removes_the_tree_and_only_a_link_not_its_target(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x", encoding="utf-8")
    _fs.remove_tree(tree, within=tmp_path)
    assert not tree.exists()
    _fs.remove_tree(tree)  # already gone: nothing to do, no error
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "precious").write_text("mine", encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(kept)
    _fs.remove_tree(link, within=tmp_path)
    assert not link.is_symlink() and (kept / "precious").read_text(encoding="utf-8") == "mine"
    with pytest.raises(tk.CheckpointError, match=r"refusing to delete .*kept: it is outside .*sub"):
        _fs.remove_tree(kept, within=tmp_path / "sub")
    assert kept.is_dir()


@posix_only
def test_remove_tree_deletes_read_only_files_and_folders(tmp_path):
    tree = tmp_path / "ro"
    tree.mkdir()
    (tree / "f").write_text("x", encoding="utf-8")
    os.chmod(tree / "f", stat.S_IREAD)
    _fs.remove_tree(tree)
    assert not tree.exists()


def test_remove_tree_warns_but_never_fails_on_what_stays_locked(tmp_path, monkeypatch, caplog):
    tree = tmp_path / "locked"
    tree.mkdir()
    monkeypatch.setattr(_fs.time, "sleep", lambda s: None)
    monkeypatch.setattr(_fs.shutil, "rmtree", lambda *a, **k: None)  # nothing goes away
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        _fs.remove_tree(tree)
    assert tree.exists()
    assert f"could not remove {tree}" in caplog.text and "delete it by hand" in caplog.text


def test_chmod_and_retry_makes_a_file_writable_and_deletes_it(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("x", encoding="utf-8")
    modes: list[int] = []
    real_chmod = os.chmod
    monkeypatch.setattr(os, "chmod", lambda p, m: (modes.append(m), real_chmod(p, m))[1])
    _fs._chmod_and_retry(os.unlink, str(f), None)
    assert not f.exists() and modes == [stat.S_IWRITE]
    g = tmp_path / "g"
    g.write_text("x", encoding="utf-8")
    _fs._chmod_and_retry(os.stat, str(g), None)  # not a removal: left alone
    assert g.exists() and modes == [stat.S_IWRITE]
    _fs._chmod_and_retry(os.rmdir, str(tmp_path / "missing"), None)  # fails again: logged, not raised


def test_replace_dir_moves_the_new_one_in_and_removes_the_old(tmp_path, monkeypatch):
    src, dst = tmp_path / "new", tmp_path / "dst"
    src.mkdir()
    (src / "v").write_text("2", encoding="utf-8")
    dst.mkdir()
    (dst / "v").write_text("1", encoding="utf-8")
    synced: list[Path] = []
    monkeypatch.setattr(_fs, "fsync_dir", synced.append)
    _fs.replace_dir(src, dst)
    assert (dst / "v").read_text(encoding="utf-8") == "2" and not src.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]  # the old one removed, nothing aside
    assert synced == [tmp_path]
    # into an empty place, and with a named trash
    src.mkdir()
    (src / "v").write_text("3", encoding="utf-8")
    _fs.replace_dir(src, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "v").read_text(encoding="utf-8") == "3"
    src.mkdir()
    (src / "v").write_text("4", encoding="utf-8")
    _fs.replace_dir(src, dst, trash=tmp_path / ".trash")
    assert (dst / "v").read_text(encoding="utf-8") == "4" and not (tmp_path / ".trash").exists()


def test_replace_dir_sets_the_old_one_aside_beside_it_under_a_hidden_name(tmp_path, monkeypatch):
    src, dst = tmp_path / "new", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    moves: list[tuple[str, str]] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moves.append((str(a), str(b))), real(a, b))[1])
    _fs.replace_dir(src, dst)
    aside = Path(moves[0][1])
    assert moves[0][0] == str(dst) and aside.parent == tmp_path
    assert aside.name.startswith(f".dst.old-{os.getpid()}-") and len(aside.name) == len(f".dst.old-{os.getpid()}-") + 12
    assert moves[1] == (str(src), str(dst))


# --- writability and full disks -----------------------------------------------------------------------------------


def test_check_writable_creates_the_folder_and_leaves_no_probe(tmp_path, monkeypatch):
    where = tmp_path / "a" / "b"
    _fs.check_writable(where, "Tuner(output_dir=...)")
    assert where.is_dir() and list(where.iterdir()) == []

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_fs.tempfile, "mkstemp", refuse)
    with pytest.raises(tk.ConfigError) as info:
        _fs.check_writable(where, "Tuner(output_dir=...)")
    assert str(info.value) == (
        f"Tuner(output_dir=...): cannot write to {where} (Permission denied); choose a directory you can write to, "
        "or change its permissions"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
def test_at_size_limit_counts_a_file_at_the_limit(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"x" * 100)
    limit = {"value": (resource.RLIM_INFINITY, resource.RLIM_INFINITY)}
    monkeypatch.setattr(_fs.resource, "getrlimit", lambda which: limit["value"])
    assert not _fs._at_size_limit(tmp_path)
    for soft, expected in ((100, True), (99, True), (101, False)):
        limit["value"] = (soft, resource.RLIM_INFINITY)
        assert _fs._at_size_limit(tmp_path) is expected, soft
        assert _fs._at_size_limit(tmp_path / "sub" / "f") is expected, soft


def test_disk_full_reads_the_whole_chain(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as e:
        outer = e
    assert _fs.disk_full(outer) and _fs.disk_full_reason(outer) == "No space left on device"
    assert not _fs.disk_full(RuntimeError("something else"), tmp_path)
    assert _fs.disk_full_reason(OSError(errno.EFBIG, "x")) == "File too large"
    loop_a, loop_b = RuntimeError("a"), RuntimeError("b")
    loop_a.__context__, loop_b.__context__ = loop_b, loop_a
    assert _fs._chain(loop_a) == [loop_a, loop_b]
    cause, context = ValueError("cause"), KeyError("context")
    top = RuntimeError("top")
    top.__cause__, top.__context__ = cause, context
    assert _fs._chain(top) == [top, cause, context]


def test_release_frames_clears_every_traceback_in_the_chain():
    def fail() -> None:
        big = bytearray(10)  # noqa: F841  (a local the frame holds)
        raise OSError(errno.ENOSPC, "full")

    try:
        try:
            fail()
        except OSError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as e:
        err = e
    inner_tb = err.__cause__.__traceback__
    while inner_tb.tb_next is not None:
        inner_tb = inner_tb.tb_next
    assert "big" in inner_tb.tb_frame.f_locals
    _fs.release_frames(err)
    assert "big" not in inner_tb.tb_frame.f_locals


# --- what each failure says (the log lines are how a user learns why a flush or a removal was skipped) -------------


def test_every_skipped_flush_and_removal_is_logged_with_its_path_and_reason(tmp_path, monkeypatch, caplog):
    target = tmp_path / "f"
    target.write_text("x", encoding="utf-8")
    caplog.set_level(logging.DEBUG, logger="tunekit")

    def no_fsync(fd):
        raise OSError(errno.EINVAL, "not supported")

    monkeypatch.setattr(os, "fsync", no_fsync)
    _fs.fsync_file(target)
    _fs.fsync_dir(tmp_path)
    real_open = os.open

    def no_dir_open(path, flags, *a, **k):
        if Path(path) == tmp_path:
            raise PermissionError(errno.EACCES, "Access is denied")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", no_dir_open)
    _fs.fsync_dir(tmp_path)
    monkeypatch.undo()
    _fs._chmod_and_retry(os.rmdir, str(tmp_path / "missing"), None)
    messages = [r.getMessage() for r in caplog.records]
    expected = [
        f"fsync of {target} skipped: [Errno 22] not supported",
        f"fsync of the directory {tmp_path} skipped: [Errno 22] not supported",
        f"fsync of the directory {tmp_path} skipped: [Errno 13] Access is denied",
        f"could not remove {tmp_path / 'missing'}: [Errno 2] No such file or directory: '{tmp_path / 'missing'}'",
    ]
    assert messages == expected


def test_remove_tree_names_what_stays_in_use(tmp_path, monkeypatch, caplog):
    tree = tmp_path / "locked"
    tree.mkdir()
    monkeypatch.setattr(_fs.time, "sleep", lambda s: None)
    monkeypatch.setattr(_fs.shutil, "rmtree", lambda *a, **k: None)
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        _fs.remove_tree(tree)
    assert [r.getMessage() for r in caplog.records] == [
        f"could not remove {tree} ([Errno 13] still in use: '{tree}'); delete it by hand if it stays"
    ]


def test_check_writable_probes_the_directory_itself(tmp_path, monkeypatch):
    where = tmp_path / "locked"
    where.mkdir()
    real_open = os.open

    def refuse(path, flags, *a, **k):
        if Path(path).parent == where and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(tk.ConfigError, match=r"x: cannot write to .*locked \(Permission denied\)"):
        _fs.check_writable(where, "x")


def test_a_torch_write_error_is_a_full_disk_only_where_the_disk_is_full(tmp_path, monkeypatch):
    opaque = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 128 vs 64")
    monkeypatch.setattr(_fs, "_at_size_limit", lambda where: False)
    monkeypatch.setattr(_fs, "_free_bytes", lambda where: 0)
    assert _fs.disk_full(opaque, tmp_path) and not _fs.disk_full(opaque)
    monkeypatch.setattr(_fs, "_free_bytes", lambda where: _fs._NEARLY_FULL - 1)
    assert _fs.disk_full_reason(opaque, tmp_path) == "No space left on device"
    monkeypatch.setattr(_fs, "_free_bytes", lambda where: _fs._NEARLY_FULL)  # a megabyte free: not full
    assert _fs.disk_full_reason(opaque, tmp_path) is None
    monkeypatch.setattr(_fs, "_free_bytes", lambda where: None)
    assert _fs.disk_full_reason(opaque, tmp_path) is None


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
def test_a_zero_size_limit_counts_every_file(tmp_path, monkeypatch):
    (tmp_path / "empty").write_bytes(b"")
    monkeypatch.setattr(_fs.resource, "getrlimit", lambda which: (0, resource.RLIM_INFINITY))
    assert _fs._at_size_limit(tmp_path)


def test_chain_visits_an_exception_met_twice_once_and_goes_on():
    top, twice, deeper = RuntimeError("top"), ValueError("twice"), KeyError("deeper")
    top.__cause__ = top.__context__ = twice
    twice.__context__ = deeper
    assert _fs._chain(top) == [top, twice, deeper]


@pytest.mark.parametrize("relative", ["a/../b", "/abs/path", ".."])
def test_inside_refuses_dot_dot_and_absolute_paths_before_resolving(tmp_path, relative):
    (tmp_path / "a").mkdir()
    with pytest.raises(tk.CheckpointError, match="which is outside its directory"):
        _fs.inside(tmp_path, relative)  # "a/../b" resolves inside root, and is still refused


def test_replace_dir_sets_the_old_one_aside_in_the_trash_it_is_given(tmp_path, monkeypatch):
    src, dst, trash = tmp_path / "new", tmp_path / "dst", tmp_path / ".trash"
    src.mkdir()
    dst.mkdir()
    moves: list[tuple[str, str]] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moves.append((str(a), str(b))), real(a, b))[1])
    _fs.replace_dir(src, dst, trash=trash)
    assert moves == [(str(dst), str(trash)), (str(src), str(dst))] and not trash.exists()
