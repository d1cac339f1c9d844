"""tk.Training: defaults, ranges, combinations, and messages in the user's words."""

from __future__ import annotations

from typing import Any

import pytest

import tunekit as tk


def message(**options: Any) -> str:
    with pytest.raises(tk.ConfigError) as info:
        tk.Training(**options)
    return str(info.value)


def test_defaults() -> None:
    t = tk.Training()
    assert t.model_dump() == {
        "epochs": 3.0,
        "max_steps": None,
        "learning_rate": None,
        "batch_size": 8,
        "grad_accum": 1,
        "max_length": 1024,
        "seed": 42,
        "precision": "auto",
        "device": "auto",
        "lr_scheduler": "linear",
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "optimizer": "adamw",
        "optimizer_options": None,
        "activation_offload": False,
        "max_grad_norm": 1.0,
        "gradient_checkpointing": "auto",
        "log_every": 10,
        "eval_every": None,
        "eval_metrics": (),
        "save_every": None,
        "on_bad_rows": "error",
        "trust_remote_code": False,
        "report_to": (),  # a tuple: configs are frozen and hashable
        "resume": "auto",
        "keep_checkpoints": None,
        "force_resume": False,
        "on_nonfinite": "error",
        "auto_batch_size": False,
        "allow_pickle": False,
        "allow_control_tokens": False,
        "max_pixels": None,
        "min_pixels": None,
        "resize_images": True,
        "packing": "auto",
        "tokens_per_batch": None,
        "compile": False,
        "cache": True,
        "cache_dir": None,
        "data_workers": None,
        "distributed": None,
    }


def test_trust_remote_code_is_off_by_default() -> None:
    assert tk.Training().trust_remote_code is False


def test_epochs_is_a_float_and_accepts_ints() -> None:
    t = tk.Training(epochs=3, learning_rate=2e-4, batch_size=8, max_length=1024)
    assert t.epochs == 3.0 and isinstance(t.epochs, float)
    assert tk.Training(epochs=0.5).epochs == 0.5


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"epochs": 0}, "Training(epochs=0): epochs must be greater than 0"),
        ({"epochs": -1.0}, "Training(epochs=-1.0): epochs must be greater than 0"),
        ({"max_steps": 0}, "Training(max_steps=0): max_steps must be at least 1"),
        ({"learning_rate": 0}, "Training(learning_rate=0): learning_rate must be greater than 0"),
        ({"learning_rate": 1}, "Training(learning_rate=1): learning_rate must be less than 1"),
        ({"learning_rate": 5.0}, "Training(learning_rate=5.0): learning_rate must be less than 1"),
        ({"batch_size": 0}, "Training(batch_size=0): batch_size must be at least 1"),
        ({"grad_accum": 0}, "Training(grad_accum=0): grad_accum must be at least 1"),
        ({"max_length": 4}, "Training(max_length=4): max_length must be at least 8"),
        ({"seed": -1}, "Training(seed=-1): seed must be at least 0"),
        ({"warmup_ratio": 1.0}, "Training(warmup_ratio=1.0): warmup_ratio must be less than 1"),
        ({"warmup_ratio": -0.1}, "Training(warmup_ratio=-0.1): warmup_ratio must be at least 0"),
        ({"weight_decay": -0.1}, "Training(weight_decay=-0.1): weight_decay must be at least 0"),
        ({"max_grad_norm": 0}, "Training(max_grad_norm=0): max_grad_norm must be greater than 0"),
        ({"log_every": 0}, "Training(log_every=0): log_every must be at least 1"),
        ({"eval_every": 0}, "Training(eval_every=0): eval_every must be at least 1"),
        ({"save_every": 0}, "Training(save_every=0): save_every must be at least 1"),
        ({"batch_size": 2.5}, "Training(batch_size=2.5): batch_size must be a whole number"),
        ({"batch_size": "eight"}, "Training(batch_size='eight'): batch_size must be a whole number"),
        ({"epochs": "three"}, "Training(epochs='three'): epochs must be a number"),
        (
            {"gradient_checkpointing": "maybe"},
            "Training(gradient_checkpointing='maybe'): gradient_checkpointing must be True, False or 'auto'",
        ),
        ({"precision": "fp8"}, "Training(precision='fp8'): precision must be one of 'auto', 'fp32', 'bf16' or 'fp16'"),
        ({"on_bad_rows": "ignore"}, "Training(on_bad_rows='ignore'): on_bad_rows must be one of 'error' or 'skip'"),
        (
            {"lr_scheduler": "step"},
            "Training(lr_scheduler='step'): lr_scheduler must be one of 'linear', "
            "'cosine', 'constant' or 'constant_with_warmup'",
        ),
    ],
)
def test_out_of_range_values_name_the_value_and_the_limit(options: dict[str, Any], expected: str) -> None:
    assert message(**options) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", ["epochs", "learning_rate", "weight_decay", "max_grad_norm"])
