"""The server's pieces on the test double (no model): OpenAI's shapes, refusals, the queue bound, stop strings,
tool calls and reasoning in replies and streams, the reply splitter, and several adapters on one tuner."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.cli.serve import check_bind, named_saves
from tunekit.data.replies import ReplyStream, parse_reply
from tunekit.serving.pool import ModelPool, StopCut

try:  # the serve extra (in the test extra); without it these tests skip one by one, and a run that deselects them
    # (pytest -m gpu on a machine without FastAPI) collects this module without a skip
    from fastapi.testclient import TestClient

    from tunekit.serving import create_app
except ImportError:
    TestClient = create_app = None  # type: ignore[assignment,misc]

needs_fastapi = pytest.mark.skipif(TestClient is None, reason='pip install "tunekit[serve]" httpx')

H = {"Authorization": "Bearer k"}
ONE = {"model": "bot", "messages": [{"role": "user", "content": "x"}]}


def _pool(replies: Any, *, max_pending: int = 8, max_length: int | None = 64) -> tuple[ModelPool, Any]:
    fake = tk.testing.FakeBackend(replies=replies, max_length=max_length)
    tuner = tk.Tuner("any-name", backend=fake, progress=False)
    pool = ModelPool(max_pending=max_pending)
    pool.add("bot", tuner, base="plain")
    return pool, fake


def _client(replies: Any, **kw: Any) -> tuple[TestClient, Any]:
    pool, fake = _pool(replies, **kw)
    return TestClient(create_app(pool, api_key="k")), fake


def _chat(client: TestClient, content: str = "hi", **kw: Any) -> Any:
    body = {"model": "bot", "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}
    return client.post("/v1/chat/completions", headers=H, json=body)


def _events(response: Any) -> list[Any]:
    lines = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@needs_fastapi
def test_a_reply_comes_back_in_openai_shape_from_the_adapter_asked_for() -> None:
    fake_ref: list[Any] = []
    client, fake = _client(lambda text: f"{fake_ref[0].active_adapter}: {text}")
    fake_ref.append(fake)
    body = _chat(client, "hello there").json()
    assert body["object"] == "chat.completion" and body["model"] == "bot"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "default: hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    plain = client.post(
        "/v1/chat/completions", headers=H, json={"model": "plain", "messages": [{"role": "user", "content": "x"}]}
    )
    assert plain.json()["choices"][0]["message"]["content"] == "base: x"
    models = client.get("/v1/models", headers=H).json()["data"]
    assert [(m["id"], m["kind"]) for m in models] == [("bot", "adapter"), ("plain", "base")]


@needs_fastapi
def test_a_stream_is_server_sent_events_that_join_to_the_reply() -> None:
    client, _ = _client(lambda text: "one two three four five")
    events = _events(_chat(client, stream=True, stream_options={"include_usage": True}))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "one two three four five"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
    plain = _events(client.post("/v1/completions", headers=H, json={"model": "bot", "prompt": "x", "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in plain) == "one two three four five"


@needs_fastapi
def test_stop_strings_end_the_answer_and_are_not_returned() -> None:
    client, _ = _client(lambda text: "alpha beta. gamma. delta")
    assert _chat(client, stop=". g").json()["choices"][0]["message"]["content"] == "alpha beta"
    events = _events(_chat(client, stream=True, stop=["ta.", "xyz"]))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "alpha be"
    text = client.post("/v1/completions", headers=H, json={"model": "bot", "prompt": "p", "stop": "gamma"}).json()
    assert text["choices"][0]["text"] == "alpha beta. "


@needs_fastapi
def test_tool_calls_and_reasoning_come_back_as_openai_fields() -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    raw = f"<think>\nThe user wants weather.\n</think>\n<tool_call>\n{call}\n</tool_call>"
    client, _ = _client(lambda text: raw)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]
    body = _chat(client, "weather?", tools=tools).json()
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls" and message["content"] is None
    assert message["reasoning_content"] == "The user wants weather."
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    events = _events(_chat(client, "weather?", tools=tools, stream=True))
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user wants weather."
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (0, "get_weather", {"city": "Paris"})
    ]
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "tool_calls"


@needs_fastapi
@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**ONE, "n": 2}, 400, "n"),
        (
            {**ONE, "presence_penalty": 1},
            400,
            "presence_penalty",
        ),
        ({**ONE, "logprobs": True}, 400, "logprobs"),
        (
            {**ONE, "tool_choice": "required"},
            400,
            "tool_choice",
        ),
        (
            {**ONE, "stop": ["a", "b", "c", "d", "e"]},
            400,
            "stop",
        ),
        ({**ONE, "temperature": 2.5}, 400, "temperature"),
        ({**ONE, "max_tokens": 0}, 400, "max_tokens"),
        ({**ONE, "frobnicate": 1}, 400, "frobnicate"),
        ({"model": "bot", "messages": []}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({**ONE, "model": "nope"}, 404, "model"),
        ({"model": "bot", "messages": [{"role": "user", "content": "x " * 80}]}, 400, "messages"),
        ({**ONE, "max_tokens": 70}, 400, "messages"),
    ],
)
def test_a_bad_request_is_a_4xx_naming_what_is_wrong(body: dict[str, Any], status: int, param: str) -> None:
    client, _ = _client(lambda text: "ok")
    response = client.post("/v1/chat/completions", headers=H, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


@needs_fastapi
def test_malformed_json_a_wrong_key_and_an_unknown_path_are_json_errors() -> None:
    client, _ = _client(lambda text: "ok")
    bad = client.post("/v1/chat/completions", headers=H, content=b"{not json")
    assert bad.status_code == 400 and "parse the JSON" in bad.json()["error"]["message"]
    assert client.post("/v1/chat/completions", headers=H, content=b"[1, 2]").status_code == 400
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k"}):
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/nothing-here", headers=H).json()["error"]["message"].startswith("Not found")
    assert client.get("/v1/chat/completions", headers=H).status_code == 405
    huge = client.post("/v1/chat/completions", headers=H, content=b" " * (16 * 1024 * 1024 + 1))
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]


@needs_fastapi
def test_a_fault_is_a_500_without_a_traceback() -> None:
    def broken(text: str) -> str:
        raise RuntimeError("secret internals")

    client, _ = _client(broken)
    response = _chat(client)
    assert response.status_code == 500
    assert "secret" not in response.text and response.json()["error"]["type"] == "server_error"


@needs_fastapi
def test_past_the_bound_a_request_gets_429_and_the_server_recovers() -> None:
    gate = threading.Event()

    def slow(text: str) -> str:
        gate.wait(30)
        return "done"

    client, _ = _client(slow, max_pending=2)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(_chat(client).status_code)) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while client.get("/health").json()["pending"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = _chat(client)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    gate.set()
    for t in threads:
        t.join(30)
    assert results == [200, 200]
    assert _chat(client).status_code == 200


def test_listening_beyond_this_machine_needs_a_key(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.5", "example.com"):
        with pytest.raises(tk.ConfigError, match="needs an API key"):
            check_bind(host, None)
        check_bind(host, "key")
    (tmp_path / "x").mkdir()
    assert named_saves([str(tmp_path / "x"), f"y={tmp_path / 'x'}"]) == [
        ("x", str(tmp_path / "x")),
        ("y", str(tmp_path / "x")),
    ]
    with pytest.raises(tk.ConfigError, match="no such directory"):
        named_saves([str(tmp_path / "missing")])


def test_stop_cut_holds_back_what_could_become_a_stop_string() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        text = "".join(rng.choice("ab. ") for _ in range(40))
        stops = ["b.a", ". "]
        cut = StopCut(stops)
        out, i = "", 0
        while i < len(text):
            k = rng.randint(1, 4)
            out += cut.feed(text[i : i + k])
            i += k
        out += cut.finish()
        assert out == StopCut(stops).cut(text), (text, out)


TWO_CALLS = (
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": 1}}'
)
TWO_CALLS += "\n</tool_call>"
SPECIAL = ("<|im_end|>", "<|im_start|>", "<tool_call>", "</tool_call>", "<think>", "</think>")
RAWS = [
    ("Hello there, world.", False, False),
    ("<think>\nLet me see.\n</think>\n\nThe answer is 7.", False, False),
    ("Let me see.\n</think>\n\nThe answer is 7.", False, True),
    ('Sure.\n<tool_call>\n{"name": "f", "arguments": {"city": "Paris"}}\n</tool_call>', True, False),
    (TWO_CALLS, True, False),
    ("<tool_call>not json</tool_call> and more", True, False),
    ('{"name": "f", "parameters": {"city": "Paris"}}', True, False),
    ('[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]', True, False),
    ("a <b> c [TOOL d<|im_end|>", False, False),
    ("<thin", False, False),
]


@pytest.mark.parametrize(("raw", "tools", "opened"), RAWS)
def test_a_streamed_reply_joins_to_what_generate_parses(raw: str, tools: bool, opened: bool) -> None:
    final = parse_reply(raw, SPECIAL, tools_offered=tools)
    for seed in range(25):
        rng = random.Random(seed)
        splitter = ReplyStream(SPECIAL, tools_offered=tools, opened=opened)
        deltas, i = [], 0
        while i < len(raw):
            k = rng.randint(1, 6)
            deltas += splitter.feed(raw[i : i + k])
            i += k
        deltas += splitter.finish(final)
        assert "".join(d.text for d in deltas if d.kind == "content") == str(final)
        assert "".join(d.text for d in deltas if d.kind == "reasoning") == (final.reasoning or "")
        assert [d.call for d in deltas if d.kind == "tool_call"] == final.tool_calls


def test_reasoning_streams_before_the_answer_is_known() -> None:
    splitter = ReplyStream(SPECIAL)
    assert splitter.feed("<think>\nFirst I") == [] or splitter.sent.reasoning.startswith("First")
    assert "First I" in splitter.sent.reasoning
    assert splitter.feed(" add.</think>\n\nIt is 4") and splitter.sent.content == "It is 4"


def test_stream_parts_end_with_the_whole_reply(tmp_path: Path) -> None:
    fake = tk.testing.FakeBackend(replies={"hi": "<think>ok</think>hello there"})
    tuner = tk.Tuner("any-name", backend=fake, progress=False)
    parts = list(tuner.stream("hi", parts=True))
    assert [p.kind for p in parts][-1] == "end" and parts[-1].reply == "hello there"
    assert parts[-1].reply.reasoning == "ok" and parts[-1].reply.finish_reason == "stop"
    assert "".join(tuner.stream("hi")) == tuner.generate("hi") == "hello there"
    with pytest.raises(tk.ConfigError, match="parts"):
        tuner.stream("hi", parts="yes")


def test_added_adapters_are_picked_by_name_and_a_serving_tuner_does_not_train(tmp_path: Path) -> None:
    fake = tk.testing.FakeBackend(replies=lambda text: fake.active_adapter)
    trained = tk.Tuner("any-name", backend=fake, progress=False)
    trained.fit([{"prompt": "a", "completion": "b"}])
    trained.save(tmp_path / "other")
    tuner = tk.Tuner("any-name", backend=fake, progress=False)
    tuner.add_adapter("sql", tmp_path / "other")
    assert tuner.adapters == ["default", "sql", "base"] and fake.adapters == ["sql"]
    assert [tuner.generate("q", adapter=a) for a in ("default", "sql", "base")] == ["default", "sql", "base"]
    assert "".join(tuner.stream("q", adapter="sql")) == "sql"
    assert tuner.generate("q") == "default"  # the tuner's own adapter again after each call
    with pytest.raises(tk.ConfigError, match=r"no such adapter.*'sql'"):
        tuner.generate("q", adapter="sq")
    for name in ("default", "base", "sql", ""):
        with pytest.raises(tk.ConfigError, match="name"):
            tuner.add_adapter(name, tmp_path / "other")
    for call in (
        lambda: tuner.fit([{"prompt": "a", "completion": "b"}]),
        lambda: tuner.save(tmp_path / "s"),
        tuner.merge,
    ):
        with pytest.raises(tk.IncompatibleError, match="added adapters"):
            call()
    full = tk.Tuner("any-name", method=tk.Full(), backend=fake, progress=False)
    with pytest.raises(tk.IncompatibleError, match="no adapter"):
        full.add_adapter("x", tmp_path / "other")
    with pytest.raises(tk.IncompatibleError, match="no adapter"):
        full.generate("q", adapter="base")
