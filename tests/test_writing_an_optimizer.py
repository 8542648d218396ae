"""The guide "Writing a new optimizer" (docs/guides/writing-an-optimizer.md): NorMuon (a step rule), MARS (an
estimator) and the nuclear-norm ball (a norm), each written on the public API only, are loaded from the page as a
reader would paste them, trained for real, and checked for the property that defines them."""

from __future__ import annotations

import copy
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import classification_data, mlp, train

import specopt

PAGE = Path(__file__).parents[1] / "docs" / "guides" / "writing-an-optimizer.md"
SOURCE_LINES_LIMIT = 30


@pytest.fixture(scope="module")
def guide():
    """The page's code as an importable module (a norm's config names its class by import path)."""
    module = types.ModuleType("specopt_guide_writing_an_optimizer")
    sys.modules[module.__name__] = module
    for code in re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S):
        exec(compile(code, str(PAGE), "exec"), module.__dict__)
    yield module
    del sys.modules[module.__name__]


@pytest.mark.parametrize("name", ["NorMuon", "MARS", "Nuclear"])
def test_each_member_is_one_short_class(guide, name):
    source = re.search(rf"^class {name}\b.*?(?=^\S|\Z)", PAGE.read_text(), re.S | re.M).group(0).rstrip()
    assert len(source.splitlines()) <= SOURCE_LINES_LIMIT
    assert "specopt.engine" not in source and "._" not in source.replace("__", "")  # public API only


def test_normuon_gives_every_row_of_the_update_the_same_size(guide):
    # A tall matrix: msign's rows have unequal norms; NorMuon's first step divides each by its own RMS.
    def first_update(rule):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(64, 16))
        opt = specopt.Muon([w], lr=0.1, rule=rule)
        w.grad = torch.randn(64, 16) * torch.linspace(0.1, 3.0, 64)[:, None]
        before = w.detach().clone()
        opt.step()
        return (w.detach() - before).norm(dim=1)

    muon, normuon = first_update("uscg"), first_update(guide.NorMuon())
    assert muon.max() / muon.min() > 1.5
    torch.testing.assert_close(normuon, torch.full_like(normuon, normuon.mean().item()), rtol=1e-3, atol=0)
    torch.testing.assert_close(normuon.norm(), muon.norm(), rtol=1e-4, atol=0)  # ‖Ô‖_F = ‖O‖_F


def test_mars_corrects_the_gradient_with_its_change_before_averaging(guide):
    beta, gamma, lr, radius = 0.9, 0.5, 0.1, 2.0
    w = torch.nn.Parameter(torch.zeros(8))
    opt = specopt.UScion([{"params": [w], "norm": "euclidean", "radius": radius}], lr=lr, momentum=beta,
                         estimator=guide.MARS(gamma))
    g1, g2 = torch.linspace(-1, 1, 8) * 0.3, torch.linspace(1, -2, 8) * 0.2

    def clip(c):
        return c / c.norm().clamp_min(1.0)

    for g in (g1, g2):
        w.grad = g.clone()
        before = w.detach().clone()
        opt.step()
    d1 = (1 - beta) * clip(g1)
    d2 = beta * d1 + (1 - beta) * clip(g2 + gamma * beta / (1 - beta) * (g2 - g1))
    torch.testing.assert_close(w.detach() - before, -lr * radius * d2 / d2.norm())


