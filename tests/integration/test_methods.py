"""Every method in the registry learns the toy task, saves, reloads (tunekit and plain peft) and merges.

Registry-driven: each registered method (and the LoRA variants) trains once per module, in a
module-scoped fixture that the learning, reload and merge checks share. A method added to the
registry without a case here, or without a backend translation, fails these tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import tunekit as tk
from tunekit.methods import registry
from tunekit.testing import reverse_task

from ._threads import one_thread  # noqa: F401  (autouse)
from .helpers import cpu, heldout_loss


@dataclass(frozen=True)
class Case:
    id: str
    method: tk.Method
    learning_rate: float
    steps: int


# The step budget and learning rate of each method on the toy task (tiny llama, initializer_range=0.2,
# batch 16). Prompt-based and scaling methods train very few parameters and need high rates.
CASES: dict[str, list[Case]] = {
    "Full": [Case("Full", tk.Full(), 3e-3, 30)],
    "Freeze": [Case("Freeze", tk.Freeze(), 3e-3, 30)],
    "LoRA": [
        Case("LoRA", tk.LoRA(), 1e-2, 40),
        Case("LoRA-dora", tk.LoRA(dora=True), 1e-2, 40),
        Case("LoRA-rslora", tk.LoRA(rslora=True), 1e-2, 40),
        Case("LoRA-pissa", tk.LoRA(init="pissa"), 1e-2, 40),
    ],
    "LoHa": [Case("LoHa", tk.LoHa(), 3e-2, 40)],
    "LoKr": [Case("LoKr", tk.LoKr(), 3e-2, 40)],
    "AdaLoRA": [Case("AdaLoRA", tk.AdaLoRA(), 1e-2, 40)],
    "VeRA": [Case("VeRA", tk.VeRA(), 5e-2, 40)],
    "OFT": [Case("OFT", tk.OFT(), 1e-2, 30)],
    "IA3": [Case("IA3", tk.IA3(), 3e-1, 50)],
    "PromptTuning": [
        Case("PromptTuning", tk.PromptTuning(num_virtual_tokens=32, init_text="reverse the digits"), 3e-1, 120)
    ],
    "PrefixTuning": [Case("PrefixTuning", tk.PrefixTuning(num_virtual_tokens=16), 3e-1, 50)],
    "PTuning": [Case("PTuning", tk.PTuning(num_virtual_tokens=32), 3e-2, 200)],
}

_MISSING = "MISSING"
PARAMS = [
    pytest.param(case if case else name, id=case.id if case else f"{name}-{_MISSING}")
    for name in registry()
    for case in (CASES.get(name) or [None])
]


def test_every_registered_method_has_a_case() -> None:
    missing = sorted(set(registry()) - set(CASES))
    assert not missing, f"add a training case for {missing} to CASES in {__file__}"


@pytest.fixture(scope="module")
def toy() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return reverse_task(200, seed=1), reverse_task(32, seed=2)


def logits_of(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@dataclass
class Trained:
    case: Case
    tuner: tk.Tuner
    result: tk.FitResult
    before: float
    after: float
    path: Any
    ids: torch.Tensor


@pytest.fixture(scope="module", params=PARAMS)
def trained(request, tiny_llama_init02, toy, tmp_path_factory) -> Trained:
    case = request.param
    if not isinstance(case, Case):
        pytest.fail(f"method {case} is registered but has no training case; add one to CASES in {__file__}")
    train, held = toy
    tuner = tk.Tuner(
        tiny_llama_init02,
        method=case.method,
        objective=tk.SFT(),
        training=cpu(max_steps=case.steps, learning_rate=case.learning_rate, batch_size=16, log_every=10),
    )
    before = heldout_loss(tuner, held)
    result = tuner.fit(train, eval_data=held)
    after = heldout_loss(tuner, held)
    path = tuner.save(tmp_path_factory.mktemp(case.id) / "saved")
    ids = torch.tensor([tuner.prepare(held[:1]).input_ids[0]])
    return Trained(case, tuner, result, before, after, path, ids)


def test_sft_lowers_heldout_loss_by_30_percent(trained: Trained, prove) -> None:
    assert math.isfinite(trained.after)
    assert trained.after <= 0.7 * trained.before, (trained.case.id, trained.before, trained.after)
    # The trainer's own evaluation measures the same thing (AdaLoRA's model loss may add its regulariser).
    if not isinstance(trained.case.method, tk.AdaLoRA):
        assert trained.result.eval_loss == pytest.approx(trained.after, rel=1e-3)
    assert trained.result.steps == trained.case.steps
    assert 0 < trained.result.trainable_params <= trained.result.total_params
    prove(trained.case.method.name, "SFT")


def test_tk_load_gives_the_same_logits(trained: Trained) -> None:
    again = tk.load(trained.path)
    assert again.method == trained.case.method
    torch.testing.assert_close(
        logits_of(again.model, trained.ids), logits_of(trained.tuner.model, trained.ids), rtol=0, atol=1e-5
    )


# peft 0.21 checks AdaLoRA's saved rank_pattern (keyed by parameter) as if it were LoRA's (keyed by
# module) and warns, then applies it correctly anyway; the logits below are the proof.
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match:RuntimeWarning")
def test_plain_peft_or_transformers_reload_gives_the_same_logits(trained: Trained, tiny_llama_init02) -> None:
    from transformers import AutoModelForCausalLM

    if trained.case.method.is_adapter:
        from peft import PeftModel

        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_init02), trained.path)
    else:  # Full and Freeze save a whole transformers model
        plain = AutoModelForCausalLM.from_pretrained(trained.path)
    torch.testing.assert_close(
        logits_of(plain, trained.ids), logits_of(trained.tuner.model, trained.ids), rtol=0, atol=1e-5
    )


def test_merge(trained: Trained) -> None:
    method = trained.case.method
    unmerged = logits_of(trained.tuner.model, trained.ids)
    if not method.mergeable:
        with pytest.raises(tk.IncompatibleError, match=rf"^{method.name} cannot be merged: \w+"):
            trained.tuner.merge()
        return
    merged = trained.tuner.merge()
    from peft import PeftModel

    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n or "hada_" in n or "lokr_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(merged, trained.ids), unmerged, rtol=0, atol=1e-4)
    # The tuner keeps its adapter: merging worked on a copy.
    torch.testing.assert_close(logits_of(trained.tuner.model, trained.ids), unmerged, rtol=0, atol=0)


def test_per_step_call_matches_the_capability(trained: Trained) -> None:
    from tunekit.backends.hf.method_callbacks import method_callbacks

    method = trained.case.method
    callbacks = method_callbacks(method, trained.tuner.model)
    assert bool(callbacks) == method.needs_step_callback
    if not method.needs_step_callback:
        return
    assert isinstance(method, tk.AdaLoRA)
    config = trained.tuner.model.peft_config["default"]
    # The schedule was placed on the run's real length, and the budget was allocated at its end.
    assert config.total_step == trained.result.steps
    assert config.tinit == int(method.warmup_share * trained.result.steps)
    assert config.rank_pattern, "update_and_allocate never ran"
    kept = sum(sum(v) for v in config.rank_pattern.values())
    assert kept <= method.target_r * len(config.rank_pattern) < method.init_r * len(config.rank_pattern)


@pytest.mark.parametrize("name", list(registry()))
def test_causal_lm_lowers_heldout_loss_by_30_percent(name: str, tiny_llama_init02, prove) -> None:
    """Continued pre-training on raw text, one case per method (the first of its CASES)."""
    if name not in CASES:
        pytest.fail(f"method {name} is registered but has no training case; add one to CASES in {__file__}")
    case = CASES[name][0]
    train, held = reverse_task(200, seed=1, fmt="text"), reverse_task(32, seed=2, fmt="text")
    tuner = tk.Tuner(
        tiny_llama_init02,
        method=case.method,
        objective=tk.CausalLM(),
        training=cpu(max_steps=case.steps, learning_rate=case.learning_rate, batch_size=16, log_every=10),
    )
    before = heldout_loss(tuner, held)
    tuner.fit(train)
    after = heldout_loss(tuner, held)
    assert after <= 0.7 * before, (name, before, after)
    prove(name, "CausalLM")
