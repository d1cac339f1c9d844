"""Tool calling: teach a model to pick the right function and fill in its arguments, checked on held-out requests.

Rows are OpenAI chat fine-tuning rows with a ``tools`` column (the function schemas) and an assistant turn that
calls one of them::

    {"tools": [{"type": "function", "function": {"name": "set_lights", "parameters": {...}}}, ...],
     "messages": [{"role": "user", "content": "Kitchen lights off please"},
                  {"role": "assistant", "tool_calls": [{"type": "function", "function":
                      {"name": "set_lights", "arguments": {"room": "kitchen", "state": "off"}}}]}]}

Some rows go on with the tool's result and the assistant's answer to it. The chat template renders the schemas
into the system turn and each call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; the loss is on
the assistant's calls and answers only (never on the schemas or the tool results). ``generate(messages,
tools=TOOLS)`` renders the same schemas and returns a ``tk.Reply``: the answer text, with the parsed calls in
``reply.tool_calls`` (OpenAI's shape, ready to run and to append to the conversation).

Two tools, so choosing the function matters, each with two arguments the request decides. The held-out requests
are combinations of wording, room and setting that no training row has.

Runs on a CPU in about two minutes with a tiny random model (no network):

    python examples/tool_calling.py

With a real model whose template renders tools (Qwen2.5 / Qwen3, Llama 3.1, Mistral):
``--model Qwen/Qwen2.5-0.5B-Instruct --lr 2e-4 --steps 100``. Exits 1 if held-out exact match of the calls did not
rise to at least 90%.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

import tunekit as tk
from tunekit.data.templates import render
from tunekit.testing import tiny_model


def _tool(name: str, description: str, *arguments: str) -> dict[str, Any]:
    properties = {arg: {"type": "string"} for arg in arguments}
    parameters = {"type": "object", "properties": properties, "required": list(arguments)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


ROOMS = ["kitchen", "bedroom", "garage", "office"]
TOOLS = [
    _tool("set_lights", "Switch a room's lights on or off.", "room", "state"),
    _tool("set_heating", "Set a room's heating low or high.", "room", "level"),
]
# Each wording decides the function and the second argument; the room is named in the request.
WORDINGS = {
    ("set_lights", "on"): ["Turn on the {room} lights", "{room} lights on please", "It is dark in the {room}",
                           "Lights on in the {room}", "Can you light up the {room}?"],
    ("set_lights", "off"): ["Turn off the {room} lights", "{room} lights off please", "Lights out in the {room}",
                            "Switch the {room} lights off", "No more light in the {room}"],
    ("set_heating", "high"): ["It is freezing in the {room}", "Heat the {room} up", "{room} heating to high",
                              "Make the {room} warmer", "Crank up the {room} heating"],
    ("set_heating", "low"): ["It is too hot in the {room}", "Cool the {room} down a bit", "{room} heating to low",
                             "Turn the {room} heating down", "The {room} is stuffy"],
}  # fmt: skip


PREFIXES = ["", "Hey, ", "Please: ", "Quick one. ", "Assistant, ", "Hi! "]
SUFFIXES = ["", " now", ", thanks", " asap", "!", " for me"]


def row(function: str, setting: str, wording: str, room: str, rng: random.Random, answered: bool) -> dict[str, Any]:
    """One request, the call that answers it and, when ``answered``, the tool's result and the reply to it."""
    arguments = {"room": room, ("state" if function == "set_lights" else "level"): setting}
    call = {"type": "function", "function": {"name": function, "arguments": arguments}}
    request = rng.choice(PREFIXES) + wording.format(room=room) + rng.choice(SUFFIXES)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": request},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    if answered:
        messages += [{"role": "tool", "content": json.dumps({"ok": True})}, {"role": "assistant", "content": "Done."}]
    return {"tools": TOOLS, "messages": messages}


def split(seed: int, per_combo: int = 8) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every combination of wording and room; a sixth held out (no training row has that wording with that room).
    Each training combination comes in ``per_combo`` requests (greetings and endings vary)."""
    combos = [(f, s, w, room) for (f, s), words in WORDINGS.items() for w, room in itertools.product(words, ROOMS)]
    rng = random.Random(seed)
    rng.shuffle(combos)
    held, train = combos[: len(combos) // 6], combos[len(combos) // 6 :]
    rows = [row(*c, rng=rng, answered=rng.random() < 0.25) for c in train for _ in range(per_combo)]
    return rows, [row(*c, rng=rng, answered=False) for c in held]


def exact_match(tuner: tk.Tuner, held_out: list[dict[str, Any]]) -> float:
    """Share of held-out requests whose first parsed call has exactly the expected name and arguments."""
    replies = tuner.generate([r["messages"][:1] for r in held_out], tools=TOOLS, max_new_tokens=48)
    expected = [r["messages"][1]["tool_calls"][0]["function"] for r in held_out]
    return sum(bool(r.tool_calls) and r.tool_calls[0]["function"] == e for r, e in zip(replies, expected)) / len(
        held_out
    )


def tiny_tool_model(workdir: Path, train: list[dict[str, Any]]) -> Path:
    """A tiny random model whose tokenizer is trained on the rows as the chat template writes them (the schemas and
    the template's tool instructions become a few tokens each, which a model this small needs), with tied
    embeddings (a word of the request is copied into the call readily)."""
    draft = AutoTokenizer.from_pretrained(tiny_model(workdir / "draft"))  # any tokenizer renders the template text
    texts = [render(draft, r["messages"], add_generation_prompt=False, tools=r["tools"]) for r in train]
    return tiny_model(workdir / "base", texts=texts, vocab_size=1024, initializer_range=0.2, tie_word_embeddings=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or directory (default: a tiny random model, no network)")
    parser.add_argument(
        "--workdir", type=Path, help="where the model and the tuned weights go (default: a temp folder)"
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument(
        "--lr", type=float, help="learning rate (default: 3e-3 on the tiny model; with --model, LoRA's default 2e-4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which requests are held out, and the training seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model runs fastest on one thread; drop this line for a real one

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tunekit-tools-"))
    train, held_out = split(seed=args.seed)
    model = args.model or tiny_tool_model(workdir, train)
    # The tiny random model trains whole at a high rate to learn in a few hundred steps; a real model (--model) trains
    # LoRA at the method's default (None: LoRA's 2e-4): the tiny model's rate would ruin it.
    tiny_model_lr = 3e-3  # for the tiny random model ONLY
    lr = args.lr if args.lr is not None else (None if args.model else tiny_model_lr)
    tuner = tk.Tuner(
        model,
        method=tk.LoRA(r=16) if args.model else tk.Full(),  # LoRA on a real model; a tiny random one trains whole
        training=tk.Training(max_steps=args.steps, learning_rate=lr, batch_size=16, log_every=50, seed=args.seed),
    )
    before = exact_match(tuner, held_out)
    result = tuner.fit(train)
    after = exact_match(tuner, held_out)
    tuner.save(workdir / "tuned")

    print(result)
    print(f"held-out calls exactly right: {before:.0%} before, {after:.0%} after fine-tuning")
    reply = tuner.generate([{"role": "user", "content": "Turn off the garage lights"}], tools=TOOLS, max_new_tokens=48)
    print("sample:", reply.tool_calls or repr(reply))
    return 0 if after >= 0.9 and before <= 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
