"""The steps a plan runs, as specs: `Plan.steps` lists them, `--dry-run` prints them, execute.py
(run-level steps) and measure.py (candidate steps) run them.

Each step's name is the step store's stage name (what `--from NAME` rebuilds, with every later one).
Run-level steps run once (import, score, search, tasks); candidate steps run for the baseline and
then for each candidate the search picks, in plan order, each from the one before's output.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeprune.config.recipe import Recipe
from edgeprune.config.target import Target

# Every step the planner knows, in pipeline order: `--from STEP` rebuilds it and every later one.
# imatrix runs inside export (the export step asks for it when export.imatrix is on).
STEP_ORDER = ("import", "score", "prune", "width", "heal", "recover", "imatrix", "export", "bench", "ppl", "kld",
              "tasks")


IMATRIX = {True: " with an importance matrix", False: "",
           None: " (with an importance matrix for the types where it helps)"}  # recipe export.imatrix


@dataclass(frozen=True)
class Step:
    name: str  # one of STEP_ORDER (or "search", the loop over candidate steps)
    what: str  # the --dry-run line
    per_candidate: bool = False  # runs for the baseline and every searched candidate

    def line(self) -> str:
        return f"{self.name}: {self.what}"


def steps_from(name: str | None) -> set[str]:
    """The step store stages `--from NAME` rebuilds."""
    return set() if name is None else set(STEP_ORDER[STEP_ORDER.index(name):])


def plan_steps(recipe: Recipe, target: Target) -> list[Step]:
    """The steps this recipe runs on this target, in the order they run."""
    r, sr = recipe, recipe.search
    width = min(sr.heads_keep + sr.ffn_keep) < 1.0
    candidate = [
        Step("prune", f"remove the candidate's layers in {r.depth.method} order", True),
        Step("width", "cut the candidate's heads / FFN channels by the width method's importance", True)
        if width else None,
        heal_step(r) if r.heal is not None else None,
        recover_step(r) if r.recovery is not None else None,
        Step("export", f"F16 GGUF, verify logits vs HF, quantize to the candidate's type{IMATRIX[r.export.imatrix]}, "
                       "verify vs F16", True),
        Step("bench", f"benchmark on '{target.device.runner}' ({r.bench.repetitions} reps + {r.bench.warmup} "
                      "warm-up), paired with the baseline where the runner pairs", True),
        Step("ppl", f"WikiText-2 perplexity ({r.quality.windows} x {r.quality.ctx} tokens)", True),
        Step("kld", "KL divergence vs the unpruned HF model on the perplexity windows", True)
        if r.quality.kld else None,
    ]
    search = Step("search", f"measure the unpruned {r.export.quant} (the baseline), then at most {r.max_iterations} "
                            f"times: predict size, RAM and speed of every candidate (layers removed x quant in "
                            f"{'/'.join(sr.quant_choices())}{' x heads/FFN width' if width else ''}) with the "
                            f"target's calibrated cost model, measure the best-quality one predicted to meet the "
                            f"budget (the candidate steps), recalibrate; stop when the budget is met or nothing "
                            f"within the quality floor (ppl ratio <= {target.budget.max_ppl_ratio}) and depth limit "
                            f"is predicted to meet it")
    steps = [Step("import", "load the model, save a plain HF checkpoint (safetensors)"),
             Step("score", f"{r.depth.method} per layer on {r.calibration.samples} calibration windows of "
                           f"{r.calibration.seq_len} tokens"),
             search, *(s for s in candidate if s is not None)]
    if r.evaluate is not None:
        ev = r.evaluate
        items = f"first {ev.limit} items" if ev.limit else "full sets"
        parent = " and the unpruned baseline (paired CIs)" if ev.compare_parent else ""
        steps.append(Step("tasks", f"lm-eval {', '.join(ev.tasks)} ({items}) on the delivered GGUF{parent}"))
    return steps


def heal_step(r: Recipe) -> Step:
    h = r.heal
    local = f", then {h.local_minutes:g} min of layer-local distillation" if h.local_minutes else ""
    if h.global_minutes:
        local += (f", then {h.global_minutes:g} min of top-{h.topk} distillation ({h.global_layers} layers) on "
                  f"{h.calibration.samples + h.global_samples} windows")
    return Step("heal", f"(pruned candidates) {h.method} on {h.calibration.samples} calibration windows of "
                        f"{h.calibration.seq_len} tokens, kept only if {h.holdout_samples} held-out windows "
                        f"improve{local}", True)


def recover_step(r: Recipe) -> Step:
    rc, t = r.recovery, r.recovery.train
    budget = ", ".join(f"{v} {k}" for k in ("minutes", "steps", "epochs") if (v := getattr(t, k)) is not None)
    return Step("recover", f"(pruned candidates) {rc.mode} on {rc.data.source}, LoRA r{rc.lora.rank}, lr {t.lr}, "
                           f"budget {budget}", True)
