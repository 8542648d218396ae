"""The Broximal Point Method's results (Gruntkowska, Li, Rane & Richtárik 2025, arXiv:2502.02002) on convex problems."""

import math

import pytest
import torch

from specopt.bpm import ball_envelope, bpm, brox_frank_wolfe, brox_prox, brox_quadratic
from specopt.norms import Euclidean, Sign

F64 = {"dtype": torch.float64}


def quadratic(kappa: float, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, **F64))
    H = (Q * torch.logspace(0, math.log10(kappa), n, **F64)) @ Q.T
    b = torch.randn(n, generator=g, **F64)
    x_star = torch.linalg.solve(H, b)

    def f(z):
        return 0.5 * z @ H @ z - b @ z

    return H, b, x_star, f


def logistic(seed: int = 0, n: int = 60, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, **F64)
    y = torch.sign(A @ torch.randn(d, generator=g, **F64) + 0.5 * torch.randn(n, generator=g, **F64))

    def f(z):
        return torch.nn.functional.softplus(-y * (A @ z)).mean() + 0.05 * z.pow(2).sum()

    x_star = brox_prox(f, torch.zeros(d, **F64), 1e3)  # the ball of radius 1e3 holds the minimizer
    return f, x_star


def grad(f, x):
    z = x.clone().requires_grad_(True)
    f(z).backward()
    return z.grad


@pytest.mark.parametrize("kappa", [1.0, 1e2, 1e4])
def test_quadratic_brox_is_the_trust_region_solution(kappa):
    H, b, x_star, f = quadratic(kappa)
    x = x_star + 3.0
    for t in (0.1, 1.0, 100.0):
        z = brox_quadratic(H, b, x, t)
        inside = float((x_star - x).norm()) <= t
        if inside:  # one step when the ball holds the minimizer
            torch.testing.assert_close(z, x_star, atol=1e-8, rtol=0)
        else:  # otherwise on the boundary, and no feasible point is better
            assert float((z - x).norm()) == pytest.approx(t, rel=1e-9)
            g = torch.Generator().manual_seed(1)
            for _ in range(200):
                d = torch.randn(8, generator=g, **F64)
                w = x + t * float(torch.rand((), generator=g, **F64)) ** 0.5 * d / d.norm()
                assert float(f(z)) <= float(f(w)) + 1e-9


def test_quadratic_hard_case_and_indefinite():
    H = torch.diag(torch.tensor([-2.0, 1.0, 3.0], **F64))
    b = torch.tensor([0.0, 1.0, 1.0], **F64)  # orthogonal to the bottom eigenvector: the hard case
    x = torch.zeros(3, **F64)
    z = brox_quadratic(H, b, x, 2.0)
    assert float(z.norm()) == pytest.approx(2.0, rel=1e-9)
    assert abs(float(z[0])) > 1.0  # the solution uses the negative-curvature direction


