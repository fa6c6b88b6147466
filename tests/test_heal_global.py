"""Global top-K distillation after healing (stages/heal_global.py) on the tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeprune.methods.distill import kd_loss_topk


@pytest.fixture(scope="module")
def tiny(tiny_teacher):
    from edgeprune.surgery.layers import remove_layers

    teacher, windows = tiny_teacher
    return teacher, remove_layers(copy.deepcopy(teacher), [2]), windows[:8]


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cached_prefix_and_chunked_loss_give_the_plain_kd_loss_and_gradients(tiny):
    """The step's shortcuts (prefix computed once, head logits a chunk at a time, frozen head cast
    once) change nothing: loss and every gradient equal one plain forward + kd_loss_topk.
    Mutants caught: chunks not weighted by their share, the prefix cached from the wrong layer."""
    from edgeprune.recovery.teacher import teacher_topk
    from edgeprune.stages.heal_global import freeze_below, kd_step, prefix_states

    teacher, student, windows = tiny
    ids = windows[:4]
    values, indices, _ = teacher_topk(teacher, ids, k=16, batch=2)
    model = copy.deepcopy(student)
    freeze_below(model, 1)
    plain = kd_loss_topk(model(input_ids=ids, use_cache=False).logits, values, indices, 2.0)
    plain.backward()
    want = _grads(model)
    assert set(want) and all(n.startswith(("model.layers.1.", "model.layers.2.", "model.norm")) for n in want)
    model.zero_grad(set_to_none=True)
    (x, kw), = prefix_states(model, ids, 1, micro=4, bf16=False)
    loss = kd_step(model, x, kw, model.lm_head.weight.detach(), values, indices, 1, 2.0, chunk=37, bf16=False)
    assert loss == pytest.approx(float(plain.detach()), rel=1e-5)
    got = _grads(model)
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6)


def test_global_distillation_lowers_the_kd_loss_and_trains_only_from_the_first_cut(tiny):
    from edgeprune.recovery.teacher import FixedTopK, teacher_topk
    from edgeprune.stages.heal_global import global_distill

    teacher, student, windows = tiny
    topk = FixedTopK(teacher_topk(teacher, windows, k=16), tail=False)
    model = copy.deepcopy(student)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not n.startswith(("model.layers.1.",
                                                                                     "model.layers.2.", "model.norm"))}
    torch.manual_seed(0)
    info = global_distill(model, windows, topk, first=1, minutes=60, lr=1e-3, micro=2, bf16=False, max_steps=24)
    assert info["steps"] == 24 and info["tokens"] == 24 * 2 * 64 and info["epochs"] == 6.0
    assert info["loss_last_10pct"] < 0.9 * info["loss_first_10pct"]  # 5.58 -> 4.75 when written
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert not any(p.requires_grad for p in model.parameters())  # handed back frozen, as the heal stage expects
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(student.named_parameters())[n])]
    assert any(n.startswith("model.layers.1.") for n in changed)


def test_learning_rate_warms_up_then_decays_to_its_floor():
    from edgeprune.stages.heal_global import lr_at

    assert lr_at(0.0, 1.0) == 0.0 and lr_at(0.025, 1.0) == pytest.approx(0.5)
    assert lr_at(0.05, 1.0) == pytest.approx(1.0) and lr_at(1.0, 1.0) == pytest.approx(0.1)
    assert lr_at(0.5, 1.0) > lr_at(0.9, 1.0) > lr_at(1.0, 1.0)


def test_heal_stage_runs_global_distillation_and_keeps_it_only_if_held_out_loss_drops(tiny_llama, tmp_path):
    import json

    from edgeprune.config.recipe import Calibration, Heal
    from edgeprune.stages.heal_step import heal_checkpoint
    from edgeprune.toolchain.hf import load_model, save_model
    from edgeprune.surgery.layers import remove_layers

    teacher, tok = load_model(tiny_llama)
    save_model(remove_layers(teacher, [2]), tok, tmp_path / "pruned")
    cfg = Heal(method="down-cut", calibration=Calibration(samples=6, seq_len=64, seed=1), holdout_samples=2,
               global_minutes=0.02, global_samples=4, global_lr=1e-3, topk=8, global_layers="cut")
    rec = heal_checkpoint(tiny_llama, tmp_path / "pruned", [2], cfg, tmp_path / "healed")
    g = rec["global"]
    assert g["first_layer"] == 1 and g["topk"] == 8 and g["steps"] >= 1
    assert g["tokens"] % 64 == 0 and g["tokens"] >= 64
    # the first micro-batch (4 rows) is fitting windows: its teacher top-K came from the states
    assert 4 <= g["teacher_reused_rows"] <= rec["fit_tokens"] // 64
    # the fit started at the cut layer (1) from the teacher's state: layer 0 is the teacher's own
    assert [t["first_layer_run"] for t in rec["trials"]] == [1]
    assert rec["fit_first_layer"] == (None if rec["chosen"] == "none" else 1)
    assert rec["teacher_states_s"] >= 0 and rec["trials"][0]["fit_s"] >= 0  # timed (ms on the tiny model)
    losses = rec["holdout_nll"]
    assert g["kept"] == (losses["global"] < min(losses["none"], losses["down-cut"]))
    assert json.loads((tmp_path / "healed" / "heal.json").read_text())["global"]["kept"] == g["kept"]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_closed_form_head_gradient_equals_autograd(temperature):
    """kd_topk_head's loss and d loss / d h equal autograd through kd_loss_topk. Mutants caught: the
    teacher probabilities added instead of subtracted, the T factor left out, `scale` applied to the
    loss only."""
    from edgeprune.methods.distill import kd_topk_head

    g = torch.Generator().manual_seed(0)
    h, head = torch.randn(13, 24, generator=g), torch.randn(300, 24, generator=g) / 4
    values = torch.randn(13, 16, generator=g) * 3
    indices = torch.stack([torch.randperm(300, generator=g)[:16] for _ in range(13)]).int()
    leaf = h.clone().requires_grad_(True)
    want = kd_loss_topk(leaf @ head.T, values, indices, temperature) * 0.25 * 13
    want.backward()
    loss, grad = kd_topk_head(h, head, values, indices, temperature, 0.25)
    assert loss == pytest.approx(float(want.detach()), rel=1e-5)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-4, atol=1e-6)


def test_compiled_head_loss_equals_the_eager_closed_form():
    """torch.compile's fused head loss: same loss and gradient into h as kd_topk_head, in fp32 and
    with a bf16 head (there the K teacher ids are written exact, not as a difference of bf16 numbers)."""
    from edgeprune.methods.distill import kd_topk_head, kd_topk_parts, kd_topk_parts_compiled

    torch.manual_seed(0)
    h, head = torch.randn(24, 16), torch.randn(300, 16)
    values, indices = torch.randn(24, 8) * 3, torch.randperm(300)[:8].repeat(24, 1)
    for temperature in (1.0, 2.0):
        want_loss, want_grad = kd_topk_head(h, head, values, indices, temperature, 0.25)
        for fn in (kd_topk_parts, kd_topk_parts_compiled()):
            with torch.no_grad():
                loss, grad = fn(h, head, values, indices, temperature, 0.25)
            assert float(loss) == pytest.approx(want_loss, rel=1e-5)
            torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)
    hb, headb = h.bfloat16(), head.bfloat16()
    _, eager = kd_topk_head(hb, headb, values, indices, 1.0, 0.25)
    with torch.no_grad():
        _, fused = kd_topk_parts_compiled()(hb, headb, values, indices, 1.0, 0.25)
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), eager.float(), rtol=0.02, atol=2e-3)


def test_compiled_step_trains_like_the_eager_step(tiny):
    """global_distill with compile=True: the same losses, step for step, as eager (fp32, so only
    the fused loops' summation order differs), and it says it compiled."""
    from edgeprune.recovery.teacher import FixedTopK, teacher_topk
    from edgeprune.stages.heal_global import compile_ok, global_distill

    if not compile_ok():
        pytest.skip("no C++ compiler for torch.compile")
    teacher, student, windows = tiny
    topk = teacher_topk(teacher, windows, k=16)
    runs = {}
    for compiled in (False, True):
        model = copy.deepcopy(student)
        runs[compiled] = global_distill(model, windows, FixedTopK(topk), first=1, minutes=60, lr=1e-3, micro=2,
                                        bf16=False, max_steps=6, compile=compiled), model
    (eager, m_eager), (fused, m_fused) = runs[False], runs[True]
    assert fused["compiled"] and not eager["compiled"]
    assert fused["loss_first_10pct"] == pytest.approx(eager["loss_first_10pct"], rel=1e-4)
    assert fused["loss_last_10pct"] == pytest.approx(eager["loss_last_10pct"], rel=1e-3)
    for (n, a), (_, b) in zip(m_eager.named_parameters(), m_fused.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=n)


def _coarse_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, k: int) -> torch.Tensor:
    """KL over K + 1 classes (the teacher's top K and everything else), built directly."""
    p, q = teacher_logits.softmax(-1), student_logits.softmax(-1)
    idx = teacher_logits.topk(k, dim=-1).indices
    p_k, q_k = p.gather(-1, idx), q.gather(-1, idx)
    pc = torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], -1)
    qc = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1)
    return (pc * (pc.log() - qc.log())).sum(-1).mean()


