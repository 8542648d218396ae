"""The Broximal Point Method (Gruntkowska, Li, Rane & Richtárik 2025, *The Ball-Proximal ("Broximal") Point Method*,
arXiv:2502.02002).

``brox_t f(x) = argmin_{‖z − x‖ ≤ t} f(z)`` and ``x_{k+1} = brox_{t_k} f(x_k)``. For convex f: one step if the ball
holds a minimizer, otherwise the step lands on the boundary; ``‖x_{k+1} − x*‖² ≤ ‖x_k − x*‖² − t_k²`` on a step that
ends on the boundary; ``f(x_{k+1}) − f* ≤ (1 + t_k/‖x_{k+1} − x*‖)⁻¹ (f(x_k) − f*)``; ``‖∇f(x_{k+1})‖ ≤ ‖∇f(x_k)‖``;
``f(x_{k+1}) ≤ f(x_k) − t_k‖∇f(x_{k+1})‖``. The ball envelope is ``N_t f(x) = min_{‖z − x‖ ≤ t} f(z)``.

Solvers:
* :func:`brox_quadratic` — exact for ``f(z) = ½zᵀHz − bᵀz``: the trust-region subproblem, by an
  eigendecomposition and the secular equation ``‖(H + μI)⁻¹g‖ = t`` (bisection on μ), hard case included;
* :func:`brox_prox` — convex f: ``brox = prox_{λf}`` with λ bracketed by decades and found by bisection so that
  ``‖prox_{λf}(x) − x‖ = t`` (the prox is solved by L-BFGS for smooth f, or given: :func:`prox_l1_affine`,
  exact, for the nonsmooth ``‖Az − b‖₁``);
* :func:`brox_frank_wolfe` — balls of any norm of :mod:`specopt.norms`: Frank–Wolfe with the norm's lmo.

Everything works on float64 tensors (vectors or matrices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from specopt._checks import check_number, check_positive_int
from specopt.norms import Norm

Objective = Callable[[torch.Tensor], torch.Tensor]


def brox_quadratic(H: torch.Tensor, b: torch.Tensor, x: torch.Tensor, t: float, *, tol: float = 1e-13) -> torch.Tensor:
    """Exact ``argmin_{‖z − x‖₂ ≤ t} ½zᵀHz − bᵀz`` for symmetric H (any inertia).

    With ``p = z − x``, ``g = Hx − b``: minimise ``½pᵀHp + gᵀp`` over ``‖p‖ ≤ t``. In the eigenbasis
    ``H = Q diag(λ) Qᵀ``, ``p(μ) = −Q diag(1/(λ + μ)) Qᵀg`` with the smallest ``μ ≥ max(0, −λ_min)`` such that
    ``‖p(μ)‖ ≤ t``; if ``‖p(μ)‖ < t`` at ``μ = −λ_min > 0`` (the hard case), a multiple of the bottom eigenvector
    is added to reach the boundary.
    """
    t = check_number(t, "t", low_open=True)
    n = H.shape[0] if H.ndim == 2 else -1
    if H.shape != (n, n) or b.shape != (n,) or x.shape != (n,):
        raise ValueError(f"brox_quadratic needs an n×n H and b, x of length n; got H {tuple(H.shape)}, "
                         f"b {tuple(b.shape)}, x {tuple(x.shape)}")
    if not all(bool(torch.isfinite(v).all()) for v in (H, b, x)):
        raise ValueError("brox_quadratic: H, b and x must be finite")
    if not torch.allclose(H, H.mT, rtol=1e-10, atol=1e-12 * float(H.abs().max())):
        raise ValueError("brox_quadratic: H must be symmetric (eigh would read one triangle of it)")
    lam, Q = torch.linalg.eigh(H)
    g = Q.T @ (H @ x - b)
    lo = max(0.0, -float(lam[0]))
    scale = max(float(lam.abs().max()), 1.0)

    g_scale = max(float(torch.linalg.vector_norm(g)), 1.0)

    def coefficients(mu: float) -> torch.Tensor:
        """``g_i/(λ_i + μ)``; a vanishing denominator gives 0 where ``g_i`` vanishes too (the hard case) and ∞ where
        it does not (a gradient in H's null space at μ = 0: the minimiser is on the boundary, μ > 0)."""
        denom = lam + mu
        vanishing = denom.abs() <= tol * scale
        ratio = g / torch.where(vanishing, torch.ones_like(denom), denom)
        unbounded = torch.full_like(g, math.inf)
        return torch.where(vanishing, torch.where(g.abs() > tol * g_scale, unbounded, torch.zeros_like(g)), ratio)

    def norm_p(mu: float) -> float:
        return float(torch.linalg.vector_norm(coefficients(mu)))

    def p_of(mu: float) -> torch.Tensor:
        return -(Q @ coefficients(mu))

    if norm_p(lo) <= t:
        p = p_of(lo)
        if lo > 0:  # hard case: move along the bottom eigenvector(s) to the boundary
            v = Q[:, 0]
            deficit = max(t * t - float(p @ p), 0.0)
            p = p + math.sqrt(deficit) * v
        return x + p
    hi = lo + max(float(torch.linalg.vector_norm(g)) / t, tol)
    while norm_p(hi) > t:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if norm_p(mid) > t:
            lo = mid
        else:
            hi = mid
        if hi - lo <= tol * max(hi, 1.0):
            break
    return x + p_of(hi)


def prox(f: Objective, x: torch.Tensor, lam: float, *, iters: int = 200, tol: float = 1e-12) -> torch.Tensor:
    """``prox_{λf}(x) = argmin_z f(z) + ‖z − x‖²/(2λ)`` by L-BFGS with strong-Wolfe line search, on the objective
    divided by ``‖∇f(x)‖`` (the same minimiser): L-BFGS's tolerances are absolute, and ``tol`` is then relative to
    f's own slope, whatever f's scale. A zero gradient at x returns x (a minimizer of a convex f)."""
    lam = check_number(lam, "lam", low_open=True)
    check_positive_int(iters, "iters")
    z = x.detach().clone().requires_grad_(True)
    value = f(z)
    gradient = torch.autograd.grad(value, z, allow_unused=True)[0] if isinstance(value, torch.Tensor) and \
        value.requires_grad else None
    slope = 0.0 if gradient is None else float(torch.linalg.vector_norm(gradient))  # f does not depend on z: 0
    if not math.isfinite(slope):
        raise ValueError(f"prox: the gradient of f at x is not finite ({slope})")
    if slope == 0.0:
        return z.detach()
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=iters, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = (f(z) + (z - x).pow(2).sum() / (2 * lam)) / slope
        value.backward()
        return value

    opt.step(closure)
    return z.detach()


def prox_l1_affine(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """Exact ``prox_{λf}(x) = argmin_z ‖Az − b‖₁ + ‖z − x‖²/(2λ)`` for the nonsmooth ``f(z) = ‖Az − b‖₁``, by
    following its path in λ from ``z(0) = x`` (a homotopy, as in LARS).

    Optimality: ``z = x − λAᵀu``, ``u_i = s_i = sign(r_i)`` where ``r = Az − b`` is nonzero, ``u_i = ν_i ∈ [−1, 1]``
    on the set F of zero residuals. For a fixed pattern (F, s) the path is affine in λ: with ``c = A_Bᵀs`` (B the
    rest), ``z(λ) = z₀ − λ(c + A_Fᵀβ)`` and ``ν(λ) = α/λ + β``, where ``A_F A_Fᵀ α = A_F x − b_F`` and
    ``A_F A_Fᵀ β = −A_F c``. The pattern changes when a residual of B reaches 0 (it joins F: the path is continuous,
    so ν_i starts at s_i; a residual that changes sign spends an interval of λ at zero while ν_i goes to −s_i) or
    when a ν_j reaches ±1 (j leaves F with that sign): finitely many events, each a small linear solve. Assumes A
    in general position (at most ``rank A`` residuals vanish at once). If x itself has zero residuals (a kink, e.g.
    a minimizer), which pattern leaves λ = 0 is ambiguous: the path is followed from x moved by 1e-9 (relative),
    and its final pattern, solved at x, is returned when it satisfies every optimality condition (otherwise the
    prox of the moved point, within 1e-9 of the answer: the prox is nonexpansive)."""
    lam = check_number(lam, "lam", low_open=True)
    if A.ndim != 2 or b.shape != (A.shape[0],) or x.shape != (A.shape[1],):
        raise ValueError(f"prox_l1_affine needs an n×d A, b of length n and x of length d; got A {tuple(A.shape)}, "
                         f"b {tuple(b.shape)}, x {tuple(x.shape)}")
    An, bn, xn = (t.detach().double().cpu().numpy() for t in (A, b, x))
    scale = np.linalg.norm(An, 2) * np.linalg.norm(xn) + np.linalg.norm(bn)
    start = xn
    if np.any(np.abs(An @ xn - bn) <= 1e-12 * scale):
        start = xn + 1e-9 * (1 + np.linalg.norm(xn)) * np.random.default_rng(0).standard_normal(len(xn))
    free, signs, z = _l1_path(An, bn, start, lam)
    if start is not xn:
        alpha, beta, z0, v = _l1_segment(An, bn, xn, signs, free)
        exact = z0 - lam * v
        fixed = np.setdiff1d(np.arange(len(bn)), free)
        if np.all(np.abs(alpha / lam + beta) <= 1 + 1e-9) and np.all(signs[fixed] * (An[fixed] @ exact - bn[fixed])
                                                                      >= -1e-12 * scale):
            z = exact
    return torch.as_tensor(z, dtype=x.dtype, device=x.device)


def _l1_path(A: np.ndarray, b: np.ndarray, x: np.ndarray, lam: float) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Follow the prox path of :func:`prox_l1_affine` from λ = 0 to ``lam``: the final pattern (F, s) and z."""
    n = A.shape[0]
    signs = np.where(A @ x - b >= 0, 1.0, -1.0)
    free: list[int] = []
    now = 0.0
    for _ in range(20 * n + 20):
        alpha, beta, z0, v = _l1_segment(A, b, x, signs, free)
        fixed = np.setdiff1d(np.arange(n), free)
        p, q = A[fixed] @ z0 - b[fixed], A[fixed] @ v  # residuals r_i(λ) = p_i − λq_i on B
        toward = q * signs[fixed] > 0
        join = np.full(len(fixed), np.inf)
        join[toward] = np.maximum(p[toward] / q[toward], now)
        leave = np.full(len(free), np.inf)  # ν_j moves monotonically towards β_j: it reaches sign(β_j) if |β_j| > 1
        out = np.abs(beta) > 1
        leave[out] = np.maximum(alpha[out] / (np.sign(beta[out]) - beta[out]), now)
        first_join = float(join.min(initial=np.inf))
        first_leave = float(leave.min(initial=np.inf))
        if lam <= min(first_join, first_leave):
            return free, signs, z0 - lam * v
        if first_join <= first_leave:
            now = first_join
            free.append(int(fixed[np.argmin(join)]))
        else:
            now, j = first_leave, int(np.argmin(leave))
            signs[free.pop(j)] = np.sign(beta[j])
    raise RuntimeError("prox_l1_affine: the homotopy did not end; is A in general position?")


def _l1_segment(A: np.ndarray, b: np.ndarray, x: np.ndarray, signs: np.ndarray, free: list[int]):
    """(α, β, z₀, v) of the affine piece ``z(λ) = z₀ − λv``, ``ν(λ) = α/λ + β`` for the pattern (F = free, s),
    through a QR factorisation ``A_Fᵀ = QR`` (``A_F z₀ = b_F``, ``v = (I − QQᵀ)c``)."""
    fixed = np.setdiff1d(np.arange(len(b)), free)
    c = A[fixed].T @ signs[fixed]
    if not free:
        return np.zeros(0), np.zeros(0), x, c
    Q, R = np.linalg.qr(A[free].T)
    y = np.linalg.solve(R.T, A[free] @ x - b[free])
    v = c - Q @ (Q.T @ c) if len(free) < A.shape[1] else np.zeros_like(c)  # a vertex does not move
    return np.linalg.solve(R, y), -np.linalg.solve(R, Q.T @ c), x - Q @ y, v


def brox_prox(f: Objective, x: torch.Tensor, t: float, *, tol: float = 1e-10,
              prox_fn: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
              inside_tol: float = 1e-12, max_decades: int = 60) -> torch.Tensor:
    """``brox_t f(x)`` for convex f: ``prox_{λf}(x)`` with ``‖prox − x‖ = t``. The prox is L-BFGS for smooth f, or
    ``prox_fn(x, λ)`` (e.g. :func:`prox_l1_affine` for ``‖Az − b‖₁``).

    ``d(λ) = ‖prox_{λf}(x) − x‖`` grows with λ from ``d(0) = 0``, so λ is bracketed from λ = 1 by factors of 10
    (as far as ``max_decades`` either way) and found by bisection on ``log λ`` (to ``tol``, or to float64's spacing);
    within those decades nothing depends on the scale of f. The prox certifies ``(x − prox)/λ ∈ ∂f(prox)``: where
    ``d(λ) ≤ t`` while that subgradient's norm ``d(λ)/λ`` has fallen below ``inside_tol`` times its value at the first
    λ that moves x, the prox is (to that tolerance) a minimizer inside the ball, and it is returned; x itself is
    returned where no λ up to ``1e{max_decades}`` moves it (0 ∈ ∂f(x)). Raises ``RuntimeError`` if no λ within
    ``max_decades`` decades brackets ``t`` (f not convex, or the prox not solved)."""
    t = check_number(t, "t", low_open=True)
    tol = check_number(tol, "tol", low_open=True)
    inside_tol = check_number(inside_tol, "inside_tol", low_open=True)
    check_positive_int(max_decades, "max_decades")
    if prox_fn is None:
        if not callable(f):
            raise ValueError("brox_prox needs a callable f (for its L-BFGS prox) or a prox_fn(x, λ)")
        prox_fn = lambda point, lam: prox(f, point, lam)  # noqa: E731
    elif not callable(prox_fn):
        raise ValueError(f"prox_fn must be a callable prox_fn(x, λ), got {prox_fn!r}")

    def distance(log_lam: float) -> tuple[float, torch.Tensor]:
        z = prox_fn(x, math.exp(log_lam))
        return float(torch.linalg.vector_norm(z - x)), z

    step = math.log(10.0)
    d, z = distance(0.0)
    start = 0
    while d == 0.0 and start < max_decades:  # a prox step lost to rounding at λ = 1 (a very flat f), or 0 ∈ ∂f(x)
        start += 1
        d, z = distance(start * step)
    if d == 0.0:  # no λ up to 1e{max_decades} moves x: 0 ∈ ∂f(x)
        return z
    if d > t and start:
        lo, hi = (start - 1) * step, start * step
    elif d > t:
        hi = 0.0
        for k in range(1, max_decades + 1):
            if distance(-k * step)[0] <= t:
                break
        else:
            raise RuntimeError(f"brox_prox: prox_{{λf}}(x) moves more than t = {t:g} even at λ = 1e-{max_decades}")
        lo = -k * step
    else:
        reference = d / 10.0 ** start  # the certified subgradient's norm at the first λ that moves x
        for k in range(start + 1, start + max_decades + 1):
            d, z = distance(k * step)
            if d > t:
                break
            if d / 10.0 ** k <= inside_tol * reference:  # a minimizer inside the ball
                return z
        else:
            raise RuntimeError(f"brox_prox: prox_{{λf}}(x) neither leaves the ball of radius {t:g} nor reaches a "
                               f"minimizer by λ = 1e{start + max_decades}")
        lo, hi = (k - 1) * step, k * step
    for _ in range(200):  # bisection to tol, or until the midpoint is no longer between the ends (float64 spacing)
        mid = 0.5 * (lo + hi)
        if hi - lo < tol or not lo < mid < hi:
            break
        if distance(mid)[0] > t:
            hi = mid
        else:
            lo = mid
    d, z = distance(lo)
    return x + (z - x) * (t / d) if d > 0 else z  # on the boundary up to the bisection tolerance


def brox_frank_wolfe(f: Objective, x: torch.Tensor, t: float, norm, *, iters: int = 500) -> torch.Tensor:
    """``argmin_{‖z − x‖ ≤ t} f(z)`` in the ball of ``norm`` (a :mod:`specopt.norms` object) by Frank–Wolfe:
    ``s = x + t·lmo(∇f(z))``, ``z ← z + 2/(k+2)·(s − z)``."""
    t = check_number(t, "t", low_open=True)
    check_positive_int(iters, "iters")
    if not isinstance(norm, Norm):
        raise ValueError(f"norm must be a specopt norm (e.g. specopt.Spectral()), got {norm!r}")
    z = x.detach().clone()
    for k in range(iters):
        zz = z.clone().requires_grad_(True)
        f(zz).backward()
        s = x + t * norm.lmo(zz.grad)
        z = z + (2.0 / (k + 2)) * (s - z)
    return z


def bpm(brox: Callable[[torch.Tensor, float], torch.Tensor], x0: torch.Tensor,
        radii: Iterable[float]) -> list[torch.Tensor]:
    """The BPM iterates ``x_{k+1} = brox(x_k, t_k)`` for the step-size schedule ``radii``; returns all iterates."""
    xs = [x0]
    for t in radii:
        xs.append(brox(xs[-1], t))
    return xs


def ball_envelope(brox: Callable[[torch.Tensor, float], torch.Tensor], f: Objective, x: torch.Tensor,
                  t: float) -> float:
    """``N_t f(x) = min_{‖z − x‖ ≤ t} f(z) = f(brox_t f(x))``."""
    return float(f(brox(x, t)))
