"""The Ollama Modelfile of a GGUF export: the same template and stop tokens as training.

Ollama templates are Go templates, not Jinja. tunekit writes one only when it can prove it renders
what the model's Jinja template renders (ChatML, checked on a probe conversation); otherwise the
Modelfile names no TEMPLATE, and Ollama falls back to the template embedded in the GGUF file, which
it recognises for common model families.
"""

from __future__ import annotations

from typing import Any

__all__ = ["modelfile"]

_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]

CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def _chatml(messages: list[dict[str, str]]) -> str:
    """What :data:`CHATML_GO` renders for ``messages`` (Ollama adds the generation prompt)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def go_template(tokenizer: Any) -> str | None:
    """A Go template equal to the tokenizer's chat template on a probe conversation, or None."""
    from tunekit.data.templates import render

    try:
        rendered = render(tokenizer, _PROBE, add_generation_prompt=True)
    except Exception:
        return None
    return CHATML_GO if rendered == _chatml(_PROBE) else None


def modelfile(gguf_name: str, tokenizer: Any, stop_tokens: list[str]) -> str:
    """The Modelfile text: FROM the GGUF file beside it, the template, greedy-friendly stop tokens."""
    lines = ["# Written by tunekit. Create the model with: ollama create <name> -f Modelfile", f"FROM ./{gguf_name}"]
    template = go_template(tokenizer)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# No TEMPLATE: the chat template is not ChatML; Ollama uses the one embedded in the GGUF file.")
    for tok in dict.fromkeys(stop_tokens):
        lines.append(f'PARAMETER stop "{tok}"')
    return "\n".join(lines) + "\n"
