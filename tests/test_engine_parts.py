"""The engine's open parts: estimators and step rules as objects (specopt.Estimator, specopt.StepRule), the
combinations that mean something and the ones that are refused, and the bare engine's defaults."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import Frobenius, classification_data, mlp, train

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
    assert state["specopt"] == {"optimizer": "GeometryOptimizer", "estimator": "storm", "rule": "scg",
                                "estimator_config": {"name": "storm"}, "rule_config": {"name": "scg"}}
    same = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.01}, estimator="storm", rule="scg")
    same.load_state_dict(state)
    other = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.01}, estimator=Storm(), rule=USCG())
    with pytest.raises(ValueError, match="rule 'scg'"):
        other.load_state_dict(state)
    before = {k: v for k, v in state["specopt"].items() if not k.endswith("_config")}  # saved before the settings
    same.load_state_dict({**state, "specopt": before})


def test_two_unnamed_parts_of_one_name_in_two_modules_do_not_pass_for_each_other():
    """An unnamed part is named by its class's qualified name, which two modules may share: the state of one loaded
    into the other without a word."""
    first, second = (type("Lookahead", (Momentum,), {"__module__": module}) for module in ("pkg_a", "pkg_b"))
    w = torch.nn.Parameter(torch.randn(4, 4))
    opt = specopt.GeometryOptimizer([w], {"lr": 0.1}, estimator=first())
    w.grad = torch.randn(4, 4)
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    specopt.GeometryOptimizer([w], {"lr": 0.1}, estimator=first()).load_state_dict(state)
    with pytest.raises(ValueError, match="estimator pkg_a:Lookahead and cannot be loaded into pkg_b:Lookahead"):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, estimator=second()).load_state_dict(state)


class GammaCorrected(Momentum):
    """A user's estimator with a setting of its own and no config() of its own."""

    def __init__(self, gamma: float = 0.1):
        self.gamma = gamma

    def direction(self, rec, ctx):
        return super().direction(rec, ctx) * (1 + self.gamma)


@pytest.mark.parametrize("build, other", [
    (lambda params: specopt.NorMuon(params, beta2=0.95), lambda params: specopt.NorMuon(params, beta2=0.5)),
    (lambda params: specopt.Scion(params, estimator=GammaCorrected(0.1)),
     lambda params: specopt.Scion(params, estimator=GammaCorrected(0.5))),
], ids=["normuon-beta2", "user-estimator-gamma"])
def test_a_state_saved_with_other_part_settings_is_refused(build, other):
    """The state dict recorded the parts' names only: NorMuon's β₂ = 0.95 state resumed into β₂ = 0.5 (a user's
    estimator's γ alike) without a word, and the next step differed from the run's."""
    X, y = classification_data()
    model = mlp()
    opt = build(model.parameters())
    train(model, opt, X, y, 2)
    state = copy.deepcopy(opt.state_dict())
    build(model.parameters()).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with the (rule 'normuon' set to beta2=0.95 \(here 0.5\)|estimator "
                                         r"'GammaCorrected' set to gamma=0.1 \(here 0.5\))"):
        other(model.parameters()).load_state_dict(state)


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


class ColumnL2(specopt.Norm):
    """A user norm written for one matrix (``dim=0`` is its rows): each column on its unit ℓ2 sphere."""
    item_ndim = 2

    def lmo(self, g, batch_dims=None):
        return -g / g.norm(dim=0, keepdim=True).clamp_min(1e-12)

    def dual(self, g, batch_dims=None):
        return g.norm(dim=0).sum()

    def norm(self, x, batch_dims=None):
        return x.norm(dim=0).max()

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        return self.lmo(-torch.randn(shape, generator=generator)).to(dtype=dtype, device=device) * radius


class ColumnL2In(ColumnL2):
    """ColumnL2 computed in a dtype of the user's choosing: a norm attribute that is a torch.dtype."""

    def __init__(self, work: torch.dtype = torch.float32):
        self.work = work

    def lmo(self, g, batch_dims=None):
        return super().lmo(g.to(self.work), batch_dims).to(g.dtype)


