"""Heal a pruned model without training: plumbing around methods/heal.py.

The unpruned teacher runs once over the calibration windows and keeps, for every layer l, its
input h_l and its post-attention residual u_l. The pruned student then runs one layer at a time
(streaming/layerwise.py); each projection that the method refits sees the inputs the already-healed
layers before it produce, and is fitted to the teacher's residual stream at the matching depth:

    o_proj of student layer k    ->  u_teacher[origin(k)] - h_student      (attention output)
    down_proj of student layer k ->  h_teacher[origin(k+1)] - u_student    (MLP output)

where origin(k) is the teacher index of student layer k and origin(n) = L. Layer k's output then
lands on the teacher's input to the next kept layer, so a removed run of layers is replaced by a
linear correction folded into the layer before it; nothing is added to the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from edgeprune import registry
from edgeprune.errors import ConfigError
from edgeprune.methods.heal import HealMethod, NormalEquations, residual_error, token_weights
from edgeprune.streaming.layerwise import layer0_inputs, run_layer


@dataclass
class TeacherStates:
    """h[l]: input of layer l (h[L]: last output); u[l]: residual after layer l's attention.
    Each is a list over calibration batches of (batch, seq, hidden) float32 tensors."""

    h: list[list[torch.Tensor]]
    u: list[list[torch.Tensor]]

    @property
    def n_layers(self) -> int:
        return len(self.u)


def _hook_input(module, store: dict, key: str):
    def fn(_mod, args, kwargs):
        store[key] = (args[0] if args else next(iter(kwargs.values()))).detach()
    return module.register_forward_pre_hook(fn, with_kwargs=True)


@torch.no_grad()
def teacher_states(model, windows: torch.Tensor, batch_size: int = 8,
                   keep: tuple[set[int], set[int]] | None = None) -> TeacherStates:
    """`keep`: (h depths, u depths) to store (needed_states); the others stay empty lists. All of
    them take 2 x layers x tokens x hidden floats: 18 GB for 256 windows of 512 on SmolLM2."""
    layers = model.model.layers
    keep_h, keep_u = keep if keep is not None else (set(range(len(layers) + 1)), set(range(len(layers))))
    h: list[list[torch.Tensor]] = [[] for _ in range(len(layers) + 1)]
    u: list[list[torch.Tensor]] = [[] for _ in range(len(layers))]
    for start in tqdm(range(0, len(windows), batch_size), desc="teacher states", unit="batch", leave=False):
        ids = windows[start:start + batch_size]
        x, kw = layer0_inputs(model, ids)
        for i, layer in enumerate(layers):
            seen: dict = {}
            handle = _hook_input(layer.post_attention_layernorm, seen, "u")
            if i in keep_h:
                h[i].append(x.float())
            try:
                x = run_layer(layer, x, kw)
            finally:
                handle.remove()
            if i in keep_u:
                u[i].append(seen["u"].float())
        h[-1].append(x.float())
    return TeacherStates(h=h, u=u)


def _check_plain(model) -> None:
    for layer in model.model.layers:
        for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
            if proj.bias is not None:
                raise ConfigError("healing refits bias-free projections; this model's o_proj/down_proj have biases",
                                  where="--heal", fix="drop --heal for this model")


def origins(n_teacher: int, removed: list[int]) -> list[int]:
    """Teacher index of every kept layer, in order."""
    drop = set(removed)
    return [i for i in range(n_teacher) if i not in drop]


def cut_layers(n_teacher: int, removed: list[int]) -> list[int]:
    """Student indices of the kept layers directly followed by a removed run."""
    origin = origins(n_teacher, removed) + [n_teacher]
    return [k for k in range(len(origin) - 1) if origin[k + 1] != origin[k] + 1]


def same_prefix(teacher, student) -> int:
    """How many leading decoder layers of `student` hold exactly the teacher's weights."""
    n = 0
    for t, s in zip(teacher.model.layers, student.model.layers):
        ts, ss = t.state_dict(), s.state_dict()
        if ts.keys() != ss.keys() or not all(torch.equal(ts[k], ss[k]) for k in ts):
            break
        n += 1
    return n


