"""Template tokens that a base model has in its vocabulary but never trained.

Base checkpoints often ship the special tokens of their instruct sibling's chat template without
having trained them: Llama 3 base has ``<|start_header_id|>`` and ``<|eot_id|>`` with all-zero
embedding rows. Fine-tuned with that template under LoRA, those rows stay frozen: the input side
reads every marker as the same zero vector, and the output row of the end-of-turn token keeps a
logit of exactly 0, so the model cannot learn to end its turn and generation runs on to the length
limit (one of the commonest complaints after a LoRA fine-tune).

tunekit finds the special tokens the template writes whose rows are degenerate, starts them at the
mean of the trained rows (as transformers' ``resize_token_embeddings(mean_resizing=True)`` starts
new rows), and trains them with the method, as it does for template tokens it added itself (LoRA:
only those rows, through peft's ``trainable_token_indices``). transformers and peft have no check
of their own for this; the idea is the one Unsloth's ``fix_untrained_tokens`` popularised.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["fix_untrained_template_tokens", "template_token_ids"]

logger = logging.getLogger("tunekit")

# A row whose norm is below this fraction of the median row norm was never trained (zeros, or the
# near-zero values some checkpoints store for them).
_DEGENERATE = 1e-3


def template_token_ids(tokenizer: Any, end_of_turn_id: int) -> list[int]:
    """The special tokens the chat template writes around a system, user and assistant turn."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if t.special}
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    ids: set[int] = {end_of_turn_id}
    for turns in (messages, messages[1:]):  # some templates refuse a system turn
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False)
        except Exception:  # a template's own refusal (e.g. "system role not supported")
            continue
        ids |= {int(i) for i in tokenizer(str(text), add_special_tokens=False)["input_ids"] if i in special}
    return sorted(i for i in ids if i is not None and i >= 0)


def _row_norms(weight: Any) -> Any:
    """Norms of every row, in float32, a block of rows at a time (never a float32 copy of a large matrix)."""
    import torch

    w = weight.detach()
    return torch.cat([w[i : i + 8192].float().norm(dim=1) for i in range(0, w.shape[0], 8192)])


def _degenerate_rows(norms: Any, ids: list[int] | None = None) -> list[int]:
    """The rows (of ``ids``, or all) whose norm is negligible next to the median row's."""
    import torch

    reference = float(torch.median(norms))
    if reference <= 0:
        return []  # the whole matrix is zero (a fresh head): nothing to tell apart
    small = norms <= _DEGENERATE * reference
    if ids is None:
        return [int(i) for i in torch.nonzero(small).flatten()]
    return [i for i in ids if i < norms.shape[0] and bool(small[i])]


def fix_untrained_template_tokens(model: Any, tokenizer: Any, end_of_turn_id: int, method: Any) -> list[int]:
    """Start the untrained template tokens' rows at the mean trained row; returns the ids ``method`` must train
    (none for prompt-based methods, which keep every embedding frozen)."""
    import torch

    ids = [i for i in template_token_ids(tokenizer, end_of_turn_id) if i < len(tokenizer)]
    matrices = [m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    matrices = list({id(w): w for w in matrices}.values())  # tied embeddings: one matrix
    norms = [_row_norms(w) for w in matrices]
    bad = sorted({i for n in norms for i in _degenerate_rows(n, ids)})
    if not bad:
        return []
    with torch.no_grad():
        for w, n in zip(matrices, norms):
            untrained = _degenerate_rows(n)  # every untrained row (reserved tokens too) stays out of the mean
            total = w.sum(dim=0, dtype=torch.float32) - w[untrained].sum(dim=0, dtype=torch.float32)
            w[bad] = (total / (w.shape[0] - len(untrained))).to(w.dtype)
    names = tokenizer.convert_ids_to_tokens(bad)
    if method.family == "prompt":
        logger.warning(
            "the base model never trained the chat template's tokens %s (their embedding rows are zero): tunekit "
            "starts them at the mean embedding, but %s keeps the embeddings frozen, so the model may not learn to "
            "end its turn; tk.LoRA() trains just those rows",
            names,
            method.name,
        )
        return []
    logger.warning(
        "the base model never trained the chat template's tokens %s (their embedding rows are zero): tunekit starts "
        "them at the mean embedding and trains them, or the model could not learn to end its turn",
        names,
    )
    return bad
