"""Constraint sets ``C`` and their projections in the preconditioner's geometry (*Constrained Stochastic Spectral
Preconditioning Converges for Nonconvex Objectives* (2026); reconstructed where the paper is silent).

The proximal step of :class:`specopt.ProxSpectral` is ``X⁺ = argmin_{X∈C} γ·φ((X − Y)/γ)``, where ``φ`` is the
spectral function whose conjugate's gradient is the preconditioner ``P = U h'(Σ) Vᵀ``. For a set that only
looks at the singular values (unitarily invariant), ``X⁺ = U_Y diag(s) V_Yᵀ`` with ``s`` the projection of
``σ(Y)`` in the 1-D geometry of ``φ``:

| set | s | geometry used |
|---|---|---|
| :class:`SpectralBall` ``‖X‖_op ≤ r`` | ``min(σ_i, r)`` | any (φ even, increasing in \\|t\\|) |
| :class:`FrobeniusBall` ``‖X‖_F ≤ r`` | ``s_i + γ h'_κ(μ s_i) = σ_i``, μ ≥ 0 bisected until ``‖s‖₂ = r`` | h'_κ |
| :class:`RankAtMost` ``rank X ≤ k`` | the k largest σ_i kept, the rest zeroed | any |

Entrywise sets act on the entries ``|x_i|`` the same way (a vector is a diagonal matrix):
:class:`L2Ball` (vectors; the Frobenius rule on ``|x|``), :class:`Box` ``|x_i| ≤ r`` (clamp) and
:class:`SparsityAtMost` (keep the s largest ``|x_i|``). On a matrix in the spectral geometry, Box and
SparsityAtMost are not unitarily invariant and have no closed form; there their Euclidean projection is used
(documented reconstruction choice).

Two cases where the anisotropic problem gives no answer, and what we return:

* ``h' = sign`` (preconditioner ``"msign"``, ``kappa=None``): ``γφ((X−Y)/γ)`` is the indicator of
  ``‖X − Y‖_op ≤ γ``, so every feasible point in that ball is a minimiser. We return the Euclidean projection,
  which is one of them whenever the ball meets C.
* ``|h'| < 1`` makes ``φ`` infinite outside the γ-operator ball; when no point of C lies inside
  (``‖(σ − γ)₊‖₂ ≥ r`` for the Frobenius ball), the Euclidean projection is returned.

The spectral ball has an SVD-free path (``method="polar"``): with ``Q = msign(Y)`` and ``B = Y − rQ``,
``clip(σ, r) = (σ + r − |σ − r|)/2`` becomes ``X⁺ = ½(Y + rQ − msign(B)·QᵀB)`` — two polar factors
(Polar Express with 12 steps for ``σ/‖Y‖_F ≥ 1e-6``, converged to float32 precision, in float32 or wider).
Singular values within ``≈1e-6·‖Y − rQ‖_F`` above r are clipped only partly: the result can exceed r by that
much (measured in ``benchmarks/projection.py``), or fall short of it by as much. The result is a difference of
O(r) terms, so a point already inside the ball moves by about the polar factors' error times r: relatively
``≈2e-6·r/‖Y‖_op`` in float32 (2e-3 at ‖Y‖_op = 1e-3·r, 2e-2 at 1e-4·r, a 64×32 matrix) and ``≈7e-10·r/‖Y‖_op`` in
float64 (the polar factors converge to float32's precision); where weights far inside a large ball must stay where
they are, use ``method="svd"``. On a CPU the SVD is 2–5× faster; on an H100 the SVD-free path is 2–11× faster
than cuSOLVER's SVD and more accurate, so choose ``method="polar"`` for parameters on a GPU.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from specopt._checks import check_number, check_positive, check_positive_int, check_tensor, rebuild_user_class
from specopt.linalg import PolynomialSchedule, _polynomial_sign, polar_express_coefficients

SPECTRAL_METHODS = ("svd", "polar")
POLAR_PROJECTION_ARGS = {"steps": 12, "l": 1e-6, "cushion": 0.02, "safety": 1.01}
"""Polar Express for the projection: 12 steps for ``σ/‖Y‖_F ∈ [1e-6, 1]`` end in a band 1 ± 1e-9 in exact
arithmetic (the cushion and the per-step safety keep float32 rounding from growing near the top of the
interval)."""


def _matrix(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: a tensor with no entries has no inferable dim


def _svd(x: torch.Tensor):
    return torch.linalg.svd(_matrix(x).to(torch.promote_types(x.dtype, torch.float32)), full_matrices=False)


def _from_svd(U, s, Vh, like: torch.Tensor) -> torch.Tensor:
    return ((U * s.unsqueeze(-2)) @ Vh).reshape(like.shape).to(like.dtype)


def anisotropic_ball(sigma: np.ndarray, radius: float, gamma: float, kappa: float | None) -> np.ndarray:
    """Project nonnegative ``σ`` onto ``{‖s‖₂ ≤ r}`` in the geometry of ``h'_κ`` (see the module docstring):
    ``s_i + γ h'_κ(μ s_i) = σ_i`` with μ bisected so that ``‖s‖₂ = r``. ``h'_κ(t) = t/(1 + |t|^κ)^{1/κ}``
    (ε = 1: ε only rescales μ). ``kappa=None`` or an empty anisotropic solution: the Euclidean ``rσ/‖σ‖₂``."""
    sigma = np.asarray(sigma, dtype=np.float64)
    norm = float(np.linalg.norm(sigma))
    if norm <= radius:
        return sigma.copy()
    euclidean = sigma * (radius / norm)
    floor = np.maximum(sigma - gamma, 0.0)
    if kappa is None or np.linalg.norm(floor) >= radius:
        return euclidean

    def solve(mu: float) -> np.ndarray:  # s + γ h'(μ s) = σ, increasing in s; root in [floor, σ]
        lo, hi = floor.copy(), sigma.copy()
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            t = mu * mid
            over = mid + gamma * t / (1.0 + t**kappa) ** (1.0 / kappa) > sigma
            hi, lo = np.where(over, mid, hi), np.where(over, lo, mid)
        return 0.5 * (lo + hi)

    mu_lo, mu_hi = 0.0, 1.0  # ‖s(μ)‖ decreases from ‖σ‖ (μ = 0) towards ‖floor‖ < r (μ → ∞)
    while np.linalg.norm(solve(mu_hi)) > radius:
        mu_lo, mu_hi = mu_hi, 16.0 * mu_hi
    for _ in range(100):
        mu = 0.5 * (mu_lo + mu_hi)
        if np.linalg.norm(solve(mu)) > radius:
            mu_lo = mu
        else:
            mu_hi = mu
        if mu_hi - mu_lo <= 1e-13 * mu_hi:
            break
    s = solve(mu_hi)
    return s * min(1.0, radius / max(float(np.linalg.norm(s)), 1e-300))


class Constraint(ABC):
    """A set C per tensor: validates shapes, projects, and reports the constrained quantity."""

    #: which tensors fit: "matrix" (≥ 2 dims), "vector" (1 dim) or "any".
    fits = "any"

    def check(self, shape, name: str = "parameter") -> None:
        """Raise ``ValueError`` if this set does not fit a tensor of ``shape``."""
        shape = tuple(shape)
        if self.fits == "matrix" and len(shape) < 2:
            raise ValueError(f"{self!r} needs a matrix (≥ 2 dims) but {name} has shape {shape}; use L2Ball or Box "
                             "for vectors")
        if self.fits == "vector" and len(shape) != 1:
            raise ValueError(f"{self!r} needs a vector (1 dim) but {name} has shape {shape}; use FrobeniusBall "
                             "or SpectralBall for matrices")

    @abstractmethod
    def project(self, x: torch.Tensor, gamma: float = 1.0, kappa: float | None = None) -> torch.Tensor:
        """``argmin_{X∈C} γφ((X − x)/γ)`` in the geometry of ``h'_κ`` (``kappa=None``: msign/Euclidean)."""

    @abstractmethod
    def value(self, x: torch.Tensor) -> float:
        """The constrained quantity of ``x`` (operator norm, Frobenius norm, max |entry|, rank, nonzeros)."""

    @abstractmethod
    def bound(self) -> float:
        """The bound on :meth:`value` that defines C."""

    def feasible(self, x: torch.Tensor, rtol: float = 1e-5) -> bool:
        return self.value(x) <= self.bound() * (1 + rtol)

    def _checked(self, x: torch.Tensor, gamma=1.0, kappa=None) -> None:
        """The projection's input: a real tensor of a shape this constraint fits, finite (the projection of NaN is
        undefined), with ``gamma ≥ 0`` (a schedule may end at 0) and ``kappa`` None or > 0."""
        what = f"{type(self).__name__}.project"
        check_tensor(x, f"{what} input")
        self.check(x.shape, "the input")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what}: cannot project a tensor with non-finite entries (shape {tuple(x.shape)}): "
                             "the run has diverged before this step")
        check_number(gamma, f"{what} gamma")
        if kappa is not None:
            check_positive(kappa, f"{what} kappa")

    def config(self) -> dict:
        """A plain-data description; :func:`constraint_from_config` inverts it. A user's subclass is named by its
        import path and described by its public attributes, which its constructor must take as keywords."""
        cls = type(self)
        return {"name": _NAMES.get(cls) or f"{cls.__module__}:{cls.__qualname__}",
                **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and _same(vars(self), vars(other))

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class SpectralBall(Constraint):
    """``‖X‖_op ≤ r`` (matrix view): singular-value clipping, by SVD or SVD-free (``method="polar"``)."""

    fits = "matrix"

    def __init__(self, radius: float, method: str = "svd"):
        self.radius = check_positive(radius, "radius")
        if method not in SPECTRAL_METHODS:
            raise ValueError(f"unknown spectral-ball method {method!r}; valid methods: {', '.join(SPECTRAL_METHODS)}")
        self.method = method

    def project(self, x, gamma=1.0, kappa=None):
        self._checked(x, gamma, kappa)
        if x.numel() == 0:
            return x.clone()
        if self.method == "polar":
            return spectral_clip_polar(x, self.radius)
        U, s, Vh = _svd(x)
        return _from_svd(U, s.clamp(max=self.radius), Vh, x)

    def value(self, x):
        return float(torch.linalg.matrix_norm(_matrix(x).double(), ord=2))

    def bound(self):
        return self.radius


def _accurate_schedule() -> PolynomialSchedule:
    return PolynomialSchedule(polar_express_coefficients(**POLAR_PROJECTION_ARGS), safety=1.01, eps=1e-30)


def _polar(X: torch.Tensor) -> torch.Tensor:
    transpose = X.shape[0] > X.shape[1]
    Q = _polynomial_sign((X.mT if transpose else X).clone(), _accurate_schedule())
    return Q.mT if transpose else Q


def spectral_clip_polar(x: torch.Tensor, radius: float) -> torch.Tensor:
    """``U min(Σ, r) Vᵀ`` without an SVD: ``½(Y + rQ − msign(B)·QᵀB)``, ``Q = msign(Y)``, ``B = Y − rQ``
    (``msign(B)QᵀB = U|Σ − r|Vᵀ``; for wide matrices the equal ``(BQᵀ)·msign(B)`` is used, it is smaller)."""
    Y = _matrix(x).to(torch.promote_types(x.dtype, torch.float32))
    Q = _polar(Y)
    B = Y - radius * Q
    SB = _polar(B)
    absolute = SB @ (Q.mT @ B) if Y.shape[0] >= Y.shape[1] else (B @ Q.mT) @ SB
    return (0.5 * (Y + radius * Q - absolute)).reshape(x.shape).to(x.dtype)


class FrobeniusBall(Constraint):
    """``‖X‖_F ≤ r`` (matrix view), projected in the preconditioner's geometry (see the module docstring)."""

    fits = "matrix"

    def __init__(self, radius: float):
        self.radius = check_positive(radius, "radius")

    def project(self, x, gamma=1.0, kappa=None):
        self._checked(x, gamma, kappa)
        norm = torch.linalg.vector_norm(x.double())
        if float(norm) <= self.radius:
            return x.clone()
        if kappa is None:
            return (x.double() * (self.radius / norm)).to(x.dtype)
        U, s, Vh = _svd(x)
        shrunk = anisotropic_ball(s.double().cpu().numpy(), self.radius, gamma, kappa)
        return _from_svd(U, torch.as_tensor(shrunk, dtype=s.dtype, device=s.device), Vh, x)

    def value(self, x):
        return float(torch.linalg.vector_norm(x.double()))

    def bound(self):
        return self.radius


class L2Ball(Constraint):
    """``‖x‖₂ ≤ r`` for a vector, projected entrywise in the preconditioner's geometry (the Frobenius rule on
    ``|x_i|``; Euclidean geometry: ``x·r/‖x‖₂``)."""

    fits = "vector"

    def __init__(self, radius: float):
        self.radius = check_positive(radius, "radius")

    def project(self, x, gamma=1.0, kappa=None):
        self._checked(x, gamma, kappa)
        shrunk = anisotropic_ball(x.abs().double().cpu().numpy(), self.radius, gamma, kappa)
        return (torch.sign(x) * torch.as_tensor(shrunk, dtype=x.dtype, device=x.device)).to(x.dtype)

    value = FrobeniusBall.value

    def bound(self):
        return self.radius


class Box(Constraint):
    """``|x_i| ≤ r`` entrywise (any shape): ``clamp(x, −r, r)``."""

    def __init__(self, radius: float):
        self.radius = check_positive(radius, "radius")

    def project(self, x, gamma=1.0, kappa=None):
        self._checked(x, gamma, kappa)
        return x.clamp(-self.radius, self.radius)

    def value(self, x):
        return float(x.abs().amax()) if x.numel() else 0.0

    def bound(self):
        return self.radius


class RankAtMost(Constraint):
    """``rank X ≤ k`` (matrix view, nonconvex): keep the k largest singular values (Eckart–Young; optimal in
    every unitarily invariant geometry)."""

    fits = "matrix"

    def __init__(self, rank: int):
        self.rank = check_positive_int(rank, "rank")

    def check(self, shape, name="parameter"):
        super().check(shape, name)
        m, n = shape[0], math.prod(shape[1:])
        if self.rank > min(m, n):
            raise ValueError(f"{self!r} exceeds the largest possible rank {min(m, n)} of {name} with shape "
                             f"{tuple(shape)}")

    def project(self, x, gamma=1.0, kappa=None):
        self._checked(x, gamma, kappa)
        U, s, Vh = _svd(x)
        s = s.clone()
        s[self.rank:] = 0
        return _from_svd(U, s, Vh, x)

    def value(self, x):
        s = torch.linalg.svdvals(_matrix(x).double())
        return float((s > s.amax() * max(x.shape) * torch.finfo(torch.float32).eps).sum()) if s.numel() else 0.0

    def bound(self):
        return float(self.rank)


class SparsityAtMost(Constraint):
    """At most ``nonzeros`` nonzero entries (any shape, nonconvex): keep the largest ``|x_i|``."""

    def __init__(self, nonzeros: int):
        self.nonzeros = check_positive_int(nonzeros, "nonzeros")

    def check(self, shape, name="parameter"):
        numel = math.prod(tuple(shape))
        if self.nonzeros > numel:
            raise ValueError(f"{self!r} allows more nonzeros than the {numel} entries of {name} with shape "
                             f"{tuple(shape)}")

    def project(self, x, gamma=1.0, kappa=None):
        self._checked(x, gamma, kappa)
        flat = x.flatten()
        keep = torch.topk(flat.abs(), self.nonzeros, sorted=False).indices
        out = torch.zeros_like(flat)
        out[keep] = flat[keep]
        return out.reshape(x.shape)

    def value(self, x):
        return float((x != 0).sum())

    def bound(self):
        return float(self.nonzeros)


CONSTRAINTS: dict[str, type[Constraint]] = {
    "spectral": SpectralBall,
    "frobenius": FrobeniusBall,
    "l2": L2Ball,
    "box": Box,
    "rank": RankAtMost,
    "sparsity": SparsityAtMost,
}
"""Constraint sets by name (for configs, the command line and state dicts)."""

_NAMES = {cls: name for name, cls in CONSTRAINTS.items()}


def _same(a, b) -> bool:
    """Equal values, tensors (a user constraint's mask or per-entry bounds) by their entries, within dicts and lists."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def constraint_from_config(config: dict) -> Constraint:
    """Rebuild a constraint from :meth:`Constraint.config`: a catalogue name, or ``module:QualName`` for a user's
    subclass (imported)."""
    name, kwargs = config.get("name"), {k: v for k, v in config.items() if k != "name"}
    if isinstance(name, str) and ":" in name:
        return rebuild_user_class(name, kwargs, Constraint, "constraint")
    try:
        cls = CONSTRAINTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown constraint {name!r}; valid constraints: {', '.join(CONSTRAINTS)}") from None
    return cls(**kwargs)