class StudentStates:
    """The pruned model's hidden states over the calibration batches, advanced one layer at a time."""

    def __init__(self, model, windows: torch.Tensor, batch_size: int):
        self.model = model
        self.batches = [windows[s:s + batch_size] for s in range(0, len(windows), batch_size)]
        self.h, self.kw = [], []
        for ids in self.batches:
            x, kw = layer0_inputs(model, ids)
            self.h.append(x)
            self.kw.append(kw)

    @torch.no_grad()
    def capture(self, layer, modules: dict) -> list[dict]:
        """Run `layer` on every batch (outputs discarded) and return each batch's hooked inputs."""
        seen_all = []
        for x, kw in zip(self.h, self.kw):
            seen: dict = {}
            handles = [_hook_input(m, seen, k) for k, m in modules.items()]
            try:
                run_layer(layer, x, kw)
            finally:
                for hd in handles:
                    hd.remove()
            seen_all.append(seen)
        return seen_all

    @torch.no_grad()
    def advance(self, layer) -> None:
        self.h = [run_layer(layer, x, kw) for x, kw in zip(self.h, self.kw)]


def _refit_o_proj(student: StudentStates, layer, teacher_u: list[torch.Tensor], method: HealMethod) -> None:
    proj = layer.self_attn.o_proj
    eq = NormalEquations(proj.in_features, proj.out_features, proj.weight.device)
    for seen, h_in, u_t in zip(student.capture(layer, {"x": proj}), student.h, teacher_u):
        eq.add(seen["x"], u_t - h_in, token_weights(u_t, method.objective))
    proj.weight.data = eq.solve(proj.weight.data, method.damp).to(proj.weight.dtype)


def _refit_down(student: StudentStates, layer, target_h: list[torch.Tensor], method: HealMethod) -> float:
    """Refit down_proj of `layer` to `target_h`, advance `student` through the layer, and return the
    layer's error before the refit. The layer's output is u + down_proj(a), with u the residual after
    attention and a the MLP's inner activation: both are captured for the fit, so the error before
    and the advanced states come from them, not from two more runs of the layer."""
    proj = layer.mlp.down_proj
    caps = student.capture(layer, {"a": proj, "u": layer.post_attention_layernorm})
    before = _mean_error([seen["u"] + proj(seen["a"]) for seen in caps], target_h)
    w = proj.weight.data
    d_in = proj.in_features if method.fit == "down" else proj.out_features
    eq = NormalEquations(d_in, proj.out_features, w.device)
    for seen, h_t in zip(caps, target_h):
        x = seen["a"] if method.fit == "down" else seen["a"] @ w.T
        eq.add(x, h_t - seen["u"], token_weights(h_t, method.objective))
    if method.fit == "down":
        proj.weight.data = eq.solve(w, method.damp).to(w.dtype)
    else:  # ReplaceMe: M acts on the MLP output, folded as W_down <- M W_down
        m = eq.solve(torch.eye(proj.out_features, dtype=w.dtype, device=w.device), method.damp)
        proj.weight.data = (m @ w.double()).to(w.dtype)
    student.h = [seen["u"] + proj(seen["a"]) for seen in caps]
    return before


@dataclass(frozen=True)
class Refit:
    """What heal_model does at student layer `layer`: o_proj fitted to the teacher's post-attention
    state u[o_target] (None: kept), down_proj refitted (or not) to the teacher's state h[target]."""

    layer: int
    target: int
    o_target: int | None
    down: bool


def plan_refits(method: HealMethod, n_teacher: int, removed: list[int],
                width: frozenset[str] = frozenset()) -> list[Refit]:
    """Cut projections are always refitted; depth cuts refit the layer before each removed run,
    scope "all" every kept layer from the first change on, `after`/`tail` the layers they name."""
    origin = origins(n_teacher, removed) + [n_teacher]
    n = len(origin) - 1
    cuts = set(cut_layers(n_teacher, removed))
    first = 0 if width else min(cuts, default=n)
    extra = method.extra_layers(sorted(cuts), n)
    plan = []
    for k in range(n):
        later = (method.scope == "all" and k >= first) or k in extra
        cut_attn = method.cut_attention and k in cuts
        refit_o = "heads" in width or (later and method.o_proj) or cut_attn
        refit_down = k in cuts or "ffn" in width or later
        if refit_o or refit_down:  # at a cut, attention aims at the last removed layer's post-attention state
            o_target = (origin[k + 1] - 1 if cut_attn else origin[k]) if refit_o else None
            plan.append(Refit(k, origin[k + 1], o_target, refit_down))
    return plan


