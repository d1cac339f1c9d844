"""tunekit against plain trl with identical settings on a tiny model: the wall-time ratio (target <= 1.05).

Both sides: the same tiny Llama, LoRA r=8 on the attention projections, the same prompt/completion
rows, batch 8, the same number of steps, fp32 on CPU, padded batches (tunekit with
``packing=False`` and no tokenisation cache, so the comparison is of the layer tunekit adds, not
of its fast path). Each side runs ``--repeats`` times, interleaved; the medians are compared.
Timed: everything from the data and the model on disk to the end of training (load, tokenise,
train).

    PYTHONPATH=src python benchmarks/cpu_overhead.py [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse

from _util import emit, median_time, setup, workdir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=400)
    args = ap.parse_args()
    setup()
    import torch

    import tunekit as tk
    from tunekit.testing import reverse_task, tiny_model

    tmp = workdir()
    model_dir = tiny_model(tmp / "model", "llama", hidden_size=64, num_layers=2)
    rows = reverse_task(args.rows, seed=0, length=(3, 12))
    lr, bs, r = 2e-4, 8, 8

    def run_tunekit() -> None:
        training = tk.Training(
            device="cpu", precision="fp32", max_steps=args.steps, batch_size=bs, learning_rate=lr,
            packing=False, cache=False, log_every=10, max_length=256, seed=0,
        )  # fmt: skip
        method = tk.LoRA(r=r, alpha=16, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        tk.Tuner(str(model_dir), method=method, training=training, progress=False).fit(rows)

    def run_trl() -> None:
        from datasets import Dataset
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(
            model,
            LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        )
        data = Dataset.from_list(
            [{"prompt": [{"role": "user", "content": x["prompt"]}],
              "completion": [{"role": "assistant", "content": x["completion"]}]} for x in rows]
        )  # fmt: skip
        cfg = SFTConfig(
            output_dir=str(tmp / "trl"), max_steps=args.steps, per_device_train_batch_size=bs, learning_rate=lr,
            use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=256, logging_steps=10,
            save_strategy="no", report_to="none", disable_tqdm=True, seed=0, dataloader_num_workers=0,
        )  # fmt: skip
        SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok).train()

    median_time(run_tunekit, 1)  # warm both (imports, first-call costs)
    median_time(run_trl, 1)
    t_tk, t_trl = [], []
    for _ in range(args.repeats):
        t_tk.append(median_time(run_tunekit, 1))
        t_trl.append(median_time(run_trl, 1))
    import statistics

    tk_s, trl_s = statistics.median(t_tk), statistics.median(t_trl)
    emit({
        "benchmark": "cpu_overhead", "steps": args.steps, "repeats": args.repeats,
        "tunekit_s": round(tk_s, 3), "trl_s": round(trl_s, 3), "ratio": round(tk_s / trl_s, 3), "target": 1.05,
    })  # fmt: skip


if __name__ == "__main__":
    main()
