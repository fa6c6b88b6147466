"""Loss maths for recovery training: next-token CE, KD (full or top-k teacher), their mix.

Pure functions on tensors; models, data and devices live in edgeprune/recovery.
Shapes: logits (B, T, V) predict token t+1 from position t; labels (B, T) use -100 for
"no loss here". Every loss returns the mean over the positions that count, so a batch split
across processes averages back to the same number when every position counts.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

IGNORE = -100


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1."""
    return logits[:, :-1, :], labels[:, 1:]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy over positions whose next label is not IGNORE."""
    lg, lb = shift(logits, labels)
    return F.cross_entropy(lg.reshape(-1, lg.size(-1)).float(), lb.reshape(-1), ignore_index=IGNORE)


def _masked_mean(per_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(per_pos.dtype)
    return (per_pos * mask).sum() / mask.sum().clamp_min(1.0)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T) per position, averaged over `mask` (B, T) positions.

    The T^2 factor (Hinton et al., 2015) keeps gradient size comparable across temperatures.
    """
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_pos = (t.exp() * (t - s)).sum(-1)
    if mask is None:
        mask = torch.ones(per_pos.shape, dtype=torch.bool, device=per_pos.device)
    return temperature ** 2 * _masked_mean(per_pos, mask)


def kd_loss_topk(student: torch.Tensor, top_values: torch.Tensor, top_indices: torch.Tensor,
                 temperature: float, mask: torch.Tensor | None = None,
                 rest: torch.Tensor | None = None) -> torch.Tensor:
    """KD against a cached top-K teacher. Without `rest` the teacher distribution is renormalised
    over its K best tokens (the tail is dropped), the student keeps its full-vocabulary normaliser;
    with K = V this equals `kd_loss` exactly.

    `rest` (B, T): log of the teacher's probability outside its K tokens, at this temperature
    (`recovery.teacher.teacher_topk` gives it). Then the tail is kept as one more class: the K
    tokens carry (1 - p_rest) x the renormalised top-K, and the student's own mass outside those K
    is matched to p_rest. Renormalising instead teaches the student to put the tail's mass on the
    K tokens, an overconfidence that perplexity on other text pays for.
    """
    # At T = 1 the division is skipped: it is a full pass over the 49k-vocabulary logits.
    s = F.log_softmax(student.float() if temperature == 1 else student.float() / temperature, dim=-1)
    s_k = s.gather(-1, top_indices.long())
    t_k, p_k = _teacher_k(top_values, temperature, rest)
    per_pos = (p_k * (t_k - s_k)).sum(-1)
    if rest is not None:
        per_pos = per_pos + _tail(s_k, rest)[0].squeeze(-1)
    if mask is None:
        mask = torch.ones(per_pos.shape, dtype=torch.bool, device=per_pos.device)
    return temperature ** 2 * _masked_mean(per_pos, mask)


# The student's mass outside the teacher's K tokens is 1 - (its mass on them), taken in fp32: below
# this the difference is rounding, and the floor bounds the tail class's gradient where it vanishes.
TAIL_FLOOR = 1e-6


def _log_keep(rest: torch.Tensor) -> torch.Tensor:
    """log(1 - p_rest) from log p_rest, exact for p_rest near 0 and near 1."""
    return torch.log(-torch.expm1(rest.float().clamp_max(-1e-7)))


