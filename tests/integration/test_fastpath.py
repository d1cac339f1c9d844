"""The fast SFT path is exact: packed loss = token-weighted mean of the per-example losses, no cross-talk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tunekit as tk
from tunekit.backends.hf import attention, fastpath, sft
from tunekit.testing import first_task, tiny_model

IGNORE = -100


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp(request.param), request.param, initializer_range=0.2)


def _examples(vocab: int, seed: int = 0, shapes=((7, 3), (13, 5), (4, 1), (10, 6))) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, prompt in shapes:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        labels = [IGNORE] * prompt + ids[prompt:]  # completion-only labels, as tunekit encodes them
        out.append({"input_ids": ids, "labels": labels})
    return out


def _model(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def _packed(examples: list[dict[str, list[int]]]) -> dict[str, object]:
    batch = sft._PackedCollator(pad_token_id=0, packing=True)(examples)
    batch.pop("tunekit_real_tokens")
    return batch


def _path() -> fastpath.FastPath:
    return fastpath.FastPath(packing=True, attention=attention.VARLEN, liger=False, compile=False)


@pytest.mark.parametrize(
    "shapes", [((7, 3), (13, 5), (4, 1), (10, 6)), ((9, 2), (9, 4), (9, 1))], ids=["mixed", "equal"]
)
def test_packed_loss_is_the_token_weighted_mean_of_per_example_losses(model_dir: Path, shapes: tuple) -> None:
    """Packed loss = (sum over examples of their summed token losses) / (number of supervised tokens)."""
    model = _model(model_dir)
    examples = _examples(model.config.vocab_size, shapes=shapes)
    sums, counts = [], []
    with torch.no_grad():
        for ex in examples:  # each example alone, unpadded, with the model's default attention
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, :-1]
            target = torch.tensor(ex["labels"][1:])
            sums.append(torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum"))
            counts.append(int((target != IGNORE).sum()))
        expected = torch.stack(sums).sum() / sum(counts)
        batch = _packed(examples)
        with attention.varlen_attention(model, _path().attention):
            own = model(**batch).loss  # the model's own loss (heads peft wraps, AdaLoRA)
            from trl.trainer.utils import add_fused_lm_head

            add_fused_lm_head(model)
            fused = model(**batch, fused_lm_head=True)  # trl's chunked LM head, as the fast trainer uses it
            fused_loss = -fused.log_probs.sum() / fused.label_mask.sum()
        model.__dict__.pop("forward")
    # The padded batch (what trl does without packing) gives the same number.
    padded = sft._PackedCollator(pad_token_id=0, packing=False)(examples)
    padded.pop("tunekit_real_tokens")
    with torch.no_grad():
        padded_loss = model(**padded).loss
    assert own.item() == pytest.approx(expected.item(), abs=1e-5)
    assert fused_loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert padded_loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert model.config._attn_implementation == "sdpa"  # given back after the run


def test_no_cross_contamination_in_a_packed_row(model_dir: Path) -> None:
    """Changing example A's tokens changes none of example B's logits in the same packed row."""
    model = _model(model_dir)
    examples = _examples(model.config.vocab_size)
    changed = [dict(e) for e in examples]
    changed[0] = {"input_ids": [(t + 1) % model.config.vocab_size for t in examples[0]["input_ids"]], "labels": []}
    changed[0]["labels"] = changed[0]["input_ids"]
    a_len = len(examples[0]["input_ids"])
    with torch.no_grad(), attention.varlen_attention(model, _path().attention):
        before = model(**_packed(examples)).logits[0]
        after = model(**_packed(changed)).logits[0]
        # Control: the same rows as one sequence (no boundaries) do see A from B.
        joined = model(input_ids=_packed(examples)["input_ids"]).logits[0]
    assert not torch.allclose(before[:a_len], after[:a_len])
    torch.testing.assert_close(before[a_len:], after[a_len:], atol=1e-5, rtol=0)
    alone = model(input_ids=torch.tensor([examples[1]["input_ids"]])).logits[0]
    torch.testing.assert_close(before[a_len : a_len + len(alone)], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(joined[a_len : a_len + len(alone)], alone, atol=1e-3)


def test_fit_with_packing_matches_padded_batches_and_learns(model_dir: Path) -> None:
    rows = first_task(48, seed=3, length=(2, 9))
    losses = {}
    for packing in (False, True):
        tr = tk.Training(device="cpu", max_steps=12, log_every=4, batch_size=8, learning_rate=5e-3, packing=packing)
        tuner = tk.Tuner(str(model_dir), method=tk.LoRA(r=8), training=tr)
        result = tuner.fit(rows)
        losses[packing] = [h["loss"] for h in result.history if "loss" in h]
        assert tuner.model.config._attn_implementation != attention.VARLEN
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[True][-1] < losses[True][0]


def test_samples_generated_during_a_packed_run_mask_the_padding(tiny_llama_init02: Path) -> None:
    # Generation pads a batch of prompts on the left; tunekit_varlen masks no padding, so generation
    # during training must use the model's own attention: the samples at the last step equal what
    # the trained model generates afterwards (same weights), for prompts of different lengths.
    prompts = ["first: 3 1 4 1 5 9 2 6", "first: 7 2"]
    tr = tk.Training(device="cpu", max_steps=20, batch_size=8, learning_rate=5e-3, packing=True)
    tuner = tk.Tuner(
        str(tiny_llama_init02), method=tk.LoRA(r=8), training=tr, hooks=[tk.SampleGenerations(prompts, every=20)]
    )
    result = tuner.fit(first_task(48, seed=4))
    during = [s["output"] for s in next(h for h in result.history if "samples" in h)["samples"]]
    assert during == tuner.generate(prompts, max_new_tokens=32)


def test_prompt_tuning_falls_back_to_padded_batches(model_dir: Path) -> None:
    tuner = tk.Tuner(str(model_dir), method=tk.PromptTuning(num_virtual_tokens=4), training=tk.Training(device="cpu"))
    path = fastpath.choose(tuner.model, tuner.training, torch.device("cpu"))
    assert not path.packing and "virtual tokens" in path.reason
    plain = tk.Tuner(str(model_dir), training=tk.Training(device="cpu"))
    assert fastpath.choose(plain.model, plain.training, torch.device("cpu")).packing
    off = tk.Training(device="cpu", packing=False)
    assert not fastpath.choose(plain.model, off, torch.device("cpu")).packing


def test_token_budget_batches(model_dir: Path) -> None:
    rows = first_task(40, seed=4, length=(2, 9))
    tr = tk.Training(device="cpu", epochs=1, log_every=1, max_length=64, tokens_per_batch=128, learning_rate=5e-3)
    tuner = tk.Tuner(str(model_dir), method=tk.LoRA(r=8), training=tr)
    enc = tuner.prepare(rows)
    packed = fastpath.pack_to_budget(enc.to_dataset(), 128)
    assert all(sum(s) <= 128 for s in packed["seq_lengths"])
    assert sum(len(s) for s in packed["seq_lengths"]) == len(rows)  # every example, none split
    result = tuner.fit(rows)
    assert result.steps == len(packed) < len(rows) // 2  # several examples per micro-batch
    assert result.tokens_per_s > 0


@pytest.mark.slow
def test_compile_trains_like_eager(tiny_llama: Path) -> None:
    """Training(compile=True) hands the model to torch.compile; it learns the same as without (slow: compiling)."""
    rows = first_task(32, seed=8)
    losses = {}
    for compile_ in (False, True):
        tr = tk.Training(device="cpu", max_steps=4, log_every=1, batch_size=8, learning_rate=5e-3, compile=compile_)
        losses[compile_] = [h["loss"] for h in tk.Tuner(str(tiny_llama), training=tr).fit(rows).history if "loss" in h]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"attn_logit_softcapping": 50.0}, "softcapping"),
        ({"sliding_window": 256, "use_sliding_window": True}, "sliding-window"),
        ({"_attn_implementation": "flex_attention"}, "cannot keep packed examples apart"),
    ],
)
class _Routed:
    """A stand-in model whose class routes attention through transformers' AttentionInterface."""

    _supports_attention_backend = True

    def __init__(self, **config: object) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(**{"_attn_implementation": "sdpa", **config})

    def get_output_embeddings(self) -> torch.nn.Linear:
        return torch.nn.Linear(2, 2, bias=False)  # a plain head: only the router loss decides the fused loss


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"attn_logit_softcapping": 50.0}, "softcapping"),
        ({"sliding_window": 256, "use_sliding_window": True}, "sliding-window"),
        ({"_attn_implementation": "flex_attention"}, "cannot keep packed examples apart"),
        ({"model_type": "gpt_oss"}, "attention sinks"),
        ({"sinks": True}, "attention sinks"),
    ],
)
def test_attention_the_fast_path_cannot_reproduce_falls_back(config: dict, reason: str) -> None:
    model = _Routed(**config)
    path = fastpath.choose(model, tk.Training(max_length=1024), torch.device("cpu"))
    assert not path.packing and reason in path.reason
    window_ok = _Routed(sliding_window=4096)
    assert fastpath.choose(window_ok, tk.Training(max_length=1024), torch.device("cpu")).packing


