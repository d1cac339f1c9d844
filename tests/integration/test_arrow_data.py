"""The Arrow data driver (tunekit.data.arrow) against the list path it replaced: the same examples and encodings on
every format, one process equal to several, and errors that name the user's row from inside a worker."""

from __future__ import annotations

import gc
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import load_rows, normalise
from tunekit.data.arrow import ArrowNormalised, _Normalise, default_workers, normalise_table, table_digest
from tunekit.data.cache import example_digest, examples_digest
from tunekit.data.columns import unused_columns
from tunekit.data.control_tokens import control_tokens
from tunekit.data.encoding import Encoded, encode_batch, encode_example
from tunekit.data.formats import Example, NormalisedData
from tunekit.data.images import ImageOptions
from tunekit.data.loading import base_dir_of, iter_parquet_rows
from tunekit.data.tables import Stops
from tunekit.errors import DatasetError
from tunekit.testing import first_task, write_jsonl
from tunekit.training_data import encode_for, normalise_for

DATA = Path(__file__).resolve().parents[1] / "data"

# Every format and layout, with the objective that trains it (None: inferred, as fit does).
FILES = {
    "canonical_chats.jsonl": None,  # messages
    "chat_export.csv": None,
    "sharegpt_system.jsonl": None,  # sharegpt
    "sharegpt_tools.json": None,  # tool rows
    "openai_tool_calls.jsonl": None,
    "reasoning_chats.jsonl": None,  # reasoning rows
    "per_turn_flags.jsonl": None,
    "alpaca_history.json": None,
    "sharegpt_preference.jsonl": tk.DPO(),  # preference
    "trl_implicit_prompt.jsonl": tk.DPO(),
    "openai_preference.jsonl": tk.DPO(),
    "kto_messages.jsonl": tk.KTO(),  # unpaired_preference
    "kto_alpaca.json": tk.KTO(),
}
ROWS = {
    "text": [{"text": f"the digits {i} {i + 1} {i + 2} follow"} for i in range(12)],
    "prompt_completion": first_task(12, seed=3),
    "alpaca": [{"instruction": f"add {i}", "input": "" if i % 2 else "to 2", "output": str(i + 2)} for i in range(12)],
    "prompt_only": [{"prompt": f"say {i}", "answer": str(i)} for i in range(12)],
}


def _tuner(model: Path, tmp_path: Path, objective: Any = None, **training: Any) -> tk.Tuner:
    settings = tk.Training(device="cpu", cache_dir=str(tmp_path / "cache"), **training)
    return tk.Tuner(str(model), training=settings, objective=objective, progress=False)


def _list_path(tuner: tk.Tuner, data: Any) -> tuple[Any, Any]:
    """Today's list path: load_rows -> normalise -> encode_examples (or trl's rows), as before the driver."""
    norm = normalise(load_rows(data), on_bad_rows=tuner.training.on_bad_rows)
    return norm, encode_for(tuner._spec(), norm, tuner.tokenizer)


def _same(ours: Any, theirs: Any) -> None:
    if hasattr(theirs, "input_ids"):
        assert list(ours.input_ids) == theirs.input_ids
        assert list(ours.labels) == theirs.labels
        assert list(ours.rows) == list(theirs.rows)
        assert (ours.skipped, ours.truncated, ours.num_tokens) == (theirs.skipped, theirs.truncated, theirs.num_tokens)
    else:  # trl's rows (preference, KTO, RL prompts)
        assert ours.records == theirs.records
        assert (list(ours.rows), ours.skipped, ours.num_tokens, ours.truncated) == (
            list(theirs.rows), theirs.skipped, theirs.num_tokens, theirs.truncated,
        )  # fmt: skip
        want = theirs.to_dataset()
        for chunk in (ours.chunk, 2):  # built a chunk at a time: the same table
            ours.chunk = chunk
            got = ours.to_dataset()
            assert (got.features, got.to_list()) == (want.features, want.to_list())


