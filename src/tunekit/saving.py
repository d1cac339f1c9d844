"""``tk.load``: a tuner back from a ``Tuner.save`` directory (the format itself is :mod:`tunekit.save_format`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunekit.hooks import Hook
from tunekit.objectives import Objective
from tunekit.save_format import MANIFEST, spec_from_save
from tunekit.training import Training
from tunekit.tuner import Tuner

__all__ = ["MANIFEST", "load"]


def load(
    path: str | Path,
    *,
    base_model: Any = None,
    training: Training | None = None,
    hooks: Sequence[Hook] = (),
    objective: Objective | None = None,
    trust_remote_code: bool | None = None,
    allow_pickle: bool | None = None,
    allow_control_tokens: bool | None = None,
    verify: bool = True,
    allow_base_change: bool = False,
) -> Tuner:
    """Load a tuner written by ``Tuner.save``, ready to generate or train further.

    ``base_model`` overrides the base recorded in the manifest (for an adapter moved to another
    machine). ``training`` replaces the saved training config for further training, and
    ``objective`` the saved objective (e.g. an SFT model trained on with ``tk.DPO()``).

    What a save may do is the caller's decision, never the save's: code in the base model's
    directory runs only with ``trust_remote_code=True``, pickle files load only with
    ``allow_pickle=True`` and control tokens typed in prompts act as such only with
    ``allow_control_tokens=True`` (each defaults to the given ``training``'s, else False), whatever
    the manifest recorded of the run that wrote it. Every file is checked against the sha256 in the
    manifest (``verify=False`` checks sizes only, for a save you trust and load often), and an
    adapter goes only on the base it was trained on: a base of another shape, revision, seed or
    fine-tune is refused unless ``allow_base_change=True``.

    Example:
        >>> import tunekit as tk
        >>> tuner = tk.load("runs/qa/adapter")  # doctest: +SKIP
        >>> tuner.generate("Translate to French: cheese")  # doctest: +SKIP
    """
    saved = spec_from_save(
        path,
        base_model=base_model,
        training=training,
        hooks=tuple(hooks),
        objective=objective,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        allow_control_tokens=allow_control_tokens,
        verify=verify,
        allow_base_change=allow_base_change,
    )
    spec = saved.spec
    tuner = Tuner(
        spec.model_ref,
        method=spec.method,
        objective=spec.objective,
        training=spec.training,
        tokenizer=spec.tokenizer_ref,
        template=spec.template,
        template_options=spec.template_options,
        hooks=spec.hooks,
    )
    tuner.adapter_path = spec.adapter_path  # the adapter goes back on its base when the tuner loads
    tuner.data_summary = saved.data_summary  # for exports of the loaded save (golden prompts, model card)
    return tuner
