"""Workload W1 on one GPU: plain trl SFTTrainer defaults and tunekit's default, side by side, in one run.

A Qwen2-0.5B-shaped model (494 M parameters, random weights, bf16, tied embeddings) built from a
config, sequences of 128..2048 random tokens made locally (no hub), batch 8, LoRA r=16 (alpha 32)
on all linear layers, then full fine-tuning; ``tunekitbig_lora`` is tunekit's default with a budget of
32,768 tokens per micro-batch (``Training(tokens_per_batch=...)``, the step size of the team's lean
reference loop) instead of 8 examples. Each variant reports real (non-pad) tokens per second
over steps --warm..--steps, MFU and peak memory; tunekit's variants also report ``tuner.plan()``'s
estimated peak and its ratio to the measured one.

MFU = real tokens/s x model FLOPs per token / 989e12 (H200 bf16 dense peak), model FLOPs per token
= 2 x forward for LoRA (frozen weights get no weight gradient) and 3 x forward for full
fine-tuning, forward = 2 x parameters (tied embeddings once). Recomputation is not counted.

    python benchmarks/gpu_throughput.py                 # on a CUDA machine: the real workload
    python benchmarks/gpu_throughput.py --smoke         # anywhere (the default without CUDA): a tiny model

It prints one JSON line per variant to stderr as it goes, and the summary as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from typing import Any

from _util import emit, setup, workdir

PEAK_FLOPS = 989e12
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over the model's whole vocabulary (``w<i>`` is id i), ChatML tokens included,
    so tunekit adds no token and the model keeps its shape."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>"]
    words = {t: i for i, t in enumerate(special)}
    words.update({f"w{i}": i for i in range(len(special), vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = CHATML
    return fast


def make_model(shape: dict[str, int], device: str) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**shape, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.config._attn_implementation = "sdpa"
    return model


def texts(n: int, lengths: tuple[int, int], vocab: int) -> list[str]:
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for length in torch.randint(lengths[0], lengths[1] + 1, (n,), generator=g).tolist():
        ids = torch.randint(10, vocab - 10, (length - 1,), generator=g).tolist()  # + EOS = length tokens
        out.append(" ".join(f"w{i}" for i in ids))
    return out


class Meter:
    """(time, cumulative real tokens) at each logged step; tokens/s between --warm and --steps."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: dict[int, tuple[float, float]] = {}

    def mark(self, step: int, tokens: float | None) -> None:
        if tokens is None:
            return
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.marks[step] = (time.perf_counter(), float(tokens))

    def tokens_per_s(self, warm: int, steps: int) -> float:
        (t0, n0), (t1, n1) = self.marks[warm], self.marks[steps]
        return (n1 - n0) / (t1 - t0)