def test_model_outside_the_attention_interface_falls_back(monkeypatch: pytest.MonkeyPatch, tiny_llama: Path) -> None:
    """Bloom / Falcon / MPT compute attention themselves and would ignore tunekit_varlen: padded batches."""
    from transformers import LlamaForCausalLM

    tuner = tk.Tuner(str(tiny_llama), method=tk.LoRA(r=4), training=tk.Training(device="cpu"))
    assert fastpath.choose(tuner.model, tuner.training, torch.device("cpu")).packing
    monkeypatch.setattr(LlamaForCausalLM, "_supports_attention_backend", False)
    path = fastpath.choose(tuner.model, tuner.training, torch.device("cpu"))
    assert not path.packing and "AttentionInterface" in path.reason
    assert not fastpath.choose(tuner.model.get_base_model(), tuner.training, torch.device("cpu")).packing


def test_varlen_attention_refuses_attention_sinks() -> None:
    q = torch.zeros(1, 2, 4, 8)
    module = torch.nn.Module()
    with pytest.raises(NotImplementedError, match="sinks"):
        attention._varlen_sdpa(module, q, q, q, None, s_aux=torch.zeros(2), tunekit_bounds=(0, 2, 4))


def _reference_kernel(calls: list[dict], *, gqa: bool):
    """Stands in for torch's flash varlen kernel on CPU (the real one needs CUDA): its signature (torch 2.11 without
    ``enable_gqa``, 2.12+ with), its layout, and causal attention within each example."""

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), **more):
        calls.append({"window": window_size, "dtype": cu_q.dtype, "max": (max_q, max_k), **more})
        assert cu_q is cu_k and q.dim() == k.dim() == 3 and (gqa or q.shape[1] == k.shape[1])
        outs = []
        for start, end in zip(cu_q.tolist(), cu_q.tolist()[1:]):
            qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
            out = torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, is_causal=window_size == (-1, 0), scale=scale, enable_gqa=bool(more.get("enable_gqa"))
            )
            outs.append(out.transpose(0, 1))
        return torch.cat(outs)

    if not gqa:
        return lambda q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1): kernel(
            q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size
        )
    return lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False: kernel(
        q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=enable_gqa
    )


