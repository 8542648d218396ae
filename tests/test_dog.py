"""DoG (specopt.DoG): per-tensor steps r̄_k·‖d_k‖_*/√G_k in the tensor's norm, from the distance travelled and the
gradients seen; no step size."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_resumes_exactly, classification_data, mlp, train

import specopt
from specopt.dog import DistanceOverGradients

EXACT = {"method": "svd"}


def test_euclidean_dog_is_l_dog_on_known_gradients():
    """In the Euclidean norm with momentum 0 the update is DoG's SGD step −r̄_k/√(Σ‖g_i‖²)·g_k (Ivgi et al. 2023)."""
    w = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
    opt = specopt.DoG([{"params": [w], "norm": "euclidean"}], r_rel=1e-2)
    x0 = w.detach().clone()
    rbar, g2 = 1e-2 * (1 + x0.norm().item()), 0.0
    for k in range(6):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(k + 1)) * (k + 1)
        rbar = max(rbar, (w.detach() - x0).norm().item())
        g2 += g.norm().item() ** 2
        expected = w.detach() - rbar / math.sqrt(g2) * g
        w.grad = g
        opt.step()
        torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-7)


def test_spectral_step_grows_with_the_distance_travelled():
    """A constant gradient: every step is along the same −msign(C), so the distance is the sum of the steps,
    G_k = k‖C‖_*² and the step length is t_k = r̄_k/√k with r̄_k = max(r_ε, Σ_{i<k} t_i): it starts at r_ε and grows
    with the distance, with no learning rate given."""
    C = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    w = torch.nn.Parameter(torch.zeros(6, 4))
    norm = specopt.Spectral(**EXACT)
    opt = specopt.DoG([{"params": [w], "norm": norm}], r_rel=1e-3)
    travelled, lengths = 0.0, []
    for k in range(1, 30):
        before = w.detach().clone()
        w.grad = C.clone()
        opt.step()
        length = norm.norm(w.detach() - before).item()
        expected = max(1e-3, travelled) / math.sqrt(k)
        assert length == pytest.approx(expected, rel=1e-4)
        travelled += length
        lengths.append(length)
    assert lengths[0] == pytest.approx(1e-3, rel=1e-4)
    assert all(b > a for a, b in zip(lengths[1:], lengths[2:], strict=False)) and lengths[-1] > 20 * lengths[0]


def test_no_step_size_the_trajectory_ignores_the_scale_of_the_loss():
    """(A radius has no place in DoG's step: a group that sets one is refused, see test_preset_groups.)"""
    X, y = classification_data()
    trajectories = []
    for loss_scale in (1.0, 1e3):
        model = mlp()
        opt = specopt.DoG(specopt.param_groups(model))
        for _ in range(15):
            opt.zero_grad()
            (loss_scale * torch.nn.functional.cross_entropy(model(X), y)).backward()
            opt.step()
        trajectories.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*trajectories, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_param_groups_roles_outside_muons_step_in_the_euclidean_norm():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
    opt = specopt.DoG(specopt.param_groups(model))
    norms = {g["role"]: g["norm"] for g in opt.param_groups}
    assert isinstance(norms["hidden"], specopt.Spectral)
    assert all(n == specopt.Euclidean() for role, n in norms.items() if role != "hidden")


def test_trains_and_resumes_exactly():
    X, y = classification_data()
    model = mlp()
    opt = specopt.DoG(specopt.param_groups(model))
    losses = train(model, opt, X, y, 100)  # the radius starts at r_ε = 1e-6·(1 + ‖W_0‖): ~20 steps to grow
    assert losses[-1] < 0.5 * losses[0]
    assert_resumes_exactly(model, opt, lambda m: specopt.DoG(specopt.param_groups(m)), X, y)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="r_rel"):
        DistanceOverGradients(r_rel=0.0)
    with pytest.raises(ValueError, match="module"):
        specopt.DoG(torch.nn.Linear(2, 2))


def test_adamw_tensors_keep_no_copy_of_their_initial_weights():
    """DoG's W_0 is for the tensors it steps; a norm="adamw" group's tensors step by AdamW and need none."""
    w, table = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(100, 4))
    opt = specopt.DoG([{"params": [w], "norm": "spectral"}, {"params": [table], "norm": "adamw", "lr": 1e-3}])
    w.grad, table.grad = torch.randn_like(w), torch.randn_like(table)
    opt.step()
    assert "dog_w0" in opt.state[w] and "dog_w0" not in opt.state[table]
