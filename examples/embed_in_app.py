"""Embed fine-tuning in an application: train in the background, show progress, cancel, resume.

The "application" here is a small command-line loop; a web service or a notebook would do the same:
start a run, watch its events or poll its progress from its own thread, cancel it when the user
asks, and later resume it to completion from the checkpoint the cancel left behind.

Runs on CPU in a few seconds with a tiny random model (no network):

    python examples/embed_in_app.py --steps 20 --cancel-at 5

For a real model, pass ``--model Qwen/Qwen2-0.5B`` and your own data.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import tunekit as tk
from tunekit.events import Checkpoint, FitEnd, Log, StepEnd
from tunekit.run import Progress
from tunekit.testing import reverse_task, tiny_model


def show(progress: Progress, prefix: str = "") -> None:
    """The application's own progress display: one line per update."""
    loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
    eta = f"{progress.eta_s:.1f}s" if progress.eta_s is not None else "?"
    print(f"{prefix}step {progress.step}/{progress.total}  loss {loss}  eta {eta}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or directory (default: a tiny random model, no network)")
    parser.add_argument("--workdir", type=Path, help="where the run writes (default: a temporary directory)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cancel-at", type=int, default=5, help="cancel the first run after this step")
    args = parser.parse_args(argv)

    # tunekit speaks through the "tunekit" logger: route it wherever the application logs.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunekit-app-"))
    data = reverse_task(200, seed=1)
    model = args.model or tiny_model(workdir / "tiny-model", texts=[r["prompt"] + " " + r["completion"] for r in data])

    tuner = tk.Tuner(
        model,
        method=tk.LoRA(r=8),
        training=tk.Training(
            max_steps=args.steps,
            batch_size=8,
            # 1e-3 for the tiny random model ONLY; a real model (--model) trains at LoRA's default (None: 2e-4)
            learning_rate=None if args.model else 1e-3,
            log_every=1,
        ),
        hooks=[tk.JSONLMetrics()],  # metrics.jsonl in output_dir, for the dashboard
        output_dir=workdir / "run",
        progress=False,  # this application draws its own progress
    )

    # 1. Start in the background and follow the events as they come.
    run = tuner.start(data)
    print(f"started: {run}", flush=True)
    for event in run.events(timeout=600):
        if isinstance(event, StepEnd) and event.step == args.cancel_at:
            print(f"user pressed cancel at step {event.step}", flush=True)
            run.cancel()  # stops within a step, and leaves a resumable checkpoint
        elif isinstance(event, Log) and "loss" in event.logs:
            show(run.progress)  # the step's loss is in run.progress once it is logged
        elif isinstance(event, Checkpoint):
            print(f"checkpoint written: {event.path.name}", flush=True)
        elif isinstance(event, FitEnd):
            print(f"first run ended: {run.state}, {event.result.steps} steps", flush=True)
    first = run.wait()
    assert first.stop_reason == "cancelled" and first.checkpoint is not None

    # 2. Later (here: at once), resume to completion. This time poll the progress instead.
    run = tuner.start(data, resume=True)
    last_step = -1
    while True:
        finished = run.done  # read before the progress, so the last step is always shown
        progress = run.progress
        if progress.total and progress.step != last_step:  # total is 0 until training begins
            show(progress, prefix="resumed: ")
            last_step = progress.step
        if finished:
            break
        time.sleep(0.05)
    result = run.wait()  # raises the run's error, if it failed
    print(f"resumed from step {first.steps}, finished at step {result.steps}: {run.state}", flush=True)
    print(f"final loss {result.train_loss:.4f}; metrics in {workdir / 'run' / 'metrics.jsonl'}", flush=True)
    print(f"answer: {tuner.generate('reverse: 1 2 3', max_new_tokens=8)!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