def test_teacher_tail_mass_and_the_tail_class_loss_equal_a_kl_over_k_plus_one_classes(tiny):
    """teacher_topk's `rest` is log(1 - top-K mass) of the teacher's softmax, and kd_loss_topk with
    it is the KL between teacher and student over the K tokens plus one class for the rest.
    Mutants caught: rest taken over the top K instead of the tail, the K tokens not scaled by the
    kept mass, the tail term left out."""
    from edgeprune.recovery.teacher import teacher_topk

    teacher, student, windows = tiny
    ids = windows[:2]
    top = teacher_topk(teacher, ids, k=16)
    t_logits = teacher(input_ids=ids).logits.detach().float()
    t_top = t_logits.softmax(-1).topk(16, dim=-1).values.sum(-1)
    torch.testing.assert_close(top.rest.exp(), 1 - t_top, rtol=1e-4, atol=1e-6)
    s_logits = student(input_ids=ids).logits.detach().float()
    got = kd_loss_topk(s_logits, top.values, top.indices, 1.0, rest=top.rest)
    # fp16 values: the K tokens' shares carry fp16 rounding of the logits
    assert float(got) == pytest.approx(float(_coarse_kl(t_logits, s_logits, 16)), rel=2e-3)
    plain = kd_loss_topk(s_logits, top.values, top.indices, 1.0)
    assert abs(float(plain) - float(got)) > 0.01  # the two objectives differ on this model


