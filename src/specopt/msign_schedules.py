"""Cheaper msign schedules: Polar Express's 5-step band with fewer matmuls, on a narrower input interval.

Every odd-polynomial msign maps each normalised singular value ``x`` of its input through the composition of its
steps' polynomials, so a schedule is a promise of the form *inputs in* ``[l, 1]`` *come out in* ``[lo, hi]``.
Polar Express (5 steps, 15 matmuls) keeps ``σ/‖G‖_F ∈ [1e-3, 1]`` within ``[0.847, 1.141]``. The schedules here keep
the same output band with fewer matmuls; what they give up is the lower end ``l`` of the input interval, and two of
them win it back, on typical matrices, with a tighter normalisation that lifts the small singular values.

* ``"cubic"`` — odd cubic steps ``X ← a_k X + b_k (X Xᵀ) X``: 2 matmuls a step instead of 3. Each ``p_k`` is the
  minimax cubic on the current interval, in closed form (Grishina, Smirnov & Rakhuba 2025, arXiv:2506.10935),
  composed greedily as Polar Express's quintics are; 5 steps (10 matmuls, the step count of Huang's "cubic5", Huang
  2026, arXiv:2606.00371). Frobenius normalisation, as Polar Express.
* ``"cans"`` — CANS (Chebyshev-accelerated Newton–Schulz, Grishina, Smirnov & Rakhuba 2025, arXiv:2506.10935):
  Remez-optimal quintics designed for a target band (their "δ-orthogonalisation": the composition whose output lies
  in ``[1−δ, 1+δ]`` on the widest input interval), and a Gelfand-formula normalisation: ``σ_max ≤ ‖(GGᵀ)²‖_F^{1/4}
  = (Σσ⁸)^{1/8}``, formed from the first step's own ``A = X Xᵀ`` and ``A²``, so it costs no matmul and places
  ``σ_max`` much nearer 1 than ``‖G‖_F`` does. 4 quintic steps (12 matmuls).
* ``"aol"`` — Turbo-Muon's AOL preconditioning (Boissin, Massena, Mamalet & Serrurier 2025, arXiv:2512.04632):
  rescale the rows, ``X₀ = D^{-1/2} G`` with ``D_ii = Σ_j |GGᵀ|_ij``, which bounds ``‖X₀‖₂ ≤ 1`` (the
  Almost-Orthogonal-Layer theorem of Prach & Lampert 2022, arXiv:2208.03160, applied to ``W = Gᵀ``) and lifts the
  lower end; ``A₀ = D^{-1/2} A D^{-1/2}`` reuses the first step's Gram matrix. One step fewer than Polar Express:
  4 quintic steps (12 matmuls) from Polar Express's own generator. **Caveat:** the result is the polar factor of
  the row-rescaled ``D^{-1/2}G``, which equals ``G``'s only when ``D`` is a multiple of the identity (rows whose
  Gram rows have equal absolute sums); Turbo-Muon accepts the difference as a preconditioner, and the msign
  benchmark measures it (``‖O − UVᵀ‖₂``).

All three share the design rule of :func:`widest_interval`: their coefficients come from Polar Express's generator
(:func:`specopt.polar_express_coefficients`, with ``degree=3`` for the cubic) run on ``[l, 1]`` for the smallest
``l`` on which their default number of steps keeps ``max |σ − 1|`` within Polar Express's 5-step value (0.153) —
so :func:`specopt.msign_band` reports, for each, Polar Express's band on its own interval ``[l, 1]`` (and a wider
one on Polar Express's ``[1e-3, 1]``). As for Polar Express, ``steps=k`` runs k steps designed for the same
interval: more steps narrow the band. Select one as any msign method: ``msign(G, method="cans")``,
``Muon(params, method="aol")``, ``param_groups(model, msign={"method": "cubic"})``.

| method | steps | matmuls | normalisation | interval ``[l, 1]`` for the band 1 ± 0.153 |
|---|---:|---:|---|---|
| polar_express | 5 | 15 | ``‖G‖_F`` | ``l = 1e-3`` |
| cubic | 5 | 10 | ``‖G‖_F`` | ``l ≈ 0.0118`` |
| cans | 4 | 12 | ``(Σσ⁸)^{1/8}`` | ``l ≈ 0.0041`` |
| aol | 4 | 12 | ``D^{-1/2}`` | ``l ≈ 0.0041`` |

(cans and aol share their coefficients and differ only in the normalisation; on Polar Express's own interval the
cubic needs 8 steps, 16 matmuls.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from specopt._checks import check_positive_int
from specopt.linalg import PolynomialSchedule, msign_band, polar_express_coefficients

SAFETY = 1.02
"""Normalisation and coefficient safety factor, Polar Express's 5-step value (bf16 rounding headroom)."""

