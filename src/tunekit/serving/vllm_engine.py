"""``tunekit serve --engine vllm``: the saves checked as ``serve`` checks them, then vLLM's own OpenAI-compatible
server started on them (CUDA, ``pip install vllm``).

vLLM already serves the OpenAI API with continuous batching and LoRA adapters, so tunekit does not put its own HTTP
layer in front of it: it turns the saves into vLLM's command line (the base model once, each adapter a
``--lora-modules NAME=PATH``, the training template as ``--chat-template`` through the save's tokenizer, its
end-of-turn token in a generation config) and hands over to it. What vLLM cannot serve is refused here, before it
starts, with the reason: adapters on different bases, adapter kinds other than LoRA, adapters that trained embedding
rows (vLLM's LoRA does not load new token rows), and more than one whole-model save.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunekit.data.templates import ensure_template
from tunekit.errors import ConfigError, IncompatibleError
from tunekit.saving import load

__all__ = ["run_vllm", "vllm_command"]

# vLLM's --max-lora-rank takes one of these.
_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _adapter_config(path: Path) -> dict[str, Any]:
    file = path / "adapter_config.json"
    return dict(json.loads(file.read_text(encoding="utf-8"))) if file.is_file() else {}


def vllm_command(
    saves: Sequence[tuple[str, str | Path]], *, host: str, port: int, api_key: str | None, workdir: Path,
    **load_options: Any,
) -> list[str]:  # fmt: skip
    """The command line that starts vLLM's OpenAI server on ``saves`` (checked as ``tk.load`` checks them), with a
    generation config written into ``workdir``; IncompatibleError for what vLLM cannot serve."""
    tuners = [(name, Path(path), load(path, **load_options)) for name, path in saves]
    whole = [t for t in tuners if not t[2].method.is_adapter]
    adapters = [t for t in tuners if t[2].method.is_adapter]
    if whole and (adapters or len(whole) > 1):
        names = ", ".join(n for n, _, _ in whole)
        raise IncompatibleError(
            f"--engine vllm serves one model (and LoRA adapters on it) per server; {names}: whole-model save(s), "
            "so start one server per model"
        )
    if whole:
        name, path, tuner = whole[0]
        model, tokenizer = str(path), str(path)
    else:
        bases = {str(t.model_ref) for _, _, t in adapters}
        if len(bases) > 1:
            raise IncompatibleError(
                f"--engine vllm: these adapters are on {len(bases)} different bases ({', '.join(sorted(bases))}); "
                "vLLM serves one base per server: start one server per base, or use the default engine"
            )
        tuner = adapters[0][2]
        model, tokenizer = bases.pop(), str(adapters[0][1])
    for name, path, t in adapters:
        config = _adapter_config(path)
        if config.get("peft_type") != "LORA":
            raise IncompatibleError(
                f"--engine vllm: {name} is a {config.get('peft_type', t.method.name)} adapter; vLLM serves LoRA "
                "adapters only: use the default engine, or export the merged model (format='hf') and serve that"
            )
        if config.get("modules_to_save") or config.get("trainable_token_indices"):
            raise IncompatibleError(
                f"--engine vllm: {name} trained embedding rows (tokens added for the chat template), which vLLM's "
                "LoRA support does not load: use the default engine, or export the merged model (format='hf') and "
                "serve that with `vllm serve`"
            )
        if t.template_options != tuner.template_options:
            raise IncompatibleError(f"--engine vllm: {name} was trained with other template options than the others")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=bool(load_options.get("trust_remote_code")))
    template, _ = ensure_template(tok, tuner.template, tuner.template_options)
    end_ids = sorted({template.end_of_turn_id, tok.eos_token_id} - {None})  # the turn ends at either
    gen_dir = workdir / "generation"
    gen_dir.mkdir(parents=True, exist_ok=True)
    base_gen = Path(model) / "generation_config.json"
    generation = json.loads(base_gen.read_text(encoding="utf-8")) if base_gen.is_file() else {}
    if end_ids:
        generation["eos_token_id"] = list(end_ids)
    (gen_dir / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    base_name = Path(model).name if Path(model).is_dir() else model
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--tokenizer", tokenizer,
        "--served-model-name", whole[0][0] if whole else base_name, "--host", host, "--port", str(port),
        "--generation-config", str(gen_dir), "--max-num-seqs", "64",
    ]  # fmt: skip
    if load_options.get("trust_remote_code"):
        cmd.append("--trust-remote-code")
    if adapters:
        rank = max(int(_adapter_config(p).get("r", 8)) for _, p, _ in adapters)
        cmd += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank"]
        cmd.append(str(next((r for r in _RANKS if r >= rank), rank)))
        cmd += ["--lora-modules", *(f"{n}={p}" for n, p, _ in adapters)]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd


def _check_engine() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--engine vllm needs vLLM: pip install vllm (CUDA machines); or use the default engine")
    import torch

    if not torch.cuda.is_available():
        raise IncompatibleError(
            "--engine vllm needs a CUDA GPU, and none is visible; use the default engine (any device)"
        )


def run_vllm(
    saves: Sequence[tuple[str, str | Path]], *, host: str, port: int, api_key: str | None, **load_options: Any
) -> int:
    """Check the saves, then run vLLM's server on them until it stops; its exit code."""
    _check_engine()
    with tempfile.TemporaryDirectory(prefix="tunekit-vllm-") as tmp:
        cmd = vllm_command(saves, host=host, port=port, api_key=api_key, workdir=Path(tmp), **load_options)
        print(f"tunekit serve --engine vllm: {' '.join(a if a != api_key else '***' for a in cmd)}", file=sys.stderr)
        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:
            return 0