def test_non_finite_numbers_are_rejected(name: str, value: float) -> None:
    assert message(**{name: value}) == (f"Training({name}={value!r}): {name} must be a finite number (not inf or nan)")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_devices(device: str) -> None:
    assert tk.Training(device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cuda:0:1", "CPU", "cuda0", " cpu", "tpu"])
def test_invalid_devices(device: str) -> None:
    assert message(device=device) == (
        f"Training(device={device!r}): device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', not {device!r}"
    )


def test_fp16_on_cpu_names_both_options_and_the_fix() -> None:
    assert message(precision="fp16", device="cpu") == (
        "Training(precision='fp16', device='cpu'): fp16 needs a GPU; use precision='fp32' or 'bf16' on CPU"
    )
    assert tk.Training(precision="fp16", device="cuda").precision == "fp16"
    assert tk.Training(precision="bf16", device="cpu").precision == "bf16"


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("learning_rat", "learning_rate"),
        ("lr", "learning_rate"),
        ("num_train_epochs", "epochs"),
        ("epoch", "epochs"),
        ("batchsize", "batch_size"),
        ("per_device_train_batch_size", "batch_size"),
        ("gradient_accumulation_steps", "grad_accum"),
        ("max_seq_length", "max_length"),
        ("bf16", "precision"),
        ("logging_steps", "log_every"),
        ("eval_steps", "eval_every"),
        ("save_steps", "save_every"),
        ("on_bad_row", "on_bad_rows"),
        ("Seed", "seed"),
    ],
)
def test_misspelled_or_foreign_option_suggests_the_nearest(typed: str, meant: str) -> None:
    assert message(**{typed: 1}) == f"Training({typed}=1): unknown option {typed!r}; did you mean {meant!r}?"


def test_design_doc_example_message() -> None:
    assert "did you mean 'learning_rate'" in message(learning_rat=1e-4)


def test_nothing_close_lists_every_option() -> None:
    listed = message(zzzz=1).split("valid options are ")[1].split(", ")
    assert listed == sorted(tk.Training.model_fields)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"packing": "yes"}, "packing must be True, False or 'auto'"),
        ({"tokens_per_batch": 512, "max_length": 1024}, "tokens_per_batch=512 is smaller than max_length=1024"),
        ({"tokens_per_batch": 4096, "packing": False}, "needs packing"),
    ],
)
def test_speed_options_are_checked(options: dict, message: str) -> None:
    with pytest.raises(tk.ConfigError, match=message):
        tk.Training(**options)


@pytest.mark.parametrize(
    ("foreign", "ours"),
    [("padding_free", "packing"), ("torch_compile", "compile"), ("max_tokens_per_batch", "tokens_per_batch")],
)
def test_speed_option_names_from_trl_suggest_ours(foreign: str, ours: str) -> None:
    with pytest.raises(tk.ConfigError, match=f"did you mean '{ours}'"):
        tk.Training(**{foreign: True})
