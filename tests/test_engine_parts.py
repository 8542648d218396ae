"""The engine's open parts: estimators and step rules as objects (specopt.Estimator, specopt.StepRule), the
combinations that mean something and the ones that are refused, and the bare engine's defaults."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import classification_data, mlp, train

import specopt
from specopt.estimators import AveragedLmo, Momentum, Storm
from specopt.gluon import GluonRule
from specopt.steps import SCG, USCG, Almond, Clipped, ClippedConstrained, Steepest

DIRECTION_RULES = [USCG, SCG, lambda: Clipped(1.0), lambda: ClippedConstrained(1.0), Steepest, GluonRule]


def one_step_length(estimator, rule, lr=0.1, radius=2.0) -> float:
    w = torch.nn.Parameter(torch.zeros(5))
    opt = specopt.GeometryOptimizer([{"params": [w], "norm": "euclidean", "radius": radius}],
                                    {"lr": lr, "momentum": 0.0}, estimator=estimator, rule=rule)
    w.grad = torch.arange(1.0, 6.0)
    opt.step()
    return float(w.detach().norm())


@pytest.mark.parametrize("rule", ["uscg", "almond"])
def test_almond_steps_gamma_times_rho_with_either_of_its_rules(rule):
    # ρ = 2, γ = 0.1, β = 0: d = ρ·lmo(g), one step of length γρ = 0.2 (ρ was applied twice before: 0.4)
    assert one_step_length("almond", rule) == pytest.approx(0.2, rel=1e-6)
    assert one_step_length("momentum", "uscg") == pytest.approx(0.2, rel=1e-6)


@pytest.mark.parametrize("estimator, rule, message", [
    ("momentum", "almond", "use estimator='almond'"),
    ("storm", "almond", "use estimator='almond'"),
    ("almond", "clipped", "no dual direction"),
    ("almond", "steepest", "no dual direction"),
    ("almond", "gluon", "no dual direction"),
    ("almond", "clipped_constrained", "no dual direction"),
    ("adam", "uscg", "unknown estimator 'adam'"),
    ("momentum", "sgd", "unknown step rule 'sgd'"),
])
def test_a_combination_without_meaning_is_refused_at_construction(estimator, rule, message):
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=message):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, estimator=estimator, rule=rule, clip_radius=(
            1.0 if rule.startswith("clipped") else None))


def test_clip_radius_belongs_to_the_clipped_rules():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="needs clip_radius"):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, rule="clipped")
    with pytest.raises(ValueError, match="clipped rules only"):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, rule="uscg", clip_radius=1.0)
    with pytest.raises(ValueError, match="goes to the rule object"):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, rule=Clipped(1.0), clip_radius=1.0)
    with pytest.raises(ValueError, match="clip_radius"):
        Clipped(-1.0)


@pytest.mark.parametrize("estimator", [Momentum, Storm])
@pytest.mark.parametrize("rule", DIRECTION_RULES, ids=["uscg", "scg", "clipped", "clipped_constrained", "steepest",
                                                        "gluon"])
def test_every_meaningful_combination_trains(estimator, rule):
    X, y = classification_data()
    model = mlp()
    rule = rule()
    lr = {Steepest: 0.1, GluonRule: 1.0}.get(type(rule), 2**-6)  # γ‖d‖_* and γ·t_l: their own scales
    opt = specopt.GeometryOptimizer(specopt.param_groups(model), {"lr": lr, "momentum": 0.9},
                                    estimator=estimator(), rule=rule)
    losses = train(model, opt, X, y, 40, closure=True)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("rule", [USCG, SCG, Almond])
def test_the_averaged_lmo_trains_with_each_rule_that_takes_it(rule):
    X, y = classification_data()
    model = mlp()
    opt = specopt.GeometryOptimizer(specopt.param_groups(model), {"lr": 2**-6, "momentum": 0.9},
                                    estimator=AveragedLmo(), rule=rule())
    losses = train(model, opt, X, y, 40)
    assert losses[-1] < 0.8 * losses[0]


def test_the_bare_engine_has_its_own_defaults_and_clear_errors():
    w = torch.nn.Parameter(torch.randn(4, 4))
    opt = specopt.GeometryOptimizer([w], {"lr": 0.1})
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["norm"] == "auto"
    w.grad = torch.randn(4, 4)
    opt.step()
    with pytest.raises(ValueError, match="needs a learning rate"):
        specopt.GeometryOptimizer([w])
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, estimator=Storm()).step()
    gluon = specopt.GeometryOptimizer([w], {"lr": 1.0}, rule=GluonRule())  # Gluon's group keys come with its rule
    assert gluon.param_groups[0]["L0"] == "online"


def test_state_dicts_name_the_estimator_and_rule_and_refuse_another():
    X, y = classification_data()
    model = mlp()
    opt = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.01}, estimator=Storm(), rule=SCG())
    train(model, opt, X, y, 2, closure=True)
    state = copy.deepcopy(opt.state_dict())
    assert state["specopt"] == {"optimizer": "GeometryOptimizer", "estimator": "storm", "rule": "scg"}
    same = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.01}, estimator="storm", rule="scg")
    same.load_state_dict(state)
    other = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.01}, estimator=Storm(), rule=USCG())
    with pytest.raises(ValueError, match="rule 'scg'"):
        other.load_state_dict(state)


def test_a_user_rule_sees_the_records_and_the_engine_applies_its_scale():
    class HalfStep(USCG):
        name = "half"

        def scale(self, records, ctx):
            super().scale(records, ctx)
            for rec in records:
                assert isinstance(rec, specopt.Record) and rec.d is not None and rec.s is not None
                rec.scale = rec.scale / 2

    assert one_step_length("momentum", HalfStep()) == pytest.approx(0.1, rel=1e-6)