EPS = 1e-6
"""The Frobenius normalisation's eps, Polar Express's 5-step value."""


@dataclass(frozen=True)
class Design:
    """How a cheaper schedule is built: polynomial degree, default steps, normalisation, the generator's cushion
    (Polar Express's 0.02 for the quintics; none for the cubic, whose minimax slope at zero stays below 3√3 ≈ 5.2
    however small ``l`` is: 4.91 in the cubic schedule's first step)."""

    degree: int
    steps: int
    normalization: str
    cushion: float


DESIGNS = {
    "cubic": Design(degree=3, steps=5, normalization="frobenius", cushion=0.0),
    "cans": Design(degree=5, steps=4, normalization="gelfand", cushion=0.02),
    "aol": Design(degree=5, steps=4, normalization="aol", cushion=0.02),
}
"""The cheaper schedules by msign method name."""


def target_band() -> float:
    """``max |σ − 1|`` over Polar Express's 5-step band on ``[1e-3, 1]`` (≈ 0.153): the band every schedule here
    keeps."""
    lo, hi = msign_band("polar_express", 5)
    return max(1 - lo, hi - 1)


def _worst(degree: int, steps: int, l: float, cushion: float, normalization: str) -> float:  # noqa: E741
    coefficients = polar_express_coefficients.__wrapped__(steps, l=l, cushion=cushion, safety=SAFETY, degree=degree)
    y = PolynomialSchedule(coefficients, SAFETY, EPS, normalization=normalization).scalar_map(
        np.geomspace(l, 1.0, 100_001))
    return max(1 - float(y.min()), float(y.max()) - 1)


@lru_cache(maxsize=32)
def widest_interval(degree: int, steps: int, cushion: float, normalization: str = "frobenius") -> float:
    """CANS's δ-orthogonalisation (Grishina, Smirnov & Rakhuba 2025) on Polar Express's generator: the smallest ``l``
    such that ``polar_express_coefficients(steps, l, cushion, safety=1.02, degree)`` maps normalised singular
    values in ``[l, 1]`` to within ``1 ± δ``, ``δ`` = :func:`target_band`.

    Bisection on ``log l`` over ``[1e-8, 0.999]`` to a relative width of 1e-6: the worst error on ``[l, 1]`` falls as
    ``l`` grows (a narrower interval is easier), which the bisection relies on and the tests check. Returns 1e-8
    if the band already holds there.
    """
    delta = target_band()
    lo, hi = 1e-8, 0.999
    if _worst(degree, steps, lo, cushion, normalization) <= delta:
        return lo
    if _worst(degree, steps, hi, cushion, normalization) > delta:
        raise ValueError(f"no interval [l, 1] reaches Polar Express's band with {steps} degree-{degree} steps")
    while hi / lo > 1 + 1e-6:
        mid = float(np.sqrt(lo * hi))
        lo, hi = (lo, mid) if _worst(degree, steps, mid, cushion, normalization) <= delta else (mid, hi)
    return hi


@lru_cache(maxsize=32)
def cheaper_schedule(method: str, steps: int, design_steps: int | None = None) -> PolynomialSchedule:
    """The schedule of ``msign(method=method, steps=steps)`` for ``method`` in :data:`DESIGNS`: ``steps`` steps of
    the generator on ``[l, 1]``, ``l`` the widest interval of ``design_steps`` steps (default: the method's own
    count). As for Polar Express, ``steps`` beyond the design count narrow the band on the same interval (towards
    the polar factor), fewer widen it; ``design_steps=steps`` instead keeps Polar Express's band and moves ``l``
    (what the msign benchmark's trade-off rows time)."""
    if method not in DESIGNS:
        raise ValueError(f"unknown cheaper msign schedule {method!r}; valid: {', '.join(DESIGNS)}")
    if design_steps is not None:
        check_positive_int(design_steps, "design_steps")
    d = DESIGNS[method]
    l = widest_interval(d.degree, design_steps or d.steps, d.cushion, d.normalization)  # noqa: E741
    coefficients = polar_express_coefficients(steps, l=l, cushion=d.cushion, safety=SAFETY, degree=d.degree)
    return PolynomialSchedule(coefficients, SAFETY, EPS, normalization=d.normalization, l=l)
