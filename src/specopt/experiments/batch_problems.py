"""The two problems of the `batch-size` experiment and momentum SCG (Scion) run on many configurations at once.

Every tensor carries two leading dims, ``(seed, config)``: one seed is one problem instance and one data stream,
shared by all its configurations (step size, momentum), so that they are compared on the same samples. The step is
Scion's (Pethick et al. 2025, arXiv:2502.07529), per configuration ``p`` and tensor ``W`` with norm ``‖·‖`` and
radius ρ:

    d ← β_p d + (1 − β_p) g,        W ← (1 − γ_p) W + γ_p ρ lmo(d),

with the lmo of the library's norm objects (:mod:`specopt.norms`); ``specopt.Scion`` takes the same step (a test
checks it). Both problems know their optimal loss, so the *excess* loss is measured exactly:

* :class:`LinearRegression` (convex): ``y = ⟨a, x*⟩ + s·ξ`` in ``R^32``, ``x* ~ U[−1, 1]^32``, ``a ~ N(0, Σ)``,
  Σ's eigenvalues log-spaced from 1 to 1/κ (κ = 100), s = 1; ``f(x) − f* = ½(x − x*)ᵀΣ(x − x*)`` in closed form.
  ℓ∞ geometry (Scion's ``Sign`` norm: the step is sign descent with momentum and a Frank–Wolfe shrink),
  ρ = 2‖x*‖∞ as in the theory (ρ = 2R*), x₀ = 0.
* :class:`TeacherStudent` (nonconvex): a tanh network ``W₂ tanh(W₁ a)`` (8 → 16 → 2) learns a narrower random
  teacher of the same form (8 → 4 → 2, orthogonal, unit RMS→RMS norms) from ``y = teacher(a) + s·ξ``,
  ``a ~ N(0, I)``, s = 0.1; the excess loss is ``½E‖student(a) − teacher(a)‖²`` on a fixed set of 4,096 inputs per
  seed (0 at the teacher, which the wider student contains). Spectral (RMS→RMS) norm on both matrices, ρ per layer
  twice the embedded teacher's norm, x₀ a random orthogonal point at half the radius.
"""

from __future__ import annotations

import torch

from specopt.norms import Norm, Sign, Spectral

BATCH_DIMS = 2  # (seed, config)
CHUNK = 2048
"""Samples per forward/backward: a larger batch is processed in chunks whose gradients are averaged."""


def lmo(norm: Norm, d: torch.Tensor) -> torch.Tensor:
    """``norm.lmo`` of every item of a ``(seed, config, *item)`` stack.

    Matrix norms are mapped over the stack with ``torch.func.vmap``: msign then runs one batched iteration for all
    the (small) matrices, where its CPU path would loop over them one by one (built for large matrices).
    """
    if norm.item_ndim is None:
        return norm.lmo(d, batch_dims=BATCH_DIMS)
    flat = d.reshape(-1, *d.shape[BATCH_DIMS:])
    return torch.func.vmap(norm.lmo)(flat).reshape(d.shape)


class ScionRuns:
    """Momentum SCG on a ``(seed, config)`` stack: step sizes ``lr`` and momenta ``beta`` of shape ``(config,)``."""

    def __init__(self, params: list[torch.Tensor], norms: list[Norm], radii: list[float], lr: torch.Tensor,
                 beta: torch.Tensor):
        if not (len(params) == len(norms) == len(radii)):
            raise ValueError("params, norms and radii must have one entry per tensor")
        if lr.shape != beta.shape or lr.ndim != 1 or lr.shape[0] != params[0].shape[1]:
            raise ValueError(f"lr and beta must have shape (configs,) = ({params[0].shape[1]},), got "
                             f"{tuple(lr.shape)} and {tuple(beta.shape)}")
        if bool((lr < 0).any() | (lr > 1).any()) or bool((beta < 0).any() | (beta >= 1).any()):
            raise ValueError("SCG needs step sizes in [0, 1] and momenta in [0, 1)")
        self.params, self.norms, self.radii = params, norms, radii
        self.buffers = [torch.zeros_like(p) for p in params]
        self.lr, self.beta = lr, beta

    def _per_config(self, v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, *([1] * (p.ndim - BATCH_DIMS)))

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        for p, d, g, norm, rho in zip(self.params, self.buffers, grads, self.norms, self.radii, strict=True):
            d.lerp_(g, 1 - self._per_config(self.beta, p))
            lr = self._per_config(self.lr, p)
            p.mul_(1 - lr).add_(rho * lr * lmo(norm, d))


def chunked(grads, params: list[torch.Tensor], batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    """The mean gradient over ``batch`` fresh samples, computed ``CHUNK`` samples at a time."""
    if batch <= CHUNK:
        return grads(params, batch, gen)
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, batch, CHUNK):
        size = min(CHUNK, batch - start)
        for acc, g in zip(total, grads(params, size, gen), strict=True):
            acc.add_(g, alpha=size / batch)
    return total


