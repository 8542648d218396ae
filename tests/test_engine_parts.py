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


class Bf16Momentum(specopt.Estimator):
    """An estimator that keeps its momentum in bf16 (half the memory) under the key ``low.m``."""
    name = "bf16_momentum"

    def init_state(self, rec):
        rec.state.setdefault("low.m", torch.zeros_like(rec.p, dtype=torch.bfloat16))

    def direction(self, rec, ctx):
        buf = rec.state["low.m"]
        buf.copy_(buf.float().lerp(rec.g, 0.1))
        return buf.float()


class Float64RowMoment(USCG):
    """A rule that creates, in its first step, a float64 second moment of the update's rows."""
    name = "row_moment64"

    def scale(self, records, ctx):
        for rec in records:
            v = rec.state.setdefault("rows.v", torch.zeros(rec.p.shape[0], 1, dtype=torch.float64))
            v.lerp_(rec.s.double().square().mean(1, keepdim=True), 0.05)
            rec.s = (rec.s.double() / (v + 1e-8).sqrt()).float()
        super().scale(records, ctx)


@pytest.mark.parametrize("through", ["state_dict", "checkpoint"])
def test_a_user_parts_state_keeps_its_dtype_and_dotted_keys_through_a_resume(through, tmp_path):
    """State in a dtype of the part's own choosing (bf16 made ahead of the step, float64 made in it) comes back in
    that dtype, and keys holding dots load from a DCP checkpoint: the resumed run continues bit for bit."""
    import io

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 8, bias=False)
        return model, specopt.GeometryOptimizer(model.parameters(), {"lr": 0.01}, estimator=Bf16Momentum(),
                                                rule=Float64RowMoment())

    def step(model, opt, seed):
        torch.manual_seed(seed)
        opt.zero_grad()
        model(torch.randn(16, 4)).square().mean().backward()
        opt.step()

    model, opt = make()
    for k in range(3):
        step(model, opt, k)
    twin, twin_opt = make()
    if through == "state_dict":
        twin.load_state_dict(model.state_dict())
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        twin_opt.load_state_dict(torch.load(buffer, weights_only=True))
    else:
        specopt.checkpoint.save(tmp_path / "ckpt", model, opt)
        specopt.checkpoint.load(tmp_path / "ckpt", twin, twin_opt)
    state = twin_opt.state[twin.weight]
    assert (state["low.m"].dtype, state["rows.v"].dtype) == (torch.bfloat16, torch.float64)
    for k in range(3, 6):
        step(model, opt, k)
        step(twin, twin_opt, k)
    assert torch.equal(model.weight, twin.weight)


def test_loaded_moments_take_the_dtype_a_fresh_state_of_the_weights_has():
    """float32 moments loaded into float64 weights become float64, as a fresh state there would be; float32
    moments of bf16 weights stay float32 (torch would cast them to bf16)."""
    for dtype, expected in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32)):
        w = torch.nn.Parameter(torch.randn(8, 4))
        opt = specopt.Muon([w])
        w.grad = torch.randn(8, 4)
        opt.step()
        saved = copy.deepcopy(opt.state_dict())
        w2 = torch.nn.Parameter(torch.randn(8, 4, dtype=dtype))
        opt2 = specopt.Muon([w2])
        opt2.load_state_dict(saved)
        assert opt2.state[w2]["momentum_buffer"].dtype == expected
