"""Synthetic problems with known structure (the test problems of Ma, Huang, Chi & Chen 2026, arXiv:2601.13474, and
of *Constrained Stochastic Spectral Preconditioning Converges for Nonconvex Objectives*, 2026).

* matrix factorisation ``f(X) = ¼‖XXᵀ − M*‖_F²``, ``M* = U diag(λ) Uᵀ`` with condition number κ = λ₁/λ_r;
* in-context linear regression with a linear transformer, population loss
  ``L(Γ) = ½[tr(ΓᵀΛΓΦ) − 2tr(ΛΓΛ) + trΛ]``, ``Φ = ((N+1)/N)Λ² + (trΛ/N)Λ``, gradient ``ΛΓΦ − Λ²``
  (Ma, Huang, Chi & Chen 2026);
* multi-output linear regression ``y = W* x + ξ`` whose label noise ξ is symmetric Pareto with tail index
  1.5 (infinite variance): heavy-tailed stochastic gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from specopt.tasks.base import Task


class MatrixParameter(nn.Module):
    """A module holding one matrix parameter ``weight``, read as ``F.linear``'s ``(d_out, d_in)`` (:data:`LAYOUTS`)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(value)


LAYOUTS = {MatrixParameter: "linear"}
"""The synthetic tasks' declared layout: each problem's matrix is one linear map (no rule knows the class)."""


def spectrum(rank: int, kappa: float) -> torch.Tensor:
    """λ₁ = 1 down to λ_r = 1/κ, log-spaced."""
    return torch.tensor(np.geomspace(1.0, 1.0 / kappa, rank), dtype=torch.float64)


class MatrixFactorization(Task):
    """``min_X ¼‖XXᵀ − M*‖_F²`` with ``X ∈ R^{n×r}``; full-batch, deterministic, float64."""

    layouts = LAYOUTS
    name = "matrix-factorization"
    scheme = "auto"

    def __init__(self, seed: int = 0, n: int = 50, rank: int = 5, kappa: float = 100.0, init_scale: float = 1e-3):
        super().__init__(seed)
        g = torch.Generator().manual_seed(seed)
        self.U, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
        self.lam = spectrum(rank, kappa)
        self.M = (self.U * self.lam) @ self.U.T
        self.init_scale = init_scale

    def initial_point(self) -> torch.Tensor:
        """``X₀ = init_scale·U`` (aligned small initialisation, as in Ma, Huang, Chi & Chen's analysis)."""
        return self.init_scale * self.U.clone()

    def build_model(self) -> nn.Module:
        return MatrixParameter(self.initial_point())

    def batch(self, step: int):
        return None

    def objective(self, X: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.linalg.matrix_norm(X @ X.T - self.M) ** 2

    def loss(self, model, batch) -> torch.Tensor:
        return self.objective(model.weight)

    @torch.no_grad()
    def validation_loss(self, model) -> float:
        return float(self.objective(model.weight))


class InContextRegression(Task):
    """Linear-transformer in-context regression, population loss in Γ ∈ R^{d×d}; Γ₀ = 0; float64."""

    layouts = LAYOUTS
    name = "icl-regression"
    scheme = "auto"

    def __init__(self, seed: int = 0, d: int = 20, context: int = 40, kappa: float = 100.0):
        super().__init__(seed)
        self.Lam = torch.diag(spectrum(d, kappa))
        N = float(context)
        self.Phi = (N + 1) / N * self.Lam @ self.Lam + torch.trace(self.Lam) / N * self.Lam
        self.Gamma_star = torch.linalg.solve(self.Phi.T, self.Lam.T).T  # Λ Γ Φ = Λ²  ⇒  Γ* = Λ Φ⁻¹
        self.optimum = float(self.objective(self.Gamma_star))

    def objective(self, G: torch.Tensor) -> torch.Tensor:
        L, P = self.Lam, self.Phi
        return 0.5 * (torch.trace(G.T @ L @ G @ P) - 2 * torch.trace(L @ G @ L) + torch.trace(L))

    def gradient(self, G: torch.Tensor) -> torch.Tensor:
        return self.Lam @ G @ self.Phi - self.Lam @ self.Lam

    def build_model(self) -> nn.Module:
        return MatrixParameter(torch.zeros_like(self.Lam))

    def batch(self, step: int):
        return None

    def loss(self, model, batch) -> torch.Tensor:
        return self.objective(model.weight)

    @torch.no_grad()
    def validation_loss(self, model) -> float:
        """Excess population loss ``L(Γ) − L(Γ*)``."""
        return float(self.objective(model.weight)) - self.optimum


class HeavyTailedRegression(Task):
    """``y = W* x + ξ``, x ~ N(0, I), ξ symmetric Pareto (tail index ``alpha`` = 1.5: infinite variance).

    Training loss ``½·mean‖W x − y‖²`` on minibatches; validation = excess risk ``½‖W − W*‖_F²``."""

    layouts = LAYOUTS
    name = "heavy-tailed"
    scheme = "auto"

    def __init__(self, seed: int = 0, d_in: int = 32, d_out: int = 16, batch_size: int = 32, alpha: float = 1.5,
                 noise: float = 0.5):
        super().__init__(seed)
        g = torch.Generator().manual_seed(seed)
        self.W_star = torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in)
        self.batch_size, self.alpha, self.noise = int(batch_size), float(alpha), float(noise)

    def build_model(self) -> nn.Module:
        return MatrixParameter(torch.zeros_like(self.W_star))

    def batch(self, step: int):
        g = self.generator(step)
        x = torch.randn(self.batch_size, self.W_star.shape[1], generator=g)
        u = torch.rand(self.batch_size, self.W_star.shape[0], generator=g)
        sign = torch.randint(0, 2, u.shape, generator=g) * 2 - 1
        xi = sign * ((1 - u).pow(-1 / self.alpha) - 1) * self.noise
        return x, x @ self.W_star.T + xi

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return 0.5 * ((x @ model.weight.T - y) ** 2).sum(1).mean()

    @torch.no_grad()
    def validation_loss(self, model) -> float:
        return float(0.5 * torch.linalg.matrix_norm(model.weight - self.W_star) ** 2)

    def units_per_step(self) -> int:
        return self.batch_size