def test_a_nuclear_norm_scion_step_is_rank_one_and_resumes_exactly(guide):
    torch.manual_seed(0)
    X, y = classification_data()

    def build():
        model = mlp(widths=(20, 32, 4))
        opt = specopt.Scion([{"params": [model[0].weight], "norm": guide.Nuclear(), "radius": 20.0},
                             {"params": [model[0].bias, model[2].weight, model[2].bias]}], lr=0.05)
        return model, opt

    model, opt = build()
    before = model[0].weight.detach().clone()
    train(model, opt, X, y, 1)
    change = model[0].weight.detach() - (1 - 0.05) * before  # SCG: W ← (1 − γ)W + γρ·lmo
    assert torch.linalg.matrix_rank(change) == 1
    torch.testing.assert_close(torch.linalg.matrix_norm(change, ord="nuc"), torch.tensor(0.05 * 20.0))

    saved_model, saved_opt = build()
    saved_model.load_state_dict(model.state_dict())
    saved_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # the norm goes through its config and back
    assert isinstance(saved_opt.param_groups[0]["norm"], guide.Nuclear)
    train(model, opt, X, y, 5)
    train(saved_model, saved_opt, X, y, 5)
    for a, b in zip(model.parameters(), saved_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_user_norm_survives_a_dcp_checkpoint(guide, tmp_path):
    X, y = classification_data()

    def build():
        model = mlp(widths=(20, 32, 4))
        return model, specopt.Scion([{"params": [model[0].weight], "norm": guide.Nuclear(), "radius": 20.0},
                                     {"params": [model[0].bias, model[2].weight, model[2].bias]}], lr=0.02)

    model, opt = build()
    train(model, opt, X, y, 3)
    specopt.checkpoint.save(tmp_path / "ckpt", model, opt)
    resumed_model, resumed = build()
    specopt.checkpoint.load(tmp_path / "ckpt", resumed_model, resumed)
    assert isinstance(resumed.param_groups[0]["norm"], guide.Nuclear)
    train(model, opt, X, y, 3)
    train(resumed_model, resumed, X, y, 3)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("member", ["NorMuon", "MARS", "Nuclear"])
def test_each_member_trains(guide, member):
    X, y = classification_data()
    model = mlp()
    if member == "NorMuon":
        opt = specopt.Muon(specopt.param_groups(model), lr=0.02, rule=guide.NorMuon())
    elif member == "MARS":
        opt = specopt.Scion(specopt.param_groups(model), lr=2**-6, estimator=guide.MARS())
    else:
        opt = specopt.Scion([{"params": [m.weight for m in model if isinstance(m, torch.nn.Linear)],
                              "norm": guide.Nuclear(), "radius": 20.0},
                             {"params": [m.bias for m in model if isinstance(m, torch.nn.Linear)], "radius": 1.0}],
                            lr=0.02)
    losses = train(model, opt, X, y, 150)
    assert losses[-1] < 0.3 * losses[0]


def test_a_part_missing_its_method_is_named_at_construction():
    w = [torch.nn.Parameter(torch.zeros(4, 4))]

    class NoDirection(specopt.estimators.Estimator):
        name = "no-direction"

    class NoScale(specopt.steps.StepRule):
        name = "no-scale"

    with pytest.raises(ValueError, match=r"NoDirection defines no direction\(rec, ctx\)"):
        specopt.UScion(w, estimator=NoDirection())
    with pytest.raises(ValueError, match=r"NoScale defines no scale\(records, ctx\)"):
        specopt.GeometryOptimizer(w, {"lr": 0.1}, rule=NoScale())


def test_a_user_norm_may_hold_lists_and_an_lmo_of_another_shape_is_refused():
    class Ranked(specopt.Spectral):  # a list attribute: unhashable before, which failed in the step's bucketing
        def __init__(self, ranks):
            super().__init__(compute_dtype=torch.float64)
            self.ranks = list(ranks)

    class Squashed(specopt.Spectral):
        def lmo_factored(self, g, batch_dims=None, *, private=False):
            S, factor = super().lmo_factored(g, batch_dims, private=private)
            return S[..., :1], factor  # would broadcast over every column of the weights

    X, y = classification_data()
    model = mlp()
    opt = specopt.UScion([{"params": [p for p in model.parameters() if p.ndim == 2], "norm": Ranked([2, 3])}])
    assert len(train(model, opt, X, y, 2)) == 2
    W = torch.nn.Parameter(torch.randn(6, 4))
    W.grad = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"Squashed.lmo_factored returned shape \(1, 6, 1\) for a direction of shape "
                                         r"\(1, 6, 4\)"):
        specopt.UScion([{"params": [W], "norm": Squashed()}]).step()


def test_the_guides_normuon_is_specopts_on_a_conv1d_model(guide):
    """GPT-2's Conv1D weights are stored (d_in, d_out): the guide's rule normalised the stored rows, i.e. the
    map's input columns, and differed from specopt.NorMuon after one step (|Δ| 3e-3); it reads the rows of the
    maps through the public ``specopt.views.as_maps`` now."""
    transformers = pytest.importorskip("transformers")

    def run(build):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                                                     n_positions=16))
        opt = build(specopt.param_groups(model))
        x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
        for _ in range(3):
            opt.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
        return dict(model.named_parameters())

    guide_run = run(lambda groups: specopt.Muon(groups, rule=guide.NorMuon()))
    builtin = run(specopt.NorMuon)
    assert builtin["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)  # stored (d_in, d_out)
    for name, p in builtin.items():
        torch.testing.assert_close(guide_run[name], p, rtol=0, atol=1e-6, msg=name)
