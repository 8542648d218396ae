"""Gluon's online L0/L1 without a closure (HF Trainer, plain loops): a warned fallback that keeps training."""

import pytest
import torch
from torch import nn

import specopt

NOISE = 1.0


def noisy_regression(steps: int, closure: bool, seed: int = 0):
    """Least squares on fresh minibatches of 64 with label noise: consecutive gradients differ mostly by noise."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(16, 32, generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(32, 16, bias=False)
    opt = specopt.Gluon(model.parameters())
    radii, losses = [], []
    for _ in range(steps):
        x = torch.randn(64, 32, generator=g)
        y = x @ teacher.T + NOISE * torch.randn(64, 16, generator=g)

        def loss_fn(x=x, y=y):
            opt.zero_grad()
            loss = (model(x) - y).square().mean()
            loss.backward()
            return loss
        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()
        radii.append(opt.state[model.weight]["gluon_t"] or 0.0)  # None before the first fit
        losses.append(float(((model.weight - teacher) ** 2).mean()))
    return radii, losses


def test_without_a_closure_the_radius_does_not_collapse_and_the_weights_keep_converging():
    with pytest.warns(UserWarning, match="without step\\(closure\\)"):
        radii, errors = noisy_regression(300, closure=False)
    assert min(radii[100:]) > 0.2 * max(radii)  # consecutive-batch noise once shrank it geometrically (to 1e-6)
    assert errors[-1] < 0.95 * errors[0]        # it still trains, slowly: the closure run ends 100x lower


def test_with_a_closure_there_is_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        radii, errors = noisy_regression(50, closure=True)
    assert errors[-1] < errors[0]
