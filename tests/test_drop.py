"""Drop-Muon (specopt.DropMuon): each step updates the geometry tensors above a random cutoff, the others keep their
weights and momentum; the draws follow the seed and the step count, so a resumed run draws the same layers."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import classification_data, mlp, train

import specopt
from specopt.drop import cutoff_probabilities, expected_lmo_fraction


def deep_mlp():
    return mlp(widths=(20, 32, 32, 32, 32, 4), bias=False)  # five matrices, all Muon's


def updated_layers(opt, model, X, y, steps):
    out = []
    for _ in range(steps):
        before = [p.detach().clone() for p in model.parameters()]
        momentum = [opt.state[p].get("momentum_buffer") for p in model.parameters()]
        momentum = [None if m is None else m.clone() for m in momentum]
        train(model, opt, X, y, 1)
        moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
        for m, p, was in zip(momentum, model.parameters(), moved, strict=True):
            if not was and m is not None:  # a dropped layer keeps its momentum too
                assert torch.equal(m, opt.state[p]["momentum_buffer"])
        out.append(moved)
    return out


def test_each_step_updates_the_layers_above_a_cutoff_deeper_ones_more_often():
    X, y = classification_data()
    model = deep_mlp()
    opt = specopt.DropMuon(model.parameters(), seed=3)
    history = updated_layers(opt, model, X, y, 200)
    for moved in history:  # a suffix: once a layer moves, every deeper one does
        first = moved.index(True)
        assert all(moved[first:]) and not any(moved[:first])
    frequency = torch.tensor(history, dtype=torch.float64).mean(0)
    expected = torch.arange(1, 6, dtype=torch.float64) / 5  # layer l with probability (l+1)/L
    assert (frequency - expected).abs().max() < 0.1
    assert frequency[0] < 0.5 < frequency[-1] == 1.0


def test_a_resumed_run_draws_the_same_layers():
    X, y = classification_data()
    model = deep_mlp()
    opt = specopt.DropMuon(model.parameters(), seed=1)
    train(model, opt, X, y, 7)
    twin_model = copy.deepcopy(model)
    twin = specopt.DropMuon(twin_model.parameters(), seed=1)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert updated_layers(opt, model, X, y, 10) == updated_layers(twin, twin_model, X, y, 10)
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_drop_muon_trains():
    X, y = classification_data()
    model = mlp()
    opt = specopt.DropMuon(specopt.param_groups(model), order=model)
    losses = train(model, opt, X, y, 120)
    assert losses[-1] < 0.5 * losses[0]


def test_the_cutoff_follows_its_decay():
    """p(c) ∝ decay^c: with decay 0.3 the first layer is updated in 70 % of the steps (uniform: 20 %)."""
    X, y = classification_data()
    model = deep_mlp()
    opt = specopt.DropMuon(model.parameters(), seed=2, decay=0.3)
    history = updated_layers(opt, model, X, y, 300)
    frequency = torch.tensor(history, dtype=torch.float64).mean(0)
    expected = cutoff_probabilities(5, 0.3).cumsum(0)  # layer l moves when c ≤ l
    assert (frequency - expected).abs().max() < 0.08
    assert expected_lmo_fraction(5, 1.0) == pytest.approx(0.6)  # (L+1)/(2L)
    assert expected_lmo_fraction(5, 0.3) == pytest.approx(float(expected.mean()))



def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, bias=False), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(64, 16, bias=False), torch.nn.ReLU(), torch.nn.Linear(16, 3, bias=False))


@pytest.mark.parametrize("build", ["parameters", "param_groups"])
def test_the_cutoff_runs_over_depth_whatever_order_the_groups_hold_the_tensors_in(build):
    """Muon keeps conv kernels and matrices in groups of their own, and param_groups groups tensors by role: the
    cutoff is drawn over the model's depth all the same (the first conv the least often, the last layer always)."""
    model = small_cnn()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    params = model.parameters() if build == "parameters" else specopt.param_groups(model, scheme="image")
    opt = specopt.DropMuon(params, seed=5, lr=0.01, order=None if build == "parameters" else model)
    moves = []
    for _ in range(200):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        moves.append([not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)])
    frequency = torch.tensor(moves, dtype=torch.float64).mean(0)
    # layer l: (l+1)/L over the L Muon tensors (param_groups' head is on AdamW, which steps every time)
    expected = [0.25, 0.5, 0.75, 1.0] if build == "parameters" else [1 / 3, 2 / 3, 1.0, 1.0]
    assert (frequency - torch.tensor(expected, dtype=torch.float64)).abs().max() < 0.1
    for moved in moves:  # a suffix of the network's depth
        assert all(moved[moved.index(True):])


def test_param_groups_without_the_models_order_are_refused_and_a_foreign_tensor_is_named():
    model = small_cnn()
    with pytest.raises(ValueError, match="pass order=model"):
        specopt.DropMuon(specopt.param_groups(model, scheme="image"))
    first = next(model.parameters())
    with pytest.raises(ValueError, match=re.escape(f"1 tensor(s) of shape(s) {tuple(first.shape)} are not among the "
                                                   "tensors of Drop-Muon's order=")):
        specopt.DropMuon(model.parameters(), order=list(model.parameters())[1:])


def test_groups_whose_params_are_generators_keep_their_tensors():
    """``{"params": model.parameters()}``: the generator was read once for the cutoff's order and the optimizer got an
    empty group (no error until an IndexError at the step), and a group added later the same way trained nothing."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = specopt.DropMuon([{"params": model[0].parameters()}])
    opt.add_param_group({"params": model[2].parameters()})
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1, 1, 1]  # each: its matrix, its bias (AdamW)
    assert [id(t) for t in opt.rule.tensors] == [id(p) for p in model.parameters()]
    model(torch.ones(2, 4)).sum().backward()
    opt.step()


def test_a_group_added_later_joins_the_order_at_its_end_or_is_refused_where_order_was_passed():
    """Unfreezing a layer (``add_param_group``) after ``DropMuon(tensors)``: its tensors join the draw as the
    deepest (the order given, continued); under ``order=model`` a tensor outside the model is refused when added,
    and the optimizer is left as it was."""
    X, y = classification_data()
    model = deep_mlp()
    layers = list(model.parameters())
    opt = specopt.DropMuon(layers[:3], seed=3)
    opt.add_param_group({"params": layers[3:]})
    history = updated_layers(opt, model, X, y, 60)
    assert all(moved[-1] for moved in history) and not all(moved[0] for moved in history)
    ordered = specopt.DropMuon(layers[:3], order=model)
    ordered.add_param_group({"params": layers[3:]})
    groups = len(ordered.param_groups)
    with pytest.raises(ValueError, match=r"1 tensor\(s\) of shape\(s\) \(3, 3\) are not among the tensors"):
        ordered.add_param_group({"params": [torch.nn.Parameter(torch.randn(3, 3))]})
    assert len(ordered.param_groups) == groups
