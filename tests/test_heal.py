"""Training-free healing: the closed-form maths on hand-made tensors, then the plumbing on the tiny Llama."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from edgeprune import registry
from edgeprune.methods.heal import NormalEquations, residual_error, token_weights


def test_normal_equations_recover_a_known_projection():
    torch.manual_seed(0)
    w_true = torch.randn(6, 10)
    x = torch.randn(500, 10)
    eq = NormalEquations(10, 6)
    for part in x.split(100):  # batched accumulation equals one big fit
        eq.add(part, part @ w_true.T)
    w = eq.solve(torch.zeros(6, 10), damp=1e-9)
    assert torch.allclose(w.float(), w_true, atol=1e-5)


def test_ridge_keeps_the_original_weights_where_data_is_silent():
    """Input column 3 is always zero: its weights cannot be learnt and must stay W0's
    (a solver that regularises towards 0 instead of W0 zeroes them)."""
    torch.manual_seed(1)
    w0 = torch.randn(4, 5)
    x = torch.randn(200, 5)
    x[:, 3] = 0
    eq = NormalEquations(5, 4)
    eq.add(x, x @ (w0 + 0.5).T)
    w = eq.solve(w0, damp=1e-3)
    assert torch.allclose(w[:, 3].float(), w0[:, 3], atol=1e-6)
    assert torch.allclose(w[:, [0, 1, 2, 4]].float(), (w0 + 0.5)[:, [0, 1, 2, 4]], atol=1e-2)


def test_relative_objective_is_not_captured_by_one_huge_token():
    """One token 1000x larger than the rest with an inconsistent target: plain L2 bends the whole
    fit towards it; relative weights keep the fit of the ordinary tokens."""
    torch.manual_seed(2)
    w_true = torch.randn(3, 3)
    x = torch.randn(300, 3)
    y = x @ w_true.T
    x[0] *= 1000.0
    y[0] = -x[0] @ w_true.T  # the outlier wants the opposite map
    errs = {}
    for objective in ("l2", "relative"):
        eq = NormalEquations(3, 3)
        eq.add(x, y, token_weights(y, objective))
        w = eq.solve(torch.zeros(3, 3), damp=1e-9).float()
        errs[objective] = residual_error(x[1:] @ w.T, y[1:])
    assert errs["relative"] < 0.1 < errs["l2"]


def test_heal_methods_are_registered_with_their_facts():
    names = registry.names("heal")
    assert {"replaceme", "down-cut", "down-all"} <= set(names)
    for name in names:
        m = registry.get("heal", name)
        assert m.fit in ("map", "down") and m.objective in ("l2", "relative") and m.scope in ("cut", "all")


@pytest.fixture(scope="module")
def tiny_pair(tiny_teacher):
    from edgeprune.stages.heal import teacher_states

    teacher, windows = tiny_teacher
    return teacher, windows, teacher_states(teacher, windows, batch_size=4)


def _final_error(model, teacher_states, windows) -> float:
    from edgeprune.stages.heal import StudentStates, _mean_error

    student = StudentStates(model, windows, 4)
    for layer in model.model.layers:
        student.advance(layer)
    return _mean_error(student.h, teacher_states.h[-1])


@pytest.mark.parametrize("method", ["replaceme", "down-cut", "down-all"])
def test_healing_a_removed_layer_moves_the_output_towards_the_teacher(tiny_pair, method):
    from edgeprune.stages.heal import heal_model
    from edgeprune.surgery.layers import remove_layers

    teacher, windows, states = tiny_pair
    pruned = remove_layers(copy.deepcopy(teacher), [1])
    unhealed = _final_error(pruned, states, windows)
    info = heal_model(pruned, states, windows, [1], method, batch_size=4)
    healed = _final_error(pruned, states, windows)
    assert abs(healed - info["final_error"]) < 1e-6
    assert healed < 0.8 * unhealed, (method, unhealed, healed)
    assert info["refits"][0]["layer"] == 0 and info["refits"][0]["target"] == 2  # layer 0 now lands on h_2


def test_nothing_removed_refits_nothing(tiny_pair):
    from edgeprune.stages.heal import heal_model

    teacher, windows, states = tiny_pair
    model = copy.deepcopy(teacher)
    info = heal_model(model, states, windows, [], "down-all", batch_size=4)
    assert info["refits"] == []
    for a, b in zip(model.parameters(), teacher.parameters()):
        assert torch.equal(a, b)


def test_width_refit_of_pruned_heads_and_channels(tiny_pair):
    from edgeprune.stages.heal import heal_model
    from edgeprune.stages.width import prune_width

    teacher, windows, states = tiny_pair
    for method, cut in (("heads", "heads"), ("ffn", "ffn")):
        model = copy.deepcopy(teacher)
        prune_width(model, windows, method, 0.5, "groups", None)
        unhealed = _final_error(model, states, windows)
        info = heal_model(model, states, windows, [], "down-cut", width=frozenset({cut}), batch_size=4)
        assert len(info["refits"]) == len(model.model.layers)
        assert info["final_error"] < 0.9 * unhealed, (method, unhealed, info["final_error"])


def test_healed_checkpoint_is_plain_and_reloads(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeprune.stages.heal import heal_model
    from edgeprune.surgery.layers import remove_layers
    from edgeprune.toolchain.hf import save_model

    teacher, windows, states = tiny_pair
    model = remove_layers(copy.deepcopy(teacher), [2])
    heal_model(model, states, windows, [2], "down-all", batch_size=4)
    save_model(model, AutoTokenizer.from_pretrained(teacher.name_or_path), tmp_path / "healed")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "healed").float().eval()
    with torch.no_grad():
        a = model(input_ids=windows[:2]).logits
        b = again(input_ids=windows[:2]).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_relative_mse_is_scale_free():
    from edgeprune.stages.heal_local import relative_mse

    t = torch.randn(5, 8)
    p = t + 0.1 * torch.randn(5, 8)
    assert float(relative_mse(p * 1000, t * 1000)) == pytest.approx(float(relative_mse(p, t)), rel=1e-5)
    assert float(relative_mse(t, t)) == 0.0


def test_layer_local_distillation_trains_only_the_layer_before_the_cut(tiny_pair):
    """After a closed-form heal, a few seconds of local training lower the layer's relative error
    further, and no other layer's weights move (mutant caught: training every layer, or none)."""
    from edgeprune.stages.heal import heal_model
    from edgeprune.stages.heal_local import local_distill
    from edgeprune.surgery.layers import remove_layers

    teacher, windows, states = tiny_pair
    model = remove_layers(copy.deepcopy(teacher), [2])
    heal_model(model, states, windows, [2], "down-cut", batch_size=4)
    frozen = [copy.deepcopy(model.model.layers[i].state_dict()) for i in (0, 2)]
    healed = _final_error(model, states, windows)
    torch.manual_seed(0)
    info = local_distill(model, states, windows, [2], minutes=60, lr=1e-3, batch_size=4, max_steps=30)
    assert [r["layer"] for r in info["layers"]] == [1] and info["layers"][0]["steps"] == 30
    assert info["layers"][0]["loss_last_10"] < info["layers"][0]["loss_first"]
    assert _final_error(model, states, windows) < healed
    for i, before in zip((0, 2), frozen):
        for name, w in model.model.layers[i].state_dict().items():
            assert torch.equal(w, before[name]), (i, name)


