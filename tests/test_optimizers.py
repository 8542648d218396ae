"""The presets: the math each claims, on real small networks."""

import copy
import math

import pytest
import torch
from helpers import classification_data, loss_fn, mlp, train
from torch import nn

import specopt
from specopt import ALMOND, ClippedScion, Gluon, Muon, Scion, SteepestDescent, UScion, gluon
from specopt.gluon import fit_l0_l1
from specopt.norms import BiasRMS, Euclidean, Sign, Spectral

EXACT = {"method": "svd"}


def exact_groups(model, radius):
    """Every tensor in an exact geometry (SVD msign) with one radius."""
    return [{"params": [p], "norm": Spectral(**EXACT) if p.ndim == 2 else BiasRMS(), "radius": radius}
            for p in model.parameters()]


def test_scion_keeps_every_tensor_in_its_ball():
    model = mlp()
    radius = 2.0
    groups = exact_groups(model, radius)
    with torch.no_grad():
        for g in groups:
            p = g["params"][0]
            p.copy_(g["norm"].init(p.shape, radius * 0.9))  # feasible start
    X, y = classification_data()
    opt = Scion(groups, lr=0.2, momentum=0.5)
    for _ in range(30):
        opt.zero_grad()
        loss_fn(model, X, y).backward()
        opt.step()
        for g in groups:
            assert float(g["norm"].norm(g["params"][0].detach())) <= radius * (1 + 1e-5)


@pytest.mark.parametrize("build", [
    lambda groups: Scion(groups, lr=0.5, momentum=0.5),
    lambda groups: ClippedScion(groups, lr=0.5, momentum=0.5, clip_radius=1.0, constrained=True),
], ids=["scion", "clipped-constrained"])
def test_an_lr_scheduled_above_one_is_refused_before_the_step_leaves_the_ball(build):
    """γ ≤ 1 is checked at every step, not only when the optimizer is built: a scheduler that raises lr past 1
    (the convex combination's bound) gets a clear error before that step, and the weights stay as they were."""
    model = mlp()
    radius = 2.0
    groups = exact_groups(model, radius)
    with torch.no_grad():
        for g in groups:
            g["params"][0].copy_(g["norm"].init(g["params"][0].shape, radius * 0.9))
    X, y = classification_data()
    opt = build(groups)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 + k)  # 0.5, 1.0, then 1.5
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model, X, y).backward()
        opt.step()
        schedule.step()
    before = copy.deepcopy(model.state_dict())
    loss_fn(model, X, y).backward()
    with pytest.raises(ValueError, match="lr = 1.5 in param group 0 is above 1.*LR scheduler"):
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for g in groups:
        assert float(g["norm"].norm(g["params"][0].detach())) <= radius * (1 + 1e-5)


def test_constrained_clipped_scion_refuses_weights_that_start_outside_their_balls():
    """Outside its ball a weight makes the gap Ψ negative, so η = min{1, Ψ/ρ_c} = 0 and nothing moves: an error,
    not a frozen run."""
    w = nn.Parameter(torch.eye(4) * 10)
    opt = ClippedScion([w], lr=0.5, norm=Spectral(**EXACT), radius=1.0, clip_radius=1.0, constrained=True,
                       momentum=0.0)
    w.grad = -torch.eye(4)
    with pytest.raises(ValueError, match="outside their norm balls.*norm.project"):
        opt.step()
    inside = nn.Parameter(torch.eye(4) * 0.5)
    opt = ClippedScion([inside], lr=0.5, norm=Spectral(**EXACT), radius=1.0, clip_radius=1.0, constrained=True,
                       momentum=0.0)
    inside.grad = -torch.eye(4)
    opt.step()
    torch.testing.assert_close(inside.detach(), torch.eye(4) * 0.75)  # (1 − γ)W + γ·I, η = 1


