"""The model card (README.md) written into every export: what the model is, how it was trained, how to load it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunekit.backends.base import Trained
from tunekit.data.summary import data_summary_of
from tunekit.errors import ConfigError
from tunekit.plotting import plot_loss
from tunekit.results import FitResult

__all__ = ["loss_plot", "model_card"]


def loss_plot(result: FitResult | None, out: Path) -> str | None:
    """Write ``loss.png`` into the export when there is a history and matplotlib; returns the note for the card."""
    if result is None or not result.history:
        return "No loss plot: this tuner was not trained in this session (a loaded save keeps no history)."
    if importlib.util.find_spec("matplotlib") is None:
        return 'No loss plot: matplotlib is not installed (pip install "tunekit[plot]").'
    try:
        plot_loss(result, out / "loss.png", title="Training loss")
    except ConfigError as e:
        return f"No loss plot: {e}"
    return None


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _options(cfg: Any) -> str:
    dumped = cfg.model_dump(mode="json")
    return ", ".join(f"{k}={v!r}" for k, v in dumped.items()) or "defaults"


_PEFT_ALONE = """The adapter is merged into these weights, so no peft is needed. The adapter alone
(`tuner.save(path)` or `tunekit export RUN ADAPTER_DIR --format adapter`) loads with peft on the base model:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "ADAPTER_DIR")
```"""


def _loading(fmt: str, name: str, base: str | None, gguf_file: str | None, adapter: bool = True) -> str:
    """Commands to load this export with transformers, peft, llama.cpp and Ollama."""
    gguf = f"{name}/{gguf_file}" if gguf_file else f"{name}-gguf/<file>.gguf"
    make_gguf = (
        ""
        if fmt == "gguf"
        else f"First make a GGUF file: `tunekit export <saved run> {name}-gguf --format gguf` "
        "(or llama.cpp's `convert_hf_to_gguf.py` on a merged `hf` export).\n\n"
    )
    if fmt == "hf":
        tf = f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=128)  # stops at the template's end-of-turn token
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""
        peft = _PEFT_ALONE.format(base=base)
    elif fmt == "adapter":
        tf = "transformers loads the adapter through peft (below), or merge it first: `--format hf`."
        peft = f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

tokenizer = AutoTokenizer.from_pretrained("{name}")  # with the chat template used in training
base = AutoModelForCausalLM.from_pretrained("{base}")
base.resize_token_embeddings(len(tokenizer))  # only needed when tunekit added template tokens
model = PeftModel.from_pretrained(base, "{name}")
generation_config = GenerationConfig.from_pretrained("{name}")  # EOS = the template's end of turn
```

or with tunekit: `tk.load("{name}")`."""
    else:
        tf = f"""```python
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{name}", gguf_file="{gguf_file}")  # dequantized
```"""
        peft = _PEFT_ALONE.format(base=base)
    if not adapter:
        peft = "Trained with full fine-tuning: there is no adapter, and peft is not needed."
    return f"""### transformers

{tf}

### peft

{peft}

### llama.cpp

{make_gguf}```bash
llama-cli -m {gguf} -cnv        # chat with the embedded template
llama-server -m {gguf}          # OpenAI-compatible server
```

With llama-cpp-python: `Llama(model_path="{gguf}").create_chat_completion(messages=[...])`.

### Ollama

{make_gguf}The GGUF export has a Modelfile with the same template and stop tokens:

```bash
cd {gguf.rsplit("/", 1)[0]} && ollama create my-model -f Modelfile && ollama run my-model
```"""


def model_card(
    trained: Trained,
    *,
    fmt: str,
    dtype: str,
    path: Path,
    base: str | None,
    size_text: str,
    verification: Any,
    gguf_file: str | None,
    plot_note: str | None,
) -> str:
    """README.md text for an export."""
    spec, result = trained.spec, trained.result
    method, objective, training = spec.method, spec.objective, spec.training
    data = data_summary_of(trained.data_summary, result) or {}
    template = trained.loaded.template
    lines = [
        "---",
        "library_name: " + ("peft" if fmt == "adapter" else "gguf" if fmt == "gguf" else "transformers"),
        *([f"base_model: {base}"] if base else []),
        "tags: [tunekit, fine-tuned, " + method.name.lower() + ", " + objective.name.lower() + "]",
        "---",
        "",
        f"# {path.name}",
        "",
        f"A fine-tune of `{base or 'a local model'}` with **{method.name}** ({objective.name}), exported by tunekit "
        f"as **{fmt}** ({dtype}).",
        "",
        "## Training",
        "",
        _table(
            [
                ("base model", f"`{base}`" if base else "a model object"),
                ("method", f"{method.name}: {type(method).summary or ''} ({_options(method)})"),
                ("objective", f"{objective.name} ({_options(objective)})"),
                ("training config", _options(training)),
            ]
        ),
        "",
        "### Data",
        "",
    ]
    if data.get("train"):
        rows = [("training rows", data["train"]["rows"]), ("format", data["train"]["format"])]
        if data["train"].get("skipped_rows"):
            rows.append(("skipped rows", data["train"]["skipped_rows"]))
        if data["train"].get("tokens") is not None:
            rows.append(("training tokens (per epoch)", f"{data['train']['tokens']:,}"))
        if data.get("eval"):
            rows += [("eval rows", data["eval"]["rows"]), ("eval format", data["eval"]["format"])]
        lines.append(_table(rows))
    else:
        lines.append("Not recorded (this tuner was not trained in this session).")
    lines += ["", "### Results", ""]
    if result is not None:
        rows = [
            ("steps", result.steps),
            ("epochs", f"{result.epochs:.2f}"),
            ("final train loss", f"{result.train_loss:.4f}"),
        ]
        if result.eval_loss is not None:
            rows.append(("final eval loss", f"{result.eval_loss:.4f}"))
        rows += [
            (
                "trainable parameters",
                f"{result.trainable_params:,} of {result.total_params:,} ({100 * result.trainable_share:.2f}%)",
            ),
            ("runtime", f"{result.runtime_s:.1f} s"),
        ]
        lines.append(_table(rows))
    else:
        lines.append("Not recorded (this tuner was not trained in this session).")
    lines += ["", "![loss](loss.png)" if plot_note is None else plot_note, ""]
    evaluation = trained.evaluation
    if evaluation is not None:  # the last tuner.evaluate() of this session
        lines += ["### Evaluation", "", f"`tuner.evaluate()` on {len(evaluation.rows)} rows:", ""]
        if evaluation.baseline is not None:
            lines += ["| metric | base model | fine-tuned |", "|---|---|---|"]
            lines += [
                f"| {name} | {evaluation.baseline.get(name, float('nan')):.4g} | {value:.4g} |"
                for name, value in evaluation.metrics.items()
            ]
        else:
            lines += ["| metric | fine-tuned |", "|---|---|"]
            lines += [f"| {name} | {value:.4g} |" for name, value in evaluation.metrics.items()]
        lines.append("")
    lines += [
        "## Chat template",
        "",
        f"End of turn: `{template.end_of_turn}` (id {template.end_of_turn_id}); generation stops there.",
        "",
        "```jinja",
        template.chat_template,
        "```",
        "",
        "## Intended use",
        "",
        f"Generation in the format of its training data ({objective.name}), prompted with the chat template above. "
        "It inherits the base model's limitations and licence; evaluate it on your own task before relying on it.",
        "",
        "## Size",
        "",
        size_text,
        "",
        "## Verification",
        "",
        (
            f"{verification}. The export was reloaded from disk and decoded greedily on golden prompts; see "
            "`tunekit_export.json` for each prompt."
            if verification is not None
            else "Not verified (verify=False)."
        ),
        *[
            f"\n{n[0].upper()}{n[1:]}."
            for n in (verification.notes if verification else [])
            if "against the trained" in n
        ],
        "",
        "## Loading",
        "",
        _loading(fmt, str(path), base, gguf_file, method.is_adapter),
        "",
    ]
    return "\n".join(lines)
