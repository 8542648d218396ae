"""Constraint sets: feasible, idempotent and optimal projections (against scipy and brute force), the SVD-free
spectral clipping, and clear errors for sets that do not fit a tensor."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from specopt.constraints import (
    Box,
    Constraint,
    FrobeniusBall,
    L2Ball,
    RankAtMost,
    SparsityAtMost,
    SpectralBall,
    anisotropic_ball,
    constraint_from_config,
)

CONVEX = [SpectralBall(1.5), FrobeniusBall(2.0), Box(0.3)]


def _random_feasible(c, shape, gen):
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    return c.project(z)


@pytest.mark.parametrize("c", CONVEX + [SpectralBall(1.5, method="polar")], ids=repr)
@pytest.mark.parametrize("shape", [(5, 3), (3, 7), (4, 2, 3)])
def test_convex_projection_is_feasible_idempotent_and_euclidean_optimal(c, shape):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    x = c.project(y)
    assert c.feasible(x, rtol=1e-5)
    assert torch.allclose(c.project(x), x, atol=1e-5)
    # variational inequality of the Euclidean projection: <y − x, z − x> ≤ 0 for every feasible z
    for _ in range(50):
        z = _random_feasible(c, shape, gen)
        assert torch.sum((y - x) * (z - x)) <= 1e-4 * (1 + y.norm() ** 2)


def test_spectral_ball_matches_scipy_on_a_small_case():
    y = torch.tensor([[2.0, 0.5], [0.3, -1.5], [1.0, 0.2]], dtype=torch.float64)  # σ = 2.30, 1.53
    r = 2.0  # one singular value above r: ‖X‖_op is differentiable at the solution, so SLSQP converges (with
    # r = 1 both are clipped, the norm has a kink there, and SLSQP hit its iteration limit)
    x = SpectralBall(r).project(y).numpy()

    def op_norm(v):
        return np.linalg.norm(v.reshape(3, 2), 2)

    res = minimize(lambda v: np.sum((v - y.numpy().ravel()) ** 2), x0=np.zeros(6), method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda v: r - op_norm(v)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    assert res.success, res.message
    assert np.sum((x.ravel() - y.numpy().ravel()) ** 2) <= res.fun + 1e-6
    assert np.allclose(x.ravel(), res.x, atol=1e-3)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (8, 3, 3)])
@pytest.mark.parametrize("radius", [0.5, 3.0, 30.0])
def test_svd_free_spectral_clipping_matches_svd(shape, radius):
    y = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 2
    exact = SpectralBall(radius).project(y)
    polar = SpectralBall(radius, method="polar").project(y)
    assert polar.dtype == y.dtype and polar.shape == y.shape
    assert (polar - exact).abs().max() <= 1e-4 * max(radius, 1.0)


def _phi(t, kappa):
    """φ with φ' = (h'_κ)^{-1}, ε = 1: ∫₀^|t| τ/(1 − τ^κ)^{1/κ} dτ (closed form for κ = 2)."""
    t = np.abs(t)
    if kappa == 2:
        return 1 - np.sqrt(1 - t**2)
    from scipy.integrate import quad

    return np.array([quad(lambda u: u / (1 - u**kappa) ** (1 / kappa), 0, x)[0] for x in np.atleast_1d(t)])


@pytest.mark.parametrize("kappa", [2.0, 4.0])
def test_anisotropic_frobenius_projection_is_optimal_against_scipy(kappa):
    sigma, radius, gamma = np.array([2.0, 1.2, 0.6, 0.1]), 1.5, 1.0
    s = anisotropic_ball(sigma, radius, gamma, kappa)
    assert np.linalg.norm(s) == pytest.approx(radius, rel=1e-9)
    assert not np.allclose(s, sigma * radius / np.linalg.norm(sigma), atol=1e-3)  # really anisotropic

    def objective(v):
        return float(np.sum(_phi((v - sigma) / gamma, int(kappa))))

    res = minimize(objective, x0=sigma * radius / np.linalg.norm(sigma), method="SLSQP",
                   bounds=[(x - gamma * 0.999, x + gamma * 0.999) for x in sigma],
                   constraints=[{"type": "ineq", "fun": lambda v: radius**2 - v @ v}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    assert objective(s) <= res.fun + 1e-7
    assert np.allclose(s, res.x, atol=2e-3)


def test_anisotropic_matrix_projection_uses_singular_values():
    """The full-matrix problem (min over all X) is solved by acting on σ(Y) only (unitary invariance)."""
    y = torch.tensor([[1.2, 0.4], [-0.3, 0.9]], dtype=torch.float64)
    radius, gamma, kappa = 1.0, 1.0, 2
    x = FrobeniusBall(radius).project(y, gamma=gamma, kappa=kappa).numpy()

    def objective(v):
        sv = np.linalg.svd(v.reshape(2, 2) - y.numpy(), compute_uv=False) / gamma
        return float(np.sum(_phi(np.minimum(sv, 0.999999), kappa))) + 1e3 * max(0.0, sv.max() - 0.999999)

    res = minimize(objective, x0=(y.numpy() / np.linalg.norm(y.numpy())).ravel(), method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda v: radius**2 - v @ v}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    assert objective(x.ravel()) <= res.fun + 1e-6
    assert np.linalg.norm(x) == pytest.approx(radius, rel=1e-9)


def test_anisotropic_projection_falls_back_to_euclidean_when_the_geometry_allows_nothing():
    sigma = np.array([3.0, 2.0, 1.0])
    # ‖(σ − γ)₊‖ = √5 > r: no feasible point within the γ-operator ball; Euclidean projection returned
    assert np.allclose(anisotropic_ball(sigma, 2.0, 1.0, 4.0), 2.0 * sigma / np.linalg.norm(sigma))
    assert np.allclose(anisotropic_ball(sigma, 2.0, 1.0, None), 2.0 * sigma / np.linalg.norm(sigma))
    assert np.array_equal(anisotropic_ball(sigma, 10.0, 1.0, 4.0), sigma)  # inside: unchanged


def test_l2_ball_is_entrywise_frobenius_and_keeps_signs():
    v = torch.tensor([2.0, -1.2, 0.6, -0.1], dtype=torch.float64)
    x = L2Ball(1.5).project(v, gamma=1.0, kappa=4.0)
    expected = anisotropic_ball(v.abs().numpy(), 1.5, 1.0, 4.0) * np.sign(v.numpy())
    assert np.allclose(x.numpy(), expected)
    assert torch.allclose(L2Ball(1.5).project(v), v * 1.5 / v.norm())
    assert torch.allclose(L2Ball(1.5).project(x, gamma=1.0, kappa=4.0), x)


def test_rank_projection_is_eckart_young_and_beats_random_rank_k_points():
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    c = RankAtMost(2)
    x = c.project(y)
    s = torch.linalg.svdvals(y)
    assert c.feasible(x) and c.value(x) == 2
    assert (y - x).norm() ** 2 == pytest.approx(float((s[2:] ** 2).sum()))
    assert torch.allclose(c.project(x), x)
    for _ in range(200):
        z = torch.randn(6, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 5, generator=gen,
                                                                                 dtype=torch.float64)
        assert (y - x).norm() <= (y - z).norm()


def test_sparsity_projection_matches_brute_force_over_supports():
    v = torch.tensor([0.3, -2.0, 0.1, 1.5, -0.4, 0.9], dtype=torch.float64)
    x = SparsityAtMost(2).project(v)
    best = min(itertools.combinations(range(6), 2), key=lambda sup: sum(float(v[i]) ** 2 for i in range(6)
                                                                          if i not in sup))
    expected = torch.zeros_like(v)
    expected[list(best)] = v[list(best)]
    assert torch.equal(x, expected)
    assert SparsityAtMost(2).feasible(x)
    assert torch.equal(SparsityAtMost(2).project(x), x)


@pytest.mark.parametrize(("constraint", "shape", "message"), [
    (SpectralBall(1.0), (10,), "needs a matrix"),
    (FrobeniusBall(1.0), (10,), "needs a matrix"),
    (RankAtMost(1), (10,), "needs a matrix"),
    (L2Ball(1.0), (4, 4), "needs a vector"),
    (RankAtMost(5), (8, 4), "largest possible rank 4"),
    (SparsityAtMost(20), (4, 4), "more nonzeros than the 16 entries"),
])
def test_constraint_that_does_not_fit_the_shape_is_a_clear_error(constraint, shape, message):
    with pytest.raises(ValueError, match=message):
        constraint.check(shape, "weight")
    with pytest.raises(ValueError, match=message):
        constraint.project(torch.zeros(shape))


@pytest.mark.parametrize(("build", "message"), [
    (lambda: SpectralBall(-1.0), "radius must be a finite number > 0"),
    (lambda: SpectralBall(1.0, method="qr"), "unknown spectral-ball method"),
    (lambda: RankAtMost(0), "rank must be a positive integer"),
    (lambda: SparsityAtMost(1.5), "nonzeros must be a positive integer"),
    (lambda: constraint_from_config({"name": "ellipsoid"}), "unknown constraint"),
])
def test_bad_constraint_parameters_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("c", [SpectralBall(2.0, method="polar"), FrobeniusBall(1.0), L2Ball(1.0), Box(0.5),
                               RankAtMost(3), SparsityAtMost(4)], ids=repr)
def test_config_round_trip(c):
    assert constraint_from_config(c.config()) == c


@pytest.mark.parametrize("c", [SpectralBall(1.0), SpectralBall(1.0, method="polar"), FrobeniusBall(1.0)], ids=repr)
def test_a_tensor_with_no_entries_projects_to_itself(c):
    x = torch.zeros(0, 4)
    assert c.project(x).shape == (0, 4)


def test_a_diverged_tensor_is_a_clear_error_not_lapacks():
    with pytest.raises(ValueError, match=r"non-finite entries \(shape \(3, 3\)\)"):
        SpectralBall(1.0).project(torch.full((3, 3), float("nan")))


def test_loading_a_state_with_another_constraint_warns_and_restores_the_saved_one():
    """torch's load_state_dict restores every group setting: an unconstrained optimizer's state loaded into a
    constrained one drops the constraint, which had happened without a word (and the weights then left the ball)."""
    import specopt

    w = torch.nn.Parameter(torch.randn(6, 4))
    plain = specopt.ProxSpectral([w])
    constrained = specopt.ProxSpectral([w], constraint=SpectralBall(1.0))
    with pytest.warns(UserWarning, match=r"param group 0: the loaded state's constraint None replaces this group's "
                      r"SpectralBall\(.*\).*set group\['constraint'\] after loading"):
        constrained.load_state_dict(plain.state_dict())
    assert constrained.param_groups[0]["constraint"] is None
    same = specopt.ProxSpectral([w], constraint=SpectralBall(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(specopt.ProxSpectral([w], constraint=SpectralBall(1.0)).state_dict())
    assert same.param_groups[0]["constraint"].config() == SpectralBall(1.0).config()


class RowBall(Constraint):
    """A user's constraint: every row's ℓ2 norm ≤ radius."""

    fits = "matrix"

    def __init__(self, radius: float):
        self.radius = float(radius)

    def project(self, x, gamma=1.0, kappa=None):
        return x * (self.radius / x.norm(dim=-1, keepdim=True).clamp_min(self.radius))

    def value(self, x):
        return float(x.norm(dim=-1).max())

    def bound(self):
        return self.radius


def test_a_users_constraint_survives_state_dict_and_resumes_exactly():
    """Constraint.config looked a subclass up in the catalogue: state_dict() (and DCP's flow, and specopt.checkpoint)
    raised a bare KeyError, and a config naming the class could not be loaded."""
    import io

    import specopt

    def build(w):
        return specopt.ProxSpectral([w], constraint=RowBall(0.5), lr=0.1)

    torch.manual_seed(0)
    grads = [torch.randn(6, 4) for _ in range(4)]
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = build(w)
    for g in grads[:2]:
        w.grad = g
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin_w = torch.nn.Parameter(w.detach().clone())
    twin = specopt.ProxSpectral([twin_w], lr=0.1)
    twin.load_state_dict(torch.load(buffer, weights_only=True))  # the saved constraint, as every group setting
    assert twin.param_groups[0]["constraint"] == RowBall(0.5)
    for g in grads[2:]:
        w.grad, twin_w.grad = g, g.clone()
        opt.step()
        twin.step()
    assert torch.equal(w, twin_w) and RowBall(0.5).feasible(w)


def test_a_projection_that_returns_another_shape_is_named():
    import specopt

    class Collapses(RowBall):
        def project(self, x, gamma=1.0, kappa=None):
            return x.norm()

    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = specopt.ProxSpectral([w], constraint=Collapses(0.5))
    w.grad = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"Collapses.project returned shape \(\), .*a projection returns a real tensor "
                                         r"of its input's shape"):
        opt.step()


class MaskedBox(Constraint):
    """A user's constraint holding a tensor: |x| ≤ bound where the mask is set, free elsewhere."""

    fits = "any"

    def __init__(self, mask, limit: float = 1.0):
        self.mask, self.limit = torch.as_tensor(mask, dtype=torch.bool), float(limit)

    def project(self, x, gamma=1.0, kappa=None):
        return torch.where(self.mask, x.clamp(-self.limit, self.limit), x)

    def value(self, x):
        return float(x[self.mask].abs().max()) if self.mask.any() else 0.0

    def bound(self):
        return self.limit


def test_a_users_constraint_with_a_tensor_attribute_loads_into_the_same_constraint():
    """Comparing the saved constraint with the group's own compared their tensors with ==: 'Boolean value of Tensor
    with more than one value is ambiguous', so such a state could be saved but not loaded."""
    import specopt

    mask = torch.rand(6, 4) > 0.5
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = specopt.ProxSpectral([w], constraint=MaskedBox(mask, 0.5))
    w.grad = torch.randn(6, 4)
    opt.step()
    twin = specopt.ProxSpectral([w], constraint=MaskedBox(mask, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin.load_state_dict(opt.state_dict())
    assert twin.param_groups[0]["constraint"] == MaskedBox(mask, 0.5) != MaskedBox(~mask, 0.5)