def run_trl(full: bool, a: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    meter = Meter(ctx["cuda"])

    class OnLog(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            meter.mark(state.global_step, (logs or {}).get("num_tokens"))

    model = make_model(ctx["shape"], ctx["device"])
    data = Dataset.from_dict({"input_ids": ctx["ids"]})
    args = SFTConfig(
        output_dir=str(ctx["tmp"] / "trl"), max_steps=a.steps, per_device_train_batch_size=a.batch,
        max_length=ctx["max_len"], logging_steps=a.warm, save_strategy="no", report_to=[], bf16=ctx["cuda"],
        use_cpu=not ctx["cuda"], disable_tqdm=True,
    )  # fmt: skip
    peft = None if full else LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=ctx["tok"], peft_config=peft, callbacks=[OnLog()]
    )
    trainer.train()
    return {"tokens_per_s": meter.tokens_per_s(a.warm, a.steps)}


def run_tunekit(full: bool, a: Any, ctx: dict[str, Any], tokens_per_batch: int | None = None) -> dict[str, Any]:
    import tunekit as tk

    meter = Meter(ctx["cuda"])

    class OnLog(tk.Hook):
        def on_log(self, c: Any, logs: dict[str, float]) -> None:
            meter.mark(c.step, logs.get("num_tokens"))

    model = make_model(ctx["shape"], ctx["device"])
    method = tk.Full() if full else tk.LoRA(r=16, alpha=32, target_modules="all-linear")
    training = tk.Training(
        max_steps=a.steps, batch_size=a.batch, max_length=ctx["max_len"], log_every=a.warm, cache=False,
        device=ctx["device"], learning_rate=2e-5 if full else 2e-4, tokens_per_batch=tokens_per_batch,
    )  # fmt: skip
    tuner = tk.Tuner(
        model, tokenizer=ctx["tok"], method=method, objective=tk.CausalLM(), training=training, hooks=[OnLog()],
        progress=False,
    )  # fmt: skip
    plan = tuner.plan(ctx["rows"])
    tuner.fit(ctx["rows"])
    return {"tokens_per_s": meter.tokens_per_s(a.warm, a.steps), "plan_peak_gib": plan.total_bytes / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a tiny model (the default without CUDA)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--variants",
        default="trl_lora,tunekit_lora,tunekitbig_lora,trl_full,tunekit_full",
        help="tunekitbig: tunekit's default with Training(tokens_per_batch=--big-tokens), the lean loop's step size",
    )
    ap.add_argument("--big-tokens", type=int, default=32768, help="tokens per micro-batch of the tunekitbig variant")
    a = ap.parse_args()
    setup()
    import torch

    cuda = torch.cuda.is_available() and not a.smoke
    if cuda:
        shape = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                 "num_attention_heads": 14, "max_position_embeddings": 4096}  # fmt: skip
        lengths = (128, 2048)
    else:
        shape = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "max_position_embeddings": 512}  # fmt: skip
        lengths = (16, 128)
    tok = make_tokenizer(shape["vocab_size"])
    big = "tunekitbig" in a.variants
    if not cuda:
        a.big_tokens = min(a.big_tokens, 1024)  # smoke: the same code path at tiny sizes
    # Enough rows for every step: batch examples a step, or (tunekitbig) a token budget of examples.
    per_step = max(a.batch, 2 * a.big_tokens // sum(lengths) + 1) if big else a.batch
    rows = [{"text": t} for t in texts(a.steps * per_step + per_step, lengths, shape["vocab_size"])]
    ids = [tok(r["text"])["input_ids"] + [tok.eos_token_id] for r in rows]
    ctx = {"cuda": cuda, "device": "cuda" if cuda else "cpu", "shape": shape, "tok": tok, "rows": rows, "ids": ids,
           "max_len": lengths[1], "tmp": workdir()}  # fmt: skip
    n_params = sum(p.numel() for p in make_model(shape, "meta").parameters())
    results = {}
    for name in a.variants.split(","):
        side, kind = name.split("_")
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with contextlib.redirect_stdout(sys.stderr):
            if side == "trl":
                out = run_trl(kind == "full", a, ctx)
            else:
                out = run_tunekit(kind == "full", a, ctx, a.big_tokens if side == "tunekitbig" else None)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        mfu = out["tokens_per_s"] * 2 * n_params * (3 if kind == "full" else 2) / PEAK_FLOPS
        row = {"tokens_per_s": round(out["tokens_per_s"]), "mfu": round(mfu, 4), "peak_gib": peak and round(peak, 2)}
        if "plan_peak_gib" in out:
            row["plan_peak_gib"] = round(out["plan_peak_gib"], 4)
            row["plan_vs_measured"] = round(out["plan_peak_gib"] / peak, 3) if peak else None
        results[name] = row
        sys.stderr.write(json.dumps({name: row}) + "\n")
    device = torch.cuda.get_device_name() if cuda else "cpu"
    summary: dict[str, Any] = {"benchmark": "gpu_throughput", "device": device, "smoke": not cuda, "params": n_params,
                               "steps": a.steps, "warm": a.warm, **results}  # fmt: skip
    if "trl_lora" in results and "tunekitbig_lora" in results:
        summary["lora_big_speedup"] = round(
            results["tunekitbig_lora"]["tokens_per_s"] / results["trl_lora"]["tokens_per_s"], 2
        )
    for kind in ("lora", "full"):
        if f"trl_{kind}" in results and f"tunekit_{kind}" in results:
            summary[f"{kind}_speedup"] = round(
                results[f"tunekit_{kind}"]["tokens_per_s"] / results[f"trl_{kind}"]["tokens_per_s"], 2
            )
    emit(summary)


if __name__ == "__main__":
    main()
