"""QLoRA planned without loading, and plans for a CUDA device this machine does not have.

``tuner.plan()`` builds a QLoRA base as the skeleton of its quantized load on the meta device and counts each weight
as bitsandbytes stores it. bitsandbytes also quantizes on the CPU, so the plan is checked here against the model
tunekit really loads (4-bit NF4 with double quantization, or LLM.int8()) and against a measured training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.testing import reverse_task

from .helpers import stored_bytes

pytest.importorskip("bitsandbytes")

# As test_plan_accuracy.py: the activations and the total within 2% of the measured step, each part within 6%.
TOLERANCE, PART_TOLERANCE = 0.02, 0.06


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has no CUDA device (what the plans for a GPU elsewhere are for), whatever the test machine has."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _quantized(path: Path, method: tk.Method, training: tk.Training, objective: tk.Objective | None = None) -> Any:
    """The model fit trains for ``method``, loaded quantized on the CPU through tunekit's own path (build_model:
    bitsandbytes' layers, the modules kept unquantized, peft's kbit preparation, LoRA)."""
    from tunekit._quiet import quiet
    from tunekit.backends.hf.models import build_model

    cpu = training.model_copy(update={"device": "cpu"})
    tuner = tk.Tuner(str(path), method=method, objective=objective or tk.SFT(), training=cpu)
    with quiet():
        model, *_ = build_model(tuner._spec(), precision="bf16")
    return model


@pytest.mark.parametrize(("quantize", "objective"), [("nf4", "sft"), ("int8", "sft"), ("nf4", "reward")])
def test_qlora_plan_counts_the_weights_bitsandbytes_stores(
    tiny_qwen: Path, no_cuda: None, quantize: str, objective: str
) -> None:
    """On a tied-embedding Qwen2: every projection quantized, the tied embedding and head kept (in fp32: peft's kbit
    preparation upcasts every 16-bit weight), LoRA in fp32; a reward model's new score head kept unquantized."""
    import bitsandbytes as bnb

    from tunekit._torch import count_parameters

    if objective == "reward":
        rows: list[dict[str, Any]] = [{"prompt": "reverse: 1 2", "chosen": "2 1", "rejected": "1 2"}] * 8
        goal: tk.Objective = tk.RewardModeling()
    else:
        rows, goal = reverse_task(8, seed=1), tk.SFT()
    method, training = tk.LoRA(r=4, quantize=quantize), tk.Training(device="cuda", batch_size=4, max_steps=1)
    tuner = tk.Tuner(str(tiny_qwen), method=method, objective=goal, training=training)
    plan = tuner.plan(rows)  # no CUDA here: planned for one, nothing loaded
    assert tuner._loaded is None and plan.device == "cuda" and plan.precision == "bf16"
    model = _quantized(tiny_qwen, method, training, goal)
    kind = bnb.nn.Linear4bit if quantize == "nf4" else bnb.nn.Linear8bitLt
    assert sum(isinstance(m, kind) for m in model.modules()) == 2 * 7  # every projection of both layers
    head = model.get_output_embeddings() if objective == "sft" else model.base_model.model.score
    assert not isinstance(head, kind)  # the LM head (or the score head) is not quantized
    assert plan.weights_bytes == stored_bytes(model)
    assert (plan.trainable_params, plan.total_params) == count_parameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert plan.gradients_bytes == sum(p.numel() * p.element_size() for p in trainable)
    # The parameters are the model's own (a 4-bit weight's values, not the bytes it is packed into).
    plain = tk.Tuner(str(tiny_qwen), method=tk.LoRA(r=4), objective=goal, training=training).plan(rows)
    assert (plan.trainable_params, plan.total_params) == (plain.trainable_params, plain.total_params)
    assert plan.weights_bytes < plain.weights_bytes