@pytest.mark.parametrize("name", sorted(FILES) + sorted(ROWS))
def test_the_arrow_path_equals_the_list_path_on_every_format(tiny_qwen: Path, tmp_path: Path, name: str) -> None:
    data: Any = str(DATA / name) if name in FILES else ROWS[name]
    objective = FILES.get(name)
    if name == "text":
        objective = tk.CausalLM()
    if name == "prompt_only":
        objective = tk.GRPO(reward=lambda completions, **_: [0.0] * len(completions))
    tuner = _tuner(tiny_qwen, tmp_path, objective, cache=False)
    norm, _objective = normalise_for(data, training=tuner.training, method=tuner.method, objective=objective)
    assert isinstance(norm, ArrowNormalised)
    theirs_norm, theirs = _list_path(tuner, data)
    assert norm.format == theirs_norm.format
    assert list(norm.examples) == list(theirs_norm.examples)
    assert norm.skipped == theirs_norm.skipped
    _same(encode_for(tuner._spec(), norm, tuner.tokenizer), theirs)


def test_the_cached_entry_is_memory_mapped_and_equal(tiny_qwen: Path, tmp_path: Path) -> None:
    data = write_jsonl(first_task(40, seed=1), tmp_path / "train.jsonl")
    tuner = _tuner(tiny_qwen, tmp_path)
    cold = tuner.prepare(str(data))
    warm = tuner.prepare(str(data))
    _same(warm, cold)
    (entry,) = list((tmp_path / "cache" / "tokenized").rglob("*.arrow"))
    assert warm.table.cache_files[0]["filename"] == str(entry)  # read from the file, not a copy in memory
    _same(cold, _list_path(tuner, str(data))[1])


def _rows_with_bad(n: int, bad: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = first_task(n, seed=7)
    for i, row in bad.items():
        rows[i - 1] = row
    return rows


def test_several_workers_equal_one(tiny_qwen: Path, tmp_path: Path) -> None:
    rows = _rows_with_bad(300, {30: {"prompt": "x", "completion": ""}, 250: {"prompt": "", "completion": "y"}})
    data = write_jsonl(rows, tmp_path / "train.jsonl")
    out = {}
    for workers in (1, 3):
        tuner = _tuner(tiny_qwen, tmp_path, data_workers=workers, on_bad_rows="skip", cache=False)
        out[workers] = tuner.prepare(str(data))
    _same(out[3], out[1])
    assert [r for r, _ in out[3].skipped] == [30, 250]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_row_in_a_worker_raises_the_error_naming_it(tiny_qwen: Path, tmp_path: Path, workers: int) -> None:
    rows = _rows_with_bad(200, {170: {"prompt": "x", "completion": 5}, 190: {"prompt": "x"}})
    tuner = _tuner(tiny_qwen, tmp_path, data_workers=workers, cache=False)
    with pytest.raises(DatasetError, match="row 170, field 'completion'") as caught:
        tuner.prepare(rows)
    assert (caught.value.row, caught.value.field) == (170, "completion")
    with pytest.raises(DatasetError, match="eval_data: row 170") as in_eval:
        normalise_for(rows, training=tuner.training, method=tuner.method, objective=None, what="eval")
    assert in_eval.value.row == 170


@pytest.mark.parametrize("workers", [1, 2])
def test_reading_errors_name_the_line_from_a_worker(tmp_path: Path, workers: int) -> None:
    lines = [json.dumps(r) for r in first_task(150, seed=2)]
    lines.insert(120, "")  # a blank line: skipped, and the line numbers after it are the file's
    lines[140] = '{"prompt": "a", "prompt": "b", "completion": "c"}'
    lines[145] = '{"prompt": "a", completion: "c"}'
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 141: the key 'prompt' appears twice") as caught:
        normalise_table(str(path), on_bad_rows="skip", workers=workers, directory=str(tmp_path))
    assert caught.value.row == 141
    with pytest.raises(DatasetError) as old:
        load_rows(str(path))
    assert str(caught.value) == str(old.value)


def test_nan_cells_and_a_bom_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"prompt": "a", "completion": "b", "note": NaN}\n{"prompt": "c", "completion": "d", "note": 1}\n'
    )
    norm = normalise_table(str(path), on_bad_rows="error", workers=1, directory=str(tmp_path))
    assert list(norm.examples) == normalise(load_rows(str(path))).examples
    assert norm.source_row(1) == {"prompt": "a", "completion": "b", "note": None}
    assert norm.unused() == ["note"]