def test_a_user_norms_dtype_attribute_survives_a_saved_and_loaded_state():
    """Norm.config wrote a dtype as "float64", which norm_from_config turned back into a dtype only for a key named
    compute_dtype: the loaded norm got a string, and failed at its next step."""
    import io

    w = torch.nn.Parameter(torch.randn(8, 4))
    opt = specopt.UScion([{"params": [w], "norm": ColumnL2In(torch.float64)}])
    w.grad = torch.randn(8, 4)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = specopt.UScion([{"params": [w], "norm": ColumnL2In()}])
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    assert twin.param_groups[0]["norm"] == ColumnL2In(torch.float64)
    twin.step()


@pytest.mark.parametrize("norm", [ColumnL2(), Frobenius()], ids=["column-l2", "frobenius"])
def test_a_user_norm_written_for_one_tensor_gets_one_tensor_at_a_time(norm):
    """Same-shape tensors share an lmo call (stacked) only where the norm says it takes stacks (``batched``): a
    norm written for one tensor steps each by its own lmo, whatever the other gradients in the step."""
    ws = [torch.nn.Parameter(torch.zeros(6, 4)) for _ in range(3)]
    grads = [torch.randn(6, 4) * scale for scale in (1.0, 100.0, 0.01)]
    opt = specopt.GeometryOptimizer([{"params": ws, "norm": norm, "radius": 1.0}], {"lr": 1.0, "momentum": 0.0},
                                    rule="uscg")
    for w, g in zip(ws, grads, strict=True):
        w.grad = g
    opt.step()
    for w, g in zip(ws, grads, strict=True):
        torch.testing.assert_close(w.detach(), norm.lmo(g), rtol=1e-6, atol=1e-7)


def test_a_matrix_norm_on_a_vector_is_refused_when_the_optimizer_is_built():
    bias = torch.nn.Parameter(torch.zeros(32))
    for norm in (specopt.norms.Spectral(), ColumnL2()):
        with pytest.raises(ValueError, match=r"bias of shape \(32,\) cannot take .*one of its items has 2 dims"):
            specopt.Scion([{"params": [bias], "param_names": ["bias"], "norm": norm}])


def test_a_rule_that_needs_the_dual_norm_is_refused_with_the_averaged_lmo():
    class DualScaled(USCG):  # accepts the averaged lmo from USCG, but asks for the dual norm of a direction
        name = "dual_scaled"
        needs_dual = True

    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="rule 'dual_scaled' needs the dual norm.*averaged lmo"):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, estimator="almond", rule=DualScaled())


def test_parts_with_a_sum_over_tensors_see_every_tensor_of_the_step_at_once():
    """The engine runs a step bucket by bucket (three shapes: three lmo buckets) only where the rule and the
    estimator both say per_tensor; by the protocol's default, a rule's scale gets every record in one call, and an
    estimator's direction runs for every tensor before any weight moves."""
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((8, 4), (16, 8), (8,))]
    seen = []

    class GlobalScale(specopt.StepRule):
        name = "global_scale"

        def scale(self, records, ctx):
            seen.append(len(records))
            for rec in records:
                rec.shrink, rec.scale = 0.0, rec.group["lr"] * rec.radius

    class GlobalNormalized(specopt.Estimator):
        name = "global_normalized"

        def direction(self, rec, ctx):
            seen.append(all(bool((p == 0).all()) for p in params))  # nothing has moved yet
            return rec.g

    class GlobalUSCG(USCG):  # overrides scale without saying per_tensor: not USCG's True
        name = "global_uscg"

        def scale(self, records, ctx):
            seen.append(len(records))
            super().scale(records, ctx)

    assert (GlobalUSCG.per_tensor, USCG.per_tensor) == (False, True)
    for estimator, rule, expected in ((Momentum(), GlobalScale(), [3]), (Momentum(), GlobalUSCG(), [3]),
                                      (GlobalNormalized(), USCG(), [True, True, True])):
        with torch.no_grad():
            for p in params:
                p.zero_()
        seen.clear()
        opt = specopt.GeometryOptimizer(params, {"lr": 0.1}, estimator=estimator, rule=rule)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        assert seen == expected, type(rule).__name__


def test_unnamed_parts_are_named_by_their_class_and_their_states_do_not_mix():
    class A(USCG):
        pass

    class B(USCG):
        pass

    assert (A.name, Momentum.name, USCG.name) == (A.__qualname__, "momentum", "uscg")
    w = torch.nn.Parameter(torch.zeros(3, 3))
    opt = specopt.GeometryOptimizer([w], {"lr": 0.1}, rule=A())
    w.grad = torch.ones(3, 3)
    opt.step()
    other = specopt.GeometryOptimizer([w], {"lr": 0.1}, rule=B())
    with pytest.raises(ValueError, match="rule '.*A'.* cannot be loaded into .*rule '.*B'"):
        other.load_state_dict(opt.state_dict())


