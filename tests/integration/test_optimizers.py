"""``Training(optimizer=...)`` on the CPU: each optimizer that runs here trains the toy task, resumes exactly from
its checkpoint, and ``plan()`` counts its state to the byte.

One run of each optimizer (full fine-tuning of the tiny Llama on the reverse task, checkpoint at step 8) is the
reference; a second run resumes from its checkpoint-8 in a fresh Tuner and must see the same losses at steps 9-16
and end at the same weights (1e-6), which needs every part of the optimizer's state saved and restored (GaLore's
and APOLLO's projections, Muon's two inner optimizers, bitsandbytes' quantized states). The state is measured in
the optimizer.pt the optimizer wrote (loaded as transformers loads it, ``weights_only=True``), each storage once.
"""

from __future__ import annotations

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf.checkpoints import MANIFEST
from tunekit.testing import reverse_task

from .helpers import cpu

DATA = reverse_task(32, seed=3)  # 4 batches of 8 an epoch

# name -> (learning rate, options): tuned for the toy task, 16 steps
CPU_OPTIMIZERS = {
    "adamw": (1e-2, None),
    "adamw_8bit": (1e-2, None),
    "adafactor": (1e-2, None),
    "lion": (2e-3, None),
    "galore": (1e-2, tk.GaLoreOptions(rank=8, update_proj_gap=5)),  # a new projection at steps 5, 10, 15
    "apollo": (1e-2, tk.APOLLOOptions(rank=8, update_proj_gap=5)),
    "muon": (1e-2, None),
    "sgd": (1e-1, tk.SGDOptions(momentum=0.9, nesterov=True)),
}


def training(name, **kw):
    lr, options = CPU_OPTIMIZERS.get(name, (1e-2, None))
    return cpu(
        optimizer=name, optimizer_options=options, learning_rate=lr, max_steps=16, batch_size=8, save_every=8,
        precision="fp32", lr_scheduler="constant", **kw,
    )  # fmt: skip


def tuner(model, out, name, **kw):
    return tk.Tuner(model, method=tk.Full(), training=training(name, **kw), output_dir=out, progress=False)


def losses(result):
    return {h["step"]: h["loss"] for h in result.history if "loss" in h}


def weights(t):
    return {k: v.detach().clone() for k, v in t.model.named_parameters() if v.requires_grad}


def state_bytes(path):
    """Bytes of the tensors of a saved optimizer state, each storage once (bitsandbytes shares its code books)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state"]
    seen = {}

    def walk(value):
        if isinstance(value, torch.Tensor):
            seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(state)
    return sum(seen.values())


@pytest.mark.parametrize("name", list(CPU_OPTIMIZERS))
def test_optimizer_learns_resumes_exactly_and_plan_counts_its_state(name, tiny_llama, tmp_path):
    ref = tuner(tiny_llama, tmp_path / "ref", name)
    plan = ref.plan(DATA)
    assert plan.optimizer == name
    result = ref.fit(DATA)
    got = losses(result)
    assert result.steps == 16
    assert got[16] < 0.7 * got[1], f"{name}: loss {got[1]:.3f} -> {got[16]:.3f}, not 30% lower"

    # plan() is the state the optimizer holds, to the byte.
    checkpoint = tmp_path / "ref" / "checkpoint-8"
    assert (checkpoint / MANIFEST).is_file()
    assert plan.optimizer_bytes == state_bytes(checkpoint / "optimizer.pt")

    # A fresh Tuner (a new process would do this) resumed from checkpoint-8 continues exactly.
    again = tuner(tiny_llama, tmp_path / "resumed", name, resume=str(checkpoint))
    resumed = again.fit(DATA)
    after = {s: v for s, v in losses(resumed).items() if s > 8}
    assert sorted(after) == list(range(9, 17))
    assert after == pytest.approx({s: got[s] for s in after}, rel=0, abs=1e-6)
    ref_weights, new_weights = weights(ref), weights(again)
    assert ref_weights.keys() == new_weights.keys()
    for k in ref_weights:
        torch.testing.assert_close(new_weights[k], ref_weights[k], rtol=0, atol=1e-6, msg=k)


def test_optimizers_differ_in_memory_as_documented(tiny_llama):
    """The state of each optimizer relative to AdamW's on the same model, from plan() (equal to the measured state,
    above): 8-bit AdamW about a quarter (the embeddings stay 32-bit), SGD and Lion a half, Adafactor a few percent."""
    sizes = {
        name: tk.Tuner(tiny_llama, method=tk.Full(), training=training(name)).plan(DATA).optimizer_bytes
        for name in [*CPU_OPTIMIZERS, "paged_adamw_8bit"]
    }
    adamw = sizes["adamw"]
    assert sizes["paged_adamw_8bit"] == sizes["adamw_8bit"] < 0.6 * adamw
    assert sizes["sgd"] == sizes["lion"] == pytest.approx(adamw / 2, rel=1e-3)
    assert sizes["adafactor"] < 0.05 * adamw
    assert sizes["galore"] < adamw and sizes["apollo"] < adamw and sizes["muon"] < adamw
    plain_sgd = training("sgd").model_copy(update={"optimizer_options": tk.SGDOptions(momentum=0.0)})
    assert tk.Tuner(tiny_llama, method=tk.Full(), training=plain_sgd).plan(DATA).optimizer_bytes == 0


def test_activation_offload_counts_two_layers_in_flight(tiny_llama):
    """plan()'s activations under offloading (CUDA runs; the formula is device-free): two layers' saved tensors on
    the device instead of every layer's, with or without checkpointing."""
    from tunekit.backends.hf.memory import activation_parts

    model = tk.Tuner(tiny_llama, method=tk.Full(), training=cpu()).model
    layers = model.config.num_hidden_layers
    assert layers == 2  # the tiny model: offloading keeps both, so nothing changes

    def saved(**kw):
        return activation_parts(model, tokens=512, padded_length=0, precision="fp32", device=torch.device("cpu"), **kw)[
            "saved"
        ]

    assert saved(checkpointing=False, offload=True) == saved(checkpointing=False)
    model.config.num_hidden_layers = 8  # as if deeper: the formula reads the count from the config
    try:
        full, offloaded = saved(checkpointing=False), saved(checkpointing=False, offload=True)
        gc, gc_offloaded = saved(checkpointing=True), saved(checkpointing=True, offload=True)
    finally:
        model.config.num_hidden_layers = layers
    assert offloaded < full and gc_offloaded < gc