def test_unused_columns_and_duplicate_keys_read_as_the_list_path_reads_them(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "completion": "b", "zeta": 1}, {"prompt": "c", "completion": "d", "alpha": 2, "zeta": 3}]
    path = write_jsonl(rows, tmp_path / "unused.jsonl")
    norm = normalise_table(str(path), on_bad_rows="error", workers=1, directory=str(tmp_path))
    assert norm.unused() == unused_columns("prompt_completion", rows) == ["zeta", "alpha"]  # the order first met
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b", "prompt": "c"}\n')
    with pytest.raises(DatasetError, match="line 2: the key 'prompt' appears twice"):
        normalise_table(str(twice), on_bad_rows="error", workers=1, directory=str(tmp_path))


def test_the_maps_hide_the_heap_from_the_gc_and_give_it_back(tmp_path: Path) -> None:
    path = write_jsonl(first_task(4, seed=0), tmp_path / "rows.jsonl")
    assert gc.get_freeze_count() == 0
    normalise_table(str(path), on_bad_rows="error", workers=1, directory=str(tmp_path))
    assert gc.get_freeze_count() == 0  # unfrozen after the map
    gc.freeze()  # a caller's own freeze (before a fork) is left as it was
    try:
        frozen = gc.get_freeze_count()
        normalise_table(str(path), on_bad_rows="error", workers=1, directory=str(tmp_path))
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_default_workers_share_the_cores_and_keep_small_data_in_process() -> None:
    assert default_workers(100) == 1
    assert default_workers(10_000_000, 3) == 3
    assert 1 <= default_workers(10_000_000) <= 8


# --- vision rows (Example.images): the same driver, the images' decoded pixels pickled in the work table ----------

VISION = DATA / "vision"


@pytest.mark.parametrize(
    "name", ["openai_parts.jsonl", "llamafactory.json", "sharegpt.json", "sharegpt_dpo.json", "bad_images.jsonl"]
)
@pytest.mark.parametrize("workers", [1, 2])
def test_vision_rows_through_the_driver_equal_the_list_path(tmp_path: Path, name: str, workers: int) -> None:
    pytest.importorskip("PIL")
    data = str(VISION / name)
    training = tk.Training(device="cpu", cache_dir=str(tmp_path), data_workers=workers, on_bad_rows="skip",
                           max_pixels=40 * 40)  # fmt: skip
    objective = tk.DPO() if "dpo" in name else None
    norm, _ = normalise_for(data, training=training, method=tk.LoRA(), objective=objective)
    assert isinstance(norm, ArrowNormalised)
    theirs = normalise(load_rows(data), on_bad_rows="skip", images=ImageOptions.of(training, base_dir_of(data)))
    ours = list(norm.examples)
    assert ours == list(theirs.examples)  # PIL images compare by mode, size and pixels
    assert [[im.tobytes() for im in ex.images] for ex in ours] == [
        [im.tobytes() for im in ex.images] for ex in theirs.examples
    ]
    assert all(im.width * im.height <= 40 * 40 for ex in ours for im in ex.images)  # the budget applied in workers
    assert norm.skipped == theirs.skipped
    assert norm.has_images and theirs.has_images
    assert table_digest(norm) == examples_digest(map(example_digest, theirs.examples))  # the same cache key


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_image_raises_the_list_paths_error_from_a_worker(tmp_path: Path, workers: int) -> None:
    pytest.importorskip("PIL")
    data = str(VISION / "bad_images.jsonl")
    training = tk.Training(device="cpu", cache_dir=str(tmp_path), data_workers=workers)
    with pytest.raises(DatasetError) as caught:
        normalise_for(data, training=training, method=tk.LoRA(), objective=None)
    with pytest.raises(DatasetError) as old:
        normalise(load_rows(data), images=ImageOptions.of(training, base_dir_of(data)))
    assert (str(caught.value), caught.value.row, caught.value.field) == (str(old.value), 2, old.value.field)


def test_text_rows_have_no_images(tmp_path: Path) -> None:
    norm = normalise_table(first_task(5, seed=1), on_bad_rows="error", workers=1, directory=str(tmp_path))
    assert not norm.has_images


