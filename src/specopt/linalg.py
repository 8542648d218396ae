"""The matrix sign (polar factor) ``msign(G) = U sign(Σ) Vᵀ`` for ``G = U Σ Vᵀ``.

Six methods:

* ``"polar_express"`` (default) — odd quintic iterations ``X ← a_k X + (b_k A + c_k A²) X``, ``A = X Xᵀ``,
  with a different minimax-optimal ``(a_k, b_k, c_k)`` per step, produced by
  :func:`polar_express_coefficients` (Amsel, Persson, Musco & Gower, *The Polar Express*, 2025).
  The default 5-step set is the one published with ``l = 1e-3, cushion = 0.02, safety = 1.02``
  (as used in modded-nanogpt and Dion); the input is normalised by ``‖G‖_F·1.02 + 1e-6``.
* ``"newton_schulz"`` — Muon's fixed quintic ``(3.4445, −4.7750, 2.0315)``, 5 steps, input normalised by
  ``max(‖G‖_F, 1e-7)`` exactly as ``torch.optim.Muon``.
* ``"svd"`` — exact, from ``torch.linalg.svd``; singular values below ``max(m, n)·eps·σ_max`` count as zero.
* ``"cubic"``, ``"cans"``, ``"aol"`` — cheaper schedules (fewer matmuls) for Polar Express's 5-step band on a narrower
  input interval: odd cubic steps, CANS (Chebyshev-optimal steps with a Gelfand normalisation) and Turbo-Muon's
  AOL-rescaled iteration with one step fewer; see :mod:`specopt.msign_schedules`.

Every method maps a zero singular value to zero, so ``msign(0) = 0``, and in exact arithmetic (and float32 or
float64) null directions stay null; in bf16 the rounding of the first products puts O(1e-2) into them, which the
iteration lifts towards the band (a rank-2 input comes back with every singular value in 0.2–1.05).
The polynomial methods do not return an exactly orthogonal matrix: after the default steps the singular
values of the result lie in a band around 1, see :func:`msign_band`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from specopt._checks import check_matrix

Coefficients = tuple[tuple[float, ...], ...]
"""Per step the odd coefficients ``(a, b[, c])`` of ``p(x) = a x + b x³ [+ c x⁵]``."""

METHODS = ("polar_express", "newton_schulz", "svd", "cubic", "cans", "aol")

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's Muon quintic: maximal slope at zero, converges to a band around 1, not to 1."""

POLAR_EXPRESS_8_STEP_ARGS = {"l": 1e-3, "cushion": 0.02407327424182761, "safety": 1.0}
"""Generator settings that reproduce the Polar Express paper's 8-step set (raw numbers; the paper
applies a safety of 1.01 at use time, see :func:`polar_express_8_step`)."""

POLAR_EXPRESS_5_STEP_ARGS = {"l": 1e-3, "cushion": 0.02, "safety": 1.02}
"""Generator settings of the published 5-step set (default of ``method="polar_express"``)."""


def _optimal_odd_quintic(lo: float, hi: float) -> tuple[float, float, float]:
    """Minimax odd quintic ``p(x) = a x + b x³ + c x⁵`` for ``max_{x∈[lo,hi]} |1 − p(x)|``.

    Remez exchange: ``1 − p`` equioscillates at the four points ``lo < q < r < hi`` (signs +, −, +, −);
    solve the 4×4 linear system for ``(a, b, c, E)``, move ``q, r`` to the critical points of ``p``
    (roots of ``p'(x) = a + 3b x² + 5c x⁴``) and repeat until the level ``E`` stops changing.
    """
    if lo / hi >= 1 - 5e-6:
        # Interval collapsed to a point m: the limit is the degree-5 Taylor-flat map around m.
        m = (lo + hi) / 2
        return 15 / 8 / m, -10 / 8 / m**3, 3 / 8 / m**5
    q, r = (3 * lo + hi) / 4, (lo + 3 * hi) / 4
    level, previous = math.inf, None
    for _ in range(100):
        rows = [[x, x**3, x**5, sign] for x, sign in ((lo, 1), (q, -1), (r, 1), (hi, -1))]
        a, b, c, level = np.linalg.solve(np.array(rows), np.ones(4))
        if previous is not None and abs(previous - level) <= 1e-15:
            break
        previous = level
        disc = math.sqrt(9 * b * b - 20 * a * c)
        q, r = math.sqrt((-3 * b - disc) / (10 * c)), math.sqrt((-3 * b + disc) / (10 * c))
    return float(a), float(b), float(c)


