"""A seeded fuzz over row layouts: every input either trains correctly or raises a TunekitError.

Each case is a few rows drawn from every layout tunekit reads (text, prompt/completion, Alpaca, OpenAI
messages, ShareGPT, preference pairs, labelled answers, RL prompts), then bent: fields missing, extra or
misspelled, values of the wrong type, None, empty or unicode, nested junk, label columns, weights, tool
calls, rows of another layout, rows that are not objects; given as a list, a JSONL file, a CSV file or a
DataFrame. Two outcomes only:

- a ``TunekitError`` (never another exception);
- accepted: then no row is lost (each is an example or a skipped row with its reason) and no text is
  dropped (every string the row holds, outside the columns ignored on purpose, is in what trains); the
  rows encode for their objective with every row accounted for, and a few of them train one step on a
  tiny model with every row counted in ``num_examples`` / ``skipped_rows``.

Most cases stop in validation, so the whole fuzz takes seconds.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data.columns import METADATA_COLUMNS, unused_columns
from tunekit.data.layouts import detect_layout
from tunekit.training_data import normalise_for

from .helpers import cpu

SEED = 20240623
CASES = 1000
FITS = 4  # accepted cases that also train one step

TEXTS = [
    "reverse: 1 2 3",
    "3 2 1",
    "héllo wörld",
    "你好，世界",
    "🙂 emoji",
    "a\nb\tc",
    "  padded  ",
    "x",
    "0",
    "[not json",
]
JUNK: list[Any] = [None, "", "   ", 0, 1, 2, -1, 1.5, math.nan, True, False, [], {}, ["x"], {"a": 1}, [[None]],
                   {"role": "user"}, [{"content": "x"}]]  # fmt: skip
EXTRA_KEYS = ["id", "source", "metadata", "sytem", "system", "reponse", "response", "label", "images", "tools",
              "text", "prompt", "completion", "messages", "answer", "", "weight", "Unnamed: 0"]  # fmt: skip
MESSAGE_EXTRAS = ["weight", "name", "contnet", "tool_calls", "tool_call_id", "refusal"]


def text(rng: random.Random) -> str:
    return rng.choice(TEXTS) if rng.random() < 0.9 else rng.choice(TEXTS) + " " + rng.choice(TEXTS)


def value(rng: random.Random) -> Any:
    return text(rng) if rng.random() < 0.7 else rng.choice(JUNK)


def turns(rng: random.Random, role_key: str, content_key: str, names: tuple[str, str]) -> list[Any]:
    out: list[Any] = []
    if rng.random() < 0.2:
        out.append({role_key: "system", content_key: text(rng)})
    for _k in range(rng.randint(1, 3)):
        out.append({role_key: names[0], content_key: text(rng)})
        out.append({role_key: names[1], content_key: text(rng)})
    for m in out:  # bend some messages
        r = rng.random()
        if r < 0.06:
            m[content_key] = rng.choice(JUNK)
        elif r < 0.10:
            m[role_key] = rng.choice(["tool", "robot", "function_call", "observation", None, 3, "assistant", "user"])
        elif r < 0.18:
            key = rng.choice(MESSAGE_EXTRAS)
            m[key] = rng.choice([0, 1, 0.5, None, "x", [{"id": "1"}]]) if key != "name" else "bob"
        elif r < 0.20:
            m.pop(rng.choice([role_key, content_key]))
    if rng.random() < 0.05:
        out.append(rng.choice(JUNK))
    if rng.random() < 0.05:
        out = out[: rng.randint(0, len(out))]
    return out


def base_row(rng: random.Random, layout: str) -> dict[str, Any]:
    if layout == "text":
        return {"text": text(rng)}
    if layout == "prompt_completion":
        row: dict[str, Any] = {"prompt": text(rng), "completion": text(rng)}
        if rng.random() < 0.2:
            row["prompt"] = turns(rng, "role", "content", ("user", "assistant"))[:-1] or text(rng)
        return row
    if layout == "alpaca":
        row = {"instruction": text(rng), "output": text(rng)}
        if rng.random() < 0.5:
            row["input"] = rng.choice([text(rng), "", None])
        return row
    if layout == "messages":
        msgs = turns(rng, "role", "content", ("user", "assistant"))
        return {"messages": json.dumps(msgs, ensure_ascii=False) if rng.random() < 0.1 else msgs}
    if layout == "sharegpt":
        return {"conversations": turns(rng, "from", "value", rng.choice([("human", "gpt"), ("user", "assistant")]))}
    if layout == "preference":
        return {"prompt": text(rng), "chosen": text(rng), "rejected": text(rng)}
    if layout == "unpaired":
        return {"prompt": text(rng), "completion": text(rng), "label": rng.choice([True, False, 0, 1, "true", "0"])}
    if layout == "prompt_only":
        return {"prompt": text(rng), "answer": text(rng)}
    return {rng.choice(["question", 7, "Text", ("t",), None]): text(rng), "answer": value(rng)}  # no layout at all


LAYOUTS = ["text", "prompt_completion", "alpaca", "messages", "sharegpt", "preference", "unpaired", "prompt_only"]
LAYOUTS += ["unknown"]


def bend(rng: random.Random, row: dict[str, Any]) -> Any:
    r = rng.random()
    if r < 0.55:
        return row
    if r < 0.63 and row:
        row.pop(rng.choice(sorted(row, key=repr)))
    elif r < 0.75 and row:
        row[rng.choice(sorted(row, key=repr))] = rng.choice(JUNK)
    elif r < 0.92:
        row[rng.choice(EXTRA_KEYS)] = value(rng) if rng.random() < 0.8 else rng.choice(JUNK)
    elif r < 0.96:
        return rng.choice(["a string row", 3, None, [1, 2]])
    else:
        row[rng.choice([7, ("t",), "Prompt"])] = text(rng)  # a key that is not a plain column name
    return row


def draw(rng: random.Random) -> list[Any]:
    layout = rng.choice(LAYOUTS)
    rows = []
    for _ in range(rng.randint(1, 5)):
        other = rng.random() < 0.08
        rows.append(bend(rng, base_row(rng, rng.choice(LAYOUTS) if other else layout)))
    return rows


def as_source(rng: random.Random, rows: list[Any], tmp: Path, k: int) -> Any:
    r = rng.random()
    dicts = all(isinstance(x, dict) and all(isinstance(key, str) for key in x) for x in rows)
    if r < 0.15 and dicts:
        path = tmp / f"case{k}.jsonl"
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
        return path
    flat = dicts and all(isinstance(v, (str, type(None))) for x in rows for v in x.values())
    if r < 0.25 and flat:
        path = tmp / f"case{k}.csv"
        names = list(dict.fromkeys(key for x in rows for key in x))
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)
        return path
    if r < 0.32 and dicts:
        import pandas as pd

        return pd.DataFrame(rows)
    return rows


def _reward(prompts: list[Any], completions: list[Any], **kw: Any) -> list[float]:
    return [float(len(str(c))) for c in completions]


def objective(rng: random.Random) -> tk.Objective | None:
    r = rng.random()
    if r < 0.7:
        return None
    return rng.choice([tk.SFT(), tk.CausalLM(), tk.DPO(), tk.KTO(), tk.GRPO(reward=_reward, num_generations=2)])


def strings(x: Any) -> list[str]:
    """Every string inside ``x`` (dict keys aside)."""
    if isinstance(x, str):
        return [x]
    if isinstance(x, dict):
        return [s for v in x.values() for s in strings(v)]
    if isinstance(x, (list, tuple)):
        return [s for v in x for s in strings(v)]
    return []


def meant(row: dict[str, Any], unused: set[str]) -> list[str]:
    """The strings of a row that must reach training: not metadata, labels, roles or a speaker's name, nor the
    columns the data's warning lists as not used for training (``unused``), nor the tool definitions (read by the
    message model, not message text)."""
    out = []
    for key, v in row.items():
        if key in METADATA_COLUMNS or key == "label" or key in unused or key == "tools":
            continue
        if key in ("messages", "conversations") and isinstance(v, str) and v.strip().startswith("["):
            try:
                v = json.loads(v)  # a conversation given as JSON text (a CSV cell)
            except json.JSONDecodeError:
                pass  # an RL prompt's extra column, handed to the reward function as it is
        if key in ("messages", "conversations", "prompt", "completion", "chosen", "rejected") and isinstance(v, list):
            v = [m.get("content", m.get("value")) if isinstance(m, dict) else m for m in v]
        out += [s for s in strings(v) if s.strip()]
    return out


def example_strings(ex: Any) -> str:
    parts = [ex.text or ""]
    for msgs in (ex.messages, ex.prompt, ex.chosen, ex.rejected, ex.completion):
        parts += [m["content"] for m in msgs or ()]
    parts += [*strings(ex.columns or {}), ex.prompt_text or ""]
    return "\x00".join(parts)


def test_fuzz_rows_train_or_raise_a_tunekit_error(tiny_llama, tmp_path):
    rng = random.Random(SEED)
    tuners: dict[str, tk.Tuner] = {}
    outcomes = {"error": 0, "accepted": 0, "trained": 0}
    fitted_formats: set[str] = set()
    for k in range(CASES):
        rows = draw(rng)
        data = as_source(rng, rows, tmp_path, k)
        obj = objective(rng)
        training = cpu(max_steps=1, batch_size=2, max_length=64, cache=False,
                       on_bad_rows=rng.choice(["error", "error", "skip"]))  # fmt: skip
        where = f"case {k}: rows={rows!r:.600} objective={obj!r} source={type(data).__name__}"
        try:
            norm, chosen = normalise_for(data, training=training, method=tk.LoRA(), objective=obj)
        except tk.TunekitError:
            outcomes["error"] += 1
            continue
        except Exception as e:
            pytest.fail(f"{where}: {type(e).__name__}: {e}")
        outcomes["accepted"] += 1
        # no row lost: each is an example or a skipped row with its reason
        kept, skipped = [ex.row for ex in norm.examples], [r for r, _ in norm.skipped]
        assert sorted(kept + skipped) == list(range(1, len(rows) + 1)), where
        # no text dropped: every string a kept row means is in what it trains on (or in a column the warning lists)
        layout = detect_layout(rows)
        unused = set(unused_columns(norm.format, rows, layout.reads if layout is not None else frozenset()))
        for ex in norm.examples:
            held = example_strings(ex)
            row = rows[ex.row - 1]
            lost = [s for s in meant(row, unused) if s not in held]
            assert not lost, f"{where}: row {ex.row} dropped {lost}"
        # encoded for its objective, every row accounted for
        key = type(obj).__name__ if obj is not None else "inferred"
        tuner = tuners.setdefault(key, tk.Tuner(tiny_llama, objective=obj, progress=False))
        tuner.training = training
        try:
            prepared = tuner.prepare(data)
        except tk.TunekitError:
            outcomes["error"] += 1  # e.g. nothing left to learn after truncation
            continue
        except Exception as e:
            pytest.fail(f"{where}: prepare: {type(e).__name__}: {e}")
        assert sorted(prepared.rows + [r for r, _ in prepared.skipped]) == list(range(1, len(rows) + 1)), where
        # a few accepted cases train one step (demonstrations and pairs: fast on CPU)
        if (
            len(fitted_formats) < FITS
            and norm.format not in fitted_formats
            and chosen.name in ("SFT", "CausalLM", "DPO")
        ):
            fitted_formats.add(norm.format)
            result = tk.Tuner(tiny_llama, objective=obj, training=training, progress=False).fit(data)
            assert result.num_examples + len(result.skipped_rows) == len(rows), where
            assert result.steps == 1 and math.isfinite(result.train_loss), where
            outcomes["trained"] += 1
    # the generator reaches both outcomes, and training, often enough to mean something
    assert outcomes["error"] >= CASES // 4 and outcomes["accepted"] >= CASES // 8, outcomes
    assert outcomes["trained"] == FITS, (outcomes, fitted_formats)
