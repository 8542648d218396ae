"""Gluon's online L0/L1 without a closure (HF Trainer, plain loops): a warned fallback that keeps training."""

import warnings

import pytest
import torch
from torch import nn

import specopt

NOISE = 1.0


def noisy_regression(steps: int, closure: bool | str, seed: int = 0, make=specopt.Gluon):
    """Least squares on fresh minibatches of 64 with label noise: consecutive gradients differ mostly by noise.
    ``closure``: True (``step(closure)``), False (``step()``), ``"in place"`` (a closure that clears the gradients
    with ``model.zero_grad(set_to_none=False)``), ``"empty"`` (the gradients computed before
    ``step(closure)`` with a closure that does nothing, as Lightning's manual optimization) or ``"accumulate"`` (half
    the batch before the step, the other half in a closure that adds to it, as Lightning's accumulation)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(16, 32, generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(32, 16, bias=False)
    opt = make(model.parameters())
    radii, losses = [], []
    for _ in range(steps):
        x = torch.randn(64, 32, generator=g)
        y = x @ teacher.T + NOISE * torch.randn(64, 16, generator=g)

        def loss_fn(x=x, y=y, zero=True):
            if closure == "in place":
                model.zero_grad(set_to_none=False)
            elif zero:
                opt.zero_grad()
            loss = (model(x) - y).square().mean()
            loss.backward()
            return loss
        if closure is True or closure == "in place":
            opt.step(loss_fn)
        elif closure == "empty":
            loss_fn()
            opt.step(lambda: None)
        elif closure == "accumulate":
            loss_fn(x[:32], y[:32])
            opt.step(lambda x=x, y=y: loss_fn(x[32:], y[32:], zero=False))
        else:
            loss_fn()
            opt.step()
        radii.append(opt.state[model.weight].get("gluon_t") or 0.0)  # None before the first fit
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


@pytest.mark.parametrize("make", [specopt.Gluon, lambda ps: specopt.UScion(ps, estimator="storm")],
                         ids=["gluon", "storm"])
def test_a_closure_that_clears_the_gradients_in_place_is_not_taken_for_accumulation(make):
    """``model.zero_grad(set_to_none=False)`` in the closure keeps the gradient tensors and zeroes them: the same
    steps as a closure calling ``opt.zero_grad()``, with no warning (STORM refused it, Gluon dropped its probe)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        in_place = noisy_regression(20, closure="in place", make=make)
    assert in_place == noisy_regression(20, closure=True, make=make)


@pytest.mark.parametrize("closure, message", [("empty", "computed no gradients"),
                                              ("accumulate", "added to the gradients already there")])
def test_a_closure_the_probe_cannot_use_steps_as_without_one(closure, message):
    """Lightning's manual optimization hands ``opt.step()`` an empty closure, and its gradient accumulation a closure
    that adds the last micro-batch to the others: the probe read zero gradients at the previous weights (the radius
    fell to 5e-7 and training stopped) or another batch's. Now a warning, and the radius and the weights behave as
    without a closure."""
    with pytest.warns(UserWarning) as caught:
        radii, errors = noisy_regression(300, closure=closure)
    (said,) = [str(w.message) for w in caught if "the closure given to step()" in str(w.message)]  # once, one reason
    assert message in said
    assert min(radii[100:]) > 0.2 * max(radii)
    assert errors[-1] < 0.95 * errors[0]


@pytest.mark.parametrize("closure, message", [("empty", "computed no gradients"),
                                              ("accumulate", "added to the gradients already there")])
def test_storm_refuses_a_closure_the_probe_cannot_use_and_leaves_the_weights(closure, message):
    """STORM's correction needs the closure's gradient at the previous iterate on the same batch: no fallback."""
    torch.manual_seed(0)
    model = nn.Linear(32, 16, bias=False)
    opt = specopt.Muon(model.parameters(), estimator="storm")
    x, y = torch.randn(64, 32), torch.randn(64, 16)

    def loss_fn(rows=slice(None), zero=True):
        if zero:
            opt.zero_grad()
        loss = (model(x[rows]) - y[rows]).square().mean()
        loss.backward()
        return loss
    opt.step(loss_fn)  # the first step has no previous iterate to re-evaluate
    before = model.weight.detach().clone()
    loss_fn(slice(None) if closure == "empty" else slice(0, 32))
    with pytest.raises(ValueError, match=f"estimator='storm' re-evaluates .*{message}"):
        opt.step((lambda: None) if closure == "empty" else (lambda: loss_fn(slice(32, None), zero=False)))
    assert torch.equal(model.weight, before)


@pytest.mark.parametrize("make", [lambda ps: specopt.Gluon(ps), lambda ps: specopt.UScion(ps, estimator="storm")],
                         ids=["gluon", "storm"])
def test_the_probe_after_a_step_a_tensor_sat_out_is_at_the_previous_iterate(make):
    """A tensor with no gradient in a step does not move; the next step's probe (the batch again at x_{k−1}, the
    weights at the start of the last step) leaves it there, and Gluon takes no measurement of it (its anchor is from
    the step before). It was moved back to its weights of two steps earlier: a point no iterate had."""
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    opt = make([a, b])
    x = torch.randn(3, 8)
    seen, starts = [], []

    def closure(sit_out: bool):
        opt.zero_grad()
        seen.append(a.detach().clone())
        loss = (a @ x).square().sum() + (b @ x).sin().sum()
        loss.backward()
        if sit_out:
            a.grad = None
        return loss

    for k in range(3):
        start = a.detach().clone()
        measured = opt.state[a].get("gluon_n") if opt.state[a] else None
        seen.clear()
        opt.step(lambda k=k: closure(k == 1))
        starts.append(start)
    assert torch.equal(seen[0], starts[1]), "the probe moved the tensor that sat out the last step"
    assert not torch.equal(starts[0], starts[1])  # it moved in step 0: where the probe had put it
    if "gluon_n" in opt.state[a]:
        assert opt.state[a]["gluon_n"] == measured and opt.state[b]["gluon_n"] == 2
