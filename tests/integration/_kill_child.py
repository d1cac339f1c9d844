"""A training process for the kill-and-resume tests (run as a script; ``build`` is imported by the test too).

    python tests/integration/_kill_child.py MODEL OUT_DIR LOSSES_JSONL [WEIGHTS_OUT]

Trains with ``resume="auto"`` (the default), so a second start continues the first. Each logged loss is
appended to LOSSES_JSONL at once (flushed), so a killed process leaves what it logged. With
``TUNEKIT_TEST_PAUSE_AT=N``, the process stops inside the save of checkpoint-N, after the files are
written into the staging directory and before the manifest and the rename, writes ``OUT_DIR/paused``,
and sleeps: the parent kills it there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MAX_STEPS = 12
SAVE_EVERY = 3


def build(model: str | Path, out: str | Path, hooks: list = ()):  # type: ignore[type-arg]
    import tunekit as tk

    return tk.Tuner(
        model,
        method=tk.LoRA(r=4, dropout=0.1),
        training=tk.Training(
            max_steps=MAX_STEPS, batch_size=4, learning_rate=1e-2, save_every=SAVE_EVERY, device="cpu", log_every=1
        ),
        output_dir=out,
        hooks=list(hooks),
        progress=False,
    )


def data():
    from tunekit.testing import reverse_task

    return reverse_task(20, seed=3)  # 5 batches an epoch: the run crosses two epoch boundaries


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import tunekit as tk
    from tunekit.backends.hf import checkpoints

    model, out, losses = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    pause_at = int(os.environ.get("TUNEKIT_TEST_PAUSE_AT", "0"))
    if pause_at:
        real = checkpoints._fs.list_files

        def slow_list_files(root: Path):  # type: ignore[no-untyped-def]
            if root.name == f"checkpoint-{pause_at}":
                (out / "paused").write_text(str(root), encoding="utf-8")
                time.sleep(600)
            return real(root)

        checkpoints._fs.list_files = slow_list_files

    class Record(tk.Hook):
        def on_log(self, ctx, logs):  # type: ignore[no-untyped-def]
            if "loss" in logs:
                with open(losses, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"pid": os.getpid(), "step": ctx.step, "loss": logs["loss"]}) + "\n")
                    f.flush()

    tuner = build(model, out, hooks=[Record()])
    result = tuner.fit(data())
    if len(sys.argv) > 4:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().contiguous() for k, v in tuner.model.named_parameters() if v.requires_grad}, sys.argv[4]
        )
    print(json.dumps({"steps": result.steps}))


if __name__ == "__main__":
    main()
