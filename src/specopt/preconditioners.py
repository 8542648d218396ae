"""Spectral preconditioners ``P(Y) = U diag(h'(σ_i)) Vᵀ`` (*Constrained Stochastic Spectral Preconditioning
Converges for Nonconvex Objectives* (2026); reconstructed).

Three choices of ``h'``, all with ``|h'| ≤ 1`` up to the polynomial's overshoot, so that ``‖P(Y)‖_op ≤ 1`` (about
1.15 for ``"polar_express"``: 1.141 in exact arithmetic, plus the compute dtype's rounding):

* ``"msign"`` — ``h' = sign``: the ideal matrix sign (computed exactly, by SVD). Muon/Scion's direction.
* ``"smooth"`` — ``h'_κ(s) = s/(ε^κ + |s|^κ)^{1/κ}``: linear (``s/ε``) for ``|s| ≪ ε``, sign-like above.
* ``"polar_express"`` — the Polar Express polynomial itself, ``h' = p(σ/‖Y‖_F)`` (the map Muon really applies;
  the paper's *nonlinear preconditioner*), computed without an SVD by :func:`specopt.linalg.polar_factor`.

Geometry. A tensor with ≥ 2 dims is a matrix (trailing dims flattened, ``d_out × fan_in``); a 1-D tensor is
treated entrywise, as a diagonal matrix, so its "singular values" are ``|v_i|`` and ``P(v) = h'(v)`` entry by
entry (``"msign"`` gives sign descent). The constraint projections of :mod:`specopt.constraints` use the
same geometry: :meth:`Preconditioner.projection_kappa` tells them which ``h'`` to use.
"""

from __future__ import annotations

import math

import torch

from specopt._checks import check_positive, check_tensor
from specopt.linalg import check_compute_dtype, polar_factor, resolve_compute_dtype, schedule
from specopt.norms import _NAMES, CATALOGUE, Norm, _gaussian

KINDS = ("msign", "smooth", "polar_express")


def smooth_sign(s: torch.Tensor, kappa: float, eps: float) -> torch.Tensor:
    """``h'_κ(s) = s/(ε^κ + |s|^κ)^{1/κ}`` computed as ``sign(s)/(1 + (ε/|s|)^κ)^{1/κ}`` (no overflow)."""
    a = s.abs()
    ratio = torch.where(a > 0, eps / a.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a))
    # for |s| ≪ ε the ratio^κ overflows; there h' = s/ε to within float precision
    small = a < eps * 1e-6
    value = torch.sign(s) * torch.exp(-torch.log1p(ratio.pow(kappa)) / kappa)
    return torch.where(small, s / eps, value)


