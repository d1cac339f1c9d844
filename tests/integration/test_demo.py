"""The embedded demo (``tunekit demo``): it shows what it promises, on CPU, with no network.

One full run (about a minute and a half of one CPU core) serves every test in this module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import pytest
from rich.console import Console

import tunekit as tk
from tunekit.demo import RECIPE, DemoReport, held_out_metrics, run_demo
from tunekit.demo.report import Show


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoReport, str]:
    """The demo's report, and what it wrote to stdout and stderr with no console (should be nothing)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        report = run_demo(tmp_path_factory.mktemp("demo") / "run", console=None, seed=0)
    return report, out.getvalue()


def test_accuracy_before_and_after(demo):
    report, _ = demo
    assert len(report.held_out) == RECIPE.held_out_size
    assert report.accuracy_before <= 0.1
    assert report.accuracy_after >= 0.9
    # The samples shown are held-out questions, in both languages.
    assert set(report.samples) <= set(report.held_out)
    assert any("倒" in s.prompt for s in report.samples)
    assert any("everse" in s.prompt or "backwards" in s.prompt for s in report.samples)


def test_answers_after_are_just_the_answer(demo):
    report, _ = demo
    for s in report.held_out:
        after = s.answer_after
        assert after == after.strip() and "\n" not in after, s
        assert s.prompt not in after, s  # no echo of the question
        assert not any(word in after for word in ("everse", "backwards", "倒", "序", "user", "assistant")), s


def test_answers_stop_at_the_end_of_turn_token(demo):
    """Token by token: a reloaded adapter ends each answer with <|im_end|>, long before the limit."""
    import torch

    report, _ = demo
    tuner = tk.load(report.adapter_dir)
    tok, model = tuner.tokenizer, tuner.model
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    for s in report.held_out[:10]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": s.prompt}], tokenize=False, add_generation_prompt=True
        )
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=24, do_sample=False, eos_token_id=end_of_turn, pad_token_id=tok.pad_token_id
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        assert new[-1] == end_of_turn and len(new) < 24, (s.prompt, tok.convert_ids_to_tokens(new))
        assert tok.decode(new[:-1]) == s.answer_after


def test_adapter_is_a_small_peft_lora_adapter(demo):
    from peft import PeftConfig
    from safetensors import safe_open

    report, _ = demo
    adapter, base = report.adapter_dir, report.base_dir
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    config = PeftConfig.from_pretrained(str(adapter))
    assert config.peft_type == "LORA" and config.r == RECIPE.lora_r
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)  # only the low-rank matrices
    manifest = json.loads((adapter / "tunekit.json").read_text(encoding="utf-8"))
    assert manifest["base_model"] == str(base.resolve())  # it needs its base to run
    assert (base / "model.safetensors").is_file() and (base / "config.json").is_file()
    assert report.adapter_bytes == (adapter / "adapter_model.safetensors").stat().st_size
    assert report.adapter_bytes * 10 < report.base_bytes
    assert 0 < report.trainable_params == report.total_params - report.base_params
    assert report.trainable_share < 0.1


def test_silent_without_console(demo):
    _, printed = demo
    assert printed == ""


def test_prints_the_results_side_by_side(demo):
    report, _ = demo
    console = Console(record=True, width=160, file=io.StringIO())
    Show(console).results(report)
    text = console.export_text()
    assert "Before LoRA" in text and "After LoRA" in text
    for s in report.samples:
        assert s.prompt in text and s.expected in text
    assert f"before {report.accuracy_before:.0%}, after {report.accuracy_after:.0%}" in text
    assert f"{report.trainable_params:,} of {report.total_params:,}" in text
    assert "low-rank A and B" in text and "merged" in text
    assert str(report.adapter_dir) in text


def test_progress_lines(capsys):
    console = Console(record=True, width=160, file=io.StringIO())
    show = Show(console)
    with show.step("Pretraining"):
        pass
    show.pretrained(1000, 6.0, 0.5, (("1 2 3 reversed is", " 3 2 1."),))
    text = console.export_text()
    assert "✓ Pretraining" in text and "1,000 parameters" in text and "1 2 3 reversed is 3 2 1." in text
    quiet = Show(None)
    with quiet.step("nothing"):
        pass
    quiet.intro()
    quiet.pretrained(1, 1.0, 1.0, ())
    assert capsys.readouterr() == ("", "")


def test_the_demo_needs_no_extra(monkeypatch):
    """A plain `pip install tunekit` has no sacrebleu (the eval extra): the demo then scores exact match alone (it
    failed there, found by `nox -s package`)."""
    assert held_out_metrics() == ["exact_match", "chrf"]  # the test extra installs sacrebleu
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    assert held_out_metrics() == ["exact_match"]