def test_scion_with_polar_express_stays_within_the_band():
    model = mlp(bias=False)
    X, y = classification_data()
    opt = Scion(model.parameters(), lr=0.3, radius=1.0)
    hi = specopt.msign_band("polar_express")[1]
    exact = Spectral(method="svd")
    for _ in range(30):
        opt.zero_grad()
        loss_fn(model, X, y).backward()
        opt.step()
    for p in model.parameters():  # ‖W‖ ≤ ρ·max band (bf16 slack)
        assert float(exact.norm(p.detach())) <= hi + 0.02


def test_uscion_distance_from_start_is_bounded_by_radius_times_steps():
    model = mlp()
    radius, lr, steps = 0.7, 0.05, 25
    groups = exact_groups(model, radius)
    start = [p.detach().clone() for p in model.parameters()]
    X, y = classification_data()
    opt = UScion(groups, lr=lr)
    train(model, opt, X, y, steps)
    for g, p0 in zip(groups, start, strict=True):
        p = g["params"][0]
        dist = float(g["norm"].norm(p.detach() - p0))
        assert dist <= radius * lr * steps * (1 + 1e-5)
        assert dist > 0.1 * radius * lr * steps  # and it does move


def test_muon_matches_torch_muon_step_for_step():
    X, y = classification_data()
    ours, ref = mlp(bias=False), mlp(bias=False)
    kw = {"lr": 1e-2, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True}
    opt = Muon(ours.parameters(), method="newton_schulz", scale="original", compute_dtype=torch.bfloat16, **kw)
    opt_ref = torch.optim.Muon(ref.parameters(), adjust_lr_fn="original", **kw)
    for _ in range(10):
        for model, o in ((ours, opt), (ref, opt_ref)):
            o.zero_grad()
            loss_fn(model, X, y).backward()
            o.step()
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_muon_sends_non_matrices_to_adamw_like_torch_adamw():
    X, y = classification_data()
    ours, ref = mlp(), mlp()
    opt = Muon(ours.parameters(), adamw_lr=1e-2, adamw_betas=(0.9, 0.99), adamw_eps=1e-8, adamw_weight_decay=0.01)
    roles = {id(p): g["norm"] for g in opt.param_groups for p in g["params"]}
    biases = [p for p in ours.parameters() if p.ndim == 1]
    assert all(roles[id(p)] == "adamw" for p in biases)
    ref_biases = [p for p in ref.parameters() if p.ndim == 1]
    ref_adamw = torch.optim.AdamW(ref_biases, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    ref_muon = Muon([p for p in ref.parameters() if p.ndim == 2])
    for _ in range(5):
        for model, opts in ((ours, [opt]), (ref, [ref_adamw, ref_muon])):
            for o in opts:
                o.zero_grad()
            loss_fn(model, X, y).backward()
            for o in opts:
                o.step()
    for a, b in zip(biases, ref_biases, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: torch.randn(16)[::2], lambda: torch.randn(6, 8).t(),
                                  lambda: torch.randn(8, 12)[:, :6]], ids=["strided", "transposed", "sliced"])
