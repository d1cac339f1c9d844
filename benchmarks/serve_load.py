"""``tunekit serve`` under load: N concurrent streaming clients (the official ``openai`` client, one thread each)
against a local server with two adapters on one base (they answer one digit) and the bare base (it writes until
``--max-tokens``), beside the same requests answered in-process one by one
(``tuner.generate``, what the server's worker runs) as the baseline.

Reports requests/s, p50/p95 latency and time to first token, and checks that every streamed answer is exactly what
the adapter it asked for answers alone (greedy): nothing lost, nothing mixed up between adapters or requests.

    PYTHONPATH=src python benchmarks/serve_load.py [--clients 32] [--requests 4] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _util import emit, setup, workdir

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    setup()
    import httpx
    import openai

    import tunekit as tk
    from tunekit.testing import first_task, tiny_model

    tmp = workdir()
    rows = first_task(64, seed=3)
    base = tiny_model(tmp / "base", "qwen2", texts=[r["prompt"] + " " + r["completion"] for r in rows],
                      initializer_range=0.2, tie_word_embeddings=True)  # fmt: skip
    adapters = {}
    for name, answer in (("a", "7"), ("b", "2")):
        tuner = tk.Tuner(str(base), method=tk.LoRA(r=4), progress=False,
                         training=tk.Training(device="cpu", max_steps=30, learning_rate=1e-2, seed=0))  # fmt: skip
        tuner.fit([{"prompt": r["prompt"], "completion": answer} for r in rows[:16]])
        tuner.save(tmp / name)
        adapters[name] = tmp / name
    prompts = [r["prompt"] for r in rows[16:24]]
    models = {"a": "default", "b": "b", base.name: "base"}  # served name -> the adapter the tuner picks
    names = list(models)
    jobs = [(names[(c + k) % 3], prompts[(c * 3 + k) % len(prompts)]) for c in range(a.clients)
            for k in range(a.requests)]  # fmt: skip

    # Baseline: the same requests in-process, one by one, on one tuner holding both adapters.
    direct = tk.load(adapters["a"])
    direct.add_adapter("b", adapters["b"])
    expected = {(n, p): str(direct.generate(p, adapter=models[n], max_new_tokens=a.max_tokens))
                for n in names for p in prompts}  # fmt: skip
    t0 = time.perf_counter()
    for n, p in jobs:
        direct.generate(p, adapter=models[n], max_new_tokens=a.max_tokens)
    direct_s = time.perf_counter() - t0

    port = _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    log = (tmp / "serve.log").open("w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "tunekit", "serve", f"a={adapters['a']}", f"b={adapters['b']}",
                             "--port", str(port), "--max-queue", str(a.clients * 2)], stderr=log, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
            if proc.poll() is not None:
                raise SystemExit(f"the server exited; see {tmp / 'serve.log'}") from None
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)

    def one(job: tuple[str, str]) -> tuple[float, float, bool]:
        name, prompt = job
        started = time.perf_counter()
        first, pieces = None, []
        stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=a.max_tokens, stream=True)  # fmt: skip
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
        done = time.perf_counter()
        return done - started, (first or done) - started, "".join(pieces) == expected[(name, prompt)]

    def client_run(c: int) -> list[tuple[float, float, bool]]:
        return [one(j) for j in jobs[c * a.requests : (c + 1) * a.requests]]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.clients) as pool:
        results = [r for rs in pool.map(client_run, range(a.clients)) for r in rs]
    served_s = time.perf_counter() - t0
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    latencies = sorted(r[0] for r in results)
    firsts = sorted(r[1] for r in results)
    wrong = sum(not r[2] for r in results)

    def pct(xs: list[float], q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1)

    emit({
        "clients": a.clients,
        "requests": len(results),
        "max_tokens": a.max_tokens,
        "served_rps": round(len(results) / served_s, 2),
        "direct_rps": round(len(jobs) / direct_s, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": pct(latencies, 0.95),
        "first_token_p50_ms": round(statistics.median(firsts) * 1000, 1),
        "first_token_p95_ms": pct(firsts, 0.95),
        "wrong_or_lost": wrong,
        "server_exit": proc.returncode,
    })  # fmt: skip
    if wrong:
        raise SystemExit(f"{wrong} answers differ from their adapter's own")


if __name__ == "__main__":
    main()
