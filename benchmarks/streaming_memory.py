"""Peak memory of training on a streamed file (``tk.Data(path, streaming=True)``) against the same process without data.

Writes a JSONL file of ``--rows`` chat rows, then, each in a fresh process so that peaks do not mix: ``baseline``
loads the tiny model and trains ``--steps`` steps on 64 rows held in memory; ``stream`` trains ``--steps`` steps on the
whole file, streamed. The figure is what streaming adds to the peak RSS, whatever the file's size (the issue's target:
the first 100 steps of a 10,000,000-row file under 2 GiB).

    PYTHONPATH=src python benchmarks/streaming_memory.py [--rows 2000000] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _util import emit, setup, workdir


def child(mode: str, model: str, data: str, steps: int) -> None:
    import resource

    setup()
    import tunekit as tk

    training = tk.Training(device="cpu", max_steps=steps, batch_size=8, max_length=256)
    tuner = tk.Tuner(model, training=training, progress=False)
    source = tk.Data(data, streaming=True) if mode == "stream" else json.loads(Path(data).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    result = tuner.fit(source)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_mib": round(peak_kib / 1024, 1), "s": round(seconds, 2), "rows": result.num_examples}),
          file=sys.__stdout__)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "DATA"))
    a = ap.parse_args()
    if a.child:
        child(*a.child, a.steps)
        return
    setup()
    from tunekit.testing import reverse_task, tiny_model

    tmp = workdir()
    model = tiny_model(tmp / "model", "llama")
    big = tmp / "big.jsonl"
    with big.open("w", encoding="utf-8") as f:  # written a block at a time: the writer holds no more than that
        for start in range(0, a.rows, 100_000):
            for row in reverse_task(min(100_000, a.rows - start), seed=start, length=(3, 30), fmt="messages"):
                f.write(json.dumps(row) + "\n")
    small = tmp / "small.json"
    small.write_text(json.dumps(reverse_task(64, seed=1, length=(3, 30))), encoding="utf-8")

    def run(mode: str, data: Path) -> dict[str, float]:
        args = [sys.executable, __file__, "--steps", str(a.steps), "--child", mode, str(model), str(data)]
        out = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    baseline, stream = run("baseline", small), run("stream", big)
    emit({
        "benchmark": "streaming_memory",
        "rows": a.rows,
        "file_mib": round(big.stat().st_size / 2**20, 1),
        "steps": a.steps,
        "baseline_peak_rss_mib": baseline["peak_rss_mib"],
        "stream_peak_rss_mib": stream["peak_rss_mib"],
        "streaming_adds_mib": round(stream["peak_rss_mib"] - baseline["peak_rss_mib"], 1),
        "stream_s": stream["s"],
        "rows_read": stream["rows"],
    })  # fmt: skip


if __name__ == "__main__":
    main()
