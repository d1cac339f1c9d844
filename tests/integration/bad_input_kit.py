"""What the bad-input catalogue shares: a Case to act on, an earlier run to protect, one check.

The catalogue is split by area (``test_bad_inputs*.py``); each file holds a ``CATALOGUE`` of rows
(id, action, error class, words of the problem, words of the fix) and may add ``test_correct_*``
tests for cases whose right answer is a behaviour rather than an error. Every error row asserts the
error class, words naming the problem and words naming the fix, and that the run's output_dir (which
holds a complete checkpoint of an earlier run) is left exactly as it was.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit import _fs
from tunekit.backends.hf.checkpoints import STAGING
from tunekit.testing import reverse_task

from .helpers import cpu

GOOD = reverse_task(8, seed=4)


def state(path: Path) -> Any:
    """What is at ``path``, byte for byte: a file's sha256, a directory's files and folders, a link's target, or
    ``"absent"``. A refused call must leave the user's things with the same state."""
    if path.is_symlink():
        return ("link", os.readlink(path), state(path.resolve()) if path.resolve().exists() else "absent")
    if path.is_file():
        return ("file", _fs.sha256_file(path))
    if path.is_dir():
        return ("dir", {p.relative_to(path).as_posix(): state(p) for p in sorted(path.iterdir())})
    return "absent"


@dataclass
class Case:
    model: Path
    out: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    # The user's files, folders and links a row makes (its data, the path it names as output, an earlier save),
    # with their state when made: check() asserts each is exactly so after the refused call.
    protected: dict[Path, Any] = field(default_factory=dict)

    def protect(self, path: Path) -> Path:
        self.protected[path] = state(path)
        return path

    def tuner(self, model: Any = None, **kw: Any) -> tk.Tuner:
        training = cpu(**{"max_steps": 2, "batch_size": 4, "save_every": 1, **kw.pop("training", {})})
        return tk.Tuner(model or self.model, training=training, output_dir=self.out, progress=False, **kw)

    def fit(self, data: Any, **kw: Any) -> Any:
        return self.tuner(training=kw).fit(data)

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return self.protect(p)

    def model_copy(self, edit: Callable[[Path], None]) -> Path:
        p = self.tmp / "model-copy"
        shutil.copytree(self.model, p)
        edit(p)
        return self.protect(p)


def rows_with(bad: dict[str, Any], at: int = 3) -> list[dict[str, Any]]:
    rows = list(GOOD)
    rows.insert(at - 1, bad)
    return rows


def conv(*roles: str) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": f"{r} text"} for r in roles]}


def remote_code(p: Path) -> None:
    config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "acme-custom"  # an architecture transformers does not know: only its own code loads it
    config["auto_map"] = {
        "AutoConfig": "configuration_acme.AcmeConfig",
        "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM",
    }
    (p / "config.json").write_text(json.dumps(config), encoding="utf-8")


def pickle_weights(p: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(p / "model.safetensors")), p / "pytorch_model.bin")
    (p / "model.safetensors").unlink()


def read_only(c: Case) -> Path:
    """A directory writes fail in (permissions are not enough when the tests run as root)."""
    target = c.tmp / "locked"
    target.mkdir()
    c.protect(target)  # stays empty
    real = os.open

    def refuse(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if Path(path).parent == target and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *a, **k)

    def refuse_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and Path(file).parent == target and set(mode) & set("wax+"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_builtin_open(file, mode, *a, **k)

    def refuse_rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if Path(dst).parent == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst, *a, **k)

    real_builtin_open, real_replace = builtins.open, os.replace
    c.monkeypatch.setattr(os, "open", refuse)
    c.monkeypatch.setattr(builtins, "open", refuse_open)  # io.open does not go through os.open
    c.monkeypatch.setattr(os, "replace", refuse_rename)
    c.monkeypatch.setattr(os, "rename", refuse_rename)
    return target


def full_disk_at_first_save(c: Case) -> Any:
    from tunekit.backends.hf import checkpoints

    def full(root: Path) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    c.monkeypatch.setattr(checkpoints._fs, "list_files", full)
    return c.fit(GOOD)


def full_disk_in_save(c: Case) -> Any:
    from tunekit import save_format

    tuner = tk.Tuner(c.model, training=cpu(max_steps=1, batch_size=4), progress=False)
    tuner.fit(GOOD)
    target = c.protect(tuner.save(c.tmp / "adapter"))  # the previous save: byte for byte as it was

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    c.monkeypatch.setattr(save_format._fs, "write_json", full)
    try:
        tuner.save(target)
    finally:
        c.monkeypatch.undo()
        tk.load(target)  # the earlier save is whole


Row = tuple[str, Callable[[Case], Any], type[Exception], str, str]


@pytest.fixture(scope="session")
def earlier_run(tiny_llama, tmp_path_factory):
    """An output_dir holding a complete checkpoint of an earlier run (what must survive)."""
    out = tmp_path_factory.mktemp("earlier") / "run"

    class Stop(tk.Hook):
        def on_step_end(self, ctx):
            ctx.request_stop()

    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=3, batch_size=4, save_every=1), output_dir=out, hooks=[Stop()])
    tuner.fit(GOOD)  # stopped by request: a finished run whose checkpoint stays on disk
    assert (out / "checkpoint-1").is_dir()
    return out


def snapshot(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): _fs.sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}


def check(model: Path, earlier: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch, row: Row) -> None:
    """Run one catalogue row against a copy of the earlier run and assert its error and that nothing was lost."""
    _, action, error, problem, fix = row
    out = tmp / "run"
    shutil.copytree(earlier, out)
    before = snapshot(out)
    case = Case(model, out, tmp, monkeypatch)
    with pytest.raises(error) as info:
        action(case)
    monkeypatch.undo()
    message = str(info.value)
    assert type(info.value) is error
    assert re.search(problem, message), message
    assert re.search(fix, message), message
    assert snapshot(out) == before  # the earlier checkpoint untouched, no partial one beside it
    assert not (out / STAGING).exists()
    # The output the row names (the user's file, folder or link in the way, an earlier save) byte for byte as it was,
    # or still absent; nothing written beside it.
    changed = {str(p.relative_to(tmp)): (was, state(p)) for p, was in case.protected.items() if state(p) != was}
    assert not changed, changed
    if re.search(CLAIMS, problem + " " + fix):
        assert case.protected, f"{row[0]}: it names an output it keeps; protect it (Case.protect) to check it"


# Words of a row that say some output of the user's is kept as it was: such a row must check that output.
CLAIMS = r"did not write|in the way|is a file|intact|would replace|would write over|symbolic link|cannot write to"
