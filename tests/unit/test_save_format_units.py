"""save_format without training: the base model's fingerprint and the save manifest's reading. Written against the
mutants of `nox -s mutation` (tests/MUTATION.md) the save/load tests let live."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tunekit as tk
from tunekit import save_format


@pytest.fixture
def base(tiny_llama, tmp_path) -> Path:
    copy = tmp_path / "base"
    shutil.copytree(tiny_llama, copy)
    return copy


def _flip_a_weight_byte(path: Path) -> None:
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: sampled, same size
    weights.write_bytes(bytes(data))


def test_the_fingerprint_reads_the_config_and_the_weights_and_nothing_else(base):
    assert save_format.base_fingerprint(123) is None and save_format.base_fingerprint(object()) is None
    first = save_format.base_fingerprint(base)
    assert first is not None and first == save_format.base_fingerprint(str(base))
    (base / "README.md").write_text("notes", encoding="utf-8")
    (base / "extra.txt").write_text("more", encoding="utf-8")
    assert save_format.base_fingerprint(base) == first  # only weights files count
    _flip_a_weight_byte(base)
    assert save_format.base_fingerprint(base) != first


def test_a_pickled_weights_file_counts_too(base):
    first = save_format.base_fingerprint(base)
    (base / "extra_weights.bin").write_bytes(b"\x00" * 64)
    assert save_format.base_fingerprint(base) != first


def test_no_fingerprint_without_a_readable_config(base, tmp_path):
    assert save_format.base_fingerprint(tmp_path / "empty") is None
    (base / "config.json").write_text("[1, 2]", encoding="utf-8")
    assert save_format.base_fingerprint(base) is None
    (base / "config.json").write_text("{broken", encoding="utf-8")
    assert save_format.base_fingerprint(base) is None


def test_a_corrupt_save_manifest_says_to_save_again(tmp_path):
    with pytest.raises(tk.CheckpointError) as info:
        save_format.read_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path} is not a tunekit save (no tunekit.json); save one with Tuner.save(path)"
    (tmp_path / "tunekit.json").write_text("[]", encoding="utf-8")
    with pytest.raises(tk.CheckpointError) as info:
        save_format.read_manifest(tmp_path)
    assert str(info.value).endswith("is corrupt (expected a JSON object); save the tuner again")
    (tmp_path / "tunekit.json").write_text(json.dumps({"files": {}}), encoding="utf-8")
    assert save_format.read_manifest(tmp_path) == {"files": {}}