def first_changed(plan: list[Refit], removed: list[int] = ()) -> int:
    """The first student layer `plan` refits, or the first removed index if that comes first (a
    removed run at the bottom has no cut layer before it): below it the student's layers are the
    teacher's, at the same depths. Whether their weights are is the caller's to check (same_prefix)."""
    return min([r.layer for r in plan] + list(removed), default=0)


def needed_states(plans: list[list[Refit]], n_teacher: int, removed: list[int] = ()) -> tuple[set[int], set[int]]:
    """(h depths, u depths) the plans read, plus the final state and each plan's input to its first
    refitted layer (the student starts there, not at the embeddings; heal_model's start, with the
    same `removed`): the states worth keeping."""
    h = {n_teacher} | {r.target for plan in plans for r in plan} | {first_changed(p, removed) for p in plans if p}
    h.discard(0)  # a start at 0 runs from the embeddings: nothing to keep for it
    u = {r.o_target for plan in plans for r in plan if r.o_target is not None}
    return h, u


@torch.no_grad()
def heal_model(model, teacher: TeacherStates, windows: torch.Tensor, removed: list[int], method_name: str | HealMethod,
               width: frozenset[str] = frozenset(), batch_size: int = 8, teacher_prefix: int = 0) -> dict:
    """Heal `model` in place: `removed` teacher layers are gone and `width` names what was cut in
    every layer ("heads": o_proj sees fewer heads; "ffn": down_proj sees fewer channels); which
    projections are refitted: plan_refits. Returns per-layer fit errors.

    `teacher_prefix`: how many leading layers the caller found equal to the teacher's (same_prefix).
    Below the first refitted layer they are, so the student's states start from the teacher's there
    when it is stored, instead of running those layers again (12 of 24 layers on SmolLM2 -6)."""
    method = method_name if isinstance(method_name, HealMethod) else registry.get("heal", method_name)
    method_name = method.name
    _check_plain(model)
    layers = list(model.model.layers)
    if teacher.n_layers - len(set(removed)) != len(layers):
        raise ConfigError(f"student has {len(layers)} layers, {teacher.n_layers} - {len(set(removed))} expected",
                          where="--heal", fix="heal the model the removal list describes")
    refits = plan_refits(method, teacher.n_layers, removed, width)
    plan = {r.layer: r for r in refits}
    origin = origins(teacher.n_layers, removed)
    student = StudentStates(model, windows, batch_size)
    start = _start_from_teacher(student, teacher, min(first_changed(refits, removed), teacher_prefix))
    log = []
    for k, layer in enumerate(tqdm(layers[start:], desc=f"heal {method_name}", unit="layer", leave=False), start):
        r = plan.get(k)
        if r is None:
            student.advance(layer)
            continue
        target = teacher.h[r.target]
        if r.o_target is not None:
            _refit_o_proj(student, layer, teacher.u[r.o_target], method)
        if r.down:
            before = _refit_down(student, layer, target, method)
        else:
            before = None
            student.advance(layer)
        log.append({"layer": k, "teacher_layer": origin[k], "target": r.target, "o_proj": r.o_target is not None,
                    "down_proj": r.down, "error_before": before, "error_after": _mean_error(student.h, target)})
    return {"method": method_name, "refits": log, "final_error": _mean_error(student.h, teacher.h[-1]),
            "calibration_tokens": int(windows.numel()), "first_layer_run": start}


def _start_from_teacher(student: StudentStates, teacher: TeacherStates, start: int) -> int:
    """Put the teacher's input of layer `start` in `student` and return `start`, or 0 (the student
    runs from its embeddings) where that state was not kept or was batched otherwise."""
    if start <= 0:
        return 0
    given = teacher.h[start]
    if [t.shape for t in given] != [h.shape for h in student.h]:
        return 0
    student.h = list(given)
    return start


def _mean_error(hs: list[torch.Tensor], target: list[torch.Tensor]) -> float:
    errs = [residual_error(x, t) for x, t in zip(hs, target)]
    return sum(errs) / len(errs)
