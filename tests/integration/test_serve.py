"""``tunekit serve`` in a subprocess, talked to with the official ``openai`` client: two adapters on one base answer
as each does alone (streamed and not, many clients at once), the key is enforced, bad requests get 4xx JSON, the
queue bound gives 429, and the server stops cleanly."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.serving.pool import ModelPool

try:  # the serve extra and the client (in the test extra); without them these tests skip one by one, and a run
    # that deselects them (pytest -m gpu on a machine without them) collects this module without a skip
    import fastapi  # noqa: F401
    import httpx
    import openai
    import uvicorn  # noqa: F401
except ImportError:
    httpx = openai = None

pytestmark = pytest.mark.skipif(openai is None, reason='pip install "tunekit[serve]" openai httpx')

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-123"
PROMPTS = ["first: 3 1 4", "first: 9 2 6 5", "first: 0 8 8"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, args: list[str], tmp: Path) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err = (tmp / f"serve-{self.port}.log").open("w+", encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunekit", "serve", *args, "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=self.err, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the server did not start: {self.log()}")

    def log(self) -> str:
        self.err.flush()
        self.err.seek(0)
        return self.err.read()

    def client(self, key: str | None = KEY) -> Any:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=300)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def _train(base: Path, answer: str, path: Path) -> Path:
    """An adapter that learned to answer ``answer`` to every prompt (a few steps at a high rate)."""
    rows = [{"prompt": p, "completion": answer} for p in [f"first: {i} {i + 1} {i + 2}" for i in range(8)]]
    tuner = tk.Tuner(
        str(base),
        method=tk.LoRA(r=4),
        training=tk.Training(device="cpu", max_steps=30, learning_rate=1e-2, batch_size=8, seed=0),
        progress=False,
    )
    tuner.fit(rows)
    tuner.save(path)
    return path


@pytest.fixture(scope="module")
def saves(tiny_qwen_init02: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("serve")
    a = _train(tiny_qwen_init02, "7", tmp / "adapter-a")
    b = _train(tiny_qwen_init02, "2", tmp / "adapter-b")
    expected: dict[str, list[str]] = {}
    for name, path in (("a", a), ("b", b)):
        alone = tk.load(path)
        expected[name] = [str(alone.generate(p, max_new_tokens=8)) for p in PROMPTS]
        if name == "a":
            expected["base"] = [str(alone.generate(p, max_new_tokens=8, adapter="base")) for p in PROMPTS]
    return {"a": a, "b": b, "tmp": tmp, "expected": expected, "base": tiny_qwen_init02.name}


@pytest.fixture(scope="module")
def server(saves: dict[str, Any]) -> Iterator[Server]:
    srv = Server([f"a={saves['a']}", f"b={saves['b']}", "--api-key", KEY, "--max-queue", "3"], saves["tmp"])
    yield srv
    assert srv.stop() == 0, srv.log()


def quick(base: Path, method: tk.Method, path: Path) -> Path:
    """A save of ``method`` on ``base`` after one step (what it learned does not matter)."""
    tuner = tk.Tuner(str(base), method=method, training=tk.Training(device="cpu", max_steps=1), progress=False)
    tuner.fit([{"prompt": "first: 1 2", "completion": "1"}] * 2)
    tuner.save(path)
    return path


def _chat(client: Any, model: str, prompt: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=8, **kw
    )


def test_the_adapters_and_the_base_are_listed_and_answer_as_each_does_alone(
    server: Server, saves: dict[str, Any]
) -> None:
    expected = saves["expected"]
    assert expected["a"] != expected["b"] and expected["a"] != expected["base"]  # three different models
    client = server.client()
    ids = {m.id for m in client.models.list().data}
    assert ids == {"a", "b", saves["base"]}
    for name in ("a", "b", saves["base"]):
        want = expected["base" if name == saves["base"] else name]
        got = [_chat(client, name, p).choices[0].message.content for p in PROMPTS]
        assert got == want, name
        streamed = []
        for p in PROMPTS:
            chunks = list(_chat(client, name, p, stream=True, stream_options={"include_usage": True}))
            streamed.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
        assert streamed == want, name
    reply = _chat(client, "a", PROMPTS[0])
    assert reply.usage.prompt_tokens > 3 and reply.choices[0].finish_reason in ("stop", "length")
    text = client.completions.create(model="a", prompt="first: 3 1 4", max_tokens=4, temperature=0)
    assert text.choices[0].finish_reason in ("stop", "length") and text.usage.completion_tokens >= 1


def test_many_concurrent_streams_each_get_their_own_adapters_answer(server: Server, saves: dict[str, Any]) -> None:
    client = server.client()
    jobs = [(("a", "b")[i % 2], i % len(PROMPTS)) for i in range(3)]  # the queue bound is 3

    def one(job: tuple[str, int]) -> str:
        name, k = job
        return "".join(
            c.choices[0].delta.content or "" for c in _chat(client, name, PROMPTS[k], stream=True) if c.choices
        )

    for _ in range(2):
        with ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(one, jobs))
        assert got == [saves["expected"][name][k] for name, k in jobs]


def test_the_key_is_enforced(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    response = httpx.get(server.url + "/v1/models", timeout=10)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # the health check needs no key


def test_bad_requests_get_openai_shaped_4xx_json(server: Server) -> None:
    client = server.client()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "a", "messa', headers=headers)
    assert response.status_code == 400 and "parse the JSON" in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        _chat(client, "no-such-model", "hi")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as long:
        _chat(client, "a", "first: " + "1 2 3 " * 400)
    assert long.value.code == "context_length_exceeded" and "512 tokens" in str(long.value)
    with pytest.raises(openai.BadRequestError) as hot:
        _chat(client, "a", "hi", top_p=3)
    assert hot.value.param == "top_p"
    with pytest.raises(openai.BadRequestError) as role:
        client.chat.completions.create(model="a", messages=[{"role": "robot", "content": "hi"}])
    assert "unknown role 'robot'" in str(role.value)
    assert "Traceback" not in server.log()


def test_past_the_queue_bound_requests_get_429(server: Server) -> None:
    client = server.client()

    def one(i: int) -> str:
        try:
            client.chat.completions.create(
                model=("a", "b")[i % 2], messages=[{"role": "user", "content": PROMPTS[0]}], temperature=1.0,
                max_tokens=200, seed=i,
            )  # fmt: skip
            return "ok"
        except openai.RateLimitError as e:
            assert e.status_code == 429 and e.code == "rate_limit_exceeded"
            return "429"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(one, range(10)))
    assert outcomes.count("429") >= 1 and outcomes.count("ok") >= 3, outcomes
    assert _chat(client, "a", PROMPTS[0]).choices[0].message.content  # the server recovered


def test_each_request_is_logged_as_one_json_line(server: Server) -> None:
    _chat(server.client(), "b", PROMPTS[1])
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    chats = [line for line in lines if line["path"] == "/v1/chat/completions" and line["status"] == 200]
    assert chats and {"model", "ms", "prompt_tokens", "completion_tokens", "stream"} <= set(chats[-1])
    assert any(line["status"] == 401 for line in lines) and any(line["status"] == 429 for line in lines)


def test_binding_beyond_this_machine_needs_a_key(saves: dict[str, Any]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("TUNEKIT_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tunekit", "serve", str(saves["a"]), "--host", "0.0.0.0"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "needs an API key" in proc.stderr


def test_a_server_stops_cleanly_on_a_signal(saves: dict[str, Any]) -> None:
    srv = Server([str(saves["b"])], saves["tmp"])
    reply = _chat(srv.client(key=None), "adapter-b", PROMPTS[0])  # no key: none needed on 127.0.0.1
    assert reply.choices[0].message.content == saves["expected"]["b"][0]
    assert srv.stop() == 0
    log = srv.log()
    assert "tunekit serve: stopped" in log and "Traceback" not in log


def test_each_base_loads_once_and_other_kinds_load_on_their_own(
    saves: dict[str, Any], tiny_llama_init02: Path, tmp_path: Path
) -> None:
    other_base = quick(tiny_llama_init02, tk.LoRA(r=4), tmp_path / "llama-lora")
    loha = quick(Path(str(tk.load(saves["a"]).model_ref)), tk.LoHa(r=4), tmp_path / "qwen-loha")
    pool = ModelPool.from_saves([("a", saves["a"]), ("l", other_base), ("b", saves["b"]), ("h", loha)])
    tuners = {name: id(route.tuner) for name, route in pool.routes.items()}
    assert tuners["a"] == tuners["b"] != tuners["l"] != tuners["h"] != tuners["a"]
    assert len(set(tuners.values())) == 3  # the qwen base twice (LoRA pair, LoHa), the llama base once
    assert {pool.routes[n].adapter for n in ("a", "b", "l", "h")} == {"default", "b"}
    assert pool.routes[saves["base"]].adapter == "base" and pool.routes[tiny_llama_init02.name].adapter == "base"
    shared = pool.routes["b"].tuner
    assert str(shared.generate(PROMPTS[0], adapter="b", max_new_tokens=8)) == saves["expected"]["b"][0]
    pool.close()


def test_the_vllm_engine_gets_the_base_once_each_adapter_and_the_template_stop(
    saves: dict[str, Any], tmp_path: Path
) -> None:
    from tunekit.serving.vllm_engine import vllm_command

    cmd = vllm_command(
        [("a", saves["a"]), ("b", saves["b"])], host="127.0.0.1", port=8123, api_key="k", workdir=tmp_path
    )
    args = dict(zip(cmd[3::2], cmd[4::2]))  # python -m MODULE, then --flag value pairs (and flags)
    base = str(tk.load(saves["a"]).model_ref)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and args["--model"] == base
    assert args["--served-model-name"] == saves["base"] and args["--tokenizer"] == str(saves["a"])
    assert cmd[cmd.index("--lora-modules") + 1 :][:2] == [f"a={saves['a']}", f"b={saves['b']}"]
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "8" and args["--api-key"] == "k"
    generation = json.loads((Path(args["--generation-config"]) / "generation_config.json").read_text(encoding="utf-8"))
    tuner = tk.load(saves["a"])
    assert tuner.loaded.template.end_of_turn_id in generation["eos_token_id"]


def test_the_vllm_engine_refuses_what_vllm_cannot_serve(
    saves: dict[str, Any], tiny_llama_init02: Path, tmp_path: Path
) -> None:
    from tunekit.serving.vllm_engine import vllm_command

    qwen = Path(str(tk.load(saves["a"]).model_ref))
    loha = quick(qwen, tk.LoHa(r=4), tmp_path / "loha")
    llama = quick(tiny_llama_init02, tk.LoRA(r=4), tmp_path / "llama")
    for pair, why in (((saves["a"], loha), "LoRA adapters only"), ((saves["a"], llama), "different bases")):
        with pytest.raises(tk.IncompatibleError, match=why):
            vllm_command([("x", pair[0]), ("y", pair[1])], host="h", port=1, api_key=None, workdir=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "tunekit", "serve", "--engine", "vllm", str(saves["a"])],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    if importlib.util.find_spec("vllm") is None:
        assert proc.returncode == 2 and "needs vLLM" in proc.stderr
