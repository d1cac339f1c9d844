"""``tuner.plan()``'s memory estimate vs one measured training step on the CPU, per configuration.

For each of LoRA / full fine-tuning x packed / padded batches x gradient checkpointing off / on x
fp32 / bf16 autocast, plus full fine-tuning of a model held in bf16 (as the GPU benchmark trains
it), LoRA on q_proj / v_proj only and tk.Freeze of the last layer: plan() (run on the meta device,
before anything is loaded) is compared with the step measured by
``tunekit.backends.hf.memory_measure``: the tensors autograd saves for the backward, storage by
storage, the transient peak of the LM head's chunked loss from the allocator's records, the
``.grad`` tensors and AdamW's state after one update.

Prints one JSON line: per configuration, estimated and measured bytes of ``saved`` (what the forward
keeps for the backward), ``loss``, ``activations`` (their sum) and ``total``, with est/measured ratios;
then the worst ratio. Target: every activations and total ratio within 25% of 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _util import emit, setup, workdir

TARGET = 0.25


def configs(quick: bool) -> list[tuple[str, str, bool, bool, str]]:
    """(name, method, packing, checkpointing, precision); precision 'bf16-weights': a bf16 model object."""
    out = []
    for method in ("lora", "full"):
        for packing in (True, False):
            for gc in (False, True):
                for precision in ("fp32", "bf16"):
                    name = f"{method}-{'packed' if packing else 'padded'}-{'gc' if gc else 'nogc'}-{precision}"
                    out.append((name, method, packing, gc, precision))
    out += [("full-packed-nogc-bf16-weights", "full", True, False, "bf16-weights")]
    out += [("full-packed-gc-bf16-weights", "full", True, True, "bf16-weights")]
    out += [("lora-qv-packed-nogc-bf16", "lora-qv", True, False, "bf16")]  # LoRA on q_proj and v_proj only
    out += [("freeze-packed-nogc-fp32", "freeze", True, False, "fp32")]  # only the last layer trains
    return out[::5] if quick else out


def run_one(path: Path, rows: list[dict[str, str]], method: str, packing: bool, gc: bool, precision: str) -> dict:
    import torch

    import tunekit as tk
    from tunekit._quiet import quiet
    from tunekit.backends.hf.memory import activation_parts
    from tunekit.backends.hf.memory_measure import measure_step

    training = tk.Training(
        device="cpu",
        batch_size=len(rows),  # the whole data set is one micro-batch, planned and measured alike
        max_steps=1,
        packing=packing,
        gradient_checkpointing=gc,
        precision="bf16" if precision.startswith("bf16") else "fp32",
    )

    def tuner() -> Any:
        m = {
            "full": tk.Full(),
            "lora": tk.LoRA(r=16, alpha=32),
            "lora-qv": tk.LoRA(r=16, alpha=32, target_modules=["q_proj", "v_proj"]),
            "freeze": tk.Freeze(last_layers=1),
        }[method]
        if precision == "bf16-weights":
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
            return tk.Tuner(model, tokenizer=str(path), method=m, training=training)
        return tk.Tuner(str(path), method=m, training=training)

    with quiet():
        plan = tuner().plan(rows)
        t = tuner()
        measured = measure_step(t.model, t.tokenizer, t.prepare(rows), training, checkpointing=gc)
    parts = activation_parts(
        t.model,
        tokens=measured.tokens,
        padded_length=measured.padded_length,
        checkpointing=gc,
        precision=training.precision,
        device=torch.device("cpu"),
    )
    est = {
        "saved": parts["saved"] + parts["autocast"],
        "loss": parts["loss"],
        "activations": plan.activations_bytes,
        "total": plan.total_bytes,
    }
    meas = {"saved": measured.saved, "loss": measured.loss, "activations": measured.activations}
    meas["total"] = measured.total
    exact = (plan.weights_bytes, plan.gradients_bytes, plan.optimizer_bytes) == (
        measured.weights,
        measured.gradients,
        measured.optimizer,
    )
    return {
        "tokens": measured.tokens,
        "exact_terms_equal": exact,
        "weights": measured.weights,
        "gradients": measured.gradients,
        "optimizer": measured.optimizer,
        "estimated": est,
        "measured": meas,
        "ratio": {k: round(est[k] / meas[k], 3) for k in est},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256, help="hidden size of the Qwen2 model built locally")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--rows", type=int, default=24, help="examples in the one micro-batch")
    ap.add_argument("--quick", action="store_true", help="a few of the configurations (the smoke test)")
    a = ap.parse_args()
    setup()
    from tunekit.testing import reverse_task, tiny_model

    rows = reverse_task(a.rows, seed=3)
    texts = [r["prompt"] + " " + r["completion"] for r in reverse_task(300, seed=100)]
    path = tiny_model(
        workdir() / "model",
        arch="qwen2",
        texts=texts,
        hidden_size=a.hidden,
        num_layers=a.layers,
        num_heads=max(2, a.hidden // 32),
        intermediate_size=a.hidden * 11 // 4,
    )
    results = {}
    for name, method, packing, gc, precision in configs(a.quick):
        results[name] = run_one(path, rows, method, packing, gc, precision)
        sys.stderr.write(f"{name}: {results[name]['ratio']}\n")
    worst = max((abs(r["ratio"][k] - 1), name, k) for name, r in results.items() for k in ("activations", "total"))
    emit(
        {
            "benchmark": "plan_accuracy",
            "model": {"arch": "qwen2", "hidden": a.hidden, "layers": a.layers, "rows": a.rows},
            "configs": results,
            "worst": {"config": worst[1], "part": worst[2], "error": round(worst[0], 3)},
            "all_exact_terms_equal": all(r["exact_terms_equal"] for r in results.values()),
            "target": TARGET,
        }
    )


if __name__ == "__main__":
    main()