class Preconditioner(Norm):
    """The step direction of :class:`specopt.ProxSpectral`: ``lmo(d) = −P(α·d)``, so that the engine's
    uSCG update with radius 1 is ``W ← W − γ·P(α d)``.

    Args:
        kind: ``"msign"``, ``"smooth"`` or ``"polar_express"`` (see the module docstring).
        kappa: κ of ``h'_κ``: the preconditioner for ``"smooth"``, the model of the polynomial for
            ``"polar_express"`` (κ = 4 fits it, see ``specopt experiment nonlinear-preconditioner``). It sets the
            anisotropic geometry of the Frobenius/ℓ2-ball projections.
        eps: ε of ``h'_κ`` (``"smooth"`` only), in the units of ``α·d``.
        scale: α, multiplies the direction before ``P`` (matters for ``"smooth"`` only: the others are
            scale-invariant).
        steps, compute_dtype: of the Polar Express polynomial (default 5 steps, bf16 where native).

    ``dual(d) = ⟨d, P(αd)⟩`` (the nuclear norm for ``"msign"``); ``norm`` is the operator norm of the matrix view
    (max |entry| for vectors), the norm whose unit ball holds every ``P``.
    """

    batched = True

    def __init__(self, kind: str = "polar_express", kappa: float = 4.0, eps: float = 1e-3, scale: float = 1.0,
                 steps: int | None = None, compute_dtype: torch.dtype | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown preconditioner {kind!r}; valid preconditioners: {', '.join(KINDS)}")
        self.kind = kind
        self.kappa = check_positive(kappa, "kappa")
        self.eps = check_positive(eps, "eps")
        self.scale = check_positive(scale, "scale")
        schedule("polar_express", steps)  # validates steps (also for the SVD kinds, which do not read them)
        check_compute_dtype(compute_dtype)
        self.steps, self.compute_dtype = steps, compute_dtype

    def _item_rank(self, x):
        return None

    def projection_kappa(self) -> float | None:
        """κ of the ``h'_κ`` whose geometry the projections use; ``None`` for ``"msign"``, whose geometry
        (the indicator of the γ-operator ball) is met by the Euclidean projection (see constraints)."""
        return None if self.kind == "msign" else self.kappa

    def apply(self, d: torch.Tensor) -> torch.Tensor:
        """``P(α·d)`` for one tensor, in ``d``'s dtype."""
        check_tensor(d, "preconditioner input")
        y = d * self.scale
        if d.ndim <= 1:  # a vector (or a scalar) is a diagonal matrix
            return self._entrywise(y)
        if not d.numel():
            return y
        m = y.reshape(y.shape[0], -1)
        if self.kind == "polar_express":
            work = resolve_compute_dtype(m, self.compute_dtype, "polar_express")
            out = polar_factor(m.to(work, copy=True), method="polar_express", steps=self.steps)
            return out.to(d.dtype).reshape(d.shape)
        work = torch.promote_types(m.dtype, torch.float32)
        U, S, Vh = torch.linalg.svd(m.to(work), full_matrices=False)
        hs = self._h(S)
        return ((U * hs.unsqueeze(-2)) @ Vh).to(d.dtype).reshape(d.shape)

    def _h(self, s: torch.Tensor) -> torch.Tensor:
        if self.kind == "msign":
            tol = s.amax() * max(s.shape[-1], 1) * torch.finfo(s.dtype).eps
            return (s > tol).to(s.dtype)
        return smooth_sign(s, self.kappa, self.eps)

    def _entrywise(self, v: torch.Tensor) -> torch.Tensor:
        if self.kind == "msign":
            return torch.sign(v)
        if self.kind == "smooth":
            return smooth_sign(v, self.kappa, self.eps)
        sched = schedule("polar_express", self.steps)
        x = v.double() / (torch.linalg.vector_norm(v.double()) * sched.safety + sched.eps)
        for a, b, c in sched.coefficients:
            x = a * x + b * x**3 + c * x**5
        return x.to(v.dtype)

    def lmo(self, g, batch_dims=None):
        if batch_dims:
            return torch.stack([self.lmo(x, batch_dims - 1) for x in g.unbind(0)])
        return -self.apply(g)

    def dual(self, g, batch_dims=None):
        if batch_dims:
            return torch.stack([self.dual(x, batch_dims - 1) for x in g.unbind(0)])
        return torch.sum(g * self.apply(g))

    def norm(self, x, batch_dims=None):
        if batch_dims:
            return torch.stack([self.norm(t, batch_dims - 1) for t in x.unbind(0)])
        check_tensor(x, "Preconditioner.norm input")
        if x.ndim == 1:
            return x.abs().amax()
        return torch.linalg.matrix_norm(x.reshape(x.shape[0], -1), ord=2)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        shape = tuple(shape)
        if len(shape) == 1:
            return (radius * torch.sign(_gaussian(shape, generator, torch.float64, device))).to(dtype)
        g = _gaussian((shape[0], math.prod(shape[1:])), generator, torch.float64, device)
        U, _, Vh = torch.linalg.svd(g, full_matrices=False)
        return (radius * U @ Vh).reshape(shape).to(dtype)


CATALOGUE["preconditioner"] = Preconditioner
_NAMES[Preconditioner] = "preconditioner"