@pytest.mark.parametrize("rank", [0, 4])
def test_quadratic_brox_with_a_singular_hessian_meets_the_trust_region_conditions(rank):
    """H ⪰ 0 of rank < n with a gradient in its null space (an underdetermined least-squares problem): the
    minimiser is on the boundary. Moré–Sorensen: ‖p‖ = t, (H + μI)p = −g with μ ≥ 0 (H + μI ⪰ 0 then holds)."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, rank, generator=g, **F64)
    H, b, x = A @ A.T, torch.randn(6, generator=g, **F64), torch.zeros(6, **F64)
    z = brox_quadratic(H, b, x, 1.0)
    p, grad = z - x, H @ x - b
    assert float(p.norm()) == pytest.approx(1.0, rel=1e-9)
    mu = -float(p @ (H @ p + grad)) / float(p @ p)
    assert mu >= 0
    torch.testing.assert_close(H @ p + mu * p, -grad, atol=1e-9, rtol=0)


def test_quadratic_brox_refuses_bad_input_by_name():
    H, b, x = torch.eye(3, **F64), torch.ones(3, **F64), torch.zeros(3, **F64)
    for args, message in [((H, torch.ones(4, **F64), x), "n×n H and b, x of length n"),
                          ((torch.ones(3, 4, **F64), b, x), "n×n H"),
                          ((H * float("nan"), b, x), "must be finite"),
                          ((torch.triu(torch.ones(3, 3, **F64)), b, x), "must be symmetric")]:
        with pytest.raises(ValueError, match=message):
            brox_quadratic(*args, 1.0)


@pytest.mark.parametrize("kappa", [1.0, 1e2, 1e4])
def test_bpm_theorems_on_quadratics(kappa):
    H, b, x_star, f = quadratic(kappa)
    x0 = x_star + 5.0
    t = 1.3
    K = math.ceil(float((x0 - x_star).norm()) ** 2 / t**2)
    xs = bpm(lambda x, r: brox_quadratic(H, b, x, r), x0, [t] * K)
    f_star = float(f(x_star))
    for a, c in zip(xs[:-1], xs[1:], strict=True):
        da, dc = float((a - x_star).norm()), float((c - x_star).norm())
        if dc > 1e-9:
            assert dc**2 <= da**2 - t**2 + 1e-8  # distance decrease by t²
            assert float(f(c)) - f_star <= (float(f(a)) - f_star) / (1 + t / dc) + 1e-9  # function-value rate
        assert float(grad(f, c).norm()) <= float(grad(f, a).norm()) + 1e-9  # gradient monotonicity
        assert float(f(c)) <= float(f(a)) - t * float(grad(f, c).norm()) + 1e-9  # gradient bound
    torch.testing.assert_close(xs[-1], x_star, atol=1e-7, rtol=0)  # finite convergence at K


def test_bpm_on_logistic_regression_with_the_prox_solver():
    f, x_star = logistic()
    x0 = x_star + 2.0
    t = 1.5
    K = math.ceil(float((x0 - x_star).norm()) ** 2 / t**2)
    xs = bpm(lambda x, r: brox_prox(f, x, r), x0, [t] * K)
    for a, c in zip(xs[:-1], xs[1:], strict=True):
        dc = float((c - x_star).norm())
        if dc > 1e-6:
            assert float((c - a).norm()) == pytest.approx(t, rel=1e-5)
            assert dc**2 <= float((a - x_star).norm()) ** 2 - t**2 + 1e-5
        assert float(f(c)) <= float(f(a)) - t * float(grad(f, c).norm()) + 1e-7
    assert float((xs[-1] - x_star).norm()) < 1e-4


def test_ball_envelope_of_x_squared():
    def f(z):
        return (z**2).sum()

    def brox(x, t):
        return brox_quadratic(torch.tensor([[2.0]], **F64), torch.tensor([0.0], **F64), x, t)

    t = 0.7
    for x in (-2.0, -0.7, -0.3, 0.0, 0.5, 0.7, 1.9):
        expected = (x + t) ** 2 if x < -t else (0.0 if abs(x) <= t else (x - t) ** 2)
        assert ball_envelope(brox, f, torch.tensor([x], **F64), t) == pytest.approx(expected, abs=1e-12)


def test_linearised_brox_is_the_lmo_step():
    """Minimising the linearisation over the ball gives x + t·lmo(∇f): normalised GD for ℓ2, sign for ℓ∞."""
    H, b, x_star, f = quadratic(10.0)
    x = x_star + 1.0
    g = grad(f, x)

    def linear(z):
        return g @ z

    torch.testing.assert_close(brox_frank_wolfe(linear, x, 0.5, Sign(), iters=3), x - 0.5 * torch.sign(g))
    torch.testing.assert_close(brox_frank_wolfe(linear, x, 0.5, Euclidean(), iters=3), x - 0.5 * g / g.norm())


def test_frank_wolfe_in_a_sign_ball_matches_the_box_constrained_minimum():
    H, b, x_star, f = quadratic(10.0, n=4)
    x = x_star + 2.0
    z = brox_frank_wolfe(f, x, 0.5, Sign(), iters=3000)
    assert float((z - x).abs().max()) <= 0.5 + 1e-12
    # projected gradient on the box as an independent reference
    w = x.clone()
    for _ in range(20000):
        w = torch.clamp(w - 0.05 * grad(f, w), x - 0.5, x + 0.5)
    assert float(f(z)) == pytest.approx(float(f(w)), abs=1e-3)


def test_bpm_on_a_nonsmooth_l1_regression():
    from specopt.bpm import prox_l1_affine

    g = torch.Generator().manual_seed(3)
    A = torch.randn(12, 4, generator=g, **F64)
    b = torch.randn(12, generator=g, **F64)

    def f(z):
        return (A @ z - b).abs().sum()

    def brox(x, t):
        return brox_prox(f, x, t, prox_fn=lambda p, lam: prox_l1_affine(A, b, p, lam))

    x_star = l1_minimizer(A, b)  # an independent LP solve
    f_star = float(f(x_star))
    # brox is optimal in its ball: no random feasible point does better
    x0 = x_star + 3.0
    z = brox(x0, 1.0)
    assert float((z - x0).norm()) == pytest.approx(1.0, rel=1e-6)
    for _ in range(300):
        d = torch.randn(4, generator=g, **F64)
        w = x0 + float(torch.rand((), generator=g, **F64)) ** 0.25 * d / d.norm()
        assert float(f(z)) <= float(f(w)) + 1e-6
    t = 1.2
    K = math.ceil(float((x0 - x_star).norm()) ** 2 / t**2)
    xs = bpm(brox, x0, [t] * K)
    for a, c in zip(xs[:-1], xs[1:], strict=True):
        dc = float((c - x_star).norm())
        if dc > 1e-6:
            assert dc**2 <= float((a - x_star).norm()) ** 2 - t**2 + 1e-5  # distance decrease by t²
            assert float(f(c)) - f_star <= (float(f(a)) - f_star) / (1 + t / dc) + 1e-5  # function-value rate
    assert float(f(xs[-1])) == pytest.approx(f_star, abs=1e-6)  # finite convergence at K


def l1_minimizer(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """argmin ‖Az − b‖₁ as a linear program (scipy's HiGHS): min 1ᵀs s.t. −s ≤ Az − b ≤ s."""
    import numpy as np
    from scipy.optimize import linprog

    (n, d), An, bn = A.shape, A.numpy(), b.numpy()
    res = linprog(np.r_[np.zeros(d), np.ones(n)], A_ub=np.block([[An, -np.eye(n)], [-An, -np.eye(n)]]),
                  b_ub=np.r_[bn, -bn], bounds=[(None, None)] * d + [(0, None)] * n, method="highs")
    assert res.status == 0
    return torch.as_tensor(res.x[:d], **F64)


@pytest.mark.parametrize("spread", [1.0, 1e3])
def test_l1_prox_satisfies_its_optimality_conditions(spread):
    """z = prox_{λ‖A·−b‖₁}(x) iff (x − z)/λ = Aᵀu with u_i = sign(r_i) where r_i ≠ 0 and |u_i| ≤ 1 where r_i = 0."""
    from specopt.bpm import prox_l1_affine

    g = torch.Generator().manual_seed(4)
    A = torch.randn(30, 6, generator=g, **F64) * torch.logspace(0, math.log10(spread), 6, **F64)
    b = torch.randn(30, generator=g, **F64)
    for lam in (1e-3, 1e-1, 10.0, 1e6):
        x = 3 * torch.randn(6, generator=g, **F64)
        z = prox_l1_affine(A, b, x, lam)
        r = A @ z - b
        zero = r.abs() <= 1e-9 * float(b.abs().max())
        rest = (x - z) / lam - A[~zero].T @ torch.sign(r[~zero])  # = A_Fᵀu_F
        u = torch.linalg.lstsq(A[zero].T, rest.unsqueeze(1)).solution.squeeze(1) if zero.any() else rest[:0]
        assert float((A[zero].T @ u - rest).norm()) <= 1e-8 * (1 + float(rest.norm()))
        assert bool((u.abs() <= 1 + 1e-8).all())


def test_l1_prox_reaches_the_lp_minimizer_and_leaves_it_in_place():
    from specopt.bpm import prox_l1_affine

    g = torch.Generator().manual_seed(5)
    A = torch.randn(30, 6, generator=g, **F64) * torch.logspace(0, 3, 6, **F64)  # cond(A) ≈ 1e3
    b = torch.randn(30, generator=g, **F64)
    x_star = l1_minimizer(A, b)
    far = prox_l1_affine(A, b, x_star + torch.randn(6, generator=g, **F64), 1e8)  # a sharp minimum: exact at finite λ
    torch.testing.assert_close(far, x_star, atol=1e-9, rtol=0)
    at = prox_l1_affine(A, b, far, 0.5)  # six zero residuals at the start: the degenerate case
    torch.testing.assert_close(at, far, atol=1e-12, rtol=0)


def test_l1_prox_at_a_vertex_where_the_path_is_ambiguous_at_zero():
    """A BPM iterate sitting on the minimizer of an ill-conditioned ‖Az − b‖₁ (six zero residuals): followed
    naively, the path cycles between patterns at λ = 0; the prox must return the point itself."""
    import numpy as np

    from specopt.bpm import prox_l1_affine

    rng = np.random.default_rng(0)
    A = torch.as_tensor(rng.standard_normal((30, 6)) * np.geomspace(1, 1e3, 6))
    b = torch.as_tensor(rng.standard_normal(30))
    x = torch.tensor([-0.18275282458053954, 0.010745975113413101, -0.02616609994183649, 0.002251675119200916,
                      0.0013818878455634314, 0.00035708594555293184], **F64)
    torch.testing.assert_close(x, l1_minimizer(A, b), atol=1e-9, rtol=0)
    torch.testing.assert_close(prox_l1_affine(A, b, x, 1e3), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("exact_prox", [True, False])
def test_brox_prox_finds_a_tiny_lambda_and_does_not_depend_on_the_scale_of_f(exact_prox):
    """Two cases the search got wrong with a fixed bracket [e⁻¹², lam_max]: a steep quadratic whose brox needs
    λ ≈ 1e-10 (the prox at the floor had been rescaled to the sphere: 6 % of t off the brox), and a linear f of slope
    5e-10, which has no minimizer (its prox at lam_max = 1e8 moving less than t had been taken for one inside the
    ball). Both with the exact prox and with the L-BFGS one."""
    h = torch.tensor([1e8, 1e4], **F64)
    x = torch.ones(2, **F64)

    def steep(z):
        return 0.5 * (h * z * z).sum()

    for t in (0.5, 0.01):
        exact = brox_quadratic(torch.diag(h), torch.zeros(2, **F64), x, t)
        prox_fn = (lambda p, lam: p / (1 + lam * h)) if exact_prox else None
        torch.testing.assert_close(brox_prox(steep, x, t, prox_fn=prox_fn), exact, atol=1e-6 * t, rtol=0)
    c = torch.tensor([3.0, 0.0, 4.0], **F64)

    def flat(z):
        return 1e-10 * (c @ z)

    prox_fn = (lambda p, lam: p - lam * 1e-10 * c) if exact_prox else None
    torch.testing.assert_close(brox_prox(flat, torch.zeros(3, **F64), 1.0, prox_fn=prox_fn), -c / 5,
                               atol=1e-9, rtol=0)


def test_the_brox_solvers_refuse_bad_input_by_name():
    from specopt.bpm import prox, prox_l1_affine

    def f(z):
        return z.pow(2).sum()

    x = torch.ones(3, **F64)
    for bad in (0.0, -1.0):  # had returned NaN, and a meaningless point
        with pytest.raises(ValueError, match="lam must be a finite number"):
            prox(f, x, bad)
    with pytest.raises(ValueError, match="iters must be a positive integer, got 0"):  # had returned x
        brox_frank_wolfe(f, x, 0.5, Euclidean(), iters=0)
    with pytest.raises(ValueError, match="norm must be a specopt norm"):
        brox_frank_wolfe(f, x, 0.5, "euclidean")
    with pytest.raises(ValueError, match="max_decades must be a positive integer, got 0"):
        brox_prox(f, x, 0.5, max_decades=0)
    with pytest.raises(ValueError, match=r"n×d A, b of length n and x of length d; got A \(4, 2\)"):
        prox_l1_affine(torch.ones(4, 2, **F64), torch.ones(4, **F64), x, 1.0)


def test_brox_prox_edge_cases_a_review_found():
    """A tol below float64's spacing had looped forever; an f that does not depend on z (a constant: x is a
    minimizer) had crashed in autograd; a linear f so flat that its prox at λ = 1 rounds to x had been taken for one
    minimized at x."""
    from specopt.bpm import prox

    c = torch.tensor([0.6, 0.8], **F64)
    z = brox_prox(None, torch.zeros(2, **F64), 1.0, tol=1e-17, prox_fn=lambda p, lam: p - lam * c)
    torch.testing.assert_close(z, -c)
    x = torch.ones(2, **F64)

    def constant(_):
        return torch.tensor(1.0, **F64)

    assert torch.equal(prox(constant, x, 1.0), x) and torch.equal(brox_prox(constant, x, 1.0), x)

    def flat(point):
        return 1e-17 * (c @ point)

    for prox_fn in (None, lambda p, lam: p - lam * 1e-17 * c):
        torch.testing.assert_close(brox_prox(flat, x, 1.0, prox_fn=prox_fn), x - c, atol=1e-9, rtol=0)
