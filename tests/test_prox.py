"""ProxSpectral, the preconditioners, STORM and the power schedules."""

import io

import pytest
import torch
from torch import nn

import specopt
from specopt.constraints import Box, FrobeniusBall, L2Ball, RankAtMost, SpectralBall
from specopt.preconditioners import Preconditioner, smooth_sign


def test_msign_preconditioner_is_the_exact_polar_factor():
    g = torch.randn(12, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.allclose(Preconditioner("msign").apply(g), U @ Vh, atol=1e-12)
    assert torch.equal(Preconditioner("msign").apply(torch.tensor([2.0, -0.5, 0.0])), torch.tensor([1.0, -1.0, 0.0]))


def test_smooth_preconditioner_applies_h_kappa_to_singular_values():
    g = torch.randn(9, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kappa, eps, lam = 4.0, 0.5, 2.0
    U, S, Vh = torch.linalg.svd(g, full_matrices=False)
    h = lam * S / (eps**kappa + (lam * S) ** kappa) ** (1 / kappa)
    out = Preconditioner("smooth", kappa=kappa, eps=eps, scale=lam).apply(g)
    assert torch.allclose(out, (U * h) @ Vh, atol=1e-12)
    assert torch.linalg.matrix_norm(out, 2) < 1


def test_smooth_sign_is_linear_near_zero_and_bounded():
    s = torch.tensor([1e-30, 1e-12, 1e-3, 1.0, 1e6, -1e6], dtype=torch.float64)
    h = smooth_sign(s, 4.0, 1e-2)
    assert torch.isfinite(h).all() and (h.abs() <= 1).all()
    assert h[0] == pytest.approx(1e-28) and h[1] == pytest.approx(1e-10)
    assert h[4] == pytest.approx(1.0) and h[5] == pytest.approx(-1.0)


def test_polar_express_preconditioner_equals_msign_polar_express():
    g = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    out = Preconditioner("polar_express", compute_dtype=torch.float32).apply(g)
    assert torch.allclose(out, specopt.msign(g, compute_dtype=torch.float32), atol=1e-6)
    s = torch.linalg.svdvals(out)
    lo, hi = specopt.msign_band()
    assert lo - 1e-3 <= s.min() and s.max() <= hi + 1e-3


def test_unknown_preconditioner_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preconditioner 'newton'"):
        specopt.ProxSpectral([nn.Parameter(torch.zeros(3, 3))], preconditioner="newton")
    with pytest.raises(ValueError, match="kappa must be"):
        Preconditioner("smooth", kappa=0)


def _least_squares(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(30, 8, generator=gen, dtype=dtype)
    B = 2 * torch.randn(30, 6, generator=gen, dtype=dtype)
    return A, B, lambda W: 0.5 * ((A @ W - B) ** 2).sum()


def test_converges_to_the_solution_of_a_convex_constrained_problem():
    A, B, f = _least_squares()
    r = 0.7
    L = torch.linalg.matrix_norm(A, 2) ** 2
    W_star = torch.zeros(8, 6, dtype=torch.float64)
    for _ in range(3000):  # reference: Euclidean projected gradient with the exact projection
        W_star = SpectralBall(r).project(W_star - A.T @ (A @ W_star - B) / L)
    for preconditioner in ("msign", "polar_express"):
        X = nn.Parameter(torch.zeros(8, 6, dtype=torch.float64))
        opt = specopt.ProxSpectral([X], lr=0.3, momentum=0.0, preconditioner=preconditioner,
                                   constraint=SpectralBall(r), compute_dtype=torch.float64)
        sched = specopt.schedules.power_decay(opt, 1.0)
        for _ in range(800):
            opt.zero_grad()
            f(X).backward()
            opt.step()
            sched.step()
            assert SpectralBall(r).feasible(X.detach(), rtol=1e-9)
        assert f(X.detach()) - f(W_star) < 1e-3 * f(W_star)
        assert (X.detach() - W_star).norm() < 5e-3


def test_constrained_iterates_stay_feasible_through_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    constraints = {"0.weight": SpectralBall(1.0), "2.weight": FrobeniusBall(2.0), "4.weight": RankAtMost(2),
                   "0.bias": Box(0.05), "2.bias": L2Ball(0.1)}
    groups = [{"params": [p], "constraint": constraints.get(n)} for n, p in model.named_parameters()]
    opt = specopt.ProxSpectral(groups, lr=0.1, preconditioner="smooth", eps=0.05)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        params = dict(model.named_parameters())
        for name, c in constraints.items():
            assert c.feasible(params[name].detach()), (name, c.value(params[name].detach()))
    assert losses[-1] < losses[0]


def test_groups_of_param_groups_are_refused_rather_than_replacing_the_preconditioner():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    groups = specopt.param_groups(model)
    with pytest.raises(ValueError, match=r"ProxSpectral got the 'hidden' group of specopt.param_groups, whose norm "
                                         r"Spectral\(.*\) would replace its preconditioner"):
        specopt.ProxSpectral(groups)
    opt = specopt.ProxSpectral([{"params": g["params"]} for g in groups])  # the way the message gives
    assert all(isinstance(g["norm"], Preconditioner) for g in opt.param_groups)


def test_the_builder_gives_p_only_what_it_reads_as_stored():
    """P(d) reads a tensor as its ``(d_0, d_1·…)`` matrix: the builder's ConvTranspose kernel, ``(c_in, d_out,
    *k)``, was a ``c_in × d_out·k`` matrix that is not its map; it is stepped with the builder's AdamW now, as its
    expert stacks are."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 4, 8),
                          nn.Linear(8, 2))
    opt = specopt.integrations.create_optimizer(model, "prox-spectral")
    preconditioned = {tuple(p.shape) for g in opt.param_groups if isinstance(g["norm"], Preconditioner)
                      for p in g["params"]}
    assert preconditioned == {(4, 3, 3, 3), (8, 24)}
    assert any(p is model[1].weight for g in opt.param_groups if g["norm"] == "adamw" for p in g["params"])


def test_constraint_that_does_not_fit_a_parameter_names_it():
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"SpectralBall.*needs a matrix.*but bias has shape"):
        specopt.ProxSpectral([{"params": [model.bias], "param_names": ["bias"], "constraint": SpectralBall(1.0)}])
    with pytest.raises(ValueError, match="constraint must be a specopt.constraints.Constraint"):
        specopt.ProxSpectral(model.parameters(), constraint="spectral")


def test_state_dict_round_trip_with_constraints_is_weights_only_loadable():
    W = nn.Parameter(torch.randn(6, 4))
    opt = specopt.ProxSpectral([W], constraint=SpectralBall(0.5, method="polar"), estimator="storm")

    def closure():
        opt.zero_grad()
        loss = (W**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    clone = specopt.ProxSpectral([nn.Parameter(W.detach().clone())], estimator="storm")
    clone.load_state_dict(sd)
    assert clone.param_groups[0]["constraint"] == SpectralBall(0.5, method="polar")
    assert clone.param_groups[0]["norm"] == opt.param_groups[0]["norm"]


# ---------------------------------------------------------------------------------------------------- STORM
def test_storm_equals_its_formula_on_a_deterministic_toy():
    """f(x; ξ_k) = ½‖A_k x − b_k‖²: d_k = g(x_k; ξ_k) + (1 − a_k)(d_{k−1} − g(x_{k−1}; ξ_k))."""
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(5, 4, generator=gen, dtype=torch.float64),
                torch.randn(5, 3, generator=gen, dtype=torch.float64)) for _ in range(5)]

    def grad(x, k):
        A, b = batches[k]
        return A.T @ (A @ x - b)

    W = nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))
    opt = specopt.UScion([W], lr=0.1, radius=1.0, norm="euclidean", momentum="storm", estimator="storm")
    x_prev = d = None
    for k in range(5):
        x_k = W.detach().clone()
        g = grad(x_k, k)
        d = g if d is None else g + (1 - (k + 1) ** (-2 / 3)) * (d - grad(x_prev, k))

        def closure(k=k):
            opt.zero_grad()
            A, b = batches[k]
            loss = 0.5 * ((A @ W - b) ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        assert torch.allclose(opt.state[W]["momentum_buffer"], d, atol=1e-12)
        assert torch.allclose(W.detach(), x_k - 0.1 * d / d.norm(), atol=1e-12)  # uSCG, Euclidean lmo
        x_prev = x_k


def test_storm_restores_parameters_and_gradients_after_its_probe():
    W = nn.Parameter(torch.randn(4, 4))
    opt = specopt.Scion([W], estimator="storm")
    seen = []

    def closure():
        opt.zero_grad()
        loss = (W**3).sum()
        loss.backward()
        seen.append(W.detach().clone())
        return loss

    opt.step(closure)
    x1 = W.detach().clone()
    opt.step(closure)
    assert torch.equal(seen[1], seen[0])  # the probe ran first, at the previous iterate x_0
    assert torch.equal(seen[2], x1)       # the closure's last call is at the current weights (what Lightning logs)
    assert torch.allclose(W.grad, 3 * x1**2)  # the gradient left behind is the one at x_k


@pytest.mark.parametrize("make", [
    lambda p: specopt.Muon(p, estimator="storm"),
    lambda p: specopt.Scion(p, estimator="storm", lr=0.05),
    lambda p: specopt.UScion(p, estimator="storm", lr=0.05),
    lambda p: specopt.ClippedScion(p, estimator="storm", lr=0.05),
    lambda p: specopt.Gluon(p, estimator="storm"),
    lambda p: specopt.SteepestDescent(p, estimator="storm", lr=0.01),
    lambda p: specopt.ProxSpectral(p, estimator="storm", momentum="storm"),
], ids=["muon", "scion", "uscion", "clipped", "gluon", "steepest", "prox"])
def test_every_optimizer_trains_with_storm(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = make(model.parameters())
    x = torch.randn(128, 8)
    y = x[:, :1] * 0.5 - x[:, 1:2]

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(30):
        last = opt.step(closure).item()
    assert last < first


def test_storm_tracks_the_full_batch_gradient_exactly_where_a_moving_average_lags():
    """STORM's defining property: with d_1 = g_1 and the same batch at both iterates,
    d_k = g(x_k) + β(d_{k−1} − g(x_{k−1})) = g(x_k) for every k; an EMA of gradients would lag behind."""
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(6, 5, dtype=torch.float64))
    A = torch.randn(5, 5, dtype=torch.float64)
    opt = specopt.UScion([W], estimator="storm", momentum=0.9, lr=0.05)

    def closure():
        opt.zero_grad()
        loss = ((W @ A) ** 3).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    closure()  # the gradient at the current iterate, for reference
    exact = W.grad.detach().clone()
    opt.step(closure)
    # the buffer of this step was built at the iterate before it: compare with the gradient there
    torch.testing.assert_close(opt.state[W]["momentum_buffer"], exact, atol=1e-9, rtol=1e-9)


def test_storm_without_closure_or_with_nesterov_is_a_clear_error():
    W = nn.Parameter(torch.randn(3, 3))
    opt = specopt.Scion([W], estimator="storm")
    W.grad = torch.ones(3, 3)
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        opt.step()
    with pytest.raises(ValueError, match="nesterov=True has no meaning"):
        specopt.Muon([W], estimator="storm", nesterov=True)
    with pytest.raises(ValueError, match="unknown estimator"):
        specopt.Scion([W], estimator="adam")
    with pytest.raises(ValueError, match="momentum must be"):
        specopt.Scion([W], momentum="fast")


def test_storm_skips_a_step_whose_probe_gradient_is_not_finite():
    W = nn.Parameter(torch.ones(3, 3))
    opt = specopt.UScion([W], estimator="storm", nonfinite="skip")
    calls = []

    def closure():
        opt.zero_grad()
        loss = (W**2).sum() * (float("nan") if len(calls) == 2 else 1.0)  # the probe of step 2 is NaN
        calls.append(1)
        loss.backward()
        return loss

    opt.step(closure)
    x1 = W.detach().clone()
    opt.step(closure)
    assert opt.skipped_steps == 1 and torch.equal(W.detach(), x1)


def test_power_decay_schedule():
    opt = specopt.ProxSpectral([nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    sched = specopt.schedules.power_decay(opt, "storm")
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 2 ** (-2 / 3), 3 ** (-2 / 3)])
    with pytest.raises(ValueError, match="unknown schedule"):
        specopt.schedules.power_decay(opt, "cosine")


def test_preconditioner_refuses_settings_it_would_ignore_or_fail_on_later_and_passes_empty_tensors():
    """A compute_dtype that is no floating dtype failed at the first apply, steps=0 passed for the SVD kinds, a
    zero-size matrix failed in reshape, and Box.value of an empty tensor in amax."""
    for kind in ("polar_express", "smooth", "msign"):
        with pytest.raises(ValueError, match="compute_dtype must be a torch floating dtype"):
            Preconditioner(kind, compute_dtype=torch.int32)
        with pytest.raises(ValueError, match="steps"):
            Preconditioner(kind, steps=0)
    for kind in ("polar_express", "smooth", "msign"):
        assert Preconditioner(kind).apply(torch.zeros(0, 3)).shape == (0, 3)
    assert Box(1.0).value(torch.zeros(0, 3)) == 0.0
