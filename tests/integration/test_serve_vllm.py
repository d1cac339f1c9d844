"""``tunekit serve --engine vllm`` on a CUDA GPU: two LoRA adapters on one base, talked to with the ``openai`` client,
answer as each does alone in transformers (greedy), streamed and not, and the key is enforced.

Needs a CUDA device, ``pip install vllm`` and the test extra; run with ``pytest -m gpu`` (``nox -s gpu``). It lives
beside the other serve tests, not in tests/gpu: the lent GPU machine has no vLLM (see tests/test_device_kit.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tunekit as tk

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["first: 3 1 4", "first: 9 2 6 5"]


def test_vllm_serves_two_adapters_on_one_base(tiny_qwen_init02: Path, tmp_path: Path) -> None:
    import torch

    assert torch.cuda.is_available(), "this test needs a CUDA device"
    # vLLM (hundreds of MB) is not carried to the lent GPU machine: there this test skips, naming what it needs.
    pytest.importorskip("vllm", reason="this test needs vllm (pip install vllm)")
    import httpx
    import openai

    saves, expected = {}, {}
    for name, answer in (("a", "7"), ("b", "2")):
        rows = [{"prompt": f"first: {i} {i + 1} {i + 2}", "completion": answer} for i in range(8)]
        tuner = tk.Tuner(str(tiny_qwen_init02), method=tk.LoRA(r=8), progress=False,
                         training=tk.Training(max_steps=30, learning_rate=1e-2, batch_size=8, seed=0))  # fmt: skip
        tuner.fit(rows)
        tuner.save(tmp_path / name)
        saves[name] = tmp_path / name
        expected[name] = [str(tuner.generate(p, max_new_tokens=8)) for p in PROMPTS]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "tunekit", "serve", "--engine", "vllm", f"a={saves['a']}",
                             f"b={saves['b']}", "--port", str(port), "--api-key", "k"], env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, "vLLM exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        for name in ("a", "b"):
            got = []
            for p in PROMPTS:
                reply = client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=8
                )
                got.append(reply.choices[0].message.content)
            assert got == expected[name], name
            chunks = client.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPTS[0]}],
                                                    temperature=0, max_tokens=8, stream=True)  # fmt: skip
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[name][0]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