@pytest.mark.parametrize("kernel_gqa", [False, True], ids=["torch-2.11", "torch-2.12+"])
def test_flash_varlen_kernel_gets_the_rows_layout_and_matches_per_example_attention(
    monkeypatch: pytest.MonkeyPatch, kernel_gqa: bool
) -> None:
    """On CUDA in half precision a packed row goes to torch's flash varlen kernel in one call; here a reference
    kernel checks tunekit's side: the (tokens, heads, dim) layout, int32 boundaries, the longest example, causal
    windows and grouped key/value heads. The real kernel is compared on a GPU (tests/gpu/test_flash_varlen.py)."""
    g = torch.Generator().manual_seed(0)
    bounds = (0, 5, 12, 13, 20)
    q = torch.randn(1, 4, 20, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(1, 2, 20, 8, generator=g, requires_grad=True) for _ in range(2))  # 2 key/value heads
    module = torch.nn.Module().eval()
    cu = torch.tensor(bounds, dtype=torch.int64)
    loop, _ = attention._varlen_sdpa(module, q, k, v, None, scaling=0.3, tunekit_bounds=bounds, cu_seq_lens_q=cu)
    calls: list[dict] = []
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: _reference_kernel(calls, gqa=kernel_gqa))
    monkeypatch.setattr(attention, "_flash_eligible", lambda query, dropout: True)
    monkeypatch.setattr(attention, "_flash_failed", None)
    flash, _ = attention._varlen_sdpa(module, q, k, v, None, scaling=0.3, tunekit_bounds=bounds, cu_seq_lens_q=cu)
    assert len(calls) == 1 and calls[0]["window"] == (-1, 0) and calls[0]["dtype"] == torch.int32
    assert calls[0]["max"] == (7, 7) and calls[0].get("enable_gqa", False) is kernel_gqa
    assert flash.shape == loop.shape == (1, 20, 4, 8)
    torch.testing.assert_close(flash, loop)
    grads = torch.autograd.grad(flash.square().sum(), (q, k, v))
    expected = torch.autograd.grad(loop.square().sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_a_flash_kernel_that_refuses_falls_back_to_the_loop_once_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def refusing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer")

    q = torch.randn(1, 2, 9, 8)
    bounds = (0, 4, 9)
    module = torch.nn.Module().eval()
    loop, _ = attention._varlen_sdpa(module, q, q, q, None, tunekit_bounds=bounds)
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: refusing)
    monkeypatch.setattr(attention, "_flash_eligible", lambda query, dropout: True)
    monkeypatch.setattr(attention, "_flash_failed", None)
    with caplog.at_level("WARNING", logger="tunekit"):
        first, _ = attention._varlen_sdpa(module, q, q, q, None, tunekit_bounds=bounds)
        second, _ = attention._varlen_sdpa(module, q, q, q, None, tunekit_bounds=bounds)
    torch.testing.assert_close(first, loop)
    torch.testing.assert_close(second, loop)
    assert calls == [1]  # not retried at every layer
    assert [r.message for r in caplog.records if "flash varlen" in r.message] == [
        "flash varlen attention unavailable (RuntimeError: FlashAttention only supports Ampere GPUs or newer); "
        "attending example by example"
    ]


