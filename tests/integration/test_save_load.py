"""Save and load: tk.load and plain peft give the trained model's logits; loaded tuners generate and train on."""

from __future__ import annotations

import json

import pytest
import torch

import tunekit as tk
from tunekit import _fs
from tunekit.testing import reverse_task

from .helpers import cpu, heldout_loss

IDS = torch.tensor([[3, 10, 11, 12, 13, 14, 4, 20, 21]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def trained_lora(tiny_llama_init02, tmp_path_factory):
    # The larger-scale init: on it an adapter (frozen head) learns the toy task, so training further shows.
    tuner = tk.Tuner(
        tiny_llama_init02, method=tk.LoRA(r=8), training=cpu(max_steps=15, learning_rate=1e-2, batch_size=8)
    )
    tuner.fit(reverse_task(64, seed=5))
    path = tuner.save(tmp_path_factory.mktemp("lora") / "adapter")
    return tuner, path


def test_lora_save_writes_peft_adapter_and_manifest(trained_lora, tiny_llama_init02):
    tuner, path = trained_lora
    files = {p.name for p in path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tunekit.json", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    manifest = json.loads((path / "tunekit.json").read_text(encoding="utf-8"))
    assert manifest["method"] == {"name": "LoRA", "options": tk.LoRA(r=8).model_dump(mode="json")}
    assert manifest["objective"]["name"] == "SFT"
    assert manifest["base_model"] == str(tiny_llama_init02.resolve())
    assert manifest["template"]["end_of_turn"] == "<|im_end|>"
    assert manifest["tunekit_version"] == tk.__version__
    # The run's training, less `resume` (it belongs to the run that saved, not to whoever loads the save).
    assert manifest["training"] == tuner.training.model_dump(mode="json", exclude={"resume"})
    assert "resume" not in manifest["training"] and manifest["vocab_size"] == len(tuner.tokenizer)
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"tunekit.json"}
    assert set(manifest["files"]) == on_disk  # every file but the manifest, each with its size and sha256
    for name, meta in manifest["files"].items():
        assert meta == {"size": (path / name).stat().st_size, "sha256": _fs.sha256_file(path / name)}


def test_lora_tk_load_gives_same_logits_and_text(trained_lora):
    tuner, path = trained_lora
    again = tk.load(path)
    assert isinstance(again.method, tk.LoRA)
    torch.testing.assert_close(_logits(again.model), _logits(tuner.model), rtol=0, atol=1e-5)
    prompts = [r["prompt"] for r in reverse_task(4, seed=9)]
    assert again.generate(prompts, max_new_tokens=8) == tuner.generate(prompts, max_new_tokens=8)


def test_lora_plain_peft_reload_gives_same_logits(trained_lora, tiny_llama_init02):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuner, path = trained_lora
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_init02)
    plain = PeftModel.from_pretrained(base, path)
    torch.testing.assert_close(_logits(plain), _logits(tuner.model), rtol=0, atol=1e-5)


def test_loaded_lora_trains_further(trained_lora):
    tuner, path = trained_lora
    train, held = reverse_task(32, seed=6), reverse_task(32, seed=50)
    again = tk.load(path, training=cpu(max_steps=10, learning_rate=1e-2, batch_size=8))
    # It starts where the save left off (the saved adapter, not a fresh one) ...
    before, held_before = heldout_loss(again, train), heldout_loss(again, held)
    assert before == pytest.approx(heldout_loss(tuner, train), abs=1e-5)
    result = again.fit(train)
    assert result.steps == 10
    # ... and learns: the loss on the data it trains on falls by a third (0.64-0.67 of before over seeds 0-4, 1.0
    # with a zero learning rate), and on held-out rows of the same task by more than 5% (0.74-0.82 of before).
    after, held_after = heldout_loss(again, train), heldout_loss(again, held)
    assert after < 0.8 * before, (before, after)
    assert held_after < 0.95 * held_before, (held_before, held_after)


def test_full_save_load_round_trip(tiny_llama, tmp_path):
    tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=cpu(max_steps=5, learning_rate=3e-3, batch_size=8))
    tuner.fit(reverse_task(32, seed=5))
    path = tuner.save(tmp_path / "full")
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    again = tk.load(path)
    assert isinstance(again.method, tk.Full)
    torch.testing.assert_close(_logits(again.model), _logits(tuner.model), rtol=0, atol=1e-5)


