"""Misuse of the public API found by a review of the reference pages: each is named in one line when the object
is made (it was a traceback from deep inside, or an error only at the first step)."""

from __future__ import annotations

import pytest
import torch
from helpers import mlp

import specopt
from specopt import integrations


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda m: specopt.param_groups(m.parameters()), TypeError, r"param_groups\(model\), not param_groups\(model"),
    (lambda m: specopt.describe(m), TypeError, r"describe\(specopt.param_groups\(model\)\)"),
    (lambda m: integrations.create_optimizer(m.parameters()), TypeError, r"not create_optimizer\(model.parameters\(\)"),
    (lambda m: specopt.Spectral(steps=0), ValueError, "steps must be a positive integer, got 0"),
    (lambda m: specopt.Muon(m.parameters(), compute_dtype="bf16"), ValueError,
     "compute_dtype must be a torch floating dtype"),
    (lambda m: specopt.UScion(m.parameters(), nesterov="yes"), ValueError, "nesterov must be True or False"),
    (lambda m: specopt.Muon(m.parameters(), nesterov="no"), ValueError, "nesterov must be True or False"),
])
def test_api_misuse_is_named_when_the_object_is_made(call, error, match):
    with pytest.raises(error, match=match):
        call(mlp())


def test_the_polar_factor_of_an_empty_matrix_is_empty():
    assert specopt.msign(torch.randn(0, 3)).shape == (0, 3)
    assert specopt.msign(torch.randn(2, 0, 5)).shape == (2, 0, 5)


def test_describe_names_an_optimizers_tensors():
    model = mlp()
    table = specopt.describe(specopt.Muon(specopt.param_groups(model)).param_groups)
    assert "?" not in table and all(name in table for name, _ in model.named_parameters())


@pytest.mark.parametrize(("x", "kwargs", "match"), [
    (torch.full((4, 3), float("nan")), {}, r"non-finite entries \(shape \(4, 3\)\)"),
    (torch.randn(4, 3), {"gamma": -1.0, "kappa": 4}, r"gamma must be a finite number in \[0.0, ∞\), got -1.0"),
    (torch.randn(4, 3), {"kappa": 0}, "kappa must be a finite number > 0"),
])
def test_a_projection_of_bad_input_is_refused(x, kwargs, match):
    """FrobeniusBall returned NaN for a NaN input (SpectralBall refused it) and took a negative γ or κ."""
    with pytest.raises(ValueError, match=match):
        specopt.FrobeniusBall(1.0).project(x, **kwargs)
    assert specopt.FrobeniusBall(1.0).project(torch.ones(4, 3), gamma=0.0, kappa=4).shape == (4, 3)  # γ_k may be 0


@pytest.mark.parametrize(("overrides", "match"), [
    ({r"^4\.": {"raduis": 1.0}}, r"sets \['raduis'\], which no specopt optimizer or part"),
    ({r"^4\.": 5}, r"must be a dict of group keys, got 5"),
])
def test_an_override_no_optimizer_reads_is_refused(overrides, match):
    """A misspelt key sat in the group unread: the radius meant for the head stayed 100."""
    with pytest.raises(ValueError, match=match):
        specopt.param_groups(mlp(), overrides=overrides)


def test_the_submodules_the_docs_name_are_attributes_of_the_package():
    """The docs write `specopt.registry.DEFAULTS`, `specopt.gluon.GluonRule`: after `import specopt` alone."""
    assert specopt.registry.DEFAULTS["muon"]["lr"] > 0 and specopt.gluon.GluonRule and specopt.integrations
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        specopt.nope  # noqa: B018


@pytest.mark.parametrize("preset", [specopt.Muon, specopt.Scion, specopt.Gluon])
def test_an_optimizer_whose_parameters_never_get_a_gradient_says_so_once(preset):
    """Built before the model's parameters were replaced (fully_shard does so: the optimizer's tensors then never get
    a gradient), an optimizer trained nothing and said nothing."""
    import warnings

    model = mlp()
    opt = preset(model.parameters())
    for module in model.modules():  # what fully_shard does: new parameter objects, the old ones left behind
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, torch.nn.Parameter(p.detach().clone()))
    x = torch.randn(8, next(model.parameters()).shape[1])
    with pytest.warns(UserWarning, match="found no gradient on any of the optimizer's 6 parameters") as caught:
        for _ in range(3):
            model(x).square().mean().backward()
            opt.step(lambda: model(x).square().mean())
    assert len([w for w in caught if "no gradient" in str(w.message)]) == 1  # once
    model = mlp()
    opt = preset(model.parameters())
    model(x).square().mean().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(lambda: model(x).square().mean())


def test_scions_weight_decay_is_refused_with_the_reason_and_a_3d_tensor_when_the_optimizer_is_made():
    """`Scion(params, weight_decay=0.1)` was a bare TypeError (a group's weight decay had the reason); a 3-D tensor
    under norm="auto" was refused only at the first step, where Muon refuses it in its constructor."""
    with pytest.raises(ValueError, match="Scion has no weight_decay .* use UScion"):
        specopt.Scion(mlp().parameters(), weight_decay=0.1)
    specopt.Scion(mlp().parameters(), weight_decay=0.0)
    cube = torch.nn.Parameter(torch.randn(2, 3, 4))
    for preset in (specopt.Scion, specopt.UScion, specopt.Gluon, specopt.ALMOND):
        with pytest.raises(ValueError, match=r"is 3-D \(2, 3, 4\)"):
            preset([cube])