def test_the_batch_encoder_equals_one_example_at_a_time(tiny_qwen: Path, tmp_path: Path) -> None:
    tok = _tuner(tiny_qwen, tmp_path).tokenizer
    tokens = control_tokens(tok)
    chats = normalise(first_task(6, seed=4)).examples
    texts = [Example(row=7, text="plain words here"), Example(row=8, text=""), Example(row=9, text="x <|im_end|> y")]
    examples = [*chats, *texts]
    for settings in ({"max_length": 64}, {"max_length": 64, "on_bad_rows": "skip"}, {"max_length": 4}):
        batch = encode_batch(tok, examples, tokens=tokens, raise_errors=False, **settings)
        for ex, got in zip(examples, batch, strict=True):
            try:
                one: Any = encode_example(tok, ex, tokens=tokens, **settings)
            except DatasetError as e:
                assert isinstance(got, DatasetError) and str(got) == str(e)
                continue
            assert isinstance(got, Encoded)
            assert (got.input_ids, got.labels, got.rows, got.skipped, got.truncated) == (
                one.input_ids, one.labels, one.rows, one.skipped, one.truncated,
            )  # fmt: skip
    # The first bad example raises, whichever step finds it: row 8 (nothing to learn: found after tokenising)
    # before row 9 (a control token: found before).
    with pytest.raises(DatasetError, match="row 8"):
        encode_batch(tok, examples, tokens=tokens, max_length=64)


# --- .csv and .parquet read a chunk at a time ----------------------------------------------------------------------


def test_parquet_read_in_batches_equals_the_whole_file(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    rows = first_task(10, seed=6)
    frame = pd.DataFrame({
        "prompt": [r["prompt"] for r in rows],
        "completion": [r["completion"] for r in rows],
        "score": [1, 2, 3, 4, 5, 6, 7, None, 9, 10],  # an int column with one null: floats, as pandas reads it
        "count": list(range(10)),  # no null: ints
        "flag": [True, None, False, True, True, False, True, True, False, True],
        "tags": [["a", "b"], [], ["c"], None, ["d"], ["e"], [], ["f"], ["g"], ["h"]],
        "meta": [{"k": i, "v": None if i % 3 else "x"} for i in range(10)],
    }, index=[f"r{i}" for i in range(10)])  # fmt: skip
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, row_group_size=4)
    assert list(iter_parquet_rows(path, batch_rows=3)) == load_rows(str(path))
    assert [type(r["score"]) for r in iter_parquet_rows(path, batch_rows=3)][:2] == [float, float]
    norm = normalise_table(str(path), on_bad_rows="error", workers=2, directory=str(tmp_path))
    assert list(norm.examples) == normalise(load_rows(str(path))).examples
    assert norm.source_row(8) == load_rows(str(path))[7]