def _optimal_odd_cubic(lo: float, hi: float) -> tuple[float, float]:
    """Minimax odd cubic ``p(x) = a x + b x³`` for ``max_{x∈[lo,hi]} |1 − p(x)|``, in closed form (Grishina, Smirnov
    & Rakhuba 2025, arXiv:2506.10935, Chebyshev alternance): with ``s = lo² + lo·hi + hi²`` and ``e = √(s/3)``
    (the critical point), ``p(x) = α(s x − x³)``, ``α = 2 / (2e³ + lo²hi + lo hi²)``; the error equioscillates at
    ``lo, e, hi`` (``p(lo) = p(hi) = 1 − E``, ``p(e) = 1 + E``)."""
    s = lo * lo + lo * hi + hi * hi
    alpha = 2 / (2 * (s / 3) ** 1.5 + lo * lo * hi + lo * hi * hi)
    return alpha * s, -alpha


def odd_polynomial(coefficients, x):
    """``p(x) = Σ_j c_j x^{2j+1}`` for odd coefficients ``(c₀, c₁, …)``, by Horner's rule in ``x²``."""
    x2, acc = x * x, 0.0
    for c in reversed(coefficients):
        acc = acc * x2 + c
    return acc * x


def _image(coefficients, lo: float, hi: float) -> tuple[float, float]:
    """``(min, max)`` of the odd polynomial on ``[lo, hi]``: at the ends or at a critical point ``p'(x) = 0``."""
    slope = [(2 * j + 1) * c for j, c in enumerate(coefficients)]  # p'(x) as a polynomial in x²
    roots = np.roots(slope[::-1]) if len(slope) > 1 else []
    points = [lo, hi] + [math.sqrt(r.real) for r in roots if abs(r.imag) < 1e-12 and lo**2 < r.real < hi**2]
    values = [odd_polynomial(coefficients, x) for x in points]
    return min(values), max(values)