def test_down_span_plans_the_cut_layer_and_the_layers_after_it():
    """Removing teacher layers 3-4 of 12: student layer 2 lands on h_5, then the `after` kept layers
    (3.., teacher 5..) each refit o_proj and down_proj to the teacher's states at their own depth."""
    from edgeprune.stages.heal import needed_states, plan_refits

    span = dataclasses.replace(registry.get("heal", "down-span"), after=2)
    plan = plan_refits(span, 12, [3, 4])
    assert [(r.layer, r.target, r.o_target, r.down) for r in plan] == [(2, 5, None, True), (3, 6, 5, True),
                                                                       (4, 7, 6, True)]
    h, u = needed_states([plan], 12)
    assert h == {2, 5, 6, 7, 12} and u == {5, 6}  # 2: the input of the first refitted layer
    assert 0 not in needed_states([plan_refits(span, 12, [3, 4], frozenset({'ffn'}))], 12)[0]  # width starts at 0
    # tail: the last kept layer too; nothing removed: nothing planned
    tail = plan_refits(dataclasses.replace(span, after=0, tail=1), 12, [3, 4])
    assert [r.layer for r in tail] == [2, 9] and tail[-1].target == 12
    assert plan_refits(span, 12, []) == []


def test_the_heal_starts_at_its_first_refit_from_the_teachers_state_and_heals_the_same(tiny_pair, monkeypatch):
    """Below the first refitted layer a pruned student is the teacher: its states start there, from
    the teacher's stored input, and each down_proj refit advances from its own captures (u + down(a))
    instead of running the layer twice more. Same healed weights and errors as running every layer
    from the embeddings, and exactly the layer runs the plan needs. Mutants caught: the error before
    a refit or the advance run through the layer again (more runs), the advance taken with the old
    down_proj (weights differ downstream), the start one layer off (errors differ)."""
    import edgeprune.stages.heal as heal
    from edgeprune.surgery.layers import remove_layers

    teacher, windows, states = tiny_pair  # every depth kept, batches of 4
    method = registry.get("heal", "down-span")
    real, calls = heal.run_layer, []
    monkeypatch.setattr(heal, "run_layer", lambda layer, x, kw: (calls.append(layer), real(layer, x, kw))[1])
    runs = {}
    for same in (0, 2):
        model = remove_layers(copy.deepcopy(teacher), [2])
        assert heal.same_prefix(teacher, model) == 2
        calls.clear()
        info = heal.heal_model(model, states, windows, [2], method, batch_size=4, teacher_prefix=same)
        runs[same] = model, info, len(calls)
    (fresh, ref, n_ref), (fast, info, n_fast) = runs[0], runs[2]
    assert ref["first_layer_run"] == 0 and info["first_layer_run"] == 1  # layer 1: the cut
    batches, plan = len(windows) // 4, {r.layer: r for r in heal.plan_refits(method, 4, [2])}
    runs_per_layer = [1 if k not in plan else 1 + (plan[k].o_target is not None) for k in range(1, 3)]
    assert n_fast == batches * sum(runs_per_layer) and n_ref == n_fast + batches
    torch.testing.assert_close(fast.state_dict(), fresh.state_dict(), rtol=1e-5, atol=1e-6)
    assert info["final_error"] == pytest.approx(ref["final_error"], rel=1e-5)
    for a, b in zip(info["refits"], ref["refits"]):
        assert a["error_before"] == pytest.approx(b["error_before"], rel=1e-5)
    assert info["final_error"] == pytest.approx(_final_error(fast, states, windows), rel=1e-5)
    # the cut layer's error before its refit: the unhealed layer run on the teacher's input there
    cut, unhealed = info["refits"][0], remove_layers(copy.deepcopy(teacher), [2])
    with torch.no_grad():
        outs = [real(unhealed.model.layers[1], x, kw) for x, kw in
                zip(states.h[1], heal.StudentStates(unhealed, windows, 4).kw)]
    assert cut["layer"] == 1 and cut["error_before"] == pytest.approx(
        heal._mean_error(outs, states.h[cut["target"]]), rel=1e-5)


