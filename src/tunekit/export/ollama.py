"""The Ollama Modelfile of a GGUF export: the same template and stop tokens as training.

Ollama templates are Go templates, not Jinja. tunekit writes one only when it can prove it renders
what the model's Jinja template renders (ChatML, checked on a probe conversation); otherwise the
Modelfile names no TEMPLATE, and Ollama falls back to the template embedded in the GGUF file, which
it recognises for common model families.
"""

from __future__ import annotations

import logging
from typing import Any

from tunekit.data.templates import render

__all__ = ["modelfile"]

logger = logging.getLogger("tunekit")

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


def _default_system(tokenizer: Any) -> str | None:
    """The system message the template writes when a conversation has none ("" when it writes none), or None when
    a system-less conversation does not render as ChatML at all. Qwen2/2.5's template, for one, writes "You are
    Qwen, created by Alibaba Cloud. ..."; Ollama reproduces that with the Modelfile's SYSTEM line, which it puts
    in front of a conversation that has no system message."""
    probe = _PROBE[1:]
    try:
        rendered = render(tokenizer, probe, add_generation_prompt=True)
    except Exception as e:  # a template that refuses a system-less conversation: no Go template for it
        logger.info("Ollama Modelfile: the chat template does not render a conversation without a system turn (%s)", e)
        return None
    rest = _chatml(probe)
    if rendered == rest:
        return ""
    head, marker = "<|im_start|>system\n", "<|im_end|>\n"
    if rendered.startswith(head) and rendered.endswith(rest):
        system = rendered[len(head) : len(rendered) - len(rest)]
        if system.endswith(marker) and marker not in system[: -len(marker)] and '"""' not in system:
            return system[: -len(marker)]
    return None


def go_template(tokenizer: Any) -> tuple[str, str] | None:
    """A Go template equal to the tokenizer's chat template on probe conversations (with and without a system
    message) and the default system message it needs ("" for none), or None."""
    try:
        rendered = render(tokenizer, _PROBE, add_generation_prompt=True)
    except Exception as e:  # a template that does not render the probe: the Modelfile goes without a TEMPLATE
        logger.info("Ollama Modelfile: the chat template does not render the probe conversation (%s)", e)
        return None
    if rendered != _chatml(_PROBE):
        return None
    system = _default_system(tokenizer)
    return None if system is None else (CHATML_GO, system)


def modelfile(gguf_name: str, tokenizer: Any, stop_tokens: list[str]) -> str:
    """The Modelfile text: FROM the GGUF file beside it, the template, greedy-friendly stop tokens."""
    lines = ["# Written by tunekit. Create the model with: ollama create <name> -f Modelfile", f"FROM ./{gguf_name}"]
    found = go_template(tokenizer)
    if found is not None:
        template, system = found
        lines.append(f'TEMPLATE """{template}"""')
        if system:
            lines += [
                "# The chat template's default system message, for conversations without one:",
                f'SYSTEM """{system}"""',
            ]
    else:
        lines.append(
            "# No TEMPLATE: the chat template is not ChatML (with and without a system message); Ollama uses the one "
            "embedded in the GGUF file."
        )
    for tok in dict.fromkeys(stop_tokens):
        lines.append(f'PARAMETER stop "{tok}"')
    return "\n".join(lines) + "\n"