@lru_cache(maxsize=64)
def polar_express_coefficients(
    steps: int, l: float = 1e-3, cushion: float = 0.02407327424182761, safety: float = 1.0,  # noqa: E741
    degree: int = 5,
) -> Coefficients:
    """Per-step optimal quintic coefficients of Polar Express (Amsel, Persson, Musco & Gower 2025, arXiv:2505.16932).

    For k = 1…steps, with ``u₁ = 1``, ``l₁ = l``:

    1. ``p_k`` = minimax odd polynomial of ``degree`` (5: quintic, Remez; 3: cubic, in closed form) approximating 1
       on ``[max(l_k, cushion·u_k), u_k]``;
    2. re-centre: scale ``p_k`` by ``2 / (min p_k + max p_k)`` over ``[l_k, u_k]`` so that its image is centred on 1
       (for the quintic ``2 / (p_k(l_k) + p_k(u_k))``; a no-op unless the cushion is active);
    3. safety (all steps but the last): ``p_k(x) ← p_k(x / safety)``, i.e. ``a/s, b/s³, c/s⁵``;
    4. ``l_{k+1} = p_k(l_k)``, ``u_{k+1} = 2 − l_{k+1}``.

    ``polar_express_coefficients(8, **POLAR_EXPRESS_8_STEP_ARGS)`` gives the paper's 8-step set and
    ``polar_express_coefficients(5, **POLAR_EXPRESS_5_STEP_ARGS)`` the published 5-step set.
    """
    if degree not in (3, 5):
        raise ValueError(f"degree must be 3 (cubic) or 5 (quintic), got {degree!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 < l < 1:
        raise ValueError(f"l (lower end of the singular-value interval) must be in (0, 1), got {l!r}")
    if not 0 <= cushion < 1:
        raise ValueError(f"cushion must be in [0, 1), got {cushion!r}")
    if not math.isfinite(safety) or safety < 1:
        raise ValueError(f"safety must be a finite number >= 1, got {safety!r}")
    lo, hi = float(l), 1.0
    out = []
    optimal = _optimal_odd_quintic if degree == 5 else _optimal_odd_cubic
    for k in range(steps):
        p = optimal(max(lo, cushion * hi), hi)
        scale = 2 / sum(_image(p, lo, hi))
        p = tuple(c * scale for c in p)
        if k < steps - 1:
            p = tuple(c / safety ** (2 * j + 1) for j, c in enumerate(p))
        out.append(tuple(float(c) for c in p))
        lo = odd_polynomial(p, lo)
        hi = 2 - lo
    return tuple(out)


NORMALIZATIONS = ("frobenius", "gelfand", "aol")
"""How a schedule scales its input before the first step (see :class:`PolynomialSchedule`)."""


@dataclass(frozen=True)
class PolynomialSchedule:
    """An odd-polynomial msign: coefficients per step and the input normalisation.

    ``normalization``: ``"frobenius"`` ``X₀ = G / (‖G‖_F·safety + eps)`` (or ``G / max(‖G‖_F, eps)`` when
    ``clamp`` is set, as torch's Muon); ``"gelfand"`` ``X₀ = G / (‖(GGᵀ)²‖_F^{1/4}·safety)``, the Schatten-8 norm
    ``(Σσ⁸)^{1/8} ≥ σ_max`` (CANS), from the first step's own ``A`` and ``A²``; ``"aol"`` ``X₀ = D^{-1/2} G / safety``
    with ``D_ii = Σ_j |GGᵀ|_ij`` (Turbo-Muon), from the first step's own ``A``. ``l``: the lower end of the interval
    ``[l, 1]`` of normalised singular values (before the safety factor) the coefficients were designed for.
    """

    coefficients: Coefficients
    safety: float
    eps: float
    clamp: bool = False
    normalization: str = "frobenius"
    l: float = 1e-3  # noqa: E741

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")

    def scalar_map(self, sigma: np.ndarray, fro: float = 1.0) -> np.ndarray:
        """What the iteration does to one singular value σ of a matrix whose normalising scale is ``fro`` (its
        Frobenius norm for ``"frobenius"``, its Schatten-8 norm for ``"gelfand"``; for ``"aol"`` pass the singular
        values of the rescaled ``D^{-1/2}G`` and ``fro=1``)."""
        if self.normalization != "frobenius":
            x = sigma / (fro * self.safety)
        else:
            x = sigma / (max(fro, self.eps) if self.clamp else fro * self.safety + self.eps)
        for p in self.coefficients:
            x = odd_polynomial(p, x)
        return x

    @property
    def matmuls(self) -> int:
        """Matrix products of the plain iteration: per step ``A = X Xᵀ``, the powers ``A², …`` and the product with
        ``X`` (2 for a cubic step, 3 for a quintic one); the normalisations reuse the first step's products."""
        return sum(len(p) for p in self.coefficients)

    def truncated(self, steps: int) -> PolynomialSchedule:
        """The same schedule stopped after its first ``steps`` steps (the iterate after ``steps`` iterations)."""
        return replace(self, coefficients=self.coefficients[:steps])


def polar_express_8_step() -> PolynomialSchedule:
    """The Polar Express paper's 8-step set with its use-time safety 1.01 (all steps but the last)."""
    raw = polar_express_coefficients(8, **POLAR_EXPRESS_8_STEP_ARGS)
    s = 1.01
    safe = tuple((a / s, b / s**3, c / s**5) for a, b, c in raw[:-1]) + (raw[-1],)
    return PolynomialSchedule(safe, safety=1.01, eps=1e-7)


@torch.compiler.assume_constant_result  # a pure function of its arguments: torch.compile calls it, does not trace it
def schedule(method: str, steps: int | None = None) -> PolynomialSchedule:
    """The polynomial schedule behind ``msign(method=..., steps=...)``.

    ``polar_express``: ``steps`` (default 5) coefficients from the generator with the 5-step settings
    (``steps=5`` is exactly the published set). ``newton_schulz``: the fixed quintic repeated. ``cubic``, ``cans``,
    ``aol``: see :mod:`specopt.msign_schedules` (default 5, 4 and 4 steps).
    """
    if method == "polar_express":
        coefficients = polar_express_coefficients(_steps(steps, 5), **POLAR_EXPRESS_5_STEP_ARGS)
        return PolynomialSchedule(coefficients, safety=1.02, eps=1e-6)
    if method == "newton_schulz":
        return PolynomialSchedule((NEWTON_SCHULZ_COEFFICIENTS,) * _steps(steps, 5), 1.0, 1e-7, clamp=True)
    from specopt import msign_schedules  # it builds on this module's generator

    if method in msign_schedules.DESIGNS:
        return msign_schedules.cheaper_schedule(method, _steps(steps, msign_schedules.DESIGNS[method].steps))
    polynomial = [m for m in METHODS if m != "svd"]
    raise ValueError(f"no polynomial schedule for method {method!r}; polynomial methods: {', '.join(polynomial)}")


def _steps(steps: int | None, default: int) -> int:
    if steps is None:
        return default
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps


def msign_band(method: str = "polar_express", steps: int | None = None,
               l: float | None = None) -> tuple[float, float]:  # noqa: E741
    """Exact-arithmetic range of the output singular values for normalised inputs in ``[l, 1]``.

    Normalised: ``σ/‖G‖_F`` for polar_express, newton_schulz and cubic, ``σ/‖σ‖_8`` for cans, the singular values of
    ``D^{-1/2}G`` for aol (see :class:`PolynomialSchedule`). ``l`` defaults to the interval the method was designed
    for: 1e-3 for polar_express and newton_schulz, the widest interval on which Polar Express's 5-step band holds for
    cubic, cans and aol (:data:`specopt.msign_schedules.DESIGNS`); pass ``l=1e-3`` to compare them on Polar
    Express's interval.

    Defaults: polar_express 5 steps ≈ (0.847, 1.141); newton_schulz 5 steps ≈ (0.471, 1.202); svd (1, 1); cubic,
    cans and aol within polar_express's. Floating-point compute widens the band by roughly the compute dtype's
    relative precision (bf16: ≈ 1e-2 per step accumulated).
    """
    if method not in METHODS:
        raise ValueError(f"unknown msign method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "svd":
        _steps(steps, 1)  # refused as for the polynomial methods, though the SVD takes no steps
        return (1.0, 1.0)
    sched = schedule(method, steps)
    if l is None:
        l = sched.l  # noqa: E741
    if not 0 < l < 1:
        raise ValueError(f"l (lower end of the normalised singular values) must be in (0, 1), got {l!r}")
    y = sched.scalar_map(np.geomspace(l, 1.0, 100_001))
    return float(y.min()), float(y.max())


@torch.compiler.assume_constant_result  # CPU feature queries are opaque to torch.compile; the answer is fixed
def default_compute_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the device multiplies bf16 matrices natively (CUDA with bf16, CPUs with AVX512-BF16
    or AMX), else ``None`` (compute in the input's dtype, at least float32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if native else None
    return None


def msign(
    G: torch.Tensor,
    *,
    method: str = "polar_express",
    steps: int | None = None,
    compute_dtype: torch.dtype | None = None,
    check_finite: bool = True,
    gram: bool | None = None,
) -> torch.Tensor:
    """Polar factor ``U sign(Σ) Vᵀ`` of a matrix or a batch of matrices (any leading dims).

    Args:
        G: real floating tensor of shape ``(..., m, n)``, any aspect ratio (wide or tall: tall inputs
           are transposed internally so that the iteration works on the smaller Gram matrix).
        method: ``"polar_express"`` (default), ``"newton_schulz"``, ``"svd"``, ``"cubic"``, ``"cans"`` or
           ``"aol"``.
        steps: iterations of a polynomial method (default: 5 for polar_express, newton_schulz and cubic, 4 for cans
           and aol, the steps their schedules are designed for).
        compute_dtype: dtype of the iteration. ``None`` (default) computes in bfloat16 where the device has
           native bf16 matmuls (see :func:`default_compute_dtype`) and in the input's dtype (at least
           float32) elsewhere; pass e.g. ``torch.float32`` to turn bf16 off. The SVD always runs in at
           least float32 (float64 for float64 input).
        gram: iterate on the small Gram matrix of a wide matrix (:func:`_gram_polynomial_sign`). ``None``
           (default) does where it is faster at equal accuracy (float32/float64, aspect ≥ 2); ``True`` also
           where it is faster at a small cost in accuracy (bf16, aspect ≥ 3, ≥ 128 rows); ``False`` never
           (torch.optim.Muon's arithmetic). See :func:`use_gram`.
        check_finite: raise ``ValueError`` if ``G`` holds NaN or Inf (one reduction; costs a device sync on
           CUDA). With ``False`` a polynomial method propagates non-finite entries to a NaN result; the SVD
           raises torch's error (NaN) or may return a finite result (Inf): keep the check on with ``"svd"``.

    Returns:
        a tensor of ``G``'s shape, dtype and device.
    """
    check_matrix(G, "msign input")
    if method not in METHODS:
        raise ValueError(f"unknown msign method {method!r}; valid methods: {', '.join(METHODS)}")
    _steps(steps, 1)  # also for the SVD, which takes none: a bad value is a mistake however it would be used
    if check_finite and not bool(torch.isfinite(G).all()):
        raise ValueError("msign input contains NaN or Inf; the polar factor of a non-finite matrix is undefined")
    work = resolve_compute_dtype(G, compute_dtype, method)
    if G.numel() == 0:  # the polar factor of an empty matrix is empty
        return G.clone()
    return polar_factor(G.to(work, copy=True), method=method, steps=steps, gram=gram).to(G.dtype)


def polar_factor(X: torch.Tensor, *, method: str = "polar_express", steps: int | None = None,
                 gram: bool | None = None) -> torch.Tensor:
    """msign computed in ``X``'s own dtype, overwriting ``X`` (no validation, no copy, no dtype round trip).

    For callers that already hold a private copy in the compute dtype, such as the optimizer engine, which
    stacks same-shape gradients straight into one bf16 buffer. Use :func:`msign` otherwise.
    """
    transpose = X.shape[-2] > X.shape[-1]
    if transpose:
        X = X.mT
    shape = X.shape
    if X.ndim > 3:
        X = X.reshape(-1, *X.shape[-2:])
    if method == "svd":
        X = _svd_sign(X)
    else:
        sched = schedule(method, steps)
        iterate = _gram_polynomial_sign if use_gram(gram, X.dtype, X.shape) else _polynomial_sign
        if X.ndim == 3 and not batch_pays(X.device, X.shape[-2] * X.shape[-1]):
            X = torch.stack([iterate(x, sched) for x in X.unbind(0)])
        else:
            X = iterate(X, sched)
    X = X.reshape(shape)
    return X.mT if transpose else X


CPU_BATCH_MAX_NUMEL = 128 * 256
"""On the CPU, a stack of matrices with at most this many entries each runs as one batched call; larger ones run
one BLAS call per matrix. Measured on one thread in float32 (Polar Express, batched ÷ per-matrix time):
16×16 ×150 0.01, 32×32 ×64 0.17, 64×64 ×32 0.27, 64×256 ×16 0.85, 128×128 ×16 0.90, 256×256 ×8 1.03,
512×512 ×4 1.07: a small matrix's iteration is a few microseconds of BLAS under tens of microseconds of
Python and dispatch per call, a large one's is its matmuls."""


def batch_pays(device: torch.device, numel: int) -> bool:
    """Whether a stack of same-shape tensors of ``numel`` entries each is best computed as one batched call: always
    on accelerators (one launch), on the CPU up to :data:`CPU_BATCH_MAX_NUMEL` entries."""
    return device.type != "cpu" or numel <= CPU_BATCH_MAX_NUMEL


def resolve_compute_dtype(G: torch.Tensor, compute_dtype, method: str) -> torch.dtype:
    at_least_fp32 = torch.promote_types(G.dtype, torch.float32)
    if method == "svd":
        return at_least_fp32
    if compute_dtype is None:
        return default_compute_dtype(G.device) or at_least_fp32
    check_compute_dtype(compute_dtype)
    return compute_dtype


def check_compute_dtype(compute_dtype) -> None:
    """``compute_dtype`` must be None (the default) or a torch floating dtype: a ValueError naming it otherwise (the
    check msign makes, made at construction by the norms and preconditioners that hold one)."""
    if compute_dtype is not None and not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
        raise ValueError(f"compute_dtype must be a torch floating dtype (torch.float32, …), got {compute_dtype!r}")


def run_schedule(G: torch.Tensor, sched: PolynomialSchedule) -> torch.Tensor:
    """The iterate of any odd-polynomial schedule on ``G`` (``(..., m, n)``), in ``G``'s dtype, as msign runs its
    own: e.g. ``schedule("polar_express").truncated(k)``, the 5-step iteration stopped after ``k`` steps, where
    ``msign(steps=k)`` runs the separately designed ``k``-step schedule. ``G`` itself is left as it is."""
    check_matrix(G, "run_schedule input")
    transpose = G.shape[-2] > G.shape[-1]
    X = G.mT if transpose else G
    shape = X.shape
    X = X.reshape(-1, *shape[-2:]).clone()
    X = _polynomial_sign(X, sched).reshape(shape) if X.numel() else X.reshape(shape)
    return X.mT if transpose else X


def _polynomial_sign(X: torch.Tensor, sched: PolynomialSchedule) -> torch.Tensor:
    """Run the odd-polynomial iteration on ``X`` (2-D or a 3-D batch) with ``rows ≤ cols``, in place of ``X₀``.

    Per step ``A = X Xᵀ``, then ``X ← a X + b A X`` (cubic) or ``B = b A + c A²``, ``X ← a X + B X`` (quintic);
    the symmetric products are formed from row blocks (:func:`symmetric_product`, 5/8 of the flops). ``a X + B X``
    stays one fused ``addmm`` (fp32 accumulation, one rounding): folding ``a`` into B's diagonal was measured to cost
    bf16 accuracy. The first step reuses the products its normalisation formed (:func:`_prepare`).
    """
    X, A, A2 = _prepare(X, sched)
    for p in sched.coefficients:
        X = _odd_step(X, p, A, A2)
        A = A2 = None
    return X


def _odd_step(X: torch.Tensor, p: tuple[float, ...], A: torch.Tensor | None = None,
              A2: torch.Tensor | None = None) -> torch.Tensor:
    """``a X + b A X`` (cubic ``p = (a, b)``) or ``a X + (b A + c A²) X`` (quintic) with ``A = X Xᵀ``; ``A`` and
    ``A²`` are formed here unless given."""
    if A is None:
        A = symmetric_product(X, X.mT)
    if len(p) == 2:
        return _addmm(X, A, X, beta=p[0], alpha=p[1])
    a, b, c = p
    B = symmetric_product(A, A, add=A, beta=b, alpha=c) if A2 is None else A2.mul_(c).add_(A, alpha=b)
    return _addmm(X, B, X, beta=a)


def _prepare(X: torch.Tensor, sched: PolynomialSchedule):
    """``X₀`` as ``sched.normalization`` says (in place), with the Gram products of ``X₀`` it formed on the way:
    ``(X₀, None, None)`` for ``"frobenius"``, ``(X₀, A)`` plus ``A²`` for ``"gelfand"``, ``A`` for ``"aol"``.

    Both rescalings are invariant to the scale of ``X``, so they start from the Frobenius-normalised matrix
    (:func:`_normalize`, safe from the smallest normal to the dtype's range) and keep its safety factor:
    ``"gelfand"`` divides by ``g·safety`` with ``g = ‖A²‖_F^{1/4}`` (``A ← A/(g s)²``, ``A² ← A²/(g s)⁴``);
    ``"aol"`` multiplies row i by ``r_i = 1/(√D_ii·safety)``, ``D_ii = Σ_j |A_ij|`` (``A ← r A r``), and leaves a
    zero row zero.
    """
    X = _normalize(X, sched)
    if sched.normalization == "frobenius":
        return X, None, None
    A = symmetric_product(X, X.mT)
    if sched.normalization == "aol":
        d = A.abs().sum(dim=-1, keepdim=True)
        r = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d)) / sched.safety
        return X.mul_(r), A.mul_(r).mul_(r.mT), None
    A2 = symmetric_product(A, A)
    g = torch.linalg.vector_norm(A2, dim=(-2, -1), keepdim=True).pow(0.25)
    g = torch.where(g > 0, g, torch.ones_like(g)) * sched.safety
    return X.div_(g), A.div_(g.square()), A2.div_(g.pow(4))


def _addmm(C: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, beta: float = 1.0, alpha: float = 1.0,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``beta·C + alpha·X Y`` for matrices or 3-D batches: one fused product (fp32 accumulation in bf16),
    written into ``out`` (which may be a strided view) when given."""
    fused = torch.addmm if X.ndim == 2 else torch.baddbmm
    return fused(C, X, Y, beta=beta, alpha=alpha, out=out)


SYMMETRIC_BLOCKS = 4
"""Row blocks of :func:`symmetric_product` (measured best of 2/4/8 for m = 768…1024 in bf16 on CPU)."""

SYMMETRIC_MIN_ROWS = 768
"""Below this many rows the plain product is as fast or faster (measured in bf16 on 2 CPU cores: a loss at
m ≤ 640, a 15–30 % gain at m = 768…1024)."""


def _blocks_pay(X: torch.Tensor) -> bool:
    """Whether :func:`symmetric_product`'s row blocks beat one plain product: on CPU from
    :data:`SYMMETRIC_MIN_ROWS` rows; never on CUDA, where the extra launches and copies cost more than the
    flops they save (measured on an H100: 1.8× slower for a batch of 48 768×768 matrices); never under
    torch.compile (see :func:`symmetric_product`)."""
    return X.device.type == "cpu" and X.shape[-2] >= SYMMETRIC_MIN_ROWS


def symmetric_product(L: torch.Tensor, R: torch.Tensor, add: torch.Tensor | None = None, beta: float = 0.0,
                      alpha: float = 1.0) -> torch.Tensor:
    """``beta·add + alpha·L R`` for a product known to be symmetric (``R = Lᵀ``, or ``L``, ``R`` symmetric
    polynomials in one matrix; ``add`` symmetric), computing only the blocks on and below the diagonal and
    mirroring them above, like a BLAS syrk. Row block i multiplies ``L_i`` by the first ``(i+1)·h``
    columns of R, so k blocks cost ``(k+1)/(2k)`` of the full product: 5/8 for k = 4.

    Under torch.compile the product is plain: dynamo cannot trace ``out=`` into a strided view, and written
    out of place the blocks and mirror copies were 4.7× the graph (an msign's code compiled 5× slower) while
    inductor's transposing copies cost what the blocks save (GPT-2-small block, 2 CPU threads: 0.78 s a
    compiled step with blocks, 0.80 s without, first call 131 s against 27 s).
    """
    m = L.shape[-2]
    if not _blocks_pay(L) or torch.compiler.is_compiling():
        return L @ R if add is None else _addmm(add, L, R, beta=beta, alpha=alpha)
    out = torch.empty(L.shape[:-2] + (m, m), dtype=L.dtype, device=L.device)
    h = -(-m // SYMMETRIC_BLOCKS)
    for start in range(0, m, h):
        stop = min(start + h, m)
        rows, cols, block = L[..., start:stop, :], R[..., :, :stop], out[..., start:stop, :stop]
        if add is None:
            torch.matmul(rows, cols, out=block)
        else:
            _addmm(add[..., start:stop, :stop], rows, cols, beta=beta, alpha=alpha, out=block)
        out[..., :start, start:stop].copy_(block[..., :, :start].mT)
    return out


GRAM_MIN_ASPECT = 2.0
"""float32/float64: below this cols/rows ratio the Gram variant does more flops than the plain iteration."""

GRAM_MIN_ASPECT_HALF = 3.0
"""bfloat16/float16 (``gram=True``): the half-precision segments (:func:`gram_segments`) save flops from
aspect 1.5, but measured on 2 CPU cores they cost time at aspect 2 (768×1536: 1.11×) and saved 13–21 % at
aspect 4."""

GRAM_MIN_ROWS_HALF = 128
"""bfloat16/float16 (``gram=True``): below this many rows the extra small products cost more than the flops
saved (measured 1.09× at 64×256, 0.93× at 128×512)."""

GRAM_SEGMENT = 3
"""Steps the Gram variant runs on ``R`` before re-forming ``X = Q X₀`` and ``R = X Xᵀ`` (float32/float64)."""

GRAM_SEGMENT_HALF = 2
"""The same in bfloat16/float16, whose rounding of ``R`` grows spurious negative eigenvalues by ``p(λ)²``
per step: three-step segments blew up to ‖X‖₂ > 10⁴ on 64×256 inputs, two-step segments stayed within
1.154 on 90 stress inputs (tests/test_msign.py checks a bound of 1.2)."""


def _half(dtype: torch.dtype) -> bool:
    return dtype not in (torch.float32, torch.float64)


def check_gram(gram) -> None:
    """``gram`` must be True, False or None (automatic): a ValueError naming it otherwise."""
    if gram is not None and not isinstance(gram, bool):
        raise ValueError(f"gram must be True, False or None (automatic), got {gram!r}")


def use_gram(gram: bool | None, work: torch.dtype, shape) -> bool:
    """Whether msign runs the Gram variant on a ``shape`` matrix (rows ≤ cols) computed in ``work``.

    ``None`` (default): where it is faster at equal accuracy, float32/float64 with aspect ≥ 2.
    ``True``: also where it is faster at a small cost in accuracy, bfloat16/float16 with aspect ≥ 3 and at
    least 128 rows (measured on CPU: 0.78–0.87× the time of the plain iteration at aspect 4; singular values
    up to 0.09 further from the exact iteration's than the plain bf16 iteration's 0.05; char-GPT final
    validation losses 0.2 % higher on average, EXPERIMENTS.md). ``False``: never.
    """
    check_gram(gram)
    if gram is False:
        return False
    rows, cols = shape[-2], shape[-1]
    if _half(work):
        return gram is True and cols >= GRAM_MIN_ASPECT_HALF * rows and rows >= GRAM_MIN_ROWS_HALF
    return cols >= GRAM_MIN_ASPECT * rows


def gram_segments(steps: int, dtype: torch.dtype) -> list[range]:
    """The steps the Gram variant groups between restarts: ``[0, 1, 2], [3, 4]`` for 5 steps in float32;
    in half precision ``[0], [1, 2], [3, 4]``: the first step, whose slope ``a₀`` (8.2 for Polar Express)
    amplifies rounding most, runs as a plain step, the rest in pairs."""
    if _half(dtype):
        starts = [0, *range(1, steps, GRAM_SEGMENT_HALF)]
    else:
        starts = list(range(0, steps, GRAM_SEGMENT))
    return [range(s, e) for s, e in zip(starts, [*starts[1:], steps], strict=True)]


def _gram_polynomial_sign(X: torch.Tensor, sched: PolynomialSchedule,
                          segments: list[range] | None = None) -> torch.Tensor:
    """The same odd-polynomial iteration run on the m×m Gram matrix of a wide ``X₀`` (m ≤ n; 2-D or 3-D),
    as in Gram Newton–Schulz (Zhang, Amsel, Chen & Dao, 2026).

    Within a segment of steps (``segments``, default :func:`gram_segments`) every iterate is
    ``X_k = Q_k X_s`` with ``Q_k`` a polynomial in ``R_s = X_s X_sᵀ``, so with
    ``P_k = a_k I + b_k R_k + c_k R_k²`` (``a_k I + b_k R_k`` for a cubic step): ``Q_{k+1} = P_k Q_k`` and
    ``R_{k+1} = P_k R_k P_k`` (all symmetric and commuting, so every product is a :func:`symmetric_product`). At
    the end of a segment ``X`` is re-formed and ``R`` recomputed from it, which bounds the round-off that
    ``R_{k+1} = P R P`` accumulates. A one-step segment is a plain step. For 5 steps of a 768×3072 matrix in bf16:
    22 % fewer flops than the plain iteration (full products, as written).
    """
    X, A, A2 = _prepare(X, sched)
    for segment in segments or gram_segments(len(sched.coefficients), X.dtype):
        if len(segment) == 1:
            X = _odd_step(X, sched.coefficients[segment[0]], A, A2)
            A = A2 = None
            continue
        R, R2, Q = (symmetric_product(X, X.mT) if A is None else A), A2, None
        A = A2 = None
        for k in segment:
            P = _polynomial_of_gram(R, sched.coefficients[k], R2)
            R2 = None
            Q = P if Q is None else symmetric_product(P, Q)
            if k != segment[-1]:
                R = symmetric_product(P, symmetric_product(R, P))
        X = Q @ X
    return X


def _polynomial_of_gram(R: torch.Tensor, p: tuple[float, ...], R2: torch.Tensor | None = None) -> torch.Tensor:
    """``P = a I + b R`` (cubic) or ``a I + b R + c R²`` (quintic; ``R²`` formed here unless given)."""
    if len(p) == 2:
        P = R * p[1]
    elif R2 is None:
        P = symmetric_product(R, R, add=R, beta=p[1], alpha=p[2])
    else:
        P = R2.mul_(p[2]).add_(R, alpha=p[1])
    P.diagonal(dim1=-2, dim2=-1).add_(p[0])
    return P


def _normalize(X: torch.Tensor, sched: PolynomialSchedule) -> torch.Tensor:
    """``X₀ = X / (‖X‖_F·safety + eps)``, in place (``X`` is msign's private copy).

    Where that formula fails — ``‖X‖_F`` below ``1000·eps`` (eps would dominate it: the output would not be
    orthogonal and Muon's step would vanish) or not finite (``‖X‖_F²`` overflows float32 beyond ~1e19: the output
    would be zeros) — the norm is taken as ``s·‖X/s‖_F`` with ``s = max|X_ij|``, which neither under- nor overflows,
    and eps is left out. Elsewhere the formula is unchanged (torch.optim.Muon's, bit for bit). Branch-free."""
    fro = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    largest = X.abs().amax(dim=(-2, -1), keepdim=True)
    safe = torch.where(largest > 0, largest, torch.ones_like(largest))
    robust = safe * torch.linalg.vector_norm(X / safe, dim=(-2, -1), keepdim=True)
    usual = fro.clamp(min=sched.eps) if sched.clamp else fro * sched.safety + sched.eps
    extreme = ((fro < 1000 * sched.eps) | ~torch.isfinite(fro)) & (largest > 0)
    return X.div_(torch.where(extreme, robust if sched.clamp else robust * sched.safety, usual))


def _svd_sign(X: torch.Tensor) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    tol = max(X.shape[-2:]) * torch.finfo(S.dtype).eps * S[..., :1]
    keep = (S > tol).to(S.dtype)
    return (U * keep.unsqueeze(-2)) @ Vh


def nuclear_norm(G: torch.Tensor, **msign_kwargs) -> torch.Tensor:
    """``‖G‖_* = ⟨G, msign(G)⟩`` over the last two dims: no SVD needed with a polynomial method
    (the dual of the spectral norm). Exact with ``method="svd"``; otherwise biased by the msign band."""
    return (G * msign(G, **msign_kwargs).to(G.dtype)).sum(dim=(-2, -1))