class CountingFrobenius(Frobenius):
    """A user norm with a constructor argument and private working data (a call counter)."""

    def __init__(self, scale: float = 1.0):
        self.scale, self._calls = scale, 0

    def lmo(self, g, batch_dims=None):
        self._calls += 1
        return super().lmo(g) * self.scale


def test_a_user_norms_private_attributes_are_not_part_of_its_config_equality_or_hash():
    norm = CountingFrobenius(0.5)
    key = hash(norm)
    w = torch.nn.Parameter(torch.zeros(4, 4))
    opt = specopt.GeometryOptimizer([{"params": [w], "norm": norm}], {"lr": 0.1})
    w.grad = torch.ones(4, 4)
    opt.step()
    assert norm._calls == 1 and hash(norm) == key and norm == CountingFrobenius(0.5) != CountingFrobenius(2.0)
    assert opt.state_dict()["param_groups"][0]["norm"] == {"name": f"{__name__}:CountingFrobenius", "scale": 0.5}
    twin = specopt.GeometryOptimizer([{"params": [w], "norm": CountingFrobenius(0.5)}], {"lr": 0.1})
    twin.load_state_dict(opt.state_dict())
    assert twin.param_groups[0]["norm"] == norm


def test_an_estimator_adds_its_own_group_keys_as_a_rule_does():
    class Damped(Momentum):
        name = "damped"
        group_defaults = {"damping": 0.5}

        def validate_group(self, group):
            if not 0 <= group["damping"] <= 1:
                raise ValueError(f"damping must be in [0, 1], got {group['damping']}")

        def direction(self, rec, ctx):
            return super().direction(rec, ctx) * rec.group["damping"]

    w, v = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3, 3))
    opt = specopt.GeometryOptimizer([{"params": [w]}, {"params": [v], "damping": 0.25}], {"lr": 0.1},
                                    estimator=Damped())
    assert [g["damping"] for g in opt.param_groups] == [0.5, 0.25]
    with pytest.raises(ValueError, match="damping must be in"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, 2))], "damping": 2.0})


def test_a_user_norm_whose_lmo_returns_another_shape_is_named():
    class OneRow(ColumnL2):
        def lmo(self, g, batch_dims=None):
            return -torch.sign(g.sum(dim=0, keepdim=True))

    w = torch.nn.Parameter(torch.zeros(8, 4))
    opt = specopt.GeometryOptimizer([{"params": [w], "norm": OneRow(), "radius": 1.0}], {"lr": 0.1})
    w.grad = torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"OneRow.lmo returned shape \(1, 4\) for an input of shape \(8, 4\)"):
        opt.step()


def test_blocks_and_views_of_a_user_norm_hand_it_one_item_at_a_time():
    """Blocked (fused q/k/v) and Stacked (experts) around a norm written for one matrix: its dual, norm and projection
    are taken block by block, not of the stack of blocks (Blocked(ColumnL2, 2).dual was 28.7 against 22.0)."""
    norm, g = ColumnL2(), torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    blocks = g.chunk(2)
    blocked = specopt.Blocked(norm, 2)
    assert float(blocked.dual(g)) == pytest.approx(sum(float(norm.dual(b)) for b in blocks))
    assert float(blocked.norm(g)) == pytest.approx(max(float(norm.norm(b)) for b in blocks))
    experts = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1))
    stacked = specopt.views.Stacked(norm, 1)
    assert float(stacked.dual(experts)) == pytest.approx(sum(float(norm.dual(e)) for e in experts))


def test_a_rule_whose_init_state_reads_the_weights_resumes(tmp_path):
    """Loading learns each key's fresh dtype by running init_state on a meta tensor; one that reads values (here
    the initial weights' norm) gets a zero copy instead of failing on the meta tensor."""
    class NormAtStart(USCG):
        name = "norm_at_start"

        def init_state(self, rec):
            rec.state.setdefault("start.norm", torch.tensor(float(rec.p.norm())))

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 8)
        return model, specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, rule=NormAtStart())

    model, opt = make()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    twin, twin_opt = make()
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    specopt.checkpoint.save(tmp_path / "ckpt", model, opt)
    specopt.checkpoint.load(tmp_path / "ckpt", twin, twin_opt)
    assert float(twin_opt.state[twin.weight]["start.norm"]) == float(opt.state[model.weight]["start.norm"])