class LinearRegression:
    """Noisy linear regression in ``R^dim``, one instance per seed (see the module docstring)."""

    name = "linear regression (convex, ℓ∞)"

    def __init__(self, seeds: int, dim: int = 32, noise: float = 1.0, kappa: float = 100.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.dim, self.noise = dim, noise
        self.x_star = 2 * torch.rand(seeds, dim, generator=g) - 1
        self.scale = kappa ** (-torch.arange(dim) / (2 * (dim - 1)))  # Σ^{1/2}
        self.norms = [Sign()]
        self.radii = [2 * float(self.x_star.abs().max())]

    def init(self, configs: int) -> list[torch.Tensor]:
        return [torch.zeros(self.x_star.shape[0], configs, self.dim)]

    def grads(self, params: list[torch.Tensor], batch: int, gen: torch.Generator) -> list[torch.Tensor]:
        """``∇ ½ mean_b (⟨a_b, x⟩ − y_b)²`` for a fresh batch per seed, shared by the seed's configurations."""
        return chunked(self._grads, params, batch, gen)

    def _grads(self, params: list[torch.Tensor], batch: int, gen: torch.Generator) -> list[torch.Tensor]:
        (x,) = params
        a = torch.randn(x.shape[0], batch, self.dim, generator=gen) * self.scale
        y = a @ self.x_star.unsqueeze(-1) + self.noise * torch.randn(x.shape[0], batch, 1, generator=gen)
        residual = a @ x.transpose(1, 2) - y  # (seed, batch, config)
        return [(residual.transpose(1, 2) @ a) / batch]

    def excess(self, params: list[torch.Tensor]) -> torch.Tensor:
        diff = (params[0] - self.x_star.unsqueeze(1)) * self.scale
        return 0.5 * (diff * diff).sum(-1)


class TeacherStudent:
    """``n → hidden → out`` tanh student, ``n → teacher_hidden → out`` tanh teacher (see the module docstring)."""

    name = "teacher–student tanh network (nonconvex, spectral)"

    def __init__(self, seeds: int, n: int = 8, hidden: int = 16, teacher_hidden: int = 4, out: int = 2,
                 noise: float = 0.1, eval_size: int = 4096, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.n, self.noise = n, noise
        norm = Spectral(method="polar_express")
        teacher = [torch.stack([norm.init(shape, 1.0, generator=g) for _ in range(seeds)])
                   for shape in ((teacher_hidden, n), (out, teacher_hidden))]
        self.teacher = teacher
        embedded = [torch.zeros(seeds, hidden, n), torch.zeros(seeds, out, hidden)]
        embedded[0][:, :teacher_hidden] = teacher[0]
        embedded[1][:, :, :teacher_hidden] = teacher[1]
        self.norms = [norm, norm]
        self.radii = [2 * float(norm.norm(w).max()) for w in embedded]
        self.start = [torch.stack([norm.init(w.shape[1:], r / 2, generator=g) for _ in range(seeds)])
                      for w, r in zip(embedded, self.radii, strict=True)]
        self.eval_inputs = torch.randn(seeds, eval_size, n, generator=g)
        self.eval_targets = self._teacher(self.eval_inputs)

    def _teacher(self, a: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a @ self.teacher[0].transpose(1, 2)) @ self.teacher[1].transpose(1, 2)

    @staticmethod
    def _student(params: list[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        """``(seed, config, batch, out)`` outputs for inputs ``a`` of shape ``(seed, batch, n)``."""
        w1, w2 = params
        s, c, h, n = w1.shape
        hid = torch.tanh(a @ w1.reshape(s, c * h, n).transpose(1, 2))  # (seed, batch, config·hidden)
        hid = hid.reshape(s, -1, c, h).transpose(1, 2)
        return hid @ w2.transpose(-1, -2)

    def init(self, configs: int) -> list[torch.Tensor]:
        return [w.unsqueeze(1).repeat(1, configs, 1, 1) for w in self.start]

    def grads(self, params: list[torch.Tensor], batch: int, gen: torch.Generator) -> list[torch.Tensor]:
        """``∇ ½ mean_b ‖student(a_b) − y_b‖²`` per configuration, on a fresh batch per seed."""
        return chunked(self._grads, params, batch, gen)

    def _grads(self, params: list[torch.Tensor], batch: int, gen: torch.Generator) -> list[torch.Tensor]:
        a = torch.randn(params[0].shape[0], batch, self.n, generator=gen)
        y = self._teacher(a)
        y = y + self.noise * torch.randn(y.shape, generator=gen)
        leaves = [p.detach().requires_grad_(True) for p in params]
        loss = 0.5 * (self._student(leaves, a) - y.unsqueeze(1)).square().sum(-1).mean(-1)
        return list(torch.autograd.grad(loss.sum(), leaves))

    @torch.no_grad()
    def excess(self, params: list[torch.Tensor]) -> torch.Tensor:
        err = self._student(params, self.eval_inputs) - self.eval_targets.unsqueeze(1)
        return 0.5 * err.square().sum(-1).mean(-1)


def train(problem, batch: int, steps: int, lr: torch.Tensor, beta: torch.Tensor, seed: int) -> torch.Tensor:
    """Run every configuration for ``steps`` steps of ``batch`` samples; the final excess loss, ``(seed, config)``."""
    params = problem.init(lr.shape[0])
    runs = ScionRuns(params, problem.norms, problem.radii, lr, beta)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        runs.step(problem.grads(params, batch, gen))
    out = problem.excess(params)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"non-finite excess loss at batch {batch}, {steps} steps")
    return out

