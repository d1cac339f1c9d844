"""Validation shared by the methods that adapt named modules (LoRA, LoHa, LoKr, IA3, ...)."""

from __future__ import annotations

__all__ = ["check_module_list", "check_target_modules"]

_ALL_LINEAR_TYPOS = ("all-linear", "alllinear", "all")


def check_target_modules(v: object, *, auto: bool = False) -> object:
    """``target_modules``: 'all-linear' (or 'auto' where allowed) or a non-empty list of module names.

    Raises ValueError (turned into a ConfigError naming the method and value by ``Config``).
    """
    keywords = ("all-linear", "auto") if auto else ("all-linear",)
    if v in keywords:
        return v
    shown = " or ".join(repr(k) for k in keywords)
    if isinstance(v, str):
        if v.lower().replace("_", "-").replace(" ", "-") in _ALL_LINEAR_TYPOS:
            return _raise("target_modules must be 'all-linear' (with a hyphen) or a list of module names")
        return _raise(f"target_modules must be {shown} or a list of module names, e.g. [{v!r}]")
    if not isinstance(v, (list, tuple)) or not all(isinstance(m, str) for m in v):
        return _raise(f"target_modules must be {shown} or a list of module names (strings)")
    if not v:
        return _raise(f"target_modules is empty; use {shown} or name at least one module")
    if any(not m.strip() for m in v):
        return _raise("target_modules contains an empty name; remove it")
    return list(v)


def check_module_list(field: str, v: object, *, allow_none: bool = True) -> object:
    """A list of module names (or None): not empty, strings only."""
    if v is None and allow_none:
        return v
    if isinstance(v, str):
        return _raise(f"{field} must be a list of module names, e.g. [{v!r}]")
    if not isinstance(v, (list, tuple)) or not all(isinstance(m, str) for m in v):
        return _raise(f"{field} must be a list of module names (strings)")
    if not v:
        hint = "leave it out (None)" if allow_none else "name at least one module"
        return _raise(f"{field} is empty; {hint}")
    if any(not m.strip() for m in v):
        return _raise(f"{field} contains an empty name; remove it")
    return list(v)


def _raise(message: str) -> object:
    raise ValueError(message)