def test_a_list_of_tensors_in_the_state_is_refused_by_checkpoint_save(tmp_path):
    """Non-tensor state goes into the checkpoint's JSON, the same on every rank: a list of per-row tensors would lose
    all rows but one rank's under FSDP2."""
    class RowHistory(USCG):
        name = "row_history"

        def scale(self, records, ctx):
            for rec in records:
                rec.state.setdefault("history", []).append(rec.s.norm(dim=-1))
            super().scale(records, ctx)

    model = torch.nn.Linear(4, 8)
    opt = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, rule=RowHistory())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="'history' of weight is a list of tensors.*keep such data in one tensor"):
        specopt.checkpoint.save(tmp_path / "ckpt", model, opt)


def test_a_tall_matrix_gets_its_lmo_output_contiguous_as_on_the_distributed_paths():
    """msign works on a tall matrix's transpose and hands back a transposed view; the DDP and FSDP2 paths hand the
    update a contiguous copy, and torch's bf16 add_ rounds the two layouts differently: bf16 weights drifted apart
    between one process and two (one ulp at step 1, 0.3 by step 6)."""
    seen = []

    class Inspect(USCG):
        name = "inspect"

        def scale(self, records, ctx):
            seen.extend(rec.s.is_contiguous() for rec in records)
            super().scale(records, ctx)

    w = torch.nn.Parameter(torch.randn(33, 16, dtype=torch.bfloat16))
    opt = specopt.GeometryOptimizer([{"params": [w], "norm": "spectral", "radius": 1.0}], {"lr": 0.1},
                                    rule=Inspect())
    w.grad = torch.randn(33, 16, dtype=torch.bfloat16)
    opt.step()
    assert seen == [True]


# --- slips in user parts are errors, not silently wrong steps --------------------------------------------------


class FirstRowOnly(Momentum):
    """A direction of the wrong, broadcastable shape: every row would step by row 0's direction."""
    name = "first_row"

    def direction(self, rec, ctx):
        return super().direction(rec, ctx)[:1]


class ForgetsTheBase(USCG):
    name = "forgets_the_base"

    def scale(self, records, ctx):
        for rec in records:
            rec.s = rec.s * 2  # and no super().scale(records, ctx)


class PerRowScale(USCG):
    name = "per_row_scale"

    def scale(self, records, ctx):
        super().scale(records, ctx)
        for rec in records:
            rec.scale = torch.full((rec.p.shape[-1],), 0.1)


class MeanRowAfterLmo(Momentum):
    """An lmo output replaced by a broadcastable one in after_lmo: every row would step by the mean row."""
    name = "mean_row"

    def after_lmo(self, rec, ctx):
        rec.s = rec.s.mean(0, keepdim=True)


class LosesTheUpdate(USCG):
    name = "loses_the_update"

    def scale(self, records, ctx):
        super().scale(records, ctx)
        for rec in records:
            rec.factor = None


@pytest.mark.parametrize("estimator, rule, message", [
    (FirstRowOnly(), USCG(), "direction() returned shape (1, 4)"),
    (Momentum(), ForgetsTheBase(), "scale() did not set it"),
    (Momentum(), PerRowScale(), "scale() set it to a tensor of shape (4,)"),
    (MeanRowAfterLmo(), USCG(), "after estimator 'mean_row'"),
    (Momentum(), LosesTheUpdate(), "rec.factor of"),
])
def test_a_user_parts_slip_is_an_error_and_no_weight_moves(estimator, rule, message):
    model = torch.nn.Sequential(torch.nn.Linear(4, 6, bias=False), torch.nn.Linear(6, 3, bias=False))
    opt = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, estimator=estimator, rule=rule)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


class PolyakStep(USCG):
    """γ scaled by the closure's loss (a Polyak-type step, f* = 0)."""
    name = "polyak"
    needs_closure = True

    def scale(self, records, ctx):
        super().scale(records, ctx)
        for rec in records:
            rec.scale = rec.scale * float(ctx.loss)


