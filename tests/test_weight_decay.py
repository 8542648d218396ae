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
    """No scheduler: γ_0 is the lr the group was built with, so the shrink is λ, also where γ_k = γ_0 = 0 (it was
    0/0: NaN weights with a tensor lr, ZeroDivisionError with a float one)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = specopt.UScion([{"params": [w], "weight_decay": 0.1, "weight_decay_mode": "independent"}], lr=lr)
    w.grad = torch.randn(4, 3)
    before = w.detach().clone()
    opt.step()
    step = w.detach() - 0.9 * before
    assert torch.isfinite(w).all()
    assert (step.abs().max() < 1e-7) if float(lr) == 0 else step.abs().max() > 1e-3


def independent_shrinks(schedule, lr=0.01, steps=6, **group):
    """The shrink of each of ``steps`` zero-gradient UScion steps (the lmo is 0: only the decay acts), λ = 0.05."""
    w = torch.nn.Parameter(torch.ones(4))
    opt = specopt.UScion([{"params": [w], "norm": "euclidean", "weight_decay_mode": "independent", **group}],
                         lr=lr, momentum=0.0, weight_decay=0.05)
    scheduler = schedule(opt)
    shrinks = []
    for _ in range(steps):
        before = w.detach().clone()
        w.grad = torch.zeros(4)
        opt.step()
        shrinks.append(1 - float(w.detach()[0] / before[0]))
        scheduler.step(1.0) if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) else scheduler.step()
    return shrinks


def test_independent_decay_is_lambda_at_the_peak_of_any_schedule():
    """λ is the decay per step at the schedule's peak: OneCycleLR's ``max_lr`` (its ``initial_lr`` is the start,
    max_lr/25: the decay had been 25 λ at the peak), and ReduceLROnPlateau, which sets no ``initial_lr`` (the decay
    had stayed λ while the lr fell tenfold)."""
    one_cycle = independent_shrinks(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=6,
                                                                                  pct_start=0.5))
    assert max(one_cycle) == pytest.approx(0.05, rel=1e-5)
    plateau = independent_shrinks(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.1))
    assert plateau[:3] == pytest.approx([0.05, 0.05, 0.005], rel=1e-5)


def test_a_schedule_above_the_independent_decays_reference_is_refused_until_its_peak_is_given():
    """CyclicLR starts at its base lr and rises 100×: the decay would pass λ (5.0 a step: weights flipped sign)."""
    def cyclic(o):
        return torch.optim.lr_scheduler.CyclicLR(o, base_lr=1e-4, max_lr=0.01, step_size_up=3)
    with pytest.raises(ValueError, match=r"above γ_0 = 0.0001.*param_groups\[0\]\['max_lr'\]"):
        independent_shrinks(cyclic)
    assert max(independent_shrinks(cyclic, max_lr=0.01)) == pytest.approx(0.05, rel=1e-5)


def test_cautious_decay_of_a_bf16_weight_is_not_rounded_to_bf16():
    """``1 − γλ`` = 0.998 in bf16 is 0.99609: the factor must stay in float32 until the one rounding of the result."""
    p = torch.full((64,), 3.0, dtype=torch.bfloat16)
    s = torch.full((64,), -1.0, dtype=torch.bfloat16)  # Δ·p ≤ 0 everywhere: every entry is decayed
    expected = (p.float() * (1 - 0.002) + s.float() * 1e-4).bfloat16()
    specopt.steps.apply_update(p, s, 0.002, 1e-4, cautious=True)
    assert torch.equal(p, expected)


@pytest.mark.parametrize("mode", ["coupled", "independent", "cautious"])
def test_muons_adamw_tensors_decay_as_their_groups_mode_says(mode):
    """Muon's AdamW tensors (a bias here) take the group's weight_decay_mode (it had been shown in the group and
    ignored: AdamW's coupled decay for every mode)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    opt = specopt.Muon([{"params": list(lin.parameters()), "weight_decay_mode": mode}], lr=0.02, adamw_lr=0.1,
                       adamw_weight_decay=0.5)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    b0 = lin.bias.detach().clone()
    lin.bias.grad = torch.tensor([1.0, -1.0, 1.0])
    lin.weight.grad = torch.zeros(3, 4)
    opt.step()
    delta = -0.1 * torch.tensor([1.0, -1.0, 1.0]) / (1 + 1e-8)  # Adam's first step: −γ·sign(g)
    shrink = 0.5 * (1.0 if mode == "independent" else 0.1)
    decayed = b0 * (1 - shrink)
    if mode == "cautious":
        decayed = torch.where(delta * b0 <= 0, decayed, b0)
    torch.testing.assert_close(lin.bias.detach(), decayed + delta)


def test_weight_decay_settings_written_after_construction_are_checked_before_the_step():
    w = torch.nn.Parameter(torch.ones(3, 3))
    opt = specopt.UScion([w], weight_decay=0.1)
    w.grad = torch.ones(3, 3)
    for key, value, match in (("weight_decay", -5.0, "weight_decay of param group 0"),
                              ("weight_decay_mode", "cautios", "weight_decay_mode must be one of")):
        opt.param_groups[0][key], good = value, opt.param_groups[0][key]
        with pytest.raises(ValueError, match=match):
            opt.step()
        assert torch.equal(w.detach(), torch.ones(3, 3))
        opt.param_groups[0][key] = good


def test_an_empty_param_group_is_taken_as_torch_takes_it():
    """torch.optim takes ``{"params": []}`` (a "no decay" group that came out empty); step() had raised IndexError."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    results = []
    for groups in ([{"params": []}, {"params": list(lin.parameters())}], [{"params": list(lin.parameters())}]):
        model = torch.nn.Linear(4, 3)
        model.load_state_dict(lin.state_dict())
        groups[-1]["params"] = list(model.parameters())
        opt = specopt.UScion(groups, lr=0.1)
        model(x).square().sum().backward()
        opt.step()
        results.append(model.weight.detach())
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], lin.weight.detach())
    specopt.Muon([{"params": []}]).step()


def test_independent_decays_reference_is_not_the_tensor_lr_a_write_moves():
    """Without a scheduler γ_0 is the lr the group was built with: a tensor lr written in place (as torch's
    schedulers write one) must not move γ_0 with it, or the decay would stay λ whatever the lr."""
    w = torch.nn.Parameter(torch.ones(4))
    opt = specopt.UScion([{"params": [w], "norm": "euclidean", "weight_decay_mode": "independent"}],
                         lr=torch.tensor(0.01), momentum=0.0, weight_decay=0.05)
    opt.param_groups[0]["lr"].fill_(0.005)
    w.grad = torch.zeros(4)
    opt.step()
    assert float(1 - w.detach()[0]) == pytest.approx(0.05 * 0.5, rel=1e-5)


@pytest.mark.parametrize("key, value", [("weight_decay_mode", "cautious"), ("weight_decay", 0.5)])
def test_a_decay_written_into_a_scion_group_after_construction_is_refused_before_the_step(key, value):
    """Scion's shrink is the convex combination that keeps W in its ball: a decay written later had been applied to
    it (the cautious mask on the shrink: the spectral norm left the ball) or ignored, without a word."""
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = specopt.Scion([w])
    opt.param_groups[0][key] = value
    w.grad = torch.randn(6, 4)
    before = w.detach().clone()
    with pytest.raises(ValueError, match="has no weight decay"):
        opt.step()
    assert torch.equal(w, before)