@pytest.mark.parametrize(
    ("n", "double", "storage"),
    [
        (64 * 50, True, "uint8"),
        (1000 * 3 + 7, True, "uint8"),  # an odd count, a partial block
        (255 * 256 + 1, True, "uint8"),  # more than 256 blocks: two blocks of scales
        (1000 * 3 + 7, False, "uint8"),
        (64 * 50, True, "bfloat16"),  # bitsandbytes cannot pack an odd byte count into bf16
    ],
)
def test_the_4bit_formula_equals_bitsandbytes_own_quantization(n: int, double: bool, storage: str) -> None:
    """parameter_bytes of a 4-bit weight not yet quantized (a plan's, on the meta device) equals the tensors
    bitsandbytes makes when it quantizes one (an odd count, a partial block, more than 256 blocks)."""
    import bitsandbytes as bnb
    import torch

    from tunekit.backends.hf.quantization import parameter_bytes

    dtype = getattr(torch, storage)

    def weight(device: str) -> Any:
        data = torch.randn(n, 1, dtype=torch.bfloat16, device=device)
        return bnb.nn.Params4bit(
            data, requires_grad=False, compress_statistics=double, quant_type="nf4", quant_storage=dtype
        )

    planned = parameter_bytes(weight("meta"))
    real = weight("cpu").to("cpu")  # moving it to a device quantizes it
    assert real.bnb_quantized and real.quant_state.nested is double
    state = real.quant_state
    tensors = [real, state.absmax, state.code] + (
        [state.offset, state.state2.absmax, state.state2.code] if double else []
    )
    assert planned == sum(t.untyped_storage().nbytes() for t in tensors) == parameter_bytes(real)


CASES = [("nf4", False), ("nf4", True), ("int8", False)]


@pytest.fixture(scope="module")
def small_qwen(tmp_path_factory: pytest.TempPathFactory, task_texts: list[str]) -> Path:
    """test_plan_accuracy.py's four-layer Qwen2 (0.8 M parameters)."""
    from tunekit.testing import tiny_model

    return tiny_model(
        tmp_path_factory.mktemp("plan-qlora"), arch="qwen2", texts=task_texts, hidden_size=128, num_layers=4,
        num_heads=4, intermediate_size=352,
    )  # fmt: skip


@pytest.mark.parametrize(("quantize", "checkpointing"), CASES, ids=[f"{q}-{'gc' if g else 'nogc'}" for q, g in CASES])
def test_qlora_plan_is_within_2_percent_of_a_measured_step(
    small_qwen: Path, quantize: str, checkpointing: bool
) -> None:
    """What a QLoRA step keeps, measured on the CPU (bitsandbytes' CPU kernels) as test_plan_accuracy.py measures
    the other methods: the exact terms exact, the activations and the total within 2%, each part within 6%."""
    import torch

    from tunekit._quiet import quiet
    from tunekit.backends.hf.memory import activation_parts
    from tunekit.backends.hf.memory_measure import measure_step
    from tunekit.backends.hf.models import build_model

    rows = reverse_task(12, seed=3)
    method = tk.LoRA(r=8, quantize=quantize)
    training = tk.Training(
        device="cpu", batch_size=len(rows), max_steps=1, gradient_checkpointing=checkpointing, precision="bf16"
    )
    model = _quantized(small_qwen, method, training)
    tuner = tk.Tuner(str(small_qwen), method=tk.LoRA(r=8), training=training)  # tokenises as the QLoRA run does
    spec = tk.Tuner(str(small_qwen), method=method, training=training)._spec()
    with quiet():
        measured = measure_step(model, tuner.tokenizer, tuner.prepare(rows), training, checkpointing=checkpointing)
        skeleton, *_ = build_model(spec, precision="bf16", meta=True)

    def parts(m: Any) -> dict[str, int]:
        return activation_parts(
            m, tokens=measured.tokens, padded_length=measured.padded_length, checkpointing=checkpointing,
            precision="bf16", device=torch.device("cpu"),
        )  # fmt: skip

    estimated = parts(skeleton)
    assert estimated == parts(model)  # the meta-device skeleton has the loaded model's structure and dtypes
    planned = sum(estimated.values())
    ratios = {
        "saved": (estimated["saved"] + estimated["autocast"]) / measured.saved,
        "loss": estimated["loss"] / measured.loss,
        "activations": planned / measured.activations,
        "total": (measured.weights + measured.gradients + measured.optimizer + planned) / measured.total,
    }
    assert all(abs(ratios[k] - 1) <= TOLERANCE for k in ("activations", "total")), ratios
    assert all(abs(ratios[k] - 1) <= PART_TOLERANCE for k in ("saved", "loss")), ratios


