"""Weight decay forms (weight_decay_mode): coupled (γλ, follows the LR schedule), independent (λγ/γ₀) and
cautious (only where the update moves the weight toward zero), for every preset that has a weight decay."""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, mlp, train

import specopt

DECAYING = [
    (specopt.Muon, {}),
    (specopt.NorMuon, {}),
    (specopt.UScion, {}),
    (specopt.ClippedScion, {"clip_radius": 1.0}),
    (specopt.Gluon, {}),
    (specopt.ALMOND, {}),
    (specopt.SteepestDescent, {"lr": 0.1}),
    (specopt.ProxSpectral, {}),
]


def decayed(mode, lr=0.1, scheduled_lr=None, grad=0.0):
    """One UScion step on a Euclidean tensor; the gradient is constant (0: the lmo is 0, only the decay acts)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, -4.0]))
    opt = specopt.UScion([{"params": [w], "norm": "euclidean", "radius": 1.0, "weight_decay_mode": mode}],
                         lr=lr, momentum=0.0, weight_decay=0.5)
    if scheduled_lr is not None:
        torch.optim.lr_scheduler.LambdaLR(opt, lambda k: scheduled_lr / lr)  # sets initial_lr and lr
    w.grad = torch.full((4,), grad) if isinstance(grad, float) else grad
    opt.step()
    return w.detach()


def test_coupled_decay_follows_the_learning_rate_and_independent_only_its_schedule():
    w0 = torch.tensor([1.0, -2.0, 3.0, -4.0])
    torch.testing.assert_close(decayed("coupled"), w0 * (1 - 0.1 * 0.5))
    torch.testing.assert_close(decayed("coupled", scheduled_lr=0.05), w0 * (1 - 0.05 * 0.5))
    torch.testing.assert_close(decayed("independent", scheduled_lr=0.05), w0 * (1 - 0.5 * 0.05 / 0.1))
    torch.testing.assert_close(decayed("independent", lr=0.4, scheduled_lr=0.2), w0 * (1 - 0.5 * 0.5))


def test_cautious_decay_only_where_the_update_moves_the_weight_toward_zero():
    g = torch.tensor([1.0, 1.0, -1.0, -1.0])  # update Δ = −γρ·g/‖g‖: moves entries 0 and 3 toward zero
    w0 = torch.tensor([1.0, -2.0, 3.0, -4.0])
    delta = -0.1 * g / g.norm()
    expected = torch.where(delta * w0 <= 0, w0 * (1 - 0.1 * 0.5), w0) + delta
    torch.testing.assert_close(decayed("cautious", grad=g), expected)
    torch.testing.assert_close(decayed("coupled", grad=g), w0 * (1 - 0.1 * 0.5) + delta)


@pytest.mark.parametrize("cls, kwargs", DECAYING, ids=lambda x: getattr(x, "__name__", ""))
@pytest.mark.parametrize("mode", ["independent", "cautious"])
def test_every_preset_with_a_weight_decay_trains_with_each_form(cls, kwargs, mode):
    X, y = classification_data()
    model = mlp()
    # independent: λ is the decay per step at the schedule's peak (γλ's size for γ ≈ 0.01)
    groups = specopt.param_groups(model)
    if cls is specopt.ProxSpectral:  # its preconditioner is every tensor's geometry: the split without the norms
        groups = [{"params": g["params"]} for g in groups]
    opt = cls(groups, weight_decay=1e-3 if mode == "independent" else 0.1, **kwargs)
    for group in opt.param_groups:
        group["weight_decay_mode"] = mode
    losses = train(model, opt, X, y, 40, closure=cls is specopt.Gluon)
    assert losses[-1] < 0.8 * losses[0]


def test_a_mode_without_meaning_is_a_clear_error():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="weight_decay_mode must be one of"):
        specopt.UScion([{"params": [w], "weight_decay_mode": "l2"}])
    with pytest.raises(ValueError, match="has no weight decay"):
        specopt.Scion([{"params": [w], "weight_decay_mode": "cautious"}])


@pytest.mark.parametrize("lr", [0.0, torch.tensor(0.0), 0.1])
def test_independent_decay_without_a_scheduler_is_lambda_per_step_also_at_lr_zero(lr):
    """No ``initial_lr`` (no scheduler): γ_0 = γ_k, so the shrink is λ, also where γ_k = 0 (it was 0/0: NaN weights
    with a tensor lr, ZeroDivisionError with a float one)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = specopt.UScion([{"params": [w], "weight_decay": 0.1, "weight_decay_mode": "independent"}], lr=lr)
    w.grad = torch.randn(4, 3)
    before = w.detach().clone()
    opt.step()
    step = w.detach() - 0.9 * before
    assert torch.isfinite(w).all()
    assert (step.abs().max() < 1e-7) if float(lr) == 0 else step.abs().max() > 1e-3
