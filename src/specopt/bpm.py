"""The Broximal Point Method (Gruntkowska, Li, Rane & Richtárik 2025, *The Ball-Proximal ("Broximal") Point Method*).

``brox_t f(x) = argmin_{‖z − x‖ ≤ t} f(z)`` and ``x_{k+1} = brox_{t_k} f(x_k)``. For convex f: one step if the
ball holds a minimizer, otherwise the step lands on the boundary; ``‖x_{k+1} − x*‖² ≤ ‖x_k − x*‖² − t_k²``;
``f(x_{k+1}) − f* ≤ (1 + t_k/‖x_{k+1} − x*‖)⁻¹ (f(x_k) − f*)``; ``‖∇f(x_{k+1})‖ ≤ ‖∇f(x_k)‖``;
``f(x_{k+1}) ≤ f(x_k) − t_k‖∇f(x_{k+1})‖``. The ball envelope is ``N_t f(x) = min_{‖z − x‖ ≤ t} f(z)``.

Solvers:
* :func:`brox_quadratic` — exact for ``f(z) = ½zᵀHz − bᵀz``: the trust-region subproblem, by an
  eigendecomposition and the secular equation ``‖(H + μI)⁻¹g‖ = t`` (bisection on μ), hard case included;
* :func:`brox_prox` — convex f: ``brox = prox_{λf}`` with λ found by bisection so that
  ``‖prox_{λf}(x) − x‖ = t`` (the prox is solved by L-BFGS for smooth f, or given: :func:`prox_l1_affine`
  for the nonsmooth ``‖Az − b‖₁``);
* :func:`brox_frank_wolfe` — balls of any norm of :mod:`specopt.norms`: Frank–Wolfe with the norm's lmo.

Everything works on float64 tensors (vectors or matrices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from specopt._checks import check_number

Objective = Callable[[torch.Tensor], torch.Tensor]


def brox_quadratic(H: torch.Tensor, b: torch.Tensor, x: torch.Tensor, t: float, *, tol: float = 1e-13) -> torch.Tensor:
    """Exact ``argmin_{‖z − x‖₂ ≤ t} ½zᵀHz − bᵀz`` for symmetric H (any inertia).

    With ``p = z − x``, ``g = Hx − b``: minimise ``½pᵀHp + gᵀp`` over ``‖p‖ ≤ t``. In the eigenbasis
    ``H = Q diag(λ) Qᵀ``, ``p(μ) = −Q diag(1/(λ + μ)) Qᵀg`` with the smallest ``μ ≥ max(0, −λ_min)`` such that
    ``‖p(μ)‖ ≤ t``; if ``‖p(μ)‖ < t`` at ``μ = −λ_min > 0`` (the hard case), a multiple of the bottom eigenvector
    is added to reach the boundary.
    """
    t = check_number(t, "t", low_open=True)
    lam, Q = torch.linalg.eigh(H)
    g = Q.T @ (H @ x - b)
    lo = max(0.0, -float(lam[0]))
    scale = max(float(lam.abs().max()), 1.0)

    def norm_p(mu: float) -> float:
        denom = lam + mu
        safe = torch.where(denom.abs() > tol * scale, denom, torch.full_like(denom, math.inf))
        return float(torch.linalg.vector_norm(g / safe))

    def p_of(mu: float) -> torch.Tensor:
        denom = lam + mu
        safe = torch.where(denom.abs() > tol * scale, denom, torch.full_like(denom, math.inf))
        return -(Q @ (g / safe))

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
    """``prox_{λf}(x) = argmin_z f(z) + ‖z − x‖²/(2λ)`` by L-BFGS with strong-Wolfe line search."""
    z = x.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=iters, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = f(z) + (z - x).pow(2).sum() / (2 * lam)
        value.backward()
        return value

    opt.step(closure)
    return z.detach()


def prox_l1_affine(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor, lam: float, *, iters: int = 5000,
                   tol: float = 1e-13) -> torch.Tensor:
    """``prox_{λf}(x)`` for the nonsmooth ``f(z) = ‖Az − b‖₁``, through its dual: ``z = x − λAᵀu`` with
    ``u = argmin_{‖u‖∞ ≤ 1} (λ/2)‖Aᵀu‖² − uᵀ(Ax − b)``, solved by accelerated projected gradient (FISTA)."""
    step = 1.0 / (lam * float(torch.linalg.matrix_norm(A, 2)) ** 2 + 1e-300)
    r = A @ x - b
    u = torch.zeros_like(b)
    v, theta = u.clone(), 1.0
    for _ in range(iters):
        u_next = torch.clamp(v - step * (lam * (A @ (A.T @ v)) - r), -1.0, 1.0)
        theta_next = (1 + math.sqrt(1 + 4 * theta * theta)) / 2
        v = u_next + (theta - 1) / theta_next * (u_next - u)
        if float(torch.linalg.vector_norm(u_next - u)) <= tol * max(1.0, float(torch.linalg.vector_norm(u))):
            u = u_next
            break
        u, theta = u_next, theta_next
    return x - lam * (A.T @ u)


def brox_prox(f: Objective, x: torch.Tensor, t: float, *, lam_max: float = 1e8, tol: float = 1e-10,
              prox_fn: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
    """``brox_t f(x)`` for convex f: ``prox_{λf}(x)`` with ``‖prox − x‖ = t`` (bisection on log λ); if even
    ``λ = lam_max`` stays inside the ball, a minimizer lies in it and that prox is returned. The prox is
    L-BFGS for smooth f, or ``prox_fn(x, λ)`` (e.g. :func:`prox_l1_affine` for ``‖Az − b‖₁``)."""
    t = check_number(t, "t", low_open=True)
    prox_fn = prox_fn or (lambda point, lam: prox(f, point, lam))
    far = prox_fn(x, lam_max)
    if float(torch.linalg.vector_norm(far - x)) <= t:
        return far
    lo, hi = -12.0, math.log(lam_max)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if float(torch.linalg.vector_norm(prox_fn(x, math.exp(mid)) - x)) > t:
            hi = mid
        else:
            lo = mid
        if hi - lo < tol:
            break
    z = prox_fn(x, math.exp(lo))
    d = z - x
    n = float(torch.linalg.vector_norm(d))
    return x + d * (t / n) if n > 0 else z  # on the boundary up to the bisection tolerance


def brox_frank_wolfe(f: Objective, x: torch.Tensor, t: float, norm, *, iters: int = 500) -> torch.Tensor:
    """``argmin_{‖z − x‖ ≤ t} f(z)`` in the ball of ``norm`` (a :mod:`specopt.norms` object) by Frank–Wolfe:
    ``s = x + t·lmo(∇f(z))``, ``z ← z + 2/(k+2)·(s − z)``."""
    t = check_number(t, "t", low_open=True)
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