def test_a_plan_for_a_cuda_device_this_machine_does_not_have(tiny_llama: Path, no_cuda: None) -> None:
    rows = reverse_task(8, seed=1)
    tuner = tk.Tuner(str(tiny_llama), training=tk.Training(device="cuda", batch_size=4))
    plan = tuner.plan(rows)
    assert (plan.device, plan.precision) == ("cuda", "bf16")  # precision="auto" on a CUDA GPU: bf16
    assert plan.device_memory_bytes is None and plan.fits is None and plan.gradient_checkpointing is False
    assert "device memory  - (not known here: plan(data, device_memory_gib=...))" in str(plan)
    small = tuner.plan(rows, device_memory_gib=plan.total_bytes / 2**30 * 0.9)
    assert small.fits is False and small.device_memory_bytes == int(plan.total_bytes * 0.9)
    assert tuner.plan(rows, device_memory_gib=24).fits is True
    # gradient_checkpointing="auto" turns it on where the run would not fit the memory given, as fit does on CUDA.
    auto = tk.Tuner(str(tiny_llama), training=tk.Training(device="cuda", batch_size=4, gradient_checkpointing="auto"))
    assert auto.plan(rows, device_memory_gib=plan.total_bytes / 2**30 * 0.9).gradient_checkpointing is True
    assert auto.plan(rows, device_memory_gib=24).gradient_checkpointing is False
    with pytest.raises(tk.ConfigError, match="device_memory_gib=-1"):
        tuner.plan(rows, device_memory_gib=-1)
    with pytest.raises(tk.IncompatibleError, match="no CUDA device"):
        tuner.fit(rows)  # fit still refuses it


def test_qlora_on_the_cpu_is_refused_by_plan_as_by_fit(tiny_llama: Path, no_cuda: None) -> None:
    tuner = tk.Tuner(str(tiny_llama), method=tk.LoRA(quantize="nf4"), training=tk.Training(device="cpu"))
    with pytest.raises(tk.IncompatibleError, match=r"needs a CUDA GPU.*Training\(device='cuda'\)"):
        tuner.plan(reverse_task(4))


def test_tunekit_plan_for_a_gpu_from_the_command_line(tmp_path: Path, no_cuda: None, capsys: Any) -> None:
    from tunekit.cli import main
    from tunekit.testing import write_jsonl

    write_jsonl(reverse_task(16), tmp_path / "train.jsonl")
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny\nmethod: {name: lora, quantize: nf4}\ndata: train.jsonl\n", encoding="utf-8")
    assert main(["plan", str(config), "training.device=cuda", "--device-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert "on cuda (bf16)" in out and "device memory  24.00 GiB" in out and "fits           yes" in out
    assert main(["plan", str(config), "--device-memory=0.0001", "--training.device", "cuda"]) == 0
    assert "fits           NO" in capsys.readouterr().out
    assert main(["plan", str(config), "--device-memory", "lots", "training.device=cuda"]) == 2
    assert "--device-memory 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("method", [tk.LoRA(r=4), tk.LoRA(r=4, quantize="nf4")], ids=["lora", "qlora"])
def test_a_plans_model_holds_no_values(tiny_qwen: Path, no_cuda: None, method: tk.Method) -> None:
    """The embedding matrices a plan reads from a local checkpoint (for template tokens the base never trained) go
    back to the meta device once read: a plan of a cached 72B holds no weights, and none upcast to fp32 for QLoRA."""
    from tunekit._quiet import quiet
    from tunekit.backends.hf.models import build_model

    spec = tk.Tuner(str(tiny_qwen), method=method, training=tk.Training(device="cuda"))._spec()
    with quiet():
        model, *_ = build_model(spec, precision="bf16", meta=True)
    assert all(p.is_meta for p in model.parameters())
