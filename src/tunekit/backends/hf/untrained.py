"""Template tokens that a base model has in its vocabulary but never trained.

Base checkpoints often ship the special tokens of their instruct sibling's chat template without
having trained them: Llama 3 base has ``<|start_header_id|>`` and ``<|eot_id|>`` with all-zero
embedding rows. Fine-tuned with that template under LoRA, those rows stay frozen: the input side
reads every marker as the same zero vector, and the output row of the end-of-turn token keeps a
logit of exactly 0, so the model cannot learn to end its turn and generation runs on to the length
limit (one of the commonest complaints after a LoRA fine-tune).

tunekit finds the special tokens the template writes whose rows are degenerate, starts them at the
mean of the trained rows (as transformers' ``resize_token_embeddings(mean_resizing=True)`` starts
new rows), and trains them where the method can train just those rows: LoRA and AdaLoRA (peft's
``trainable_token_indices``) and full fine-tuning. Other methods would have to train both embedding
matrices whole, so for them the rows are only started at the mean, with a warning. transformers and peft have no check
of their own for this; the idea is the one Unsloth's ``fix_untrained_tokens`` popularised.
"""

from __future__ import annotations

import logging
from typing import Any

from tunekit.data.templates import try_render
from tunekit.methods import Method

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
        text = try_render(tokenizer, turns, add_generation_prompt=False)  # timed; a runaway template raises
        if text is None:  # a template's own refusal (e.g. "system role not supported")
            logger.debug("the chat template refuses %s", [m["role"] for m in turns])
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


def fix_untrained_template_tokens(model: Any, tokenizer: Any, end_of_turn_id: int, method: Method) -> list[int]:
    """Start the untrained template tokens' rows at the mean trained row; returns the ids ``method`` must train
    (none for methods that cannot train just those rows)."""
    import torch

    ids = [i for i in template_token_ids(tokenizer, end_of_turn_id) if i < len(tokenizer)]
    matrices = [m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    matrices = list({id(w): w for w in matrices}.values())  # tied embeddings: one matrix
    norms = [_row_norms(w) for w in matrices]
    found = [_degenerate_rows(n, ids) for n in norms]
    bad = sorted({i for rows in found for i in rows})
    if not bad:
        return []
    with torch.no_grad():
        for w, n, rows in zip(matrices, norms, found):
            if not rows:
                continue  # this side of the token was trained (untied embeddings): keep it
            untrained = _degenerate_rows(n)  # every untrained row (reserved tokens too) stays out of the mean
            total = w.sum(dim=0, dtype=torch.float32) - w[untrained].sum(dim=0, dtype=torch.float32)
            w[rows] = (total / (w.shape[0] - len(untrained))).to(w.dtype)
    names = tokenizer.convert_ids_to_tokens(bad)
    # Methods without ``trains_token_rows`` could only train both embedding matrices whole: for a 128k vocabulary
    # and 4096 wide, a billion parameters.
    if not method.trains_token_rows:
        logger.warning(
            "the base model never trained the chat template's tokens %s (their embedding rows are zero): tunekit "
            "starts them at the mean embedding, but %s cannot train just those rows (only both embedding matrices "
            "whole), so the model may not learn to end its turn; tk.LoRA() trains just those rows",
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