def test_flash_varlen_is_used_only_where_its_kernel_runs() -> None:
    cpu = torch.zeros(1, 2, 4, 64, dtype=torch.bfloat16)
    assert not attention._flash_eligible(cpu, 0.0)  # CPU: the per-example loop
    meta = torch.empty(1, 2, 4, 64, dtype=torch.bfloat16, device="meta")
    assert not attention._flash_eligible(meta, 0.0)


@pytest.mark.parametrize(("flag", "fused"), [(True, False), (False, True)], ids=["router-logits", "no-router-logits"])
def test_moe_router_loss_takes_the_models_own_loss(monkeypatch: pytest.MonkeyPatch, flag: bool, fused: bool) -> None:
    """With config.output_router_logits the model adds its router aux loss, which the fused head would drop."""
    from types import SimpleNamespace

    seen = {}

    def stop(base: object, *, fused_head: bool) -> object:
        seen["fused_head"] = fused_head
        raise RuntimeError("stop")

    monkeypatch.setattr(sft, "fast_sft_trainer", stop)
    monkeypatch.setattr(sft, "pack_to_budget", lambda d, t: d)
    run = SimpleNamespace(
        model=_Routed(output_router_logits=flag),
        training=tk.Training(device="cpu"),
        device=torch.device("cpu"),
        train_dataset=[],
        eval_dataset=None,
        tokenizer=SimpleNamespace(pad_token_id=0),
        callbacks=[],
    )
    import trl

    monkeypatch.setattr(sft, "training_args", lambda setup: {})
    monkeypatch.setattr(trl, "SFTConfig", lambda **kwargs: SimpleNamespace(**kwargs))
    with pytest.raises(RuntimeError, match="stop"):
        sft.sft_trainer(run)  # type: ignore[arg-type]
    assert seen["fused_head"] is fused
    assert fastpath.fused_loss_applies(_Routed(output_router_logits=flag)) is fused


def test_training_leaves_the_models_config_as_loaded(tmp_path: Path) -> None:
    """trl's SFTTrainer turns a mixture-of-experts model's router loss on in its config (which tunekit's fused loss
    ignored), transformers' Trainer turns ``use_cache`` off; both leaked into merged exports. The model's own back."""
    path = tiny_model(tmp_path / "mixtral", "mixtral", initializer_range=0.2)
    tuner = tk.Tuner(str(path), method=tk.LoRA(r=4), training=tk.Training(device="cpu", max_steps=2, batch_size=4))
    before = {k: getattr(tuner.model.config, k) for k in ("output_router_logits", "router_aux_loss_coef", "use_cache")}
    assert before == {"output_router_logits": False, "router_aux_loss_coef": 0.001, "use_cache": True}
    tuner.fit(first_task(8))
    assert {k: getattr(tuner.model.config, k) for k in before} == before