def test_a_rule_that_needs_the_closure_refuses_a_bare_step_before_anything_is_written():
    """``needs_closure`` was read on estimators only: a rule reading ``ctx.loss`` failed inside its scale(), after
    the step counts and momentum buffers had advanced (a retry with a closure counted the momentum twice)."""
    model = torch.nn.Linear(4, 2)
    opt = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, rule=PolyakStep())
    x = torch.randn(8, 4)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    closure()
    with pytest.raises(ValueError, match="rule='polyak' needs step\\(closure\\)"):
        opt.step()
    assert not opt.state  # nothing created, nothing advanced
    before = model.weight.detach().clone()
    opt.step(closure)
    assert not torch.equal(model.weight, before)


class HalfStepAtMost(USCG):
    name = "half_step_at_most"
    max_lr = 0.5


def test_a_user_rules_max_lr_is_checked_when_the_optimizer_is_built():
    """Only SCG's bound was checked at construction (by its own validate_group); a user's rule met its max_lr at
    the first step, with a message about SCG's convex combination."""
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    with pytest.raises(ValueError, match=r"lr = 1 is above 0.5, the largest the rule 'half_step_at_most' keeps its "
                                         r"guarantee for \(its max_lr\)"):
        specopt.GeometryOptimizer(params, {"lr": 1.0}, rule=HalfStepAtMost())
    specopt.GeometryOptimizer(params, {"lr": 0.5}, rule=HalfStepAtMost())


def test_a_norm_with_lmo_factored_but_not_lmo_factor_is_refused_when_its_class_is_made():
    """Under DDP the owner rank computes lmo_factored and the others take the factor from lmo_factor(shape): a
    norm defining only the first stepped 16x too far, uphill, on every rank but the owner."""
    with pytest.raises(TypeError, match="overrides lmo_factored but not lmo_factor"):
        class ScaledSign(specopt.Sign):  # noqa: F841
            def lmo_factored(self, g, batch_dims=None, *, private=False):
                return -torch.sign(g), 1.0 / 16


def test_classes_given_for_instances_are_named():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match=re.escape("rule=USCG is the class: pass an instance, USCG()")):
        specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, rule=USCG)
    with pytest.raises(ValueError, match=re.escape("estimator=Momentum is the class")):
        specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, estimator=Momentum)
    with pytest.raises(ValueError, match=re.escape("norm=Spectral is the class: pass an instance, Spectral()")):
        specopt.GeometryOptimizer([{"params": [model.weight], "norm": specopt.Spectral}], {"lr": 0.1})


class History(USCG):
    """A rule that keeps a list of float32 tensors in its state."""
    name = "history"

    def scale(self, records, ctx):
        for rec in records:
            hist = rec.state.setdefault("hist", [torch.zeros(()), torch.zeros(rec.p.shape[0])])
            hist[0].add_(1.0)
            hist[1].lerp_(rec.s.float().abs().mean(-1), 0.3)
            rec.s = rec.s * (1 + hist[1].mean()).to(rec.s.dtype)
        super().scale(records, ctx)


def test_tensors_in_a_list_in_state_keep_their_saved_dtype_through_a_resume_of_bf16_weights():
    """torch's load_state_dict casts every floating tensor, inside lists too, to the parameter's dtype: a float32
    history of bf16 weights came back in bf16 and the resumed run left the straight one (6e-5)."""
    import io

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 8, bias=False).to(torch.bfloat16)
        return model, specopt.GeometryOptimizer(model.parameters(), {"lr": 0.01}, rule=History())

    def step(model, opt, seed):
        torch.manual_seed(seed)
        opt.zero_grad()
        model(torch.randn(16, 4, dtype=torch.bfloat16)).float().square().mean().backward()
        opt.step()

    model, opt = make()
    for k in range(3):
        step(model, opt, k)
    twin, twin_opt = make()
    twin.load_state_dict(model.state_dict())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert [t.dtype for t in twin_opt.state[twin.weight]["hist"]] == [torch.float32, torch.float32]
    for k in range(3, 6):
        step(model, opt, k)
        step(twin, twin_opt, k)
    assert torch.equal(model.weight, twin.weight)


class DerivedAttribute(Frobenius):
    def __init__(self, c: float = 2.0):
        self.c, self.c_squared = c, c * c


def test_a_norm_that_cannot_be_rebuilt_from_its_config_says_what_its_constructor_must_take():
    with pytest.raises(ValueError, match="constructor must take each of them as a keyword"):
        specopt.norms.norm_from_config(DerivedAttribute().config())


