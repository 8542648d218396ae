"""What a preset does with the groups it is given: Muon's split into its matrices and its AdamW tensors keeps each
group's own keys, and :meth:`add_param_group` handles a group exactly as the constructor does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import specopt


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def steps(model, opt, n=5):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def group_of(opt, p):
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def test_muons_adamw_tensors_keep_their_groups_constraint_lr_and_weight_decay():
    model = mlp()
    opt = specopt.Muon([{"params": list(model.parameters()), "constraint": specopt.Box(0.01)}])
    steps(model, opt)
    assert group_of(opt, model[0].bias)["norm"] == "adamw"
    assert all(p.detach().abs().max() <= 0.01 + 1e-7 for p in model.parameters())  # the biases too
    model = mlp()
    groups = specopt.param_groups(model, overrides={r"^2\.weight$": {"lr": 1e-3, "weight_decay": 0.5},
                                                    r"^0\.bias$": {"lr": 0.0}})
    opt = specopt.Muon(groups)
    head, bias = group_of(opt, model[2].weight), group_of(opt, model[0].bias)
    assert (head["norm"], head["lr"], head["weight_decay"]) == ("adamw", 1e-3, 0.5)
    frozen = model[0].bias.detach().clone()
    steps(model, opt)
    assert bias["norm"] == "adamw" and torch.equal(model[0].bias.detach(), frozen)


def test_muons_msign_and_step_keys_stay_with_its_matrices():
    model = mlp()
    opt = specopt.Muon([{"params": list(model.parameters()), "momentum": 0.5, "radius": "spectral"}])
    matrices, vectors = group_of(opt, model[0].weight), group_of(opt, model[0].bias)
    assert (matrices["momentum"], matrices["radius"]) == (0.5, "spectral")
    assert (vectors["momentum"], vectors["radius"], vectors["betas"]) == (0.0, 1.0, (0.9, 0.95))


def test_muon_refuses_a_non_spectral_norm_when_built_not_at_its_first_step():
    """param_groups gives Muon's roles spectral norms; a user's other norm there was replaced by Spectral, silently.
    Muon's step is a Muon scale, which needs a spectral norm: refused at construction, on a role group and on a plain
    one (where the first step used to fail); a plain group with a number radius steps."""
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    groups = specopt.param_groups(model)
    for group in groups:
        if group["role"] == "hidden":
            group["norm"] = specopt.norms.ColNorm()
    with pytest.raises(ValueError, match="'hidden' group's norm ColNorm.* is not spectral.*Scion or UScion"):
        specopt.Muon(groups)
    with pytest.raises(ValueError, match=r"shape \(16, 16\): radius='original' \(a Muon scale\) needs a spectral "
                                         "norm.*give its group a number 'radius'"):
        specopt.Muon([{"params": [model[2].weight], "norm": specopt.norms.ColNorm()}])
    opt = specopt.Muon([{"params": [model[2].weight], "norm": specopt.norms.ColNorm(), "radius": 1.0}])
    before = model[2].weight.detach().clone()
    steps(model, opt, 1)
    assert isinstance(opt.param_groups[0]["norm"], specopt.norms.ColNorm) and not torch.equal(before, model[2].weight)


@pytest.mark.parametrize("preset", [specopt.Muon, specopt.NorMuon, specopt.MuonBP, specopt.AdaGO, specopt.Gluon,
                                    specopt.GluonMVR, specopt.SteepestDescent, specopt.DoG])
def test_a_preset_without_radii_refuses_a_role_radius_it_would_ignore(preset):
    """Muon steps by its scale, Gluon by t_l, DoG by distance: a radius given to param_groups (radii=, overrides=)
    used to be dropped, silently. The default radii (param_groups' own) still pass; the error names the group and
    the way out; add_param_group refuses as the constructor does."""
    model = mlp()
    preset(specopt.param_groups(model))
    for kwargs in ({"radii": {"hidden": 50.0}}, {"radii": {"head": 3.0}},
                   {"overrides": {r"^0\.weight$": {"radius": 3.0}}}):
        with pytest.raises(ValueError, match="group.s radius .* has no meaning for .*Scion or UScion"):
            preset(specopt.param_groups(model, **kwargs))
    opt = preset([{"params": [model[0].weight]}])
    with pytest.raises(ValueError, match="'head' group's radius 3.0 .* has no meaning"):
        opt.add_param_group(specopt.param_groups(model, radii={"head": 3.0})[-1])


def test_add_param_group_splits_like_the_constructor():
    model = mlp()
    built = specopt.Muon(specopt.param_groups(model))
    first, *rest = specopt.param_groups(model)
    added = specopt.Muon([first])
    for group in rest:  # embedding, head, gains and biases: AdamW's, as in the constructor (were Sign/BiasRMS)
        added.add_param_group(group)
    for p in model.parameters():
        a, b = group_of(built, p), group_of(added, p)
        assert (a["norm"], a["lr"], a["radius"]) == (b["norm"], b["lr"], b["radius"]), p.shape
    lone = specopt.Muon([model[0].weight])
    lone.add_param_group({"params": [model[0].bias]})  # a 1-D tensor: AdamW's (was a Spectral norm, then IndexError)
    assert group_of(lone, model[0].bias)["norm"] == "adamw"
    model[0].weight.grad, model[0].bias.grad = torch.ones(16, 6), torch.ones(16)
    lone.step()


def test_add_param_group_refuses_for_prox_spectral_as_the_constructor_and_leaves_the_optimizer_as_it_was():
    model = mlp()
    hidden, *rest = specopt.param_groups(model)
    opt = specopt.ProxSpectral([{"params": hidden["params"]}])
    with pytest.raises(ValueError, match="would replace its preconditioner"):
        opt.add_param_group(rest[0])
    assert len(opt.param_groups) == 1


def test_add_param_group_gives_dog_the_euclidean_norm_outside_muons_roles():
    model = mlp()
    hidden, *rest = specopt.param_groups(model)
    opt = specopt.DoG([hidden])
    for group in rest:
        opt.add_param_group(group)
    assert [type(g["norm"]).__name__ for g in opt.param_groups] == ["Spectral"] + ["Euclidean"] * len(rest)


@pytest.mark.parametrize("make, message", [
    (lambda p: specopt.Scion([{"params": p, "weight_decay": 0.5}]), "rule 'scg' has no weight decay"),
    (lambda p: specopt.Scion([{"params": p, "lr": 1.9}]), r"lr must be in \[0, 1\] for rule 'scg'"),
    (lambda p: specopt.ClippedScion([{"params": p, "weight_decay": 0.5}], constrained=True),
     "rule 'clipped_constrained' has no weight decay"),
])
def test_a_convex_combination_step_refuses_a_group_weight_decay_and_an_lr_above_one(make, message):
    with pytest.raises(ValueError, match=message):
        make(list(mlp().parameters()))


@pytest.mark.parametrize("preset", ["Muon", "Scion", "UScion"])
def test_plain_tensors_added_to_an_optimizer_of_named_groups_get_names_and_train(preset):
    """Lightning's BaseFinetuning (unfreeze_and_add_param_group) and torch's idiom add a group of plain tensors; an
    optimizer built from param_groups names its tensors, and torch refuses a mix ("all optimizer param groups should
    be with/without names"). The added tensors get names and the geometry of their shape; the state dict
    round-trips into an optimizer built the same way."""
    model, block = mlp(), nn.Sequential(nn.Linear(6, 6), nn.ReLU())
    opt = getattr(specopt, preset)(specopt.param_groups(model))
    opt.add_param_group({"params": block.parameters(), "lr": 0.01})
    added = [g for g in opt.param_groups if any(p is block[0].weight or p is block[0].bias for p in g["params"])]
    assert all(n.startswith(f"param_groups[{len(specopt.param_groups(model))}]") for g in added
               for n in g["param_names"])
    before = block[0].weight.detach().clone()
    block[0].weight.grad, block[0].bias.grad = torch.ones(6, 6), torch.ones(6)
    opt.step()
    assert not torch.equal(block[0].weight, before)
    again = getattr(specopt, preset)(specopt.param_groups(model))
    again.add_param_group({"params": block.parameters(), "lr": 0.01})
    again.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in again.param_groups] == [g["lr"] for g in opt.param_groups]


def test_named_tensors_added_to_an_optimizer_of_plain_tensors_drop_their_names():
    model, block = mlp(), nn.Linear(6, 6)
    opt = specopt.Muon(list(model.parameters()))
    opt.add_param_group({"params": list(block.named_parameters())})
    assert all("param_names" not in g for g in opt.param_groups)