def test_builtin_template_adapter_round_trip(tiny_base_no_template, tmp_path):
    """New template tokens resize the embeddings; the saved adapter carries their trained rows."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuner = tk.Tuner(tiny_base_no_template, method=tk.LoRA(r=8), training=cpu(max_steps=10, learning_rate=1e-2))
    tuner.fit(reverse_task(32, seed=5))
    path = tuner.save(tmp_path / "adapter")
    again = tk.load(path)
    torch.testing.assert_close(_logits(again.model), _logits(tuner.model), rtol=0, atol=1e-5)
    # Plain peft: resize the base to the saved tokenizer first (documented in the save guide).
    base = AutoModelForCausalLM.from_pretrained(tiny_base_no_template)
    base.resize_token_embeddings(len(AutoTokenizer.from_pretrained(path)))
    plain = PeftModel.from_pretrained(base, path)
    torch.testing.assert_close(_logits(plain), _logits(tuner.model), rtol=0, atol=1e-5)


def test_save_refuses_to_clobber_foreign_directory(trained_lora, tmp_path):
    tuner, _ = trained_lora
    (tmp_path / "mine.txt").write_text("important", encoding="utf-8")
    with pytest.raises(tk.CheckpointError, match="not empty"):
        tuner.save(tmp_path)
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == "important"


def test_save_over_previous_save_replaces_it(trained_lora, tmp_path):
    from safetensors.torch import load_file

    _, path = trained_lora
    tuner = tk.load(path, training=cpu(max_steps=3, learning_rate=1e-2, batch_size=8))  # its own copy to train on
    tuner.save(tmp_path / "a")
    first_logits = _logits(tuner.model).clone()
    first_weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    first_manifest = (tmp_path / "a" / "tunekit.json").read_bytes()

    tuner.fit(reverse_task(32, seed=6))  # the second save holds a different adapter
    second_logits = _logits(tuner.model).clone()
    assert not torch.allclose(first_logits, second_logits, rtol=0, atol=1e-4)
    tuner.save(tmp_path / "a")
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp or old directories left behind

    # The files on disk are the second model's: its weights, and a load gives its logits, not the first's.
    second_weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert second_weights.keys() == first_weights.keys()
    assert any(not torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    live = {name.replace(".default", ""): tensor for name, tensor in tuner.model.state_dict().items()}
    assert second_weights.keys() <= live.keys()
    for key, tensor in second_weights.items():
        torch.testing.assert_close(tensor, live[key], rtol=0, atol=0)
    loaded = tk.load(tmp_path / "a")
    torch.testing.assert_close(_logits(loaded.model), second_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(_logits(loaded.model), first_logits, rtol=0, atol=1e-4)
    assert (tmp_path / "a" / "tunekit.json").exists() and (tmp_path / "a" / "tunekit.json").read_bytes() != b""
    assert json.loads(first_manifest)["method"] == json.loads((tmp_path / "a" / "tunekit.json").read_bytes())["method"]


def test_load_errors(tmp_path):
    with pytest.raises(tk.CheckpointError, match="no such directory"):
        tk.load(tmp_path / "missing")
    with pytest.raises(tk.CheckpointError, match="not a tunekit save"):
        tk.load(tmp_path)


def test_failed_save_keeps_the_previous_one(trained_lora, tmp_path, monkeypatch):
    import os

    import tunekit.save_format as save_format

    tuner, _ = trained_lora
    target = tuner.save(tmp_path / "adapter")
    before = sorted(p.name for p in target.iterdir())
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) >= 2 and str(src).split(os.sep)[-1].startswith(".adapter.tmp-"):
            raise PermissionError("locked by an indexer")  # the new save cannot be moved into place
        return real_replace(src, dst)

    monkeypatch.setattr(save_format.os, "replace", flaky_replace)
    monkeypatch.setattr(save_format._fs.time, "sleep", lambda s: None)
    monkeypatch.delenv("TUNEKIT_FS_RETRY_SECONDS", raising=False)  # the default window, named in the message
    with pytest.raises(tk.CheckpointError) as info:
        tuner.save(target)
    assert str(info.value) == (  # the error's own words as the reason, what to do, and what is kept
        f"save({str(target)!r}): could not write the save (locked by an indexer): a file is locked or not writable "
        "(another program, antivirus, a read-only directory); retry, or save elsewhere (tunekit waited 10 s for it; if "
        "antivirus or a sync client (OneDrive) holds new files, exclude the folder from real-time scanning or wait "
        "longer with TUNEKIT_FS_RETRY_SECONDS=30); the previous save there is intact"
    )
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == before  # the old save is back, whole
    tk.load(target)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["method"].update(options={"r": 0}),
        lambda m: m.update(method="LoRA"),
        lambda m: m.pop("template"),
    ],
    ids=["invalid-option", "wrong-type", "missing-key"],
)
def test_corrupt_manifest_is_a_checkpoint_error(trained_lora, tmp_path, edit):
    import shutil

    _, path = trained_lora
    copy = shutil.copytree(path, tmp_path / "copy")
    manifest = json.loads((copy / "tunekit.json").read_text(encoding="utf-8"))
    edit(manifest)
    (copy / "tunekit.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(tk.CheckpointError, match=r"tunekit\.json"):
        tk.load(copy)