class PolyakLike(USCG):
    """A rule that reads the loss the closure returned: γ_k = min(lr, loss / ‖d‖_*) (Polyak with f* = 0)."""
    name = "polyak_like"
    needs_dual = True

    def __init__(self):
        self.seen = []

    def scale(self, records, ctx):
        self.seen.append(ctx.loss)
        super().scale(records, ctx)
        if ctx.loss is not None:
            total = sum(float(rec.dual) for rec in records)
            for rec in records:
                rec.scale = min(float(rec.group["lr"]), float(ctx.loss) / max(total, 1e-12)) * rec.radius


def test_a_rule_reads_the_loss_the_closure_returned():
    X, y = classification_data()
    model = mlp()
    rule = PolyakLike()
    opt = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, rule=rule)
    returned = []

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        returned.append(loss.detach())
        return loss

    for _ in range(3):
        opt.step(closure)
    assert [float(x) for x in rule.seen] == [float(x) for x in returned]
    closure()
    opt.step()
    assert rule.seen[-1] is None


class AdamDirection(Momentum):
    """``d = m/(√v + ε)``: a direction in Adam's units, not the gradient's (AdaMuon-like, before the lmo)."""

    name = "adam_direction"
    produces = "preconditioned"

    def init_state(self, rec):
        super().init_state(rec)
        rec.state.setdefault("adam_v", torch.zeros_like(rec.p))

    def direction(self, rec, ctx):
        m = super().direction(rec, ctx)
        v = rec.state["adam_v"].mul_(0.99).addcmul_(rec.g, rec.g, value=0.01)
        return m / (v.sqrt() + 1e-8)


@pytest.mark.parametrize("estimator", [AdamDirection, specopt.adaptive.SignedMomentum])
@pytest.mark.parametrize("rule", ["gluon", "steepest", lambda: Clipped(1.0), "dog"])
def test_a_preconditioned_direction_is_refused_by_rules_that_read_it_as_a_gradient(rule, estimator):
    """Gluon's smoothness fit read ‖m/√v‖_* as the gradient's dual norm and diverged (loss 0.39 → 4·10⁵ in a
    researcher's try), silently: an estimator that says ``produces = "preconditioned"`` (a user's, AdaMuon's sign)
    is refused there."""
    rule = specopt.dog.DistanceOverGradients() if rule == "dog" else rule() if callable(rule) else rule
    with pytest.raises(ValueError, match="a preconditioned direction is not a gradient estimate.*'uscg' or 'scg'"):
        specopt.GeometryOptimizer([torch.nn.Parameter(torch.zeros(3, 3))], {"lr": 0.1}, estimator=estimator(),
                                  rule=rule)


@pytest.mark.parametrize("rule", ["uscg", "scg"])
def test_a_preconditioned_direction_trains_with_the_rules_that_take_the_lmo_alone(rule):
    X, y = classification_data()
    model = mlp()
    opt = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.05, "radius": 3.0}, estimator=AdamDirection(),
                                    rule=rule)
    losses = train(model, opt, X, y, 60)
    assert losses[-1] < 0.7 * losses[0]


def test_param_groups_overrides_take_the_keys_a_users_part_declares():
    class Lion(Momentum):
        name = "lion_like"
        group_defaults = {"lion_beta1": 0.9}

    groups = specopt.param_groups(mlp(), overrides={r"^0\.": {"lion_beta1": 0.5}})
    assert {g.get("lion_beta1") for g in groups} == {0.5, None}
    with pytest.raises(ValueError, match=r"sets \['lion_beta2'\], which no specopt optimizer or part"):
        specopt.param_groups(mlp(), overrides={r"^0\.": {"lion_beta2": 0.5}})
    assert Lion.group_defaults  # (the class must exist for its keys to count)


def test_a_norm_saved_from_a_script_loads_where_the_script_is_imported_as_a_module(monkeypatch):
    """A norm defined in a training script is saved as ``__main__:Name``; another program that imports the script
    finds it there (it was ``module '__main__' has no attribute``), and one that does not is told why."""
    import types

    module = types.ModuleType("training_script")

    class ScriptNorm(Frobenius):
        pass

    ScriptNorm.__module__, ScriptNorm.__qualname__ = module.__name__, "ScriptNorm"
    module.ScriptNorm = ScriptNorm
    monkeypatch.setitem(__import__("sys").modules, module.__name__, module)
    rebuilt = specopt.norms.norm_from_config({"name": "__main__:ScriptNorm"})
    assert type(rebuilt) is ScriptNorm
    with pytest.raises(ValueError, match="defined in the script that saved it, __main__"):
        specopt.norms.norm_from_config({"name": "__main__:NoSuchNorm"})