@pytest.mark.parametrize("compiled", [False, True])
def test_closed_form_tail_gradient_equals_autograd(compiled):
    """kd_topk_head / kd_topk_parts with the tail class: loss and d loss / d h equal autograd
    through kd_loss_topk(rest=...). Mutants caught: the ids outside K not scaled by
    1 - p_rest / q_rest, the K ids scaled too, the tail's loss term dropped."""
    from edgeprune.methods.distill import kd_topk_head, kd_topk_parts_compiled
    from edgeprune.stages.heal_global import compile_ok

    if compiled and not compile_ok():
        pytest.skip("no C++ compiler for torch.compile")
    g = torch.Generator().manual_seed(1)
    h, head = torch.randn(13, 24, generator=g), torch.randn(300, 24, generator=g) / 4
    values = torch.randn(13, 16, generator=g) * 3
    indices = torch.stack([torch.randperm(300, generator=g)[:16] for _ in range(13)]).int()
    rest = -torch.rand(13, generator=g) * 4 - 0.05  # tail mass 0.02 .. 0.95
    leaf = h.clone().requires_grad_(True)
    want = kd_loss_topk(leaf @ head.T, values, indices, 1.0, rest=rest) * 0.25 * 13
    want.backward()
    fn = kd_topk_parts_compiled() if compiled else kd_topk_head
    with torch.no_grad():
        loss, grad = fn(h, head, values, indices, 1.0, 0.25, rest)
    assert float(loss) == pytest.approx(float(want.detach()), rel=1e-5)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-4, atol=1e-6)


def test_the_tail_class_keeps_the_student_from_taking_the_tails_mass():
    """Why the tail is kept: fit free logits to a teacher by its top K alone. Renormalised, the
    student ends with nearly all its mass on the K tokens (the teacher has about 42 % outside them);
    with the tail class it ends with the teacher's 58 %."""
    torch.manual_seed(0)
    t_logits = torch.cat([torch.full((5,), 4.0), torch.zeros(200)]).unsqueeze(0) + 0.1 * torch.randn(1, 205)
    top = t_logits.topk(5, dim=-1)
    p = t_logits.softmax(-1)
    rest = torch.log(1 - p.gather(-1, top.indices).sum(-1))
    kept = {}
    for name, r in (("renormalised", None), ("tail", rest)):
        z = torch.zeros(1, 205, requires_grad=True)
        opt = torch.optim.Adam([z], lr=0.1)
        for _ in range(600):
            opt.zero_grad()
            kd_loss_topk(z, top.values, top.indices, 1.0, rest=r).backward()
            opt.step()
        kept[name] = float(z.detach().softmax(-1).gather(-1, top.indices).sum())
    teacher_kept = float(p.gather(-1, top.indices).sum())
    assert 0.5 < teacher_kept < 0.7
    assert kept["tail"] == pytest.approx(teacher_kept, abs=0.01)
    assert kept["renormalised"] > 0.95


