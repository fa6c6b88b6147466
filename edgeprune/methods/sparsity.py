"""Weight sparsity (masks on weights, shapes unchanged): magnitude, Wanda, SparseGPT.

Every function here is pure maths on one weight matrix W (out_features x in_features) and, when
the method needs calibration, statistics of that layer's inputs X (tokens x in_features):
  Wanda:     s_ij = |W_ij| * ||X_j||_2, pruned per output row (Sun et al. 2023);
  SparseGPT: OBS with H = X^T X, dampening 1 % of mean diag(H), lazy blocks of 128 columns,
             the mask chosen per block as it goes (Frantar & Alistarh 2023).
N:M means at most N non-zeros in every M consecutive input weights of a row (2:4 keeps 2 of 4).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch

from edgeprune.errors import ConfigError
from edgeprune.registry import register

NM = tuple[int, int]


def parse_nm(text: str) -> NM:
    """'2:4' -> (2, 4); N non-zeros kept in every M."""
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"N:M pattern '{text}' is not two integers", where="--nm", fix="write it like 2:4 or 4:8") from None
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern {n}:{m} needs 0 < N < M", where="--nm", fix="write it like 2:4 or 4:8")
    return n, m


def check_sparsity(sparsity: float) -> float:
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}", where="--sparsity", fix="e.g. 0.5")
    return sparsity


def unstructured_keep(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Boolean mask keeping all but the round(sparsity * n) lowest scores (per row or per matrix)."""
    flat = scores if per_row else scores.reshape(1, -1)
    n_prune = int(round(flat.shape[1] * sparsity))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune:
        idx = torch.argsort(flat, dim=1, stable=True)[:, :n_prune]
        keep.scatter_(1, idx, False)
    return keep.reshape(scores.shape)


def nm_keep(scores: torch.Tensor, nm: NM) -> torch.Tensor:
    """Keep the N highest scores in every group of M consecutive columns."""
    n, m = nm
    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"{cols} input features are not a multiple of M={m}", where="--nm", fix="choose another M")
    groups = scores.reshape(rows, cols // m, m)
    top = torch.topk(groups, n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(rows, cols)


def magnitude_prune(w: torch.Tensor, sparsity: float, nm: NM | None) -> torch.Tensor:
    """Magnitude: the whole matrix shares one threshold (unstructured), as in the baselines of
    the Wanda and SparseGPT papers."""
    scores = w.abs()
    keep = nm_keep(scores, nm) if nm else unstructured_keep(scores, sparsity, per_row=False)
    return w * keep


def wanda_prune(w: torch.Tensor, x_sq_sum: torch.Tensor, sparsity: float, nm: NM | None) -> torch.Tensor:
    """Wanda: |W| * ||X_j|| compared within each output row. x_sq_sum[j] = sum_t X_tj^2."""
    scores = w.abs() * x_sq_sum.sqrt().to(w.dtype)[None, :]
    keep = nm_keep(scores, nm) if nm else unstructured_keep(scores, sparsity, per_row=True)
    return w * keep


def _inverse_hessian_chol(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    h = h.clone()
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(len(h), dtype=h.dtype)
    h = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h, upper=True)


def _block_mask(w1: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune mask (True = prune) of one column block by the OBS saliency w^2 / [H^-1]_ii^2."""
    tmp = w1 ** 2 / d.reshape(1, -1) ** 2
    n_prune = int(tmp.numel() * sparsity)
    mask = torch.zeros_like(w1, dtype=torch.bool)
    if n_prune:
        mask.view(-1)[torch.argsort(tmp.flatten(), stable=True)[:n_prune]] = True
    return mask


@contextmanager
def _one_thread() -> Iterator[None]:
    """The column loop is thousands of tiny ops: with 2 intra-op threads on a loaded 2-core machine
    a 576 x 1536 matrix took 11.0 s vs 2.5 s on one thread (measured under shared load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, sparsity: float, nm: NM | None,
                    blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT: prune columns left to right, pushing each pruned weight's error onto the columns
    not yet visited (row-wise OBS update with the shared inverse Hessian). h = sum_t x_t x_t^T."""
    with _one_thread():
        return _sparsegpt(w, h, sparsity, nm, blocksize, percdamp)


def _sparsegpt(w: torch.Tensor, h: torch.Tensor, sparsity: float, nm: NM | None, blocksize: int,
               percdamp: float) -> torch.Tensor:
    w = w.clone().float()
    h = h.clone().float()
    dead = torch.diag(h) == 0  # inputs never active: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    hinv = _inverse_hessian_chol(h, percdamp)
    prune_n, m = (nm[1] - nm[0], nm[1]) if nm else (0, 0)
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        mask1 = _block_mask(w1, torch.diag(hinv1), sparsity) if not nm else torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm and i % m == 0:
                tmp = w1[:, i:i + m] ** 2 / torch.diag(hinv1)[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False).indices, True)
            col = w1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q  # exact zeros, not a rounding residue of the update
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def reconstruction_error(w: torch.Tensor, w_new: torch.Tensor, x: torch.Tensor) -> float:
    """||X W^T - X W_new^T||_F^2 / ||X W^T||_F^2: what pruning a layer costs on its own inputs."""
    ref = x @ w.T
    return float(((ref - x @ w_new.T) ** 2).sum() / (ref ** 2).sum())


@dataclass(frozen=True)
class SparsityMethod:
    """`calibration` names the input statistic the plumbing must collect per linear layer:
    none, 'sq_norms' (sum of x_j^2 per input) or 'hessian' (X^T X)."""

    name: str
    summary: str
    calibration: Literal["none", "sq_norms", "hessian"]
    prune: Callable[..., torch.Tensor]


MAGNITUDE = register("sparsity", "magnitude", family="sparsity")(SparsityMethod(
    "magnitude", "smallest |W| per matrix set to zero (no calibration)", "none",
    lambda w, _stats, sparsity, nm: magnitude_prune(w, sparsity, nm)))
WANDA = register("sparsity", "wanda", family="sparsity")(SparsityMethod(
    "wanda", "Wanda: |W| * ||X|| per output row (one calibration pass per layer)", "sq_norms", wanda_prune))
SPARSEGPT = register("sparsity", "sparsegpt", family="sparsity")(SparsityMethod(
    "sparsegpt", "SparseGPT: OBS with the calibration Hessian, damp 0.01, blocks of 128", "hessian",
    sparsegpt_prune))