def test_a_norm_without_its_own_dual_gets_it_from_its_lmo():
    """The optimizers take ‖d‖_* from the lmo they ran and never call ``dual``: the protocol no longer asks for it
    (a user's dual that was 1000× off changed nothing, unseen); its default is −⟨g, lmo(g)⟩ per item."""

    class RowL2(specopt.Norm):
        item_ndim = 2
        batched = True

        def lmo(self, g, batch_dims=None):
            return -g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12) / g.shape[-2]

        def norm(self, x, batch_dims=None):
            return x.norm(dim=-1).amax(-1) * x.shape[-2]

        def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
            x = torch.randn(shape, generator=generator)
            return (radius * x / x.norm(dim=-1, keepdim=True) / shape[-2]).to(dtype=dtype, device=device)

    g = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(RowL2().dual(g, batch_dims=1), g.norm(dim=-1).sum(-1) / 5)
    torch.testing.assert_close(RowL2().dual(g[0]), g[0].norm(dim=-1).sum() / 5)


def test_the_clipped_rules_step_float64_weights_by_an_unrounded_factor():
    """The clip factor was summed in float64 and rounded to float32: float64 weights moved by 0.1·(1 ± 1e-8)."""
    w = torch.nn.Parameter(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    opt = specopt.GeometryOptimizer([{"params": [w], "norm": specopt.Spectral(method="svd"), "radius": 2.0}],
                                    {"lr": 0.05, "momentum": 0.0}, rule=Clipped(clip_radius=1e-3))
    w.grad = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = w.detach().clone()
    opt.step()
    U, _, Vh = torch.linalg.svd(w.grad)
    torch.testing.assert_close(w.detach(), before - 0.1 * U @ Vh, rtol=0, atol=1e-15)


@pytest.mark.parametrize("flag", ["maximize", "foreach", "fused", "capturable", "differentiable", "amsgrad"])
def test_a_torch_flag_in_a_param_group_is_refused_not_ignored(flag):
    """``{"params": …, "maximize": True}`` from an SGD recipe was accepted and the step minimised anyway; False, torch's
    default, passes."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match=rf"'{flag}': torch.optim flags specopt's optimizers do not implement"):
        specopt.UScion([{"params": list(model.parameters()), flag: True}])
    opt = specopt.Muon([{"params": list(model[0].parameters()), flag: False}])
    with pytest.raises(ValueError, match=rf"'{flag}'"):
        opt.add_param_group({"params": list(model[1].parameters()), flag: True})
    assert len(opt.param_groups) == 2  # Muon's split of the first group; the refused one was not added


@pytest.mark.parametrize("cls, key, value", [(specopt.NorMuon, "beta2", 0.1), (specopt.AdaGO, "gamma", 1e-3),
                                             (specopt.DoG, "r_rel", 0.1), (specopt.MuonBP, "period", 1)])
def test_a_setting_of_the_rule_given_in_a_param_group_is_refused_not_ignored(cls, key, value):
    """The rule's settings are one for every group: a group's own value was accepted and had no effect."""
    w = torch.nn.Parameter(torch.randn(8, 6))
    with pytest.raises(ValueError, match=rf"param group key\(s\) '{key}': a setting of the rule .* pass it to the "
                                         "optimizer's constructor"):
        cls([{"params": [w], key: value}])
    cls([w], **{key: value})


def test_adamws_eps_in_a_group_split_by_muon_reaches_its_adamw_tensors_also_where_the_rule_has_an_eps():
    """NorMuon's rule has an ``eps`` of its own (one value); a user's group ``eps`` is AdamW's, as with Muon."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = specopt.NorMuon([{"params": model.parameters(), "eps": 1e-6}])
    assert [g["eps"] for g in opt.param_groups if g["norm"] == "adamw"] == [1e-6]


@pytest.mark.parametrize("schedule", ["theory", "storm"])
def test_a_momentum_schedule_on_float64_weights_is_float64_exact(schedule):
    """β_k = 1 − (k+1)^{-p} from the step count: in float64 for float64 weights (float32's β was off by ~1e-8, and
    a run 1e-7 from its float64 reference after 4 steps)."""
    w = torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    opt = specopt.UScion([w], lr=0.1, momentum=schedule)
    buf = torch.zeros(6, 4, dtype=torch.float64)
    for k in range(6):
        g = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        w.grad = g.clone()
        opt.step()
        b = 1 - (k + 1) ** -specopt.estimators.MOMENTUM_SCHEDULES[schedule]
        buf = b * buf + (1 - b) * g
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], buf, rtol=1e-14, atol=1e-15)