def test_adamw_groups_update_tensors_with_strides_of_their_own_as_torch_adamw(make):
    """A parameter that is a view (a transposed or sliced tensor) takes torch.optim.AdamW's update: torch's fused
    CPU kernel, which the contiguous ones take, moved these 0.09–0.17 away in 3 steps."""
    torch.manual_seed(0)
    ours = nn.Parameter(make())
    ref = nn.Parameter(ours.detach().clone(memory_format=torch.contiguous_format))
    opt = specopt.GeometryOptimizer([{"params": [ours], "norm": "adamw"}], {"lr": 0.03, "weight_decay": 0.1})
    ref_opt = torch.optim.AdamW([ref], lr=0.03, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for i in range(3):
        g = torch.randn(ours.shape, generator=torch.Generator().manual_seed(i))
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    assert not ours.is_contiguous()
    torch.testing.assert_close(ours.detach(), ref.detach(), atol=1e-6, rtol=1e-5)


PRESETS = [
    (Muon, {"lr": 0.05, "adamw_lr": 0.05}),
    (Scion, {"lr": 0.05, "radius": 10.0}),
    (UScion, {"lr": 0.05}),
    (ClippedScion, {"lr": 0.05, "clip_radius": 1.0}),
    (ClippedScion, {"lr": 0.05, "radius": 10.0, "clip_radius": 1.0, "constrained": True}),
    (Gluon, {}),
    (Gluon, {"L0": 0.0, "L1": 2.0}),
    (ALMOND, {"lr": 0.05}),
    (SteepestDescent, {"lr": 1.0, "norm": "euclidean"}),
]


@pytest.mark.parametrize("cls, kwargs", PRESETS, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_every_preset_solves_logistic_regression(cls, kwargs):
    X, y = classification_data(n=512, d=16, classes=4)
    model = nn.Linear(16, 4)
    opt = cls(model.parameters(), **kwargs)
    losses = train(model, opt, X, y, 150)
    assert losses[-1] < 0.25 * losses[0] and losses[-1] < 0.35
    assert all(math.isfinite(v) for v in losses)


def one_step(opt_factory, seed=0, scale=1.0):
    model = mlp(seed, bias=False)
    X, y = classification_data()
    opt = opt_factory(model)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    (scale * loss_fn(model, X, y)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return before, [p.detach() for p in model.parameters()], grads


def test_clipped_scion_equals_uscion_above_clip_radius_and_shrinks_below():
    kw = {"lr": 0.1, "momentum": 0.0, "norm": Spectral(**EXACT), "radius": 2.0}
    b, u, grads = one_step(lambda m: UScion(m.parameters(), **kw))
    total = sum(2.0 * float(Spectral(**EXACT).dual(g)) for g in grads)
    _, c_big, _ = one_step(lambda m: ClippedScion(m.parameters(), clip_radius=0.5 * total, **kw))
    for a, c in zip(u, c_big, strict=True):
        torch.testing.assert_close(a, c)
    _, c_small, _ = one_step(lambda m: ClippedScion(m.parameters(), clip_radius=4 * total, **kw))
    for p0, a, c in zip(b, u, c_small, strict=True):
        torch.testing.assert_close(c - p0, (a - p0) / 4, atol=1e-6, rtol=1e-5)


def test_gluon_radius_formula():
    L0, L1, lr = 0.3, 2.0, 0.7
    norm = Spectral(**EXACT)
    before, after, grads = one_step(lambda m: Gluon(m.parameters(), L0=L0, L1=L1, lr=lr, momentum=0.0, norm=norm))
    for p0, p1, g in zip(before, after, grads, strict=True):
        dual = float(norm.dual(g))
        t = dual / (L0 + L1 * dual)
        torch.testing.assert_close(p1 - p0, lr * t * norm.lmo(g), atol=1e-6, rtol=1e-5)


def test_gluon_stochastic_schedule_shrinks_like_k_to_minus_three_quarters():
    model = nn.Linear(8, 8, bias=False)
    opt = Gluon(model.parameters(), L0=1.0, L1=0.0, schedule="stochastic", momentum="theory", norm=Euclidean())
    steps = []
    for _ in range(4):
        before = model.weight.detach().clone()
        opt.zero_grad()
        model.weight.grad = torch.ones(8, 8)  # same gradient: t = ‖g‖·(k+1)^{-3/4}
        opt.step()
        steps.append(float((model.weight.detach() - before).norm()))
    for k, s in enumerate(steps):
        assert s == pytest.approx(8.0 * (k + 1) ** -0.75, rel=1e-5)


def test_gluon_online_fit_recovers_l0_l1_and_prefers_overestimates(monkeypatch):
    import specopt.gluon as gluon_module

    x = torch.linspace(0.5, 5, 30).tolist()
    y = [0.2 + 3.0 * v for v in x]
    L0, L1 = fit_l0_l1(x, y)
    assert L0 == pytest.approx(0.2, abs=1e-6) and L1 == pytest.approx(3.0, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    noisy = [v + float(torch.randn((), generator=g)) * 0.5 for v in y]

    def points_above(fit):
        return sum(v > fit[0] + fit[1] * xi for xi, v in zip(x, noisy, strict=True))

    asymmetric = points_above(fit_l0_l1(x, noisy))
    monkeypatch.setattr(gluon_module, "UNDER_WEIGHT", 0.5)
    symmetric = points_above(fit_l0_l1(x, noisy))
    assert asymmetric < symmetric and asymmetric <= 0.4 * len(x)  # under-estimates weigh more


def test_gluon_online_measures_smoothness_per_joint_step():
    """L̂_i = ‖g_i(W¹) − g_i(W⁰)‖_* / max_j ‖W¹_j − W⁰_j‖_(j): every layer's gradient change is charged to the
    network's step in the max-norm, not to the layer's own (here 10× smaller) step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False)).double()
    X, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    norm = Spectral(**EXACT)
    first, second = model[0].weight, model[2].weight
    opt = Gluon([{"params": [first], "warmup_radius": 1e-3}, {"params": [second], "warmup_radius": 1e-2}],
                norm=norm, momentum=0.0)

    def closure():
        opt.zero_grad()
        loss = ((model(X) - y) ** 2).mean()
        loss.backward()
        return loss

    def grads():
        with torch.enable_grad():
            closure()
        return [first.grad.detach().clone(), second.grad.detach().clone()]

    w0 = [first.detach().clone(), second.detach().clone()]
    g0 = grads()
    opt.step(closure)  # warm-up step: anchors W⁰
    w1 = [first.detach().clone(), second.detach().clone()]
    g1 = grads()
    steps = [float(norm.norm(b - a)) for a, b in zip(w0, w1, strict=True)]
    assert steps[1] == pytest.approx(10 * steps[0], rel=1e-6)
    opt.step(closure)  # measures at W¹ against W⁰ on the same batch
    for p, a, b in zip((first, second), g0, g1, strict=True):
        expected = float(norm.dual(b - a)) / max(steps)
        assert opt.state[p]["gluon_y"][-1] == pytest.approx(expected, rel=1e-6)


def test_gluon_online_needs_no_step_size_and_learns():
    X, y = classification_data()
    model = mlp()
    losses = train(model, Gluon(model.parameters()), X, y, 60)
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("adamw_L", ["online", 50.0], ids=["adamw-group-online", "adamw-group-fixed-L"])
def test_gluon_probe_moves_the_adamw_tensors_back_with_the_others(adamw_L):
    """The probe re-evaluates the batch at the previous weights of the whole model: an AdamW tensor's too, whatever
    its own group's L0/L1 (they serve no radius), or L̂ would see its step as smoothness."""
    X, y = classification_data()
    model = mlp(1)
    biases = [m.bias for m in model if isinstance(m, nn.Linear)]
    fixed = {} if adamw_L == "online" else {"L0": 0.0, "L1": adamw_L}
    opt = Gluon([{"params": [m.weight for m in model if isinstance(m, nn.Linear)]},
                 {"params": biases, "norm": "adamw", **fixed}])
    seen = []

    def closure():
        seen.append(biases[0].detach().clone())
        opt.zero_grad()
        loss = loss_fn(model, X, y)
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)  # the probe at the first step's weights, then this step's own evaluation
    assert len(seen) == 3 and torch.equal(seen[1], seen[0]) and not torch.equal(seen[2], seen[0])


def test_gluon_with_fixed_l0_l1_keeps_no_anchors():
    """Nothing online, nothing measured: no copy of any tensor, AdamW ones included."""
    X, y = classification_data()
    model = mlp(1)
    opt = Gluon([{"params": [m.weight for m in model if isinstance(m, nn.Linear)]},
                 {"params": [m.bias for m in model if isinstance(m, nn.Linear)], "norm": "adamw"}], L0=0.0, L1=50.0)
    train(model, opt, X, y, 2, closure=True)
    assert opt.state and not any(key.startswith("gluon_") for st in opt.state.values() for key in st)


def gluon_state_before_the_fixed_layout(state_dict: dict) -> dict:
    """The state as Gluon saved it before its keys were fixed at the first step: the anchor under ``gluon_anchor_w``
    (weights, in the parameter's dtype) or ``gluon_anchor_g`` (a gradient), keys absent until first written, lists of
    the measurements only, and a measurement count."""
    for st in state_dict["state"].values():
        anchor, kind = st.pop("gluon_anchor"), st.pop("gluon_anchor_kind")
        if kind:
            st["gluon_anchor_w" if kind == gluon.WEIGHTS else "gluon_anchor_g"] = anchor
        if not st.get("gluon_anchor_step", 1.0):
            del st["gluon_anchor_step"]
        if "gluon_n" in st:
            n = st.pop("gluon_n")
            st["gluon_measurements"] = torch.tensor(n)
            for key in ("gluon_x", "gluon_y"):
                st[key] = st[key][len(st[key]) - n:]
            if not n:
                for key in ("gluon_x", "gluon_y", "gluon_L"):
                    del st[key]
            if st["gluon_t"] is None:
                del st["gluon_t"]
    return state_dict


@pytest.mark.parametrize("closure", [False, True], ids=["gradient-anchor", "weights-anchor"])
@pytest.mark.parametrize("before", [1, 4], ids=["before-the-first-fit", "after-three-fits"])
def test_gluon_resumes_bit_for_bit_from_a_state_of_its_earlier_layout(closure, before):
    X, y = classification_data()
    model = mlp(1)
    opt = Gluon(model.parameters())
    train(model, opt, X, y, before, closure)
    old = gluon_state_before_the_fixed_layout(copy.deepcopy(opt.state_dict()))
    assert any("gluon_anchor_w" in st or "gluon_anchor_g" in st for st in old["state"].values())
    twin = copy.deepcopy(model)
    twin_opt = Gluon(twin.parameters())
    twin_opt.load_state_dict(old)
    train(model, opt, X, y, 3, closure)
    train(twin, twin_opt, X, y, 3, closure)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [opt.state[p].keys() for p in model.parameters()] == [twin_opt.state[p].keys() for p in twin.parameters()]


def test_steepest_descent_in_euclidean_norm_is_sgd():
    before, after, grads = one_step(lambda m: SteepestDescent(m.parameters(), lr=0.3, norm="euclidean"))
    for p0, p1, g in zip(before, after, grads, strict=True):
        torch.testing.assert_close(p1, p0 - 0.3 * g)


def test_steepest_descent_in_sign_norm_is_scaled_sign_descent():
    before, after, grads = one_step(lambda m: SteepestDescent(m.parameters(), lr=0.01, norm=Sign()))
    for p0, p1, g in zip(before, after, grads, strict=True):
        torch.testing.assert_close(p1, p0 - 0.01 * g.abs().sum() * g.sign())


def test_almond_averages_lmo_directions():
    model = nn.Linear(6, 5, bias=False)
    norm, radius, lr, beta = Spectral(**EXACT), 2.0, 0.1, 0.6
    opt = ALMOND(model.parameters(), lr=lr, momentum=beta, norm=norm, radius=radius)
    d = torch.zeros(5, 6)
    for k in range(3):
        g = torch.randn(5, 6, generator=torch.Generator().manual_seed(k))
        before = model.weight.detach().clone()
        model.weight.grad = g
        opt.step()
        d = beta * d + (1 - beta) * radius * norm.lmo(g)
        torch.testing.assert_close(model.weight.detach(), before + lr * d, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="nesterov=True has no meaning for ALMOND"):  # it used to be ignored
        ALMOND([{"params": list(model.parameters()), "nesterov": True}])


ONE_SET = [("muon", Muon), ("scion", Scion), ("uscion", UScion), ("clipped-scion", ClippedScion),
           ("gluon", Gluon), ("almond", ALMOND), ("normuon", specopt.NorMuon), ("adamuon", specopt.AdaMuon),
           ("drop-muon", specopt.DropMuon), ("adago", specopt.AdaGO), ("dog", specopt.DoG),
           ("muonbp", specopt.MuonBP), ("gluon-mvr", specopt.GluonMVR)]


@pytest.mark.parametrize("task_name", ["char-gpt", "cnn"])
@pytest.mark.parametrize("name, cls", ONE_SET, ids=[n for n, _ in ONE_SET])
def test_one_set_of_defaults(name, cls, task_name):
    """``specopt.X(specopt.param_groups(model))`` and ``specopt train --optimizer x`` (the registry) give every
    tensor the same lr, radius, momentum and norm, and the same clip radius: one set of defaults."""
    from specopt import registry
    from specopt.tasks import get_task

    task = get_task(task_name, **({"size": "tiny"} if task_name == "char-gpt" else {}))
    model = task.build_model()
    (built,) = registry.build(name, model, task, registry.resolve(name))
    direct = cls(specopt.param_groups(model), **({"order": model} if cls is specopt.DropMuon else {}))
    assert type(built) is type(direct)

    def per_tensor(opt):
        out = {}
        for g in opt.param_groups:
            for p in g["params"]:
                out[id(p)] = (g["lr"], g["radius"], g["momentum"], g.get("betas"), g.get("eps"), repr(g["norm"]))
        return out

    assert per_tensor(built) == per_tensor(direct)
    assert built.rule.config() == direct.rule.config()  # the same rule, with the same clip radius
    hp = registry.resolve(name)
    assert {g["lr"] for g in direct.param_groups if g["norm"] != "adamw"} == {hp["lr"]}
    if "radius" in hp:  # the hidden radius the registry states is the one param_groups gives hidden matrices
        assert {g["radius"] for g in direct.param_groups if g.get("role") in ("hidden", "conv")} == {hp["radius"]}
    if "adamw_lr" in hp:
        assert {g["lr"] for g in direct.param_groups if g["norm"] == "adamw"} == {hp["adamw_lr"]}


@pytest.mark.parametrize("preset", ["NorMuon", "AdaMuon", "AdaGO", "MuonBP", "DropMuon"])
def test_muon_family_presets_refuse_a_rule_of_their_own_by_name(preset):
    """Each sets its own rule: another is a ValueError that says so, not Python's duplicate-keyword TypeError."""
    with pytest.raises(ValueError, match=f"{preset} sets rule itself"):
        getattr(specopt, preset)(nn.Linear(3, 3).parameters(), rule="uscg")


def test_torch_muon_leaves_a_zero_size_matrix_to_adamw():
    """torch.optim.Muon divides by a matrix's size: the registry's torch-muon handed it an empty one (ZeroDivisionError
    deep in torch, where specopt's muon steps the same model)."""
    import types

    from specopt import registry

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 0), nn.Linear(0, 4), nn.Linear(4, 2))
    opts = registry.build("torch-muon", model, types.SimpleNamespace(scheme="image", name="t"),
                          registry.resolve("torch-muon"))
    empty = {id(model[2].weight), id(model[3].weight)}
    assert not empty & {id(p) for g in opts[0].param_groups for p in g["params"]}
    assert empty <= {id(p) for g in opts[1].param_groups for p in g["params"]}
    model(torch.randn(3, 4)).square().mean().backward()
    for opt in opts:
        opt.step()
