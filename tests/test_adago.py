"""AdaGO (specopt.AdaGO): Muon's direction with the AdaGrad-Norm step size α_k = max(ε, η·min(‖G_k‖, γ)/v_k)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_resumes_exactly, classification_data, mlp, train

import specopt
from specopt.adago import AdaGradNormStep


def test_step_is_the_closed_form_after_k_known_gradients():
    """Four gradients, two of them above the clip γ: every update is −α_k·scale·msign(M_k) with the paper's α_k,
    the accumulator sums the clipped squared norms, and a tiny η hits the floor ε."""
    shape, beta, lr, gamma, v0, eps = (12, 6), 0.9, 0.3, 2.0, 0.5, 1e-3
    w = torch.nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(0)))
    opt = specopt.AdaGO([w], lr=lr, gamma=gamma, v0=v0, eps=eps, momentum=beta, method="svd")
    scale = math.sqrt(max(1.0, shape[0] / shape[1]))  # Muon's "original" scale
    grads = [torch.randn(*shape, generator=torch.Generator().manual_seed(k)) * s
             for k, s in enumerate((0.05, 1.0, 0.02, 3.0), start=1)]  # ‖G‖_F ≈ 0.4, 8.5, 0.17, 25
    m, v2 = torch.zeros(shape), v0**2
    for g in grads:
        m = beta * m + (1 - beta) * g
        clipped = min(g.norm().item(), gamma)
        v2 += clipped**2
        alpha = max(eps, lr * clipped / math.sqrt(v2))
        before = w.detach().clone()
        w.grad = g.clone()
        opt.step()
        expected = -alpha * scale * specopt.msign(m, method="svd")
        torch.testing.assert_close(w.detach() - before, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(opt.state[w]["adago_v2"], torch.tensor(v2), rtol=1e-6, atol=0)
    assert any(g.norm() > gamma for g in grads) and any(g.norm() < gamma for g in grads)
    # the floor: η·min(‖G‖, γ)/v far below ε
    tiny = torch.nn.Parameter(torch.zeros(*shape))
    floored = specopt.AdaGO([tiny], lr=1e-9, eps=eps, method="svd")
    tiny.grad = grads[0].clone()
    floored.step()
    torch.testing.assert_close(tiny.detach().norm(), torch.tensor(eps * scale * math.sqrt(shape[1])), rtol=1e-4,
                               atol=0)


def test_step_size_decays_as_one_over_root_k_for_steady_gradients():
    """The AdaGrad-Norm signature: with ‖G_k‖ fixed (below γ) and v_0 → 0, α_k = η/√k."""
    w = torch.nn.Parameter(torch.zeros(8, 8))
    opt = specopt.AdaGO([w], lr=0.1, gamma=10.0, v0=1e-8, momentum=0.0, method="svd")
    g = torch.eye(8) * 0.5  # msign(g) = I, so ‖ΔW‖_op = α_k
    for k in range(1, 10):
        before = w.detach().clone()
        w.grad = g.clone()
        opt.step()
        step = torch.linalg.matrix_norm(w.detach() - before, ord=2).item()
        assert step == pytest.approx(0.1 / math.sqrt(k), rel=1e-5)


def test_no_step_at_lr_zero():
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = specopt.AdaGO([w], lr=0.0)
    before = w.detach().clone()
    w.grad = torch.randn(6, 4)
    opt.step()
    assert torch.equal(w.detach(), before)


def test_trains_and_resumes_exactly():
    X, y = classification_data()
    model = mlp()
    opt = specopt.AdaGO(specopt.param_groups(model))
    losses = train(model, opt, X, y, 60)
    assert losses[-1] < 0.5 * losses[0]
    twin_model, _ = assert_resumes_exactly(model, opt, lambda m: specopt.AdaGO(specopt.param_groups(m)), X, y)
    with pytest.raises(ValueError, match="rule"):
        specopt.Muon(specopt.param_groups(twin_model)).load_state_dict(opt.state_dict())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="gamma"):
        AdaGradNormStep(gamma=0.0)
    with pytest.raises(ValueError, match="v0"):
        AdaGradNormStep(v0=-1.0)
    with pytest.raises(ValueError, match="eps"):
        AdaGradNormStep(eps=float("nan"))
    with pytest.raises(ValueError, match="sets rule itself"):
        specopt.AdaGO([torch.nn.Parameter(torch.zeros(2, 2))], rule="uscg")
