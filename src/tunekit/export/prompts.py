"""The golden prompts an export is verified on: the user's, else a few kept from the data ``fit`` saw
(:mod:`tunekit.data.summary`), else tunekit's defaults."""

from __future__ import annotations

from typing import Any

from tunekit.errors import ConfigError

__all__ = ["DEFAULT_PROMPTS", "golden_prompts"]

# Used only when the tuner has seen no data (e.g. ``tk.load`` of a save made before tunekit kept prompts).
DEFAULT_PROMPTS = ["Hello! Who are you?", "Write one sentence about the sea.", "What is 2 + 3?", "Translate: cheese"]


def golden_prompts(summary: dict[str, Any] | None, given: Any, n: int) -> tuple[list[Any], str]:
    """The prompts to verify on and where they came from: the user's, else up to ``n`` kept from the data."""
    if given is not None:
        if isinstance(given, str) or (isinstance(given, list) and given and isinstance(given[0], dict)):
            given = [given]  # one prompt (a string or one conversation)
        prompts = list(given)
        if not prompts:
            raise ConfigError("export(golden_prompts=[]): pass at least one prompt, or None to sample from the data")
        for p in prompts:
            if not isinstance(p, (str, list)) or (isinstance(p, str) and not p):
                raise ConfigError(
                    f"export(golden_prompts=...): {p!r} is not a prompt; pass non-empty strings or lists of chat "
                    'messages like [{"role": "user", "content": "..."}]'
                )
        return prompts, "given"
    kept = list((summary or {}).get("prompts") or [])
    if kept:
        return kept[:n], f"sampled from the {(summary or {}).get('prompts_from', 'training')} data"
    return DEFAULT_PROMPTS[:n], "tunekit's default prompts (the tuner has seen no data)"
