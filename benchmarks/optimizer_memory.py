"""Each optimizer that runs on the CPU against AdamW, on the same model: its state's bytes and a training step's time.

Full fine-tuning (every parameter trains) of one tiny Llama built locally, through ``tk.Tuner.fit`` with
``Training(optimizer=...)`` and the learning rate each optimizer suits, fp32, one torch thread. For each optimizer:

- **state**: the bytes of the tensors in the optimizer's saved state (the run's last checkpoint, read as transformers
  reads it), each storage once; and ``tuner.plan()``'s figure for it (must be equal);
- **step**: the median wall time of a training step (forward, backward, clipping, the optimizer's update), from
  a hook's timestamps, the first steps and the checkpointing step left out; each optimizer runs ``--repeats``
  times, the rounds in alternating order, and the fastest median counts (a busy machine slows some runs);
- **loss**: the first and last logged loss (each optimizer at its own learning rate; not a quality comparison).

    PYTHONPATH=src python benchmarks/optimizer_memory.py [--steps 20] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _util import emit, setup, workdir

LEARNING_RATES = {
    "adamw": 1e-3, "adamw_8bit": 1e-3, "adafactor": 1e-3, "lion": 2e-4, "galore": 1e-3, "apollo": 1e-3,
    "muon": 1e-3, "sgd": 5e-2,
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=64, help="GaLore / APOLLO rank")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--optimizers", nargs="*", default=list(LEARNING_RATES))
    args = ap.parse_args()
    setup()
    import torch

    import tunekit as tk
    from tunekit.testing import reverse_task, tiny_model

    tmp = workdir()
    texts = [r["prompt"] + " " + r["completion"] for r in reverse_task(300, seed=100)]
    model_dir = tiny_model(tmp / "model", "llama", texts=texts, hidden_size=args.hidden, num_layers=args.layers)
    rows = reverse_task(args.rows, seed=0, length=(3, 12))
    options = {
        "galore": tk.GaLoreOptions(rank=args.rank),
        "apollo": tk.APOLLOOptions(rank=args.rank),
    }

    class Clock(tk.Hook):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, ctx: tk.RunContext) -> None:
            self.times.append(time.perf_counter())

    def state_bytes(path: object) -> int:
        state = torch.load(path, map_location="cpu", weights_only=True)["state"]
        seen: dict[int, int] = {}

        def walk(value: object) -> None:
            if isinstance(value, torch.Tensor):
                seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)

        walk(state)
        return sum(seen.values())

    figures: dict[str, dict[str, float | int]] = {}
    params = 0

    def run(name: str, round_: int) -> None:
        nonlocal params
        out = tmp / f"{name}-{round_}"
        clock = Clock()
        training = tk.Training(
            device="cpu", precision="fp32", optimizer=name, optimizer_options=options.get(name),
            learning_rate=LEARNING_RATES[name], max_steps=args.steps, save_every=args.steps, batch_size=8,
            lr_scheduler="constant", log_every=1, cache=False, seed=0,
        )  # fmt: skip
        tuner = tk.Tuner(str(model_dir), method=tk.Full(), training=training, output_dir=out, progress=False)
        tuner.hooks = [clock]
        plan = tuner.plan(rows)
        result = tuner.fit(rows)
        params = result.trainable_params
        steps = [b - a for a, b in zip(clock.times, clock.times[1:])][2:-1]  # warm-up and the checkpoint left out
        losses = [h["loss"] for h in result.history if "loss" in h]
        measured = state_bytes(out / f"checkpoint-{args.steps}" / "optimizer.pt")
        step_s = round(statistics.median(steps), 4)
        if name in figures:
            figures[name]["step_s"] = min(figures[name]["step_s"], step_s)
            return
        figures[name] = {
            "state_bytes": measured,
            "plan_bytes": plan.optimizer_bytes,
            "bytes_per_param": round(measured / params, 3),
            "step_s": step_s,
            "loss_first": round(losses[0], 3),
            "loss_last": round(losses[-1], 3),
        }

    for round_ in range(args.repeats):
        for name in args.optimizers if round_ % 2 == 0 else reversed(args.optimizers):
            run(name, round_)
    if "adamw" in figures:
        for f in figures.values():
            f["state_vs_adamw"] = round(f["state_bytes"] / figures["adamw"]["state_bytes"], 3)
            f["step_vs_adamw"] = round(f["step_s"] / figures["adamw"]["step_s"], 3)
    emit(
        {
            "benchmark": "optimizer_memory",
            "model": {"arch": "llama", "hidden": args.hidden, "layers": args.layers, "trainable_params": params},
            "steps": args.steps,
            "repeats": args.repeats,
            "optimizers": figures,
            "plan_equals_measured": all(f["state_bytes"] == f["plan_bytes"] for f in figures.values()),
        }
    )


if __name__ == "__main__":
    main()
