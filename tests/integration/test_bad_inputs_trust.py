"""The bad-input catalogue, trust and integrity: what a save read from disk may and may not do.

A save's manifest records the run that wrote it and never grants trust: code in a base directory runs,
and pickle files load, only when the caller of ``tk.load`` says so. Every file is checked against its
recorded sha256, and an adapter goes only on the base it was trained on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.testing import tiny_model

from .bad_input_kit import GOOD, Case, Row, check, remote_code
from .helpers import cpu

_SAVES: dict[Path, Path] = {}


def saved(c: Case) -> Path:
    """A copy (in this case's tmp) of an adapter trained for two steps on ``c.model``; trained once per model."""
    if c.model not in _SAVES:
        tuner = tk.Tuner(c.model, training=cpu(max_steps=2, batch_size=4, learning_rate=1e-2), progress=False)
        tuner.fit(GOOD)
        _SAVES[c.model] = tuner.save(c.model.parent / f"{c.model.name}-adapter-for-trust-tests")
    target = c.tmp / "adapter"
    shutil.copytree(_SAVES[c.model], target)
    return target


def edit_manifest(path: Path, **changes: Any) -> None:
    """What a hostile or careless sender can do: any manifest, with a files list that matches the files."""
    from tunekit import _fs

    manifest = json.loads((path / "tunekit.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            manifest[section][name] = value
        else:
            manifest[section] = value
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != "tunekit.json"}
    manifest["files"] = {
        rel: {"size": (path / rel).stat().st_size, "sha256": _fs.sha256_file(path / rel)} for rel in files
    }
    (path / "tunekit.json").write_text(json.dumps(manifest), encoding="utf-8")


def code_base(c: Case) -> Path:
    """A copy of the base whose config asks for its own Python code, which writes a file when it runs."""
    base = c.tmp / "base-with-code"
    shutil.copytree(c.model, base)
    remote_code(base)
    ran = c.tmp / "code-ran"
    code = f"open({str(ran)!r}, 'w').write('ran')\nfrom transformers import LlamaConfig as AcmeConfig\n"
    (base / "configuration_acme.py").write_text(code, encoding="utf-8")
    (base / "modeling_acme.py").write_text(code + "from transformers import LlamaForCausalLM as AcmeForCausalLM\n")
    return base


def manifest_grants_remote_code(c: Case) -> Any:
    path = saved(c)
    edit_manifest(path, base_model=str(code_base(c)), base_fingerprint=None, training__trust_remote_code=True)
    try:
        return tk.load(path).generate("reverse: 1 2")
    finally:
        assert not (c.tmp / "code-ran").exists()  # the base's code never ran


def manifest_grants_pickle(c: Case) -> Any:
    from safetensors.torch import load_file

    path = saved(c)
    torch.save(load_file(str(path / "adapter_model.safetensors")), path / "adapter_model.bin")
    (path / "adapter_model.safetensors").unlink()
    edit_manifest(path, training__allow_pickle=True)
    return tk.load(path).model


def flipped_byte(c: Case) -> Any:
    path = saved(c)
    weights = path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight: same size, different content
    weights.write_bytes(bytes(data))
    return tk.load(path)


def other_seed(c: Case) -> Path:
    texts = [r["prompt"] + " " + r["completion"] for r in tk.testing.reverse_task(300, seed=100)]
    return tiny_model(c.tmp / "other-seed", texts=texts, seed=1)  # same shape and tokenizer, other weights


def other_size(c: Case) -> Path:
    texts = [r["prompt"] + " " + r["completion"] for r in tk.testing.reverse_task(300, seed=100)]
    return tiny_model(c.tmp / "other-size", texts=texts, hidden_size=32)


CATALOGUE: list[Row] = [
    ("manifest-grants-remote-code", manifest_grants_remote_code, tk.IncompatibleError, "needs its own Python code",
     "trust_remote_code=True"),
    ("manifest-grants-pickle", manifest_grants_pickle, tk.CheckpointError,
     r"adapter weights are stored with pickle \(adapter_model.bin\)", "allow_pickle=True"),
    ("flipped-byte-in-weights", flipped_byte, tk.CheckpointError,
     "adapter_model.safetensors does not match its sha256", "copy it again"),
    ("adapter-on-another-seed", lambda c: tk.load(saved(c), base_model=str(other_seed(c))), tk.IncompatibleError,
     "is not the one the adapter was trained on .same shape, different weights", "allow_base_change=True"),
    ("adapter-on-another-size", lambda c: tk.load(saved(c), base_model=str(other_size(c))), tk.IncompatibleError,
     "trained on a base of another shape .hidden_size 64 -> 32", "base_model="),
    ("adapter-forced-on-another-size",
     lambda c: tk.load(saved(c), base_model=str(other_size(c)), allow_base_change=True).model,
     tk.IncompatibleError, "does not fit this base model .*size mismatch", "load it on the base it was trained on"),
    ("save-without-file-list", lambda c: tk.load(edit_and_drop_files(saved(c))), tk.CheckpointError,
     "lists no files, so the save cannot be checked", "verify=False"),
]  # fmt: skip


def edit_and_drop_files(path: Path) -> Path:
    manifest = json.loads((path / "tunekit.json").read_text(encoding="utf-8"))
    manifest.pop("files")
    (path / "tunekit.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


@pytest.mark.parametrize("row", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(tiny_llama, earlier_run, tmp_path, monkeypatch, row):
    check(tiny_llama, earlier_run, tmp_path, monkeypatch, row)


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits


def test_correct_trust_is_the_callers(tiny_llama, tmp_path):
    """The manifest records what the run used; the loaded tuner has only what its caller gave."""
    case = Case(tiny_llama, tmp_path, tmp_path, pytest.MonkeyPatch())
    path = saved(case)
    edit_manifest(path, training__trust_remote_code=True, training__allow_pickle=True)
    assert not tk.load(path).training.trust_remote_code
    assert not tk.load(path).training.allow_pickle
    assert tk.load(path, trust_remote_code=True).training.trust_remote_code
    assert tk.load(path, training=cpu(allow_pickle=True)).training.allow_pickle
    assert not tk.load(path, training=cpu(allow_pickle=True), allow_pickle=False).training.allow_pickle


def test_correct_a_moved_base_loads_and_a_deliberate_change_is_allowed(tiny_llama, tmp_path):
    """A copy of the same base elsewhere is the same base; another one loads only when asked, with a warning-free
    result that really is the adapter on that base."""
    case = Case(tiny_llama, tmp_path, tmp_path, pytest.MonkeyPatch())
    path = saved(case)
    original = tk.load(path)
    moved = tmp_path / "moved-base"
    shutil.copytree(tiny_llama, moved)
    again = tk.load(path, base_model=str(moved))
    torch.testing.assert_close(logits(again.model), logits(original.model), rtol=0, atol=0)

    other = other_seed(case)
    changed = tk.load(path, base_model=str(other), allow_base_change=True)
    assert not torch.allclose(logits(changed.model), logits(original.model))
    # the manifest of a save made from it records the base it now sits on, so it loads there again
    resaved = changed.save(tmp_path / "resaved")
    torch.testing.assert_close(
        logits(tk.load(resaved, base_model=str(other)).model), logits(changed.model), rtol=0, atol=0
    )


def test_correct_fast_path_skips_only_the_hashes(tiny_llama, tmp_path):
    case = Case(tiny_llama, tmp_path, tmp_path, pytest.MonkeyPatch())
    path = saved(case)
    weights = path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    tk.load(path, verify=False)  # the caller asked: sizes only
    weights.write_bytes(bytes(data[:-1]))
    with pytest.raises(tk.CheckpointError, match=r"adapter_model.safetensors is .* bytes, the manifest says"):
        tk.load(path, verify=False)
