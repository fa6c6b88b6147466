"""Budget compiler: a target's SLA -> the rates and bytes a model must reach, and which binds.

Pure functions. A latency SLA "P-token prompt + N-token answer in <= T s" is one equation in two
unknowns (prefill and decode speed): P / pp + N / tg <= T. It is closed with the device's
prefill/decode speed ratio r = pp / tg (from the cost model, calibrated by measurement), so
tg >= (P / r + N) / T and pp >= r * tg. A decode floor "≥ D tok/s" is a second lower bound on tg;
the larger of the two binds. Memory budgets are bytes: peak RAM at context C (weights + KV cache
+ compute buffers) and the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeprune.config.target import Budget


@dataclass(frozen=True)
class Requirements:
    decode_tps: float | None      # minimum decode tok/s (None: no speed budget)
    prefill_tps: float | None     # minimum prefill tok/s implied by the latency budget
    max_ram_bytes: float | None   # peak RAM incl. KV cache at `context` tokens
    max_file_bytes: float | None
    context: int                  # tokens the KV cache must hold
    speed_binding: str | None     # "latency_s" or "decode_tps": which one sets decode_tps
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def compile_budget(budget: Budget, pp_over_tg: float, context: int | None = None) -> Requirements:
    """Lower bounds on speed and upper bounds on bytes; `pp_over_tg` is the device's prefill/decode ratio."""
    if pp_over_tg <= 0:
        raise ValueError(f"pp_over_tg must be positive, got {pp_over_tg}")
    p, n = budget.prompt_tokens, budget.answer_tokens
    ctx = context or getattr(budget, "context_tokens", None) or p + n
    notes = []
    tg_latency = pp_latency = None
    if budget.latency_s is not None:
        tg_latency = (p / pp_over_tg + n) / budget.latency_s
        pp_latency = pp_over_tg * tg_latency
        notes.append(f"{p}+{n} tokens in {budget.latency_s:g} s with prefill {pp_over_tg:.1f}x decode speed "
                     f"-> decode >= {tg_latency:.1f} tok/s, prefill >= {pp_latency:.1f} tok/s")
    decode, binding = tg_latency, "latency_s" if tg_latency is not None else None
    if budget.decode_tps is not None and (decode is None or budget.decode_tps > decode):
        decode, binding = budget.decode_tps, "decode_tps"
        if tg_latency is not None:
            notes.append(f"decode floor {budget.decode_tps:g} tok/s is stricter than the latency's {tg_latency:.1f}")
    return Requirements(decode_tps=decode, prefill_tps=pp_latency,
                        max_ram_bytes=budget.max_ram_gb * 1e9 if budget.max_ram_gb is not None else None,
                        max_file_bytes=budget.max_file_gb * 1e9 if budget.max_file_gb is not None else None,
                        context=ctx, speed_binding=binding, notes=tuple(notes))


def shortfalls(req: Requirements, budget: Budget, pred: dict) -> dict[str, float]:
    """Per constraint, how far a (predicted or measured) model is from it: required/achieved for
    minimum rates, achieved/allowed for maxima. > 1 means missed; the largest is the binding one.
    `pred` has tg_tps, pp_tps, ram_bytes, file_bytes."""
    out = {}
    if budget.latency_s is not None:
        lat = budget.prompt_tokens / pred["pp_tps"] + budget.answer_tokens / pred["tg_tps"]
        out["latency_s"] = lat / budget.latency_s
    if budget.decode_tps is not None:
        out["decode_tps"] = budget.decode_tps / pred["tg_tps"]
    if req.max_ram_bytes is not None:
        out["peak_ram_gb"] = pred["ram_bytes"] / req.max_ram_bytes
    if req.max_file_bytes is not None:
        out["file_gb"] = pred["file_bytes"] / req.max_file_bytes
    return out


def binding_constraint(req: Requirements, budget: Budget, pred: dict) -> tuple[str | None, float]:
    """(name, ratio) of the constraint furthest from being met (or closest to breaking)."""
    s = shortfalls(req, budget, pred)
    if not s:
        return None, 0.0
    name = max(s, key=s.get)
    return name, s[name]


def with_relative_latency(target, baseline_latency_s: float):
    """`target` with latency_s = budget.latency_fraction x the unpruned baseline's latency (measured in
    the run, or predicted for a dry run); unchanged without a fraction. The fraction stays in the
    budget, so the manifest says the seconds were derived."""
    b = target.budget
    if b.latency_fraction is None:
        return target
    return target.model_copy(update={"budget": b.model_copy(update={"latency_s": b.latency_fraction * baseline_latency_s})})
