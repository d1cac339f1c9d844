"""Safe loading: safetensors and JSON only unless the user opts in; checkpoint state read with weights_only."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf.checkpoints import MANIFEST
from tunekit.testing import reverse_task

from .helpers import cpu

IDS = torch.tensor([[3, 10, 11, 12, 13, 14, 4]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_pickled_model_weights_load_only_when_allowed(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    pickled = shutil.copytree(tiny_llama, tmp_path / "pickled")
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(tk.CheckpointError, match=r"pickle \(pytorch_model.bin\).*allow_pickle=True"):
        tk.Tuner(pickled, training=cpu()).model  # noqa: B018
    allowed = tk.Tuner(pickled, method=tk.Full(), training=cpu(allow_pickle=True))
    reference = tk.Tuner(tiny_llama, method=tk.Full(), training=cpu())
    torch.testing.assert_close(logits(allowed.model), logits(reference.model), rtol=0, atol=0)


def test_pickled_adapter_is_refused_unless_allowed(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=2, batch_size=4, learning_rate=1e-2))
    tuner.fit(reverse_task(8))
    path = tuner.save(tmp_path / "adapter")
    torch.save(load_file(str(path / "adapter_model.safetensors")), path / "adapter_model.bin")
    (path / "adapter_model.safetensors").unlink()
    manifest = json.loads((path / "tunekit.json").read_text(encoding="utf-8"))
    manifest.pop("files")  # as a hand-converted save would look
    (path / "tunekit.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(tk.CheckpointError, match=r"lists no files, so the save cannot be checked.*verify=False"):
        tk.load(path)
    with pytest.raises(tk.CheckpointError, match=r"adapter weights are stored with pickle \(adapter_model.bin\)"):
        tk.load(path, verify=False).model  # noqa: B018
    again = tk.load(path, verify=False, training=cpu(allow_pickle=True))
    torch.testing.assert_close(logits(again.model), logits(tuner.model), rtol=0, atol=1e-6)


def test_a_save_with_a_missing_or_truncated_file_is_refused(tiny_llama, tmp_path):
    tuner = tk.Tuner(tiny_llama, training=cpu(max_steps=1, batch_size=4))
    tuner.fit(reverse_task(4))
    path = tuner.save(tmp_path / "adapter")
    manifest = json.loads((path / "tunekit.json").read_text(encoding="utf-8"))
    assert "adapter_model.safetensors" in manifest["files"]
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(tk.CheckpointError, match=r"incomplete or corrupt: adapter_model.safetensors is \d+ bytes"):
        tk.load(path)


def test_resume_checks_sha256_before_loading_and_reads_state_with_weights_only(tiny_llama, tmp_path, monkeypatch):
    class Stop(tk.Hook):
        def on_step_end(self, ctx):
            if ctx.step == 2:
                raise RuntimeError("stop")

    training = cpu(max_steps=4, batch_size=4, save_every=2)
    with pytest.raises(tk.TrainingError):
        tk.Tuner(tiny_llama, training=training, output_dir=tmp_path, hooks=[Stop()]).fit(reverse_task(8))
    loads = []
    real = torch.load

    def record(*args, **kwargs):
        loads.append((str(args[0]), kwargs.get("weights_only")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", record)
    optimizer = tmp_path / "checkpoint-2" / "optimizer.pt"
    good = optimizer.read_bytes()
    optimizer.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # tampered, same size
    with pytest.raises(tk.CheckpointError, match=r"optimizer.pt does not match its sha256"):
        # No output_dir for this run: no save_every either (its checkpoints would be deleted at the end).
        resume = training.model_copy(update={"resume": str(optimizer.parent), "save_every": None})
        tk.Tuner(tiny_llama, training=resume).fit(reverse_task(8))
    assert loads == []  # refused before anything was unpickled
    optimizer.write_bytes(good)
    result = tk.Tuner(tiny_llama, training=training, output_dir=tmp_path).fit(reverse_task(8))
    assert result.steps == 4
    names = {name.rsplit("/", 1)[-1] for name, _ in loads}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= names
    assert all(weights_only is True for _, weights_only in loads), loads
    assert (tmp_path / "checkpoint-4" / MANIFEST).is_file()


def test_trust_remote_code_is_off_unless_asked():
    assert tk.Training().trust_remote_code is False and tk.Training().allow_pickle is False