def test_a_removal_at_the_bottom_heals_from_the_embeddings(tiny_pair):
    """Removing layer 0 leaves no cut layer before it: student layer 0 is teacher layer 1, so no
    teacher state stands for the student's below its first refit, whatever the caller claims."""
    from edgeprune.stages.heal import first_changed, heal_model, needed_states, plan_refits, same_prefix
    from edgeprune.surgery.layers import remove_layers

    teacher, windows, states = tiny_pair
    method = registry.get("heal", "down-span")
    assert first_changed(plan_refits(method, 4, [0, 3]), [0, 3]) == 0
    assert needed_states([plan_refits(method, 4, [0, 3])], 4, [0, 3])[0] == {4}  # a start at 0 needs no state
    model = remove_layers(copy.deepcopy(teacher), [0, 3])
    assert same_prefix(teacher, model) == 0
    info = heal_model(model, states, windows, [0, 3], method, batch_size=4, teacher_prefix=4)
    assert info["first_layer_run"] == 0
    assert info["final_error"] == pytest.approx(_final_error(model, states, windows), rel=1e-5)


def test_same_prefix_stops_at_the_first_layer_that_differs_from_the_teacher(tiny_pair):
    """The guard: a student changed below its first refit (here layer 0) must heal from its own
    states. Trusting a prefix it does not have starts it from the teacher's and fits another model."""
    from edgeprune.stages.heal import heal_model, same_prefix
    from edgeprune.surgery.layers import remove_layers

    teacher, windows, states = tiny_pair
    changed = remove_layers(copy.deepcopy(teacher), [2])
    changed.model.layers[0].mlp.up_proj.weight.data.mul_(1.5)
    assert same_prefix(teacher, changed) == 0 and same_prefix(teacher, teacher) == 4
    honest, trusting = copy.deepcopy(changed), copy.deepcopy(changed)
    a = heal_model(honest, states, windows, [2], "down-span", batch_size=4, teacher_prefix=0)
    b = heal_model(trusting, states, windows, [2], "down-span", batch_size=4, teacher_prefix=2)
    assert a["first_layer_run"] == 0 and b["first_layer_run"] == 1
    assert a["final_error"] == pytest.approx(_final_error(honest, states, windows), rel=1e-5)
    assert abs(b["final_error"] - _final_error(trusting, states, windows)) > 1e-4


