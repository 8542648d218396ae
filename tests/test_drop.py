"""Drop-Muon (specopt.DropMuon): each step updates the geometry tensors above a random cutoff, the others keep their
weights and momentum; the draws follow the seed and the step count, so a resumed run draws the same layers."""

from __future__ import annotations

import copy

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
    opt = specopt.DropMuon(specopt.param_groups(model))
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

