"""Next-token NLL of an in-memory torch causal LM on token windows: the one torch implementation of
the windows protocol (recovery/hf_ppl's text perplexity, the heal stage's held-out loss).

Protocol (the one stages/quality.py scores for GGUFs and HF folders from their logits): the text is
tokenized whole, without BOS; cut into non-overlapping windows of `ctx` tokens (the first `windows`
of them); within a window every token after the first is scored from its in-window prefix.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

from edgeprune.errors import DataError


def text_windows(ids: Sequence[int], ctx: int, windows: int | None,
                 fix: str = "give a longer text or a smaller --ctx") -> list[list[int]]:
    """The first `windows` (None: all) non-overlapping windows of `ctx` tokens; a text shorter than
    one window is refused."""
    n = len(ids) // ctx if windows is None else min(windows, len(ids) // ctx)
    if n == 0:
        raise DataError(f"evaluation text has {len(ids)} tokens, shorter than one window of {ctx}",
                        where="evaluation text", fix=fix)
    return [list(ids[w * ctx:(w + 1) * ctx]) for w in range(n)]


@torch.no_grad()
def windows_nll(model, windows: torch.Tensor, batch_size: int = 1, desc: str | None = None) -> tuple[float, int]:
    """(sum of next-token NLL, tokens scored) over `windows` (n, ctx): fp32 cross-entropy of each
    batch's logits, summed in Python floats. `desc` shows a progress bar."""
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    starts = range(0, len(windows), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
        ids = windows[s:s + batch_size].to(dev)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        count += ids[:, 1:].numel()
    return total, count
