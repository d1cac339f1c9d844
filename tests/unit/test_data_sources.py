"""Datasets by name or directory (tunekit.data.sources) and mixtures of sources (tk.Mix), on the fake backend.

Datasets by name are read from a ``datasets`` cache the tests build locally (offline; nothing is downloaded).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tunekit as tk
from tunekit.data import load_rows
from tunekit.data import sources as sources_module
from tunekit.data.mixture import draw_counts, draw_rows
from tunekit.testing import FakeBackend

from .helpers import rows_of, write_jsonl

DATA = Path(__file__).parent.parent / "data"
ALPACA, SHAREGPT, OPENAI = DATA / "mix_alpaca.json", DATA / "mix_sharegpt.jsonl", DATA / "mix_openai.jsonl"
PREFERENCE, PREFERENCE_TEXT = DATA / "mix_trl_preference.jsonl", DATA / "mix_trl_preference_text.jsonl"
KTO, PROMPTS, TEXT = DATA / "mix_kto.jsonl", DATA / "mix_prompts.jsonl", DATA / "mix_text.jsonl"


def tuner(**kw: Any) -> tk.Tuner:
    kw.setdefault("training", tk.Training(seed=7))
    return tk.Tuner("fake-model", backend=FakeBackend(rewards=lambda item: 1.0), progress=False, **kw)


# --- datasets by name: a local datasets cache, offline --------------------------------------------------------------


def test_a_dataset_name_is_read_from_the_local_cache_offline(hub_cache: Path) -> None:
    assert load_rows(tk.Data("org/name", subset="main")) == rows_of(6, "main")  # split: train by default
    assert load_rows(tk.Data("org/name", subset="main", split="test")) == rows_of(2, "main-test")
    assert load_rows(tk.Data("org/name", subset="extra", split="train[:1]")) == rows_of(1, "extra")
    with pytest.raises(tk.DatasetError, match=r"has the splits \['test', 'train'\]; say which to read for the eval"):
        load_rows(tk.Data("org/name", subset="main"), what="eval")  # eval data does not default to train


def test_fit_takes_a_dataset_name_for_training_and_eval_data(hub_cache: Path) -> None:
    t = tuner()
    result = t.fit(tk.Data("org/name", subset="main"), eval_data=tk.Data("org/name", subset="extra", split="test"))
    assert result.num_examples == 6
    assert t.data_summary is not None and t.data_summary["eval"]["rows"] == 2
    with pytest.raises(tk.DatasetError) as e:
        t.fit("org/name")
    assert str(e.value).startswith("org/name: it has several subsets and none was chosen")
    assert "extra, main" in str(e.value) and "tk.Data('org/name', subset=...)" in str(e.value)


def test_unknown_split_and_subset_list_the_available_ones(hub_cache: Path) -> None:
    with pytest.raises(tk.DatasetError) as e:
        load_rows(tk.Data("org/name", subset="main", split="validation"))
    assert str(e.value).startswith("org/name: no split 'validation'") and "['train', 'test']" in str(e.value)
    with pytest.raises(tk.DatasetError) as e:
        load_rows(tk.Data("org/name", subset="nope"))
    message = str(e.value)
    assert message.startswith("org/name: no subset 'nope'") and "main" in message and "extra" in message
    assert "subset=..." in message


def test_an_unknown_name_says_what_was_tried_without_a_traceback(hub_cache: Path) -> None:
    with pytest.raises(tk.DatasetError) as e:
        load_rows("org/missing")
    message = str(e.value)
    assert message.startswith("no data file or directory 'org/missing' here")
    assert f"no dataset 'org/missing' in the local datasets cache ({hub_cache})" in message
    assert "the hub was not asked" in message and "give its path with the extension" in message
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained huggingface_hub traceback


def test_validate_data_takes_a_dataset_name(hub_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunekit.cli import main

    assert main(["validate-data", "org/name", "--subset", "main", "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == "org/name" and report["rows"] == 2 and report["format"] == "prompt_completion"
    assert main(["validate-data", "org/name", "--subset", "nope"]) != 0
    assert "org/name: no subset 'nope'" in capsys.readouterr().err
    assert main(["validate-data", str(ALPACA), "org/name", "--subset", "main"]) == 2  # options of one source
    assert "apply to one source" in capsys.readouterr().err


def test_a_missing_path_is_a_missing_file_not_a_hub_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(*args: Any, **kw: Any) -> None:
        raise AssertionError("looked up on the hub")

    monkeypatch.setattr("tunekit.data.loading.load_named", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for typo in ("data/train.jsonl", "data/train", "./train", "train.json", str(tmp_path / "x")):
        with pytest.raises(tk.DatasetError, match=r"^data file not found: "):
            load_rows(typo)
    assert sources_module.looks_like_name("org/name") and sources_module.looks_like_name("squad")
    assert not sources_module.looks_like_name("org/name/extra") and not sources_module.looks_like_name("a--b")


def test_a_save_to_disk_directory_and_a_folder_of_files(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(rows_of(3, "saved")).save_to_disk(str(tmp_path / "one"))
    assert load_rows(tmp_path / "one") == rows_of(3, "saved")
    splits = {"train": rows_of(3, "t"), "test": rows_of(1, "v")}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert load_rows(tmp_path / "dict") == rows_of(3, "t")
    assert load_rows(tk.Data(str(tmp_path / "dict"), split="test")) == rows_of(1, "v")
    folder = tmp_path / "files"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows_of(4, "f"))
    write_jsonl(folder / "test.jsonl", rows_of(2, "g"))
    assert load_rows(folder) == rows_of(4, "f")
    assert load_rows(tk.Data(str(folder), split="test")) == rows_of(2, "g")
    with pytest.raises(tk.DatasetError, match=r"no split 'dev'; its splits are \['test', 'train'\]"):
        load_rows(tk.Data(str(tmp_path / "dict"), split="dev"))
    with pytest.raises(tk.DatasetError, match=r"holds one dataset .* not splits; leave split='test' out"):
        load_rows(tk.Data(str(tmp_path / "one"), split="test"))


def test_split_options_on_a_file_or_a_dataset_dict(tmp_path: Path) -> None:
    import datasets

    path = write_jsonl(tmp_path / "a.jsonl", rows_of(2, "a"))
    with pytest.raises(tk.DatasetError, match=r"split='train' applies to a dataset name or directory, not to the file"):
        load_rows(tk.Data(str(path), split="train"))
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows_of(2, "a")), "dev": datasets.Dataset.from_list(rows_of(1, "b"))}
    )
    assert load_rows(tk.Data(dd, split="dev")) == rows_of(1, "b")
    with pytest.raises(tk.ConfigError, match=r"Data.split=''.: expected a non-empty string"):
        tk.Data("org/name", split="")


# --- mixtures: drawing ---------------------------------------------------------------------------------------------


def test_weighted_counts_are_exact_and_share_the_size() -> None:
    mix = tk.Mix({"a": 0.7, "b": 0.2, "c": 0.1}, size=1000)
    assert draw_counts(mix, [5000, 5000, 5000]) == [700, 200, 100]
    assert draw_counts(tk.Mix(["a", "b", "c"], weights=[1, 1, 1], size=10), [9, 9, 9]) == [4, 3, 3]
    # no size: the largest mixture no source repeats in (b runs out first at 0.5 * 40 = 20 rows)
    assert draw_counts(tk.Mix({"a": 1, "b": 1}), [1000, 20]) == [20, 20]
    assert draw_counts(tk.Mix(["a", "b"]), [5, 3]) == [5, 3]  # concatenation
    assert draw_counts(tk.Mix(["a", "b"], counts=[2, 9]), [5, 3]) == [2, 9]


def test_oversampling_repeats_every_row_before_drawing_the_rest() -> None:
    import random

    picked = draw_rows(4, 10, random.Random(0))
    assert Counter(picked) == Counter({i: 2 for i in range(4)}) + Counter(picked[8:])
    assert len(set(picked[8:])) == 2


def test_a_weighted_mixture_of_1000_rows_has_the_weights_proportions(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", rows_of(900, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", rows_of(300, "b"))
    c = write_jsonl(tmp_path / "c.jsonl", rows_of(50, "c"))  # oversampled 4x
    t = tuner()
    plan = t.plan(tk.Mix({str(a): 0.6, str(b): 0.2, str(c): 0.2}, size=1000))
    assert plan.examples == 1000
    assert [(s.rows, s.drawn) for s in plan.sources] == [(900, 600), (300, 200), (50, 200)]
    enc = t.prepare(tk.Mix({str(a): 0.6, str(b): 0.2, str(c): 0.2}, size=1000))
    assert sum(s.tokens for s in enc.sources) == enc.num_tokens
    # the sources are interleaved: every tenth of the mixture holds each source within a tolerance of its share
    norm = t._normalise(tk.Mix({str(a): 0.6, str(b): 0.2, str(c): 0.2}, size=1000), "training")
    firsts = Counter(ex.messages[0]["content"].split()[0] for ex in norm.examples[:100])  # type: ignore[index]
    assert abs(firsts["a"] - 60) <= 15 and abs(firsts["b"] - 20) <= 12 and abs(firsts["c"] - 20) <= 12


def test_the_draw_follows_the_seed(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", rows_of(50, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", rows_of(50, "b"))
    mix = tk.Mix({str(a): 0.5, str(b): 0.5}, size=40)

    def drawn(seed: int) -> list[str]:
        t = tuner(training=tk.Training(seed=seed))
        return [ex.messages[1]["content"] for ex in t._normalise(mix, "training").examples]  # type: ignore[index]

    assert drawn(1) == drawn(1) and drawn(1) != drawn(2)
    assert sorted(drawn(1)) != sorted(drawn(2))  # other rows, not only another order


# --- mixtures: layouts, errors, objectives -------------------------------------------------------------------------


def test_each_source_is_read_in_its_own_layout() -> None:
    t = tuner()
    mix = tk.Mix([str(ALPACA), str(SHAREGPT), str(OPENAI)])
    result = t.fit(mix)
    assert result.num_examples == 6 + 5 + 4
    summary = t.data_summary
    assert summary is not None and summary["train"]["format"] == "messages"
    assert [(s["name"], s["format"], s["rows"], s["drawn"]) for s in summary["train"]["sources"]] == [
        (str(ALPACA), "alpaca", 6, 6),
        (str(SHAREGPT), "sharegpt", 5, 5),
        (str(OPENAI), "messages", 4, 4),
    ]
    enc = t.prepare(mix)
    each = [tuner().prepare(str(p)) for p in (ALPACA, SHAREGPT, OPENAI)]
    assert enc.input_ids == [ids for e in each for ids in e.input_ids]  # concatenated, each encoded as on its own


def test_errors_name_the_source_and_its_row(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows_of(3, "x"), {"prompt": "q", "completion": ""}])
    with pytest.raises(tk.DatasetError) as e:
        tuner().fit(tk.Mix([str(ALPACA), str(bad)], weights=[1, 1]))
    assert str(e.value).startswith(f"{bad}: row 4, field 'completion': empty string") and e.value.row == 4
    with pytest.raises(tk.DatasetError) as e:
        tuner().fit(str(ALPACA), eval_data=tk.Mix([str(OPENAI), str(bad)]))
    assert str(e.value).startswith(f"eval_data: {bad}: row 4, field 'completion'")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{oops\n', encoding="utf-8")
    with pytest.raises(tk.DatasetError, match=rf"^{broken}: invalid JSON on line 2"):  # names it once
        tuner().fit(tk.Mix([str(ALPACA), str(broken)]))
    with pytest.raises(tk.DatasetError, match=rf"^data file not found: {tmp_path / 'nope.jsonl'}; check the path"):
        tuner().fit(tk.Mix([str(ALPACA), str(tmp_path / "nope.jsonl")]))


def test_skipped_rows_name_their_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows_of(2, "x"), {"prompt": "q"}])
    t = tuner(training=tk.Training(on_bad_rows="skip"))
    with caplog.at_level(logging.WARNING, logger="tunekit"):
        enc = t.prepare(tk.Mix([str(OPENAI), str(bad)]))
    assert enc.skipped == [(3, f"{bad}: row 3: missing field 'completion'; add it to every row")]
    assert f"skipped {bad}: row 3" in caplog.text


def test_a_preference_source_beside_an_sft_source_is_refused() -> None:
    with pytest.raises(tk.DatasetError) as e:
        tuner().fit(tk.Mix([str(ALPACA), str(PREFERENCE)]))
    message = str(e.value)
    assert message.startswith("the training sources cannot train together, they hold different kinds of data")
    assert f"{ALPACA}: alpaca (demonstrations (SFT))" in message
    assert f"{PREFERENCE}: preference (preference pairs" in message and "SFT first, then DPO" in message
    with pytest.raises(tk.DatasetError, match="eval sources cannot train together"):
        tuner().fit(str(ALPACA), eval_data=tk.Mix([str(OPENAI), str(TEXT)]))


@pytest.mark.parametrize(
    ("objective", "files", "trainer_rows"),
    [
        (None, [ALPACA, SHAREGPT], False),  # SFT, inferred
        (tk.CausalLM(), [TEXT, TEXT], False),
        (tk.DPO(), [PREFERENCE, PREFERENCE_TEXT], True),
        (tk.KTO(), [KTO, KTO], True),
        (tk.GRPO(reward=lambda completions, **kw: [1.0] * len(completions)), [PROMPTS, PROMPTS], True),
    ],
    ids=["sft", "causal_lm", "dpo", "kto", "grpo"],
)
def test_every_objective_trains_a_mixture_and_evaluates_on_one(
    objective: tk.Objective | None, files: list[Path], trainer_rows: bool
) -> None:
    t = tuner(objective=objective)
    mix = tk.Mix([str(p) for p in files], weights=[2, 1], size=9)
    plan = t.plan(mix, eval_data=tk.Mix([str(p) for p in files]))
    assert plan.examples >= 9 and [s.drawn for s in plan.sources] == [6, 3]
    assert all(s.tokens > 0 for s in plan.sources) and sum(s.tokens for s in plan.sources) == plan.tokens
    result = t.fit(mix, eval_data=tk.Mix([str(p) for p in files]))
    assert result.steps > 0 and t.data_summary is not None and len(t.data_summary["eval"]["sources"]) == 2
    enc = t.prepare(mix)
    assert (type(enc).__name__ == "TrainerRows") == trainer_rows


def test_preference_pairs_beside_labelled_answers_train_kto() -> None:
    t = tuner()
    mix = tk.Mix([str(PREFERENCE), str(KTO)])
    plan = t.plan(mix)
    assert plan.objective == "KTO" and [(s.rows, s.drawn) for s in plan.sources] == [(5, 5), (5, 5)]
    rows = t.prepare(mix)
    assert len(rows.records) == 2 * 5 + 5  # each pair became a desirable and an undesirable answer
    assert [r["label"] for r in rows.records[:2]] == [True, False] and "chosen" not in rows.records[0]
    assert rows.rows[:2] == [1, 1]  # both from row 1 of the pairs' file
    with pytest.raises(
        tk.IncompatibleError, match=r"mix preference pairs with labelled answers .*, which train KTO together"
    ):
        tuner(objective=tk.DPO()).plan(mix)


def test_plan_prints_each_source() -> None:
    text = str(tuner().plan(tk.Mix({str(OPENAI): 3, str(SHAREGPT): 1}, size=8)))
    assert f"    {OPENAI}: 6 rows drawn of 4 (repeated 1.5x), " in text
    assert f"    {SHAREGPT}: 2 rows drawn of 5, " in text


def test_mix_options_are_checked() -> None:
    with pytest.raises(tk.ConfigError, match="2 weights for 3 sources"):
        tk.Mix(["a", "b", "c"], weights=[1, 2])
    with pytest.raises(tk.ConfigError, match="not both"):
        tk.Mix(["a", "b"], weights=[1, 2], counts=[1, 2])
    with pytest.raises(tk.ConfigError, match="size is shared out by weights"):
        tk.Mix(["a", "b"], size=10)
    with pytest.raises(tk.ConfigError, match="every weight must be a positive number, got 0"):
        tk.Mix(["a", "b"], weights=[1, 0])
    with pytest.raises(tk.ConfigError, match=r"Mix\(sources=\{.b.: 0\}\): a source.s weight must be a positive"):
        tk.Mix({"a": 1, "b": 0})
    with pytest.raises(tk.ConfigError, match="every count must be at least 1"):
        tk.Mix(["a", "b"], counts=[3, 0])
    with pytest.raises(tk.ConfigError, match=r"Mix\(sources=...\): source 2 is a Mix itself"):
        tk.Mix(["a", tk.Mix(["b"])])
    with pytest.raises(tk.ConfigError, match=r"Mix\(sources=...\): source 2: Data\(source=42\)"):
        tk.Mix(["a", 42])
    with pytest.raises(tk.DatasetError, match=r"a tk\.Mix .* is read source by source"):
        load_rows(tk.Mix(["a", "b"]))
    assert tk.Mix(["a.jsonl", "a.jsonl"]).names == ["a.jsonl (#1)", "a.jsonl (#2)"]
    assert tk.Mix([[{"text": "x"}], tk.Data("org/n", split="test")]).names == ["source 1 (list)", "org/n"]


def test_a_run_config_takes_a_mixture_and_a_dataset_name(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(ALPACA, tmp_path / "data" / "alpaca.json")
    shutil.copy(SHAREGPT, tmp_path / "data" / "chats.jsonl")
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: tiny\n"
        "data:\n"
        "  sources: {data/alpaca.json: 0.75, data/chats.jsonl: 0.25}\n"
        "  size: 8\n"
        "eval_data: {path: org/name, split: test}\n",
        encoding="utf-8",
    )
    cfg = tk.RunConfig.from_yaml(config)
    assert isinstance(cfg.data, tk.Mix) and cfg.data.size == 8
    assert cfg.data.sources == [str(tmp_path / "data" / "alpaca.json"), str(tmp_path / "data" / "chats.jsonl")]
    assert cfg.data.weights == [0.75, 0.25]
    assert isinstance(cfg.eval_data, tk.Data) and cfg.eval_data.source == "org/name"  # a name stays a name
    back = tk.RunConfig.from_yaml(write_yaml(tmp_path / "back.yaml", cfg.to_yaml()))
    assert back.data == cfg.data
    listed = tk.RunConfig(model="m", data=["a.jsonl", {"path": "org/x", "split": "train"}])
    assert isinstance(listed.data, tk.Mix) and listed.data.names == ["a.jsonl", "org/x"]


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_with_images_in_a_mixture_are_refused_naming_the_row() -> None:
    images = DATA / "vision" / "openai_parts.jsonl"  # rows with images, beside a text source
    with pytest.raises(tk.IncompatibleError, match=r"row \d+ holds an image: rows with images train from one source"):
        tuner().fit(tk.Mix([str(ALPACA), str(images)]))