def test_a_lazy_teacher_runs_only_for_the_windows_training_reaches_and_trains_the_same(tiny):
    """LazyTopK: the teacher's top-K of a micro-batch is made when a step first asks for it, kept
    for the next epoch, and training is step for step what it is on top-K computed up front.
    Mutants caught: the cache keyed wrongly (recomputed every epoch: rows 12, not 8), top-K made
    for windows no step reaches, the tail dropped."""
    from edgeprune.recovery.teacher import FixedTopK, LazyTopK, teacher_topk
    from edgeprune.stages.heal_global import global_distill

    teacher, student, windows = tiny
    lazy = LazyTopK(teacher, windows, 16, bf16=False)
    runs = {}
    for name, source in (("lazy", lazy), ("fixed", FixedTopK(teacher_topk(teacher, windows, k=16)))):
        torch.manual_seed(0)
        model = copy.deepcopy(student)
        runs[name] = global_distill(model, windows, source, first=1, minutes=60, lr=1e-3, micro=2, bf16=False,
                                    max_steps=6), model
    # 6 steps over 4 micro-batches: each of the 8 windows through the teacher once, not 12 times
    assert lazy.rows == 8 and len(lazy.cache) == 4
    (info, m_lazy), (ref, m_fixed) = runs["lazy"], runs["fixed"]
    assert info["tail"] and info["teacher_rows"] == 8 and info["teacher_topk_s"] > 0
    short = LazyTopK(teacher, windows, 16, bf16=False)
    global_distill(copy.deepcopy(student), windows, short, first=1, minutes=60, micro=2, bf16=False, max_steps=2)
    assert short.rows == 4  # two steps reach 4 of the 8 windows
    assert ref["teacher_topk_s"] == 0
    for a, b in zip(m_lazy.parameters(), m_fixed.parameters()):
        torch.testing.assert_close(a, b)


def test_a_lazy_teacher_reuses_known_last_layer_states_and_gives_the_same_top_k(tiny):
    """LazyTopK(final=...): rows whose last-layer teacher states the heal stage already has run only
    the norm and the head, and give the top-K a full forward gives; a micro-batch straddling the
    known rows is made half from each. Mutants caught: the states read one row off (values differ),
    the known rows still run through the layers (`rows` 8, not 3), states of the wrong shape taken."""
    from edgeprune.recovery.teacher import LazyTopK, teacher_topk
    from edgeprune.stages.heal import teacher_states

    teacher, _, windows = tiny
    final = torch.cat(teacher_states(teacher, windows[:5], batch_size=2).h[-1])
    want = teacher_topk(teacher, windows, k=16)
    lazy = LazyTopK(teacher, windows, 16, bf16=False, final=final)
    got = [lazy.batch(a, a + 2) for a in range(0, 8, 2)]
    assert lazy.rows == 3 and lazy.reused == 5
    for name in ("values", "indices", "rest"):
        joined = torch.cat([getattr(t, name) for t in got])
        torch.testing.assert_close(joined.float(), getattr(want, name).float(), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="do not match"):
        LazyTopK(teacher, windows, 16, bf16=False, final=final[:, :32])


def test_the_throughput_bench_bounds_the_step_by_the_matmuls_it_really_makes(tiny):
    """bench/heal_throughput.gemm_bound times the products step_gemms lists; they must be the step's
    own: every (m, k, n) matrix product a real kd_step dispatches (layers from the cut, head in chunks
    with a short last one) is listed, as often as it runs, with nothing extra. Mutants caught: the
    weight gradients left out, a short last chunk counted as full, a product listed transposed
    (same FLOPs, another shape and speed)."""
    from collections import Counter

    from conftest import bench_module
    from torch.utils._python_dispatch import TorchDispatchMode

    from edgeprune.recovery.teacher import teacher_topk
    from edgeprune.stages.heal_global import freeze_below, kd_step, prefix_states

    class Products(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.mm.default:
                (m, k), (_, n) = args[0].shape, args[1].shape
                self.shapes[m, k, n] += 1
            return func(*args, **(kwargs or {}))

    teacher, student, windows = tiny
    ids = windows[:3]
    topk = teacher_topk(teacher, ids, k=8, batch=3)
    model = copy.deepcopy(student)
    freeze_below(model, 1)
    (x, kw), = prefix_states(model, ids, 1, micro=3, bf16=False)
    with Products() as seen:
        kd_step(model, x, kw, model.lm_head.weight.detach(), topk.values, topk.indices, 1, 1.0, chunk=37, bf16=False,
                rest=topk.rest)
    listed = Counter()
    for _, m, k, n, count in bench_module("heal_throughput").step_gemms(model.config, ids.numel(),
                                                                         len(model.model.layers) - 1, 37):
        listed[m, k, n] += count
    assert ids.numel() % 37 and sum(seen.shapes.values()) > 0
    assert seen.shapes == listed

