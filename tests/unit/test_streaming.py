"""tk.Data(..., streaming=True): rows read lazily from .jsonl / .csv / .parquet / dataset directories, the same rows
load_rows reads, the first rows checked before a run, and the options streaming cannot take refused by name."""

from __future__ import annotations

import csv
import itertools
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import load_rows
from tunekit.data.streaming import stream_rows
from tunekit.testing import FakeBackend

from .helpers import rows_of, write_jsonl

DATA = Path(__file__).parent.parent / "data"


def tuner(**kw: Any) -> tk.Tuner:
    kw.setdefault("training", tk.Training(max_steps=3))
    return tk.Tuner("fake-model", backend=FakeBackend(), progress=False, **kw)


def test_every_streamable_source_gives_the_rows_load_rows_gives(tmp_path: Path) -> None:
    import datasets
    import pandas as pd

    rows = rows_of(5)
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    with (tmp_path / "a.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "folder").mkdir()
    write_jsonl(tmp_path / "folder" / "train.jsonl", rows)
    for source in (jsonl, tmp_path / "a.csv", tmp_path / "a.parquet", tmp_path / "saved", tmp_path / "folder"):
        streamed = [row for _, row in stream_rows(tk.Data(str(source), streaming=True))]
        assert streamed == load_rows(str(source)) == rows, source
    mapped = tk.Data(str(DATA / "mapped_chats.jsonl"), columns={"messages": "dialog"}, streaming=True)
    assert [row for _, row in stream_rows(mapped)] == load_rows(mapped.model_copy(update={"streaming": False}))


def test_a_stream_reads_only_what_is_asked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "big.jsonl", rows_of(200_000))  # about 10 MB; load_rows would hold all of it
    tracemalloc.start()
    try:
        first = list(itertools.islice(stream_rows(tk.Data(str(path), streaming=True)), 1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first[-1] == (1000, {"prompt": "question 999", "completion": "answer 999"})
    assert peak < 2 * 2**20, peak  # a thousand small rows, not the file


def test_the_first_rows_are_checked_before_the_run(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [*rows_of(2), {"prompt": "q", "completion": ""}, *rows_of(100)])
    backend = FakeBackend()
    t = tk.Tuner("fake-model", backend=backend, progress=False, training=tk.Training(max_steps=3))
    with pytest.raises(tk.DatasetError, match=r"^row 3, field 'completion': empty string"):
        t.fit(tk.Data(str(path), streaming=True))
    assert backend.calls == []  # nothing loaded


def test_what_streaming_cannot_take_is_refused_by_name(tmp_path: Path) -> None:
    path = str(write_jsonl(tmp_path / "a.jsonl", rows_of(4)))
    stream = tk.Data(path, streaming=True)
    with pytest.raises(tk.ConfigError, match=r"a stream has no length .* set Training\(max_steps=...\)"):
        tuner(training=tk.Training()).fit(stream)
    with pytest.raises(tk.ConfigError, match=r"eval_data: tk.Data.*streaming=True. is for training data"):
        tuner().fit(path, eval_data=stream)
    with pytest.raises(tk.ConfigError, match=r"is streamed .streaming=True., which a mixture cannot draw from"):
        tuner().fit(tk.Mix([path, stream]))
    pairs = tk.Data(str(DATA / "mix_trl_preference.jsonl"), streaming=True)
    with pytest.raises(tk.IncompatibleError, match=r"cannot train ORPO: trl's ORPO trainer .* num_proc"):
        tuner(objective=tk.ORPO()).fit(pairs)
    with pytest.raises(tk.IncompatibleError, match=r"cannot train DPO with loss='simpo': trl's CPO trainer"):
        tuner(objective=tk.DPO(loss="simpo")).fit(pairs)
    with pytest.raises(tk.ConfigError, match=r"shuffle_buffer=8. shuffles a stream: pass streaming=True"):
        tk.Data(path, shuffle_buffer=8)
    with pytest.raises(tk.ConfigError, match=r"shuffle_buffer=0.*expected a number of rows"):
        tk.Data(path, streaming=True, shuffle_buffer=0)
    with pytest.raises(tk.DatasetError, match=r"a \.json file cannot be streamed .* stream a \.jsonl, \.csv or"):
        tuner().fit(tk.Data(str(DATA / "mix_alpaca.json"), streaming=True))
    with pytest.raises(tk.DatasetError, match=r"^data file not found"):
        tuner().fit(tk.Data(str(tmp_path / "nope.jsonl"), streaming=True))
    with pytest.raises(tk.DatasetError, match="streams a file or a dataset; got list"):
        tuner().fit(tk.Data(rows_of(3), streaming=True))


def test_a_streamed_run_on_the_fake_backend_records_the_stream(tmp_path: Path) -> None:
    t = tuner()
    path = write_jsonl(tmp_path / "a.jsonl", rows_of(100))
    plan = t.plan(tk.Data(str(path), streaming=True))
    assert plan.steps == 3 and plan.examples == 64  # estimated from the rows checked before the run
    t.fit(tk.Data(str(path), streaming=True))
    assert t.data_summary is not None and t.data_summary["train"]["streaming"] is True


def test_a_dataset_name_streams_from_the_local_cache(hub_cache: Path) -> None:
    data = tk.Data("org/name", subset="main", split="train", streaming=True)
    assert [row for _, row in stream_rows(data)] == load_rows(data.model_copy(update={"streaming": False}))


def test_rows_with_images_are_refused_in_a_stream(tmp_path: Path) -> None:
    pictured = json.loads((DATA / "vision" / "openai_parts.jsonl").read_text(encoding="utf-8").splitlines()[0])
    image = DATA / "vision" / pictured["messages"][0]["content"][0]["image"]  # relative to the data file's folder
    pictured["messages"][0]["content"][0]["image"] = str(image)
    text = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in rows_of(70)]  # fmt: skip
    early = write_jsonl(tmp_path / "early.jsonl", [pictured, *text[:10]])
    with pytest.raises(tk.IncompatibleError, match=r"row 1 holds an image: rows with images train from one source"):
        tuner().fit(tk.Data(str(early), streaming=True))
    late = write_jsonl(tmp_path / "late.jsonl", [*text, pictured])  # past the rows checked before the run
    t = tuner()
    with pytest.raises(tk.IncompatibleError, match=r"row 71 holds an image: .* not yet from a stream"):
        t.fit(tk.Data(str(late), streaming=True))
        list(t.prepare(tk.Data(str(late), streaming=True)).to_dataset())  # the fake backend reads no stream
