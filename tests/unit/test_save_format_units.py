"""save_format without training: the base model's fingerprint and the save manifest's reading. Written against the
mutants of `nox -s mutation` (tests/MUTATION.md) the save/load tests let live."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import tunekit as tk
from tunekit import save_format
from tunekit.backends.base import RunSpec, Trained
from tunekit.distributed import World


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


# --- the save path's checks (_check_path, through check_save_path) --------------------------------------------------


def _refused(path) -> str:
    with pytest.raises(tk.CheckpointError) as info:
        save_format.check_save_path(path)
    return str(info.value)


def test_a_path_a_save_cannot_go_to_is_refused_with_what_to_do(tmp_path):
    assert _refused(Path(" ")) == "save(' '): not a usable path; choose a directory path"
    assert _refused(Path("a\x00b")) == "save('a\\x00b'): not a usable path; choose a directory path"
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")
    assert _refused(dangling) == (
        f"save({str(dangling)!r}): a symbolic link to {str(tmp_path / 'gone')!r}, which does not exist; create its "
        "target or choose a directory"
    )
    (tmp_path / "file").write_text("x", encoding="utf-8")
    in_the_way = tmp_path / "file"
    assert _refused(in_the_way) == f"save({str(in_the_way)!r}): a file is in the way; choose a directory path"
    below = tmp_path / "file" / "deeper" / "save"
    assert _refused(below) == (
        f"save({str(below)!r}): a file is in the way ({str(tmp_path / 'file')!r}); choose a directory path"
    )
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    assert _refused(foreign) == (
        f"save({str(foreign)!r}): the directory is not empty and is not a tunekit save; choose a new or empty "
        "directory (tunekit never overwrites files it did not write)"
    )
    assert (foreign / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_new_an_empty_or_a_nested_path_is_accepted_and_nothing_is_left_behind(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "new", empty, tmp_path / "a" / "b" / "c"):
        save_format.check_save_path(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # the write probe is removed, nothing is created
    assert list(empty.iterdir()) == []


def test_an_earlier_save_is_replaced_only_if_it_holds_nothing_else(tmp_path):
    save = _fake_save(tmp_path / "save")
    save_format.check_save_path(save)  # an earlier save: may be replaced
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (save / name).parent.mkdir(exist_ok=True)
        (save / name).write_text("user's", encoding="utf-8")
    assert _refused(save) == (
        f"save({str(save)!r}): the earlier save there also holds files tunekit did not write (a.txt, b.txt, "
        "sub/c.txt); move them away or save elsewhere (replacing the save would delete them)"
    )


def test_a_save_path_in_a_directory_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    places = []

    def no_write(prefix, dir):  # root ignores permission bits: the probe's failure is simulated
        places.append((prefix, Path(dir)))
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(save_format.tempfile, "mkstemp", no_write)
    assert _refused(tmp_path / "save") == (
        f"save({str(tmp_path / 'save')!r}): cannot write to {str(tmp_path)!r} (Permission denied); choose a "
        "directory you can write to"
    )
    # The probe goes where the save's directory will be created: its parent, or the deepest existing directory above.
    assert _refused(tmp_path / "a" / "b" / "save").startswith(f"save({str(tmp_path / 'a' / 'b' / 'save')!r}): cannot")
    assert places == [(".tunekit-write-test-", tmp_path), (".tunekit-write-test-", tmp_path)]


# --- reading a save back (spec_from_save) without a model --------------------------------------------------------


def _fake_save(path: Path, *, method=None, training=None, base_model=None, **entries) -> Path:
    """A save's directory as Tuner.save writes it, less the weights' meaning: one listed file and a manifest."""
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"\x01" * 32)
    manifest = {
        "base_model": base_model,
        "method": (method or tk.Full()).record(),
        "objective": tk.SFT().record(),
        "training": (training or tk.Training()).model_dump(mode="json", exclude={"resume"}),
        "template": {"chat_template": "{{ messages }}", "end_of_turn": "<eot>", "builtin": False},
        "files": save_format._fs.list_files(path),
        **entries,
    }
    (path / "tunekit.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


def test_a_full_save_reads_back_into_the_run_it_describes(tmp_path):
    saved = _fake_save(tmp_path / "save", training=tk.Training(learning_rate=3e-4, seed=7), data={"rows": 5})
    got = save_format.spec_from_save(saved)
    assert got.data_summary == {"rows": 5}
    spec = got.spec
    assert spec.model_ref == str(saved) and spec.adapter_path is None and spec.tokenizer_ref is None
    assert isinstance(spec.method, tk.Full) and isinstance(spec.objective, tk.SFT)
    assert spec.training.learning_rate == 3e-4 and spec.training.seed == 7
    assert spec.template == "{{ messages }}" and spec.template_options is None and spec.hooks == ()
    hook = tk.Hook()
    again = save_format.spec_from_save(saved, objective=tk.CausalLM(), hooks=[hook], training=tk.Training(seed=9))
    assert isinstance(again.spec.objective, tk.CausalLM) and again.spec.hooks == (hook,)
    assert again.spec.training.seed == 9 and again.spec.training.learning_rate == tk.Training().learning_rate


def test_a_save_grants_no_trust_and_chooses_no_trackers(tmp_path):
    risky = tk.Training(trust_remote_code=True, allow_pickle=True, allow_control_tokens=True, report_to=("wandb",))
    saved = _fake_save(tmp_path / "save", training=risky, data=["not", "a", "dict"])
    got = save_format.spec_from_save(saved)
    t = got.spec.training
    assert (t.trust_remote_code, t.allow_pickle, t.allow_control_tokens) == (False, False, False)
    assert t.report_to == tk.Training().report_to and t.cache_dir == tk.Training().cache_dir
    assert got.data_summary is None
    # Trust comes from the caller: its arguments, else its Training.
    t = save_format.spec_from_save(saved, trust_remote_code=True).spec.training
    assert (t.trust_remote_code, t.allow_pickle, t.allow_control_tokens) == (True, False, False)
    t = save_format.spec_from_save(saved, allow_pickle=True, allow_control_tokens=True).spec.training
    assert (t.trust_remote_code, t.allow_pickle, t.allow_control_tokens) == (False, True, True)
    caller = tk.Training(trust_remote_code=True, allow_pickle=True, allow_control_tokens=True, report_to=("wandb",))
    t = save_format.spec_from_save(saved, training=caller).spec.training
    assert (t.trust_remote_code, t.allow_pickle, t.allow_control_tokens) == (True, True, True)
    assert t.report_to == ("wandb",)  # the caller's own Training chooses its trackers
    t = save_format.spec_from_save(saved, training=caller, allow_pickle=False).spec.training
    assert (t.trust_remote_code, t.allow_pickle, t.allow_control_tokens) == (True, False, True)


def _load_refused(path, **kw) -> str:
    with pytest.raises(tk.CheckpointError) as info:
        save_format.spec_from_save(path, **kw)
    return str(info.value)


def test_a_missing_changed_or_extra_file_is_refused(tmp_path):
    assert _load_refused(tmp_path / "missing") == f"load({str(tmp_path / 'missing')!r}): no such directory"
    saved = _fake_save(tmp_path / "save")
    (saved / "stray.txt").write_text("x", encoding="utf-8")
    fix = "save it again, or copy it again from where it came from"
    assert _load_refused(saved) == (
        f"load({str(saved)!r}): the save is incomplete or corrupt: stray.txt is not listed in its manifest; {fix}"
    )
    (saved / "another.txt").write_text("x", encoding="utf-8")
    assert "another.txt, stray.txt are not listed in its manifest" in _load_refused(saved)
    (saved / "stray.txt").unlink()
    (saved / "another.txt").unlink()
    save_format.spec_from_save(saved)
    (saved / "weights.bin").write_bytes(b"\x02" * 32)  # same size, other bytes
    assert _load_refused(saved).startswith(f"load({str(saved)!r}): the save is incomplete or corrupt: weights.bin")
    save_format.spec_from_save(saved, verify=False)  # sizes only


def test_a_manifest_without_a_file_list_loads_only_unverified(tmp_path):
    saved = _fake_save(tmp_path / "save", files=None)
    assert _load_refused(saved) == (
        f"load({str(saved)!r}): tunekit.json lists no files, so the save cannot be checked; save it again with this "
        "tunekit, or pass verify=False if you trust where it came from"
    )
    assert isinstance(save_format.spec_from_save(saved, verify=False).spec.method, tk.Full)


def test_an_unreadable_entry_says_which_and_why(tmp_path):
    saved = _fake_save(tmp_path / "save", objective={"name": "NoSuchObjective", "options": {}})
    message = _load_refused(saved)
    assert message == (
        f"{saved / 'tunekit.json'}: unknown, missing or invalid entry (KeyError: 'NoSuchObjective'); was it written "
        "by a newer tunekit, or edited by hand?"
    )
    assert isinstance(save_format.spec_from_save(saved, objective=tk.SFT()).spec.objective, tk.SFT)
    bad_options = _fake_save(tmp_path / "opts", template={"chat_template": "t", "options": {"tools": []}})
    assert "unknown, missing or invalid entry (ConfigError: " in _load_refused(bad_options)
    kept = _fake_save(tmp_path / "kept", template={"chat_template": "t", "options": {"enable_thinking": False}})
    assert save_format.spec_from_save(kept).spec.template_options == {"enable_thinking": False}


def test_an_adapter_save_goes_on_its_recorded_base_or_the_one_given(tmp_path, base):
    lora = tk.LoRA(r=4)
    nowhere = _fake_save(tmp_path / "nowhere", method=lora)
    assert _load_refused(nowhere) == (
        f"{nowhere}: the manifest names no base model; pass tk.load(path, base_model=...)"
    )
    gone = str(tmp_path / "gone")
    moved = _fake_save(tmp_path / "moved", method=lora, base_model=gone)
    assert _load_refused(moved) == (
        f"{moved}: the base model {gone!r} recorded in the manifest is not there; pass tk.load(path, base_model=...)"
    )
    spec = save_format.spec_from_save(moved, base_model=str(base)).spec
    assert spec.model_ref == str(base) and spec.adapter_path == moved and spec.tokenizer_ref == str(moved)
    hub = _fake_save(tmp_path / "hub", method=lora, base_model="org/model")  # not a local path: not checked here
    assert save_format.spec_from_save(hub).spec.model_ref == "org/model"
    recorded = save_format.base_fingerprint(base)
    fitted = _fake_save(tmp_path / "fitted", method=lora, base_model=str(base), base_fingerprint=recorded)
    assert save_format.spec_from_save(fitted).spec.model_ref == str(base)
    _flip_a_weight_byte(base)
    with pytest.raises(tk.IncompatibleError, match="is not the one the adapter was trained on"):
        save_format.spec_from_save(fitted)
    assert save_format.spec_from_save(fitted, allow_base_change=True).spec.model_ref == str(base)


# --- check_base: the adapter's recorded base against the one given ----------------------------------------------


def test_a_base_of_another_shape_is_named_key_by_key(base, tmp_path):
    recorded = save_format.base_fingerprint(base)
    assert recorded is not None and recorded["shape"]["model_type"] == "llama"
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["num_hidden_layers"] += 1
    config["hidden_size"] *= 2
    other = tmp_path / "other"
    shutil.copytree(base, other)
    (other / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(tk.IncompatibleError) as info:
        save_format.check_base(tmp_path / "adapter", recorded, other)
    h, n = recorded["shape"]["hidden_size"], recorded["shape"]["num_hidden_layers"]
    assert str(info.value) == (
        f"load({str(tmp_path / 'adapter')!r}): the adapter was trained on a base of another shape (hidden_size {h} -> "
        f"{2 * h}, num_hidden_layers {n} -> {n + 1}); pass the base it was trained on (tk.load(path, base_model=...)), "
        "or, to put it on another base on purpose, tk.load(path, base_model=..., allow_base_change=True) (on the "
        "command line: --allow-base-change)"
    )


def test_a_model_object_is_compared_by_the_shape_its_config_states(base, tmp_path):
    recorded = save_format.base_fingerprint(base)
    shape = recorded["shape"]

    class Config:
        pass

    same, partial = Config(), Config()
    for k, v in shape.items():
        setattr(same, k, v)
        if k != "intermediate_size":
            setattr(partial, k, v)
    model = type("Model", (), {})()
    model.config = same
    save_format.check_base(tmp_path, recorded, model)  # same shape: its weights are not compared
    model.config = partial  # a config that does not state a key: compared as None, not an AttributeError
    with pytest.raises(tk.IncompatibleError, match=rf"intermediate_size {shape['intermediate_size']} -> None"):
        save_format.check_base(tmp_path, recorded, model)


def test_same_weights_with_another_config_loads_with_a_warning(base, tmp_path, caplog):
    recorded = save_format.base_fingerprint(base)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["eos_token_id"] = 99  # not a shape key: the weights are the ones trained on
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        save_format.check_base(tmp_path / "a", recorded, base)
    assert [r.getMessage() for r in caplog.records] == [
        f"load({str(tmp_path / 'a')!r}): the base model {str(base)!r} has the weights the adapter was trained on but "
        "a different config.json"
    ]
    caplog.clear()
    save_format.check_base(tmp_path / "a", None, base)  # a save from before fingerprints: nothing to compare
    save_format.check_base(tmp_path / "a", recorded, "org/model")  # a hub id: nothing readable to compare
    save_format.check_base(tmp_path / "a", save_format.base_fingerprint(base), base)
    assert caplog.records == []


def test_the_fingerprint_reads_only_samples_of_each_tensor(base):
    """The first and last 256 bytes of each tensor (and the header), never the whole file: a 15 GB base is
    fingerprinted in milliseconds. A byte in the middle of a large tensor is not read."""
    from safetensors import safe_open

    weights = base / "model.safetensors"
    raw = weights.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    with safe_open(str(weights), "pt") as f:
        assert set(f.keys()) == {k for k in header if k != "__metadata__"}
    name, entry = max(
        ((k, v) for k, v in header.items() if k != "__metadata__"),
        key=lambda kv: kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0],
    )
    start, end = (8 + length + o for o in entry["data_offsets"])
    assert end - start > 1024, name
    first = save_format.base_fingerprint(base)
    middle = bytearray(raw)
    middle[(start + end) // 2] ^= 0xFF
    weights.write_bytes(bytes(middle))
    assert save_format.base_fingerprint(base) == first  # not sampled
    for at in (start, start + 255, end - 256, end - 1):  # each end of the tensor is
        changed = bytearray(raw)
        changed[at] ^= 0xFF
        weights.write_bytes(bytes(changed))
        assert save_format.base_fingerprint(base) != first, at


def test_a_file_that_is_not_safetensors_inside_is_sampled_in_blocks(base):
    weights = base / "model.safetensors"
    raw = weights.read_bytes()
    first = save_format.base_fingerprint(base)
    for broken in (b"\x00" * 8 + raw[8:], (len(raw) + 1).to_bytes(8, "little") + raw[8:], b"abc"):
        weights.write_bytes(broken)  # a header length of 0, one beyond the file, a file shorter than a length
        assert save_format.base_fingerprint(base) not in (None, first)


# --- what a save records of its base --------------------------------------------------------------------------------


def _spec(model_ref, *, method=None, adapter_path=None):
    return RunSpec(
        model_ref=model_ref, method=method or tk.LoRA(r=4), objective=tk.SFT(), training=tk.Training(),
        adapter_path=adapter_path,
    )  # fmt: skip


def test_the_base_a_save_records(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert save_format.base_model_of(_spec("base")) == str(base.resolve())  # a directory: made absolute
    assert save_format.base_model_of(_spec("org/model")) == "org/model"  # a hub id: as given
    named = type("Model", (), {"name_or_path": "org/named"})()
    assert save_format.base_model_of(_spec(named)) == "org/named"
    assert save_format.base_model_of(_spec(type("Model", (), {"name_or_path": ""})())) is None
    # A model object under a loaded adapter save: the base that save recorded.
    loaded = _fake_save(tmp_path / "loaded", method=tk.LoRA(r=4), base_model="org/recorded")
    assert save_format.base_model_of(_spec(named, adapter_path=loaded)) == "org/recorded"
    unrecorded = _fake_save(tmp_path / "unrecorded", method=tk.LoRA(r=4))
    assert save_format.base_model_of(_spec(named, adapter_path=unrecorded)) is None


def test_a_loaded_save_on_an_unreadable_base_keeps_its_recorded_fingerprint(base, tmp_path):
    recorded = save_format.base_fingerprint(base)
    assert save_format._recorded_fingerprint(_spec(base)) == recorded
    loaded = _fake_save(tmp_path / "loaded", method=tk.LoRA(r=4), base_fingerprint=recorded)
    assert save_format._recorded_fingerprint(_spec("org/model", adapter_path=loaded)) == recorded
    assert save_format._recorded_fingerprint(_spec("org/model")) is None
    odd = _fake_save(tmp_path / "odd", method=tk.LoRA(r=4), base_fingerprint="not a fingerprint")
    assert save_format._recorded_fingerprint(_spec("org/model", adapter_path=odd)) is None


# --- a save with several processes (write_save under torchrun), without a process group --------------------------


class _Backend:
    def __init__(self):
        self.calls = []

    def join_processes(self, training):
        self.calls.append(("join", training))

    def gather_weights(self, loaded, method):
        self.calls.append(("gather", loaded, method))
        return {"w": 1}

    def settle(self, error, *, what):
        self.calls.append(("settle", error, what))
        if error is not None:
            raise error


def test_with_several_processes_every_one_gathers_and_a_refusal_on_rank_0_reaches_them_all(tmp_path, monkeypatch):
    backend = _Backend()
    spec = _spec("org/model")
    trained = Trained(spec=spec, backend=backend, loaded="the loaded model")
    (tmp_path / "file").write_text("x", encoding="utf-8")  # rank 0's write is refused: a file is in the way
    path = tmp_path / "file"
    monkeypatch.setattr(save_format, "world", lambda: World(rank=0, size=2))
    with pytest.raises(tk.CheckpointError, match="a file is in the way") as info:
        save_format.write_save(trained, path)
    assert backend.calls == [
        ("join", spec.training),
        ("gather", "the loaded model", spec.method),
        ("settle", info.value, f"save({str(path)!r})"),
    ]
    other = _Backend()  # another rank writes nothing: it gathers, then waits for rank 0's outcome
    monkeypatch.setattr(save_format, "world", lambda: World(rank=1, size=2))
    trained = Trained(spec=spec, backend=other, loaded="the loaded model")
    assert save_format.write_save(trained, path) == path
    assert other.calls == [
        ("join", spec.training),
        ("gather", "the loaded model", spec.method),
        ("settle", None, f"save({str(path)!r})"),
    ]
    assert (tmp_path / "file").read_text(encoding="utf-8") == "x"
