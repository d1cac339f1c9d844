"""``Training(optimizer=..., optimizer_options=..., activation_offload=...)``: validation in the user's words, and the
refusals that come before any weights load (a missing package, a device the optimizer cannot use)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

import pytest
import yaml

import tunekit as tk
from tunekit.optimizers import OPTIMIZERS, OPTIONS

ROWS = [{"prompt": "reverse: 1 2", "completion": "2 1"}] * 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "adamw8bit"}, r"unknown optimizer 'adamw8bit'; did you mean 'adamw_8bit'\?"),
        ({"optimizer": "galore_adamw"}, r"did you mean 'galore'\?"),
        ({"optimizer": "paged_adamw"}, r"did you mean 'paged_adamw_8bit'\?"),
        ({"optimizer": "adam"}, r"did you mean 'adamw'\?"),
        ({"optim": "sgd"}, r"unknown option 'optim'; did you mean 'optimizer'\?"),
        ({"optimizer": "muon", "optimizer_options": {"ns_step": 3}}, r"MuonOptions\(ns_step=3\).*'ns_steps'\?"),
        ({"optimizer": "galore", "optimizer_options": {"r": 8}}, r"unknown option 'r'; did you mean 'rank'\?"),
        ({"optimizer": "galore", "optimizer_options": tk.MuonOptions()}, r"takes tk.GaLoreOptions, not MuonOptions; "),
        ({"optimizer_options": tk.SGDOptions()}, r"optimizer='adamw' takes no options; set optimizer='sgd' for tk.SGD"),
        ({"optimizer": "sgd", "optimizer_options": {"momentum": 0, "nesterov": True}}, r"nesterov=True needs momentum"),
        ({"optimizer": "apollo", "optimizer_options": {"rank": 0}}, r"rank must be at least 1"),
        ({"activation_offload": True, "device": "cpu"}, r"activation_offload=True .* drop activation_offload"),
    ],
)
def test_bad_optimizer_settings_name_the_fix(kwargs, message):
    with pytest.raises(tk.ConfigError, match=message):
        tk.Training(**kwargs)


def test_options_round_trip_through_yaml_and_default_per_optimizer():
    t = tk.Training(
        optimizer="galore", optimizer_options=tk.GaLoreOptions(rank=16, target_modules=["q_proj", "v_proj"])
    )
    again = tk.Training.from_dict(yaml.safe_load(yaml.safe_dump(t.model_dump(mode="json"))))
    assert again == t and isinstance(again.optimizer_options, tk.GaLoreOptions)
    assert again.optimizer_options.target_modules == ("q_proj", "v_proj")
    assert tk.Training().optimizer == "adamw" and tk.Training().optimizer_options is None
    assert set(OPTIONS) <= set(OPTIMIZERS)
    for name, cls in OPTIONS.items():  # each options class is for its own optimizer only
        assert tk.Training(optimizer=name, optimizer_options=cls()).optimizer_options == cls()
        other = next(o for o in OPTIMIZERS if o != name)
        with pytest.raises(tk.ConfigError):
            tk.Training(optimizer=other, optimizer_options=cls())


def _hide(monkeypatch, module):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == module else real(n, *a))


@pytest.mark.parametrize(
    ("optimizer", "module", "fix"),
    [
        ("galore", "galore_torch", "pip install 'tunekit[galore]'"),
        ("apollo", "apollo_torch", "pip install 'tunekit[apollo]'"),
        ("adamw_8bit", "bitsandbytes", "pip install bitsandbytes"),
        ("lion", "bitsandbytes", "pip install bitsandbytes"),
    ],
)
def test_a_missing_package_fails_before_the_weights_load(tiny_llama, monkeypatch, optimizer, module, fix):
    _hide(monkeypatch, module)
    tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=tk.Training(device="cpu", optimizer=optimizer))
    with pytest.raises(tk.MissingDependencyError, match=rf"needs the {module} package.*{re.escape(fix)}"):
        tuner.fit(ROWS)
    assert tuner._loaded is None  # nothing was loaded


def test_device_refusals_come_before_the_weights_load(tiny_llama, monkeypatch):
    cases = [
        (tk.Training(device="cpu", optimizer="paged_adamw_8bit"), r"needs CUDA.*use optimizer='adamw_8bit'"),
        (tk.Training(device="auto", activation_offload=True), r"no CUDA device here.*drop activation_offload"),
    ]
    for training, message in cases:
        tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=training)
        with pytest.raises(tk.IncompatibleError, match=message):
            tuner.fit(ROWS)
        assert tuner._loaded is None
    # bitsandbytes before 0.50 has no CPU kernels for its optimizers
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "0.45.0" if n == "bitsandbytes" else real(n))
    tuner = tk.Tuner(tiny_llama, method=tk.Full(), training=tk.Training(device="cpu", optimizer="adamw_8bit"))
    with pytest.raises(tk.IncompatibleError, match=r"bitsandbytes 0.50 or newer \(installed: 0.45\)"):
        tuner.fit(ROWS)
    assert tuner._loaded is None


def test_low_rank_projection_optimizers_refuse_adapters(tiny_llama):
    tuner = tk.Tuner(tiny_llama, method=tk.LoRA(), training=tk.Training(device="cpu", optimizer="galore"))
    with pytest.raises(tk.IncompatibleError, match=r"LoRA trains low-rank adapters already.*tk.Full\(\)"):
        tuner.fit(ROWS)
    assert tuner._loaded is None


def test_optimizers_that_need_whole_matrices_refuse_sharding_engines(monkeypatch):
    import torch

    from tunekit.backends.hf import optimizers
    from tunekit.distributed import World

    monkeypatch.setattr(optimizers, "world", lambda: World(rank=0, local_rank=0, size=2))
    cpu = torch.device("cpu")
    for name in ("galore", "apollo", "muon"):
        with pytest.raises(tk.IncompatibleError, match=r"shards them across processes; use tk.DDP\(\)"):
            optimizers.check_optimizer(tk.Training(optimizer=name, distributed=tk.FSDP()), cpu, tk.Full())
        optimizers.check_optimizer(tk.Training(optimizer=name, distributed=tk.DDP()), cpu, tk.Full())  # fine
    offload = tk.Training(optimizer="adafactor", distributed=tk.DeepSpeed(stage=2, offload="optimizer"))
    with pytest.raises(tk.IncompatibleError, match=r"its own CPU AdamW; use optimizer='adamw'"):
        optimizers.check_optimizer(offload, cpu, tk.Full())
