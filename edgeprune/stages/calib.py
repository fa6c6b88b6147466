"""Calibration batches: texts -> equal-length token windows (no padding, so no masks)."""

from __future__ import annotations

import torch

from edgeprune.config.recipe import Calibration
from edgeprune.data import calibration_texts
from edgeprune.errors import DataError


def calibration_windows(tok, cfg: Calibration) -> torch.Tensor:
    texts = calibration_texts(cfg.path, cfg.samples * 4, cfg.seed)
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id if tok.eos_token_id is not None else 0)
        if len(ids) >= cfg.samples * cfg.seq_len:
            break
    n = min(cfg.samples, len(ids) // cfg.seq_len)
    if n == 0:
        where = str(cfg.path) if cfg.path else "calibration data"
        raise DataError(f"calibration text has {len(ids)} tokens, shorter than one window of {cfg.seq_len}",
                        where=where, fix="give more text or lower calibration.seq_len")
    return torch.tensor(ids[: n * cfg.seq_len]).view(n, cfg.seq_len)