def test_a_chat_parquet_file_through_the_driver(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    chats = load_rows(str(DATA / "canonical_chats.jsonl"))
    path = tmp_path / "chats.parquet"
    pd.DataFrame(chats).to_parquet(path)
    norm = normalise_table(str(path), on_bad_rows="error", workers=1, directory=str(tmp_path))
    assert list(norm.examples) == normalise(load_rows(str(path))).examples


def test_csv_errors_read_as_before(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion\na,b\n" * 3 + "c,d,e\n", encoding="utf-8")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,completion\ncafé,b\n".encode("latin-1"))
    twice = tmp_path / "twice.csv"
    twice.write_text("prompt,prompt,completion\na,b,c\n", encoding="utf-8")
    for path in (bad, latin, twice):
        with pytest.raises(DatasetError) as ours:
            normalise_table(str(path), on_bad_rows="skip", workers=1, directory=str(tmp_path))
        with pytest.raises(DatasetError) as theirs:
            load_rows(str(path))
        assert (str(ours.value), ours.value.row, ours.value.field) == (
            str(theirs.value), theirs.value.row, theirs.value.field,
        )  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_preference_rows_from_workers_equal_the_list_path(tiny_qwen: Path, tmp_path: Path, workers: int) -> None:
    rows = [
        {"prompt": f"pick {i} " + ("x " * 200 if i in (5, 9) else ""), "chosen": f"yes {i}", "rejected": f"no {i}"}
        for i in range(1, 13)
    ]  # rows 5 and 9: the prompt alone fills max_length
    skip = _tuner(tiny_qwen, tmp_path, tk.DPO(), data_workers=workers, on_bad_rows="skip", max_length=64, cache=False)
    norm, _ = normalise_for(rows, training=skip.training, method=skip.method, objective=tk.DPO())
    ours = encode_for(skip._spec(), norm, skip.tokenizer)
    _same(ours, _list_path(skip, rows)[1])
    assert [r for r, _ in ours.skipped] == [5, 9]
    strict = _tuner(tiny_qwen, tmp_path, tk.DPO(), data_workers=workers, max_length=64, cache=False)
    norm, _ = normalise_for(rows, training=strict.training, method=strict.method, objective=tk.DPO())
    with pytest.raises(DatasetError, match="row 5: the prompt alone is") as caught:
        encode_for(strict._spec(), norm, strict.tokenizer)
    assert caught.value.row == 5


def test_workers_stop_after_a_bad_row_and_the_first_one_is_raised(tmp_path: Path) -> None:
    rows = first_task(4000, seed=8)  # 2 workers: rows 1-2000 and 2001-4000, 1,000 a batch
    rows[2999] = {"prompt": "x", "completion": 3}
    with pytest.raises(DatasetError, match="row 3000, field 'completion'"):
        normalise_table(rows, on_bad_rows="error", workers=2, directory=str(tmp_path))
    rows[29] = {"prompt": "x"}
    with pytest.raises(DatasetError, match="row 30") as caught:
        normalise_table(rows, on_bad_rows="error", workers=2, directory=str(tmp_path))
    assert caught.value.row == 30
    assert not list((tmp_path / "work").iterdir())  # the intermediate tables are gone


def test_a_batch_after_a_marked_bad_row_is_skipped(tmp_path: Path) -> None:
    stops = Stops(str(tmp_path))
    fn = _Normalise("prompt_completion", None, "", "error", raise_errors=False, stops=stops)
    batch = {"line": [None] * 2, "raw": [None] * 2, "pickled": [pickle.dumps(r) for r in first_task(2, seed=1)]}
    assert all(fn(batch, [10, 11])["example"])
    stops.mark(5)
    assert not stops.before(5) and stops.before(6)
    assert fn(batch, [10, 11])["example"] == [None, None]  # after row 6: placeholders, the run raises row 6's error
    assert all(fn(batch, [3, 4])["example"])  # before it: still normalised (an earlier bad row would win)


def test_trls_table_is_written_a_chunk_at_a_time_and_memory_mapped(tiny_qwen: Path, tmp_path: Path) -> None:
    rows = [{"prompt": f"pick {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(5)]
    rows[3]["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    tuner = _tuner(tiny_qwen, tmp_path, tk.DPO(), cache=False)
    norm, _ = normalise_for(rows, training=tuner.training, method=tuner.method, objective=tk.DPO())
    ours = encode_for(tuner._spec(), norm, tuner.tokenizer)
    ours.chunk = 2
    workdir = norm.workdir.path
    del norm  # the rows keep the tables they are read from, as when fit builds trl's table from prepare()'s rows
    gc.collect()
    got = ours.to_dataset()
    files = {Path(f["filename"]).parent for f in got.cache_files}
    assert len(got.cache_files) == 3 and files == {workdir}  # three parts, memory-mapped from the work directory
    want = _list_path(tuner, rows)[1].to_dataset()
    assert (got.features, got.to_list()) == (want.features, want.to_list())


@pytest.mark.parametrize("objective", [None, tk.DPO()])
def test_a_mixtures_sources_are_drawn_from_tables_as_from_lists(
    tiny_qwen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective: Any
) -> None:
    from tunekit.data import tables as tables_module
    from tunekit.data.mixture import MixPart, mix_parts

    if objective is None:
        a = [{"prompt": f"a{i}", "completion": f"x{i}"} for i in range(5)] + [{"prompt": "", "completion": "bad"}]
        b = [{"instruction": f"b{i}", "output": f"y{i}"} for i in range(3)]
    else:
        a = [{"prompt": f"a{i}", "chosen": f"x{i}", "rejected": "n"} for i in range(5)]
        a.append({"prompt": "", "chosen": "?"})
        b = [{"prompt": [{"role": "user", "content": f"b{i}"}], "chosen": [{"role": "assistant", "content": "y"}],
              "rejected": [{"role": "assistant", "content": "n"}]} for i in range(3)]  # fmt: skip
    sources = [str(tmp_path / "a.json"), str(tmp_path / "b.jsonl")]
    Path(sources[0]).write_text(json.dumps(a), encoding="utf-8")
    write_jsonl(b, sources[1])
    tuner = _tuner(tiny_qwen, tmp_path, objective, on_bad_rows="skip", seed=7)
    for mix in (tk.Mix(sources, weights=[2, 1], size=11), tk.Mix(sources)):  # repeats and interleaving; concat
        parts = [MixPart(s, normalise(load_rows(s), on_bad_rows="skip"), 0) for s in sources]
        want = mix_parts(mix, parts, 7)
        in_memory = NormalisedData(want.format, list(want.examples))  # one sequence (record) per example: same order
        enc_want = encode_for(tuner._spec(), in_memory, tuner.tokenizer)
        monkeypatch.setattr(tables_module, "CHUNK", 2)
        monkeypatch.setattr(tables_module, "load_rows", lambda *a, **k: pytest.fail("read whole"))
        norm, _ = normalise_for(mix, training=tuner.training, method=tuner.method, objective=objective)
        assert all(isinstance(p.data, ArrowNormalised) for p in norm.parts)
        assert list(norm.examples) == list(want.examples) and norm.examples[3:6] == want.examples[3:6]
        assert [s[0] for s in norm.skipped] == [6]
        ours = encode_for(tuner._spec(), norm, tuner.tokenizer)
        enc_want.skipped = ours.skipped
        if objective is None:
            assert ours.table is not None  # interleaved into one memory-mapped file
        _same(ours, enc_want)
        monkeypatch.undo()


def test_a_kto_mixtures_pairs_are_unpaired_a_chunk_at_a_time(
    tiny_qwen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunekit.data import tables as tables_module
    from tunekit.data.mixed_tables import unpair_table
    from tunekit.data.mixture import MixPart, mix_parts, unpair

    pairs = [{"prompt": f"a{i}", "chosen": f"x{i}", "rejected": f"n{i}"} for i in range(5)]
    pairs.append({"prompt": "", "chosen": "?"})
    answers = [{"prompt": f"b{i}", "completion": f"y{i}", "label": i % 2 == 0} for i in range(3)]
    sources = [str(tmp_path / "pairs.json"), str(tmp_path / "answers.jsonl")]
    Path(sources[0]).write_text(json.dumps(pairs), encoding="utf-8")
    write_jsonl(answers, sources[1])
    tuner = _tuner(tiny_qwen, tmp_path, tk.KTO(), on_bad_rows="skip", seed=7)
    mix = tk.Mix(sources, weights=[2, 1], size=9)  # the pairs repeat; interleaved with the answers
    parts = [MixPart(s, normalise(load_rows(s), on_bad_rows="skip"), 0) for s in sources]
    want = encode_for(tuner._spec(), mix_parts(mix, parts, 7), tuner.tokenizer)  # today's lists: unpair in memory
    monkeypatch.setattr(tables_module, "CHUNK", 2)
    norm, _ = normalise_for(mix, training=tuner.training, method=tuner.method, objective=tk.KTO())
    drawn = norm.parts[0].data
    assert isinstance(drawn, ArrowNormalised) and drawn.format == "preference"
    got = unpair_table(drawn)
    assert isinstance(got, ArrowNormalised)  # a table of its own, written two pairs at a time
    assert list(got.examples) == unpair(NormalisedData(drawn.format, list(drawn.examples), drawn.skipped)).examples
    assert [(ex.row, ex.label) for ex in got.examples][:4] == [(r, lab) for r in (1, 2) for lab in (True, False)]
    ours = encode_for(tuner._spec(), norm, tuner.tokenizer)
    assert ours.format == "unpaired_preference" and len(ours.records) == 2 * 6 + 3
    assert [row for row, _ in ours.skipped] == [row for row, _ in want.skipped] == [6]
    want.skipped = ours.skipped  # named by its source in a tk.Mix, not in the parts built by hand
    _same(ours, want)