class ProbesAhead(Momentum):
    name = "probes_ahead"

    def init_state(self, rec):
        super().init_state(rec)
        rec.state.setdefault("ahead", rec.p.detach() + 1)

    def probe_weights(self, state):
        return state.get("ahead")


class ProbesBehind(USCG):
    name = "probes_behind"

    def init_state(self, rec):
        super().init_state(rec)
        rec.state.setdefault("behind", rec.p.detach() - 1)

    def probe_weights(self, state):
        return state.get("behind")


def test_an_estimator_and_a_rule_that_probe_two_points_are_refused_before_anything_moves():
    """One evaluation of the closure serves both parts' probe_weights: the rule had been handed the gradients at the
    estimator's point as if they were at its own."""
    model = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(8, 4)
    opt = specopt.GeometryOptimizer(model.parameters(), {"lr": 0.1}, estimator=ProbesAhead(), rule=ProbesBehind())

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    opt.step(closure)  # no state yet: nothing to probe
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match="'probes_ahead' and the rule 'probes_behind' ask for the gradient at two "
                                         "different points"):
        opt.step(closure)
    assert torch.equal(model.weight, before)


class SumMomentum(specopt.Estimator):
    name = "momentum"  # a running sum, not the built-in's EMA

    def direction(self, rec, ctx):
        return rec.state.setdefault("sum", torch.zeros_like(rec.g)).add_(rec.g)


class HalfStep(specopt.StepRule):
    name = "uscg"

    def scale(self, records, ctx):
        for rec in records:
            rec.scale = 0.5 * rec.group["lr"] * rec.radius


class LoggedMomentum(Momentum):
    name = "momentum"  # keeps the built-in's name on purpose: resumes its checkpoints


@pytest.mark.parametrize("part", ["estimator", "rule"])
def test_a_user_part_named_as_a_built_in_it_is_not_is_refused(part):
    """A saved state names its parts: a user's estimator named "momentum" loaded the built-in's state, and its own
    loaded into the built-in, without a word. A subclass of the built-in may keep its name."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match=f"is the name of specopt's built-in {part}"):
        specopt.GeometryOptimizer([w], {"lr": 0.1}, **{part: SumMomentum() if part == "estimator" else HalfStep()})
    built_in = specopt.GeometryOptimizer([w], {"lr": 0.1})
    w.grad = torch.randn(4, 3)
    built_in.step()
    specopt.GeometryOptimizer([w], {"lr": 0.1}, estimator=LoggedMomentum()).load_state_dict(built_in.state_dict())


def test_a_state_saved_before_the_decay_modes_loads_and_steps():
    """Groups saved before weight_decay_mode existed have no such key: the first step raised KeyError."""
    lin = torch.nn.Linear(4, 3)
    opt = specopt.Muon(lin.parameters())
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["weight_decay_mode"]
    twin = specopt.Muon(lin.parameters())
    twin.load_state_dict(saved)
    twin.step()
    assert all(g["weight_decay_mode"] == "coupled" for g in twin.param_groups)


def test_muonbp_refuses_almonds_averaged_lmo():
    """MuonBP's block step size rides on the block radius, which ALMOND's average would carry into later steps."""
    with pytest.raises(ValueError, match="averaged"):
        specopt.MuonBP([torch.nn.Parameter(torch.randn(8, 4))], estimator="almond", nesterov=False)


class TakesAString(USCG):
    name = "takes_a_string"
    accepts = "preconditioned"


def test_a_rules_accepts_given_as_a_string_is_named():
    """``accepts = "preconditioned"`` had been read letter by letter ("takes p or r or e or c …")."""
    with pytest.raises(ValueError, match=r"accepts must be a tuple of what it takes, e.g. \('direction',\), got "
                                         "'preconditioned'"):
        specopt.GeometryOptimizer([torch.nn.Parameter(torch.randn(4, 3))], {"lr": 0.1}, rule=TakesAString())
