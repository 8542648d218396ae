"""Variance-reduced Gluon (specopt.GluonMVR): the direction is STORM's, ``d_k = g(x_k; ξ_k) + (1 − a_k)(d_{k−1} −
g(x_{k−1}; ξ_k))`` with ``a_k = (k+1)^{-2/3}``, and the step is Gluon's radius times ``(k+1)^{-2/3}``; the online
L0/L1 estimate runs on the same extra gradient STORM needs (one extra evaluation per step)."""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, mlp, train
from torch import nn

import specopt
from specopt import Euclidean


def batch(k: int):
    g = torch.Generator().manual_seed(100 + k)
    return torch.randn(16, 6, generator=g), torch.randn(16, 4, generator=g)


def loss_at(w: torch.Tensor, x, y) -> torch.Tensor:
    return ((x @ w.T - y) ** 2).mean()


def grad_at(w: torch.Tensor, x, y) -> torch.Tensor:
    w = w.detach().clone().requires_grad_(True)
    loss_at(w, x, y).backward()
    return w.grad


def test_the_step_is_storm_with_gluons_radius_decayed_like_k_to_minus_two_thirds():
    """Fixed L0, L1 and the Euclidean norm: ``x_{k+1} = x_k − γ·(k+1)^{-2/3}·‖d‖/(L0 + L1‖d‖)·d/‖d‖``, d from the
    STORM recursion on gradients at ``x_k`` and ``x_{k−1}`` of batch k, computed here by hand."""
    L0, L1, lr = 0.5, 2.0, 0.8
    model = nn.Linear(6, 4, bias=False)
    opt = specopt.GluonMVR(model.parameters(), L0=L0, L1=L1, lr=lr, norm=Euclidean())
    x_now = model.weight.detach().clone()
    x_prev = d = None
    for k in range(6):
        xb, yb = batch(k)
        g = grad_at(x_now, xb, yb)
        a = (k + 1) ** (-2 / 3)
        d = g if d is None else g + (1 - a) * (d - grad_at(x_prev, xb, yb))
        t = float(d.norm()) / (L0 + L1 * float(d.norm())) * (k + 1) ** (-2 / 3)
        x_prev, x_now = x_now, x_now - lr * t * d / d.norm()

        def closure(xb=xb, yb=yb):
            opt.zero_grad()
            loss = loss_at(model.weight, xb, yb)
            loss.backward()
            return loss

        opt.step(closure)
        torch.testing.assert_close(model.weight.detach(), x_now, atol=1e-6, rtol=1e-5)


def test_the_online_estimate_and_storm_share_one_extra_gradient_per_step():
    X, y = classification_data()
    model = mlp()
    calls = []
    opt = specopt.GluonMVR(specopt.param_groups(model))

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    assert len(calls) == 2 * 5 - 1  # the first step has no previous iterate
    fitted = [opt.state[p]["gluon_L"] for g in opt.param_groups for p in g["params"]]
    assert fitted and all(L0 >= 0 and L1 >= 0 and L0 + L1 > 0 for L0, L1 in fitted)


def test_gluon_mvr_trains():
    X, y = classification_data()
    model = mlp()
    losses = train(model, specopt.GluonMVR(specopt.param_groups(model)), X, y, 120, closure=True)
    assert losses[-1] < 0.5 * losses[0]


def test_it_needs_a_closure_and_refuses_an_unknown_schedule():
    model = nn.Linear(3, 3)
    model(torch.randn(2, 3)).sum().backward()
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        specopt.GluonMVR(model.parameters()).step()
    with pytest.raises(ValueError, match="'mvr'"):
        specopt.GluonMVR(model.parameters(), schedule="cubic")