@torch.no_grad()
def kd_topk_head(h: torch.Tensor, head: torch.Tensor, top_values: torch.Tensor, top_indices: torch.Tensor,
                 temperature: float, scale: float, rest: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """`kd_loss_topk` of the logits h @ head.T summed over the rows of `h`, times `scale`, and its
    gradient with respect to `h`, in closed form with no autograd graph.

    d loss / d z = T * (softmax(z / T) - p_teacher scattered to its K ids); with the tail class
    (`rest`), the ids outside the K get q_j * (1 - p_rest / q_rest) instead of q_j. The
    (rows x vocab) logits are made once, turned into that gradient in place and multiplied back
    through the head: autograd would keep the float copy, the log-softmax and a zeroed scatter
    buffer of the same size, and read them again in backward. Returns (loss, grad of h in h's dtype)."""
    z = F.linear(h.to(head.dtype), head).float()
    if temperature != 1:
        z /= temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    idx = top_indices.long()
    t_k, p_k = _teacher_k(top_values, temperature, rest)
    s_k = z.gather(-1, idx) - lse
    loss = (p_k * (t_k - s_k)).sum()
    g = z.sub_(lse).exp_()
    if rest is not None:
        tail_loss, outside = _tail(s_k, rest)
        loss += tail_loss.sum()
        g *= outside
        g.scatter_(-1, idx, s_k.exp() - p_k)
    else:
        g.scatter_add_(-1, idx, -p_k)
    g *= temperature * scale
    return float(loss) * temperature ** 2 * scale, (g.to(head.dtype) @ head).to(h.dtype)


def _teacher_k(top_values: torch.Tensor, temperature: float, rest: torch.Tensor | None):
    """(log p_k, p_k) of the teacher over its K ids, (rows, K): renormalised over them, or with
    `rest`, scaled by the mass 1 - p_rest they hold."""
    t_k = F.log_softmax(top_values.float() / temperature, dim=-1)
    if rest is not None:
        t_k = t_k + _log_keep(rest).unsqueeze(-1)
    return t_k, t_k.exp()


def _tail(s_k: torch.Tensor, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tail class, from the student's log-probs of the K ids (..., K) and the teacher's log
    tail mass (...): its loss term per row, p_rest * log(p_rest / q_rest), and the factor
    1 - p_rest / q_rest on the gradient of every id outside the K, both (..., 1)."""
    log_p = rest.float().unsqueeze(-1)
    q_rest = (1 - s_k.exp().sum(-1, keepdim=True)).clamp_min(TAIL_FLOOR)
    p_rest = log_p.exp()
    return p_rest * (log_p - q_rest.log()), 1 - p_rest / q_rest


def kd_topk_parts(h: torch.Tensor, head: torch.Tensor, top_values: torch.Tensor, top_indices: torch.Tensor,
                  temperature: float, scale: float, rest: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`kd_topk_head`'s (loss, grad of h) as plain tensor code with no in-place tricks: the body that
    torch.compile fuses into a couple of passes over the logits (the eager form makes about eight).
    The K teacher ids get softmax - p computed in fp32 and written over the softmax, so a bf16 head
    never takes the difference of two near-equal bf16 numbers."""
    z = F.linear(h.to(head.dtype), head).float()
    if temperature != 1:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    idx = top_indices.long()
    t_k, p_k = _teacher_k(top_values, temperature, rest)
    s_k = z.gather(-1, idx) - lse
    loss = (p_k * (t_k - s_k)).sum()
    q = torch.exp(z - lse)
    if rest is not None:
        tail_loss, outside = _tail(s_k, rest)
        loss, q = loss + tail_loss.sum(), q * outside
    g = q.to(head.dtype).scatter(-1, idx, (torch.exp(s_k) - p_k).to(head.dtype))
    return loss * (temperature ** 2 * scale), ((g @ head) * (temperature * scale)).to(h.dtype)


@functools.cache
def kd_topk_parts_compiled():
    """kd_topk_parts through torch.compile (Inductor writes fused C++ loops for the CPU), made once."""
    return torch.compile(kd_topk_parts, dynamic=False)


def mixed_loss(ce: torch.Tensor | None, kd: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """alpha * KD + (1 - alpha) * CE; either term may be absent (pure SFT or pure KD)."""
    if kd is None:
        return ce
    if ce is None:
        return kd
    return alpha * kd + (1.0 - alpha) * ce


def share_regained(ppl_base: float, ppl_pruned: float, ppl_recovered: float) -> float:
    """Fraction of the log-perplexity lost to pruning that recovery won back (1.0 = all of it)."""
    lost = math.log(ppl_pruned) - math.log(ppl_base)
    if lost <= 0:
        raise ValueError(f"pruning did not raise perplexity ({ppl_base} -> {ppl_pruned}); nothing to regain")
    return (math.log(ppl_pruned) - math.log(ppl_recovered)) / lost