def test_teacher_states_keep_only_the_depths_asked_for(tiny_pair):
    from edgeprune.stages.heal import teacher_states

    teacher, windows, full = tiny_pair
    some = teacher_states(teacher, windows, batch_size=4, keep=({2}, {1}))
    assert [len(b) > 0 for b in some.h] == [i in (2, len(some.h) - 1) for i in range(len(some.h))]
    assert [len(b) > 0 for b in some.u] == [i == 1 for i in range(len(some.u))]
    assert all(torch.equal(a, b) for a, b in zip(some.h[2], full.h[2]))


def test_down_span_heals_beyond_down_cut_on_the_tiny_llama(tiny_pair):
    """Refitting the layers after the cut too lowers the final error below down-cut's (same data),
    and the heal only reads the teacher states its plan names."""
    from edgeprune.stages.heal import heal_model, needed_states, plan_refits, teacher_states
    from edgeprune.surgery.layers import remove_layers

    teacher, windows, _ = tiny_pair
    n = teacher.config.num_hidden_layers
    errors = {}
    for name in ("down-cut", "down-span"):
        method = registry.get("heal", name)
        states = teacher_states(teacher, windows, batch_size=4,
                                keep=needed_states([plan_refits(method, n, [1])], n))
        model = remove_layers(copy.deepcopy(teacher), [1])
        errors[name] = heal_model(model, states, windows, [1], method, batch_size=4)["final_error"]
    assert errors["down-span"] < errors["down-cut"], errors


@pytest.mark.parametrize("bar", [-1.0, float("inf")])
def test_a_fit_trial_never_changes_the_student_it_started_from(tiny_pair, bar):
    """One heal method and a fit that loses (bar -1: no loss beats it) must publish the student as
    it was: the single-method trial once healed the student in place, so a refit that the held-out
    check rejected still shipped (SmolLM2 -20 % FFN: held-out 61.7 chosen, 85.6 published)."""
    from edgeprune.stages.heal import teacher_states
    from edgeprune.stages.heal_step import choose_fit
    from edgeprune.surgery.layers import remove_layers

    teacher, windows, _ = tiny_pair
    states = teacher_states(teacher, windows)  # the stage's batch size, which choose_fit heals with
    student = remove_layers(copy.deepcopy(teacher), [1])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    losses = {"none": bar}  # the unhealed model's held-out loss: -1 no fit beats, inf every fit does
    chosen, model, info, trials = choose_fit(student, [registry.get("heal", "down-cut")], states, windows,
                                             windows[-4:], [1], frozenset(), losses)
    assert len(trials) == 1 and losses["down-cut"] == trials[0]["holdout_nll"]
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]), k
    if bar < 0:
        assert chosen == "none" and model is student and info is None
    else:  # the refit is kept, as a model of its own
        assert chosen == "down-cut" and model is not student
        assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, student.model.layers[0].mlp.down_proj.weight)
