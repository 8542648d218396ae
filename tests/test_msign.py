"""msign: agreement with the SVD, the documented singular-value bands, edge cases and bad input."""

import numpy as np
import pytest
import torch
from conftest import matrix_with_singular_values, normalized_spectrum
from hypothesis import given, settings
from hypothesis import strategies as st

from specopt import msign, msign_band
from specopt.linalg import (
    default_compute_dtype,
    nuclear_norm,
    polar_express_8_step,
    polar_express_coefficients,
    schedule,
)
from specopt.msign_schedules import cheaper_schedule

POLY = ["polar_express", "newton_schulz"]
ALL = POLY + ["svd"]
CHEAPER = ["cubic", "cans", "aol"]  # their bands and intervals: test_msign_schedules.py


def svd_sign(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def test_documented_bands():
    lo, hi = msign_band("polar_express")
    assert 0.84 < lo < 0.85 and 1.14 < hi < 1.145  # ALGORITHMS.md: ≈ [0.85, 1.14]
    lo, hi = msign_band("newton_schulz")
    assert 0.46 < lo < 0.48 and 1.19 < hi < 1.21  # ≈ [0.47, 1.20]
    assert msign_band("svd") == (1.0, 1.0)
    # the 8-step set after 6 steps ≈ [0.993, 1.001]
    sched = polar_express_8_step()
    short = type(sched)(sched.coefficients[:6], sched.safety, sched.eps)
    y = short.scalar_map(np.geomspace(1e-3, 1, 100_001))
    assert 0.99 < y.min() < 0.995 and 1.0 < y.max() < 1.002


@pytest.mark.parametrize("method", POLY)
@pytest.mark.parametrize("shape", [(32, 32), (24, 96), (96, 24)])
def test_polynomial_msign_is_the_scalar_map_on_singular_values(method, shape):
    """In fp64 the iteration acts on each singular value alone: msign(G) = U f(Σ) Vᵀ."""
    k = min(shape)
    sigma = np.geomspace(1e-2, 3.0, k)
    G = matrix_with_singular_values(*shape, sigma, seed=1)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    f = schedule(method).scalar_map(S.numpy(), fro=float(torch.linalg.norm(G)))
    expected = (U * torch.from_numpy(f)) @ Vh
    got = msign(G, method=method, compute_dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", POLY)
@pytest.mark.parametrize("dtype, slack", [(torch.float64, 1e-9), (torch.float32, 1e-4), (torch.bfloat16, 0.02)])
@pytest.mark.parametrize("shape", [(64, 64), (48, 192), (192, 48)])
def test_singular_values_stay_in_band(method, dtype, slack, shape):
    safety = schedule(method).safety
    G = matrix_with_singular_values(*shape, normalized_spectrum(min(shape), safety), seed=2)
    lo, hi = msign_band(method)
    G = G if dtype == torch.float64 else G.float()
    s = torch.linalg.svdvals(msign(G, method=method, compute_dtype=dtype).double())
    assert lo - slack <= s.min() and s.max() <= hi + slack


def test_polar_express_beats_newton_schulz_accuracy():
    G = matrix_with_singular_values(64, 128, normalized_spectrum(64, 1.02), seed=3)
    err = {m: (torch.linalg.svdvals(msign(G, method=m, compute_dtype=torch.float64)) - 1).abs().max() for m in POLY}
    assert err["polar_express"] <= 0.16 < 0.5 <= err["newton_schulz"] + 0.05


@pytest.mark.parametrize("method", ALL)
def test_converged_methods_agree_with_svd(method):
    G = matrix_with_singular_values(40, 70, np.linspace(0.2, 1.0, 40), seed=4)
    steps = {"polar_express": 10, "newton_schulz": None, "svd": None}[method]
    got = msign(G, method=method, steps=steps, compute_dtype=torch.float64)
    lo, hi = msign_band("newton_schulz")
    tol = {"polar_express": 1e-6, "newton_schulz": max(1 - lo, hi - 1), "svd": 1e-12}[method]
    assert torch.linalg.matrix_norm(got - svd_sign(G), ord=2) <= tol


@pytest.mark.parametrize("method", ALL + CHEAPER)
def test_tall_is_transpose_of_wide(method):
    G = torch.randn(20, 50, dtype=torch.float64)
    torch.testing.assert_close(msign(G.T, method=method), msign(G, method=method).T)


@pytest.mark.parametrize("method", ALL + CHEAPER)
def test_batch_equals_one_by_one(method):
    G = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    batched = msign(G, method=method, compute_dtype=torch.float64)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], msign(G[i, j], method=method, compute_dtype=torch.float64))


@pytest.mark.parametrize("method", ALL + CHEAPER)
@pytest.mark.parametrize("shape", [(7, 9), (2, 3, 5, 5)])
def test_zero_maps_to_zero(method, shape):
    out = msign(torch.zeros(shape), method=method)
    assert torch.equal(out, torch.zeros(shape))


@pytest.mark.parametrize("method", ALL)
def test_rank_deficient_keeps_the_null_space(method):
    G = matrix_with_singular_values(30, 40, [1.0, 0.7, 0.5], seed=5)
    out = msign(G, method=method, steps=12 if method == "polar_express" else None, compute_dtype=torch.float64)
    s = torch.linalg.svdvals(out)
    assert s[3:].abs().max() < 1e-8  # null directions stay null
    assert (s[:3] > 0.4).all()
    if method != "newton_schulz":
        U, _, Vh = torch.linalg.svd(G)
        torch.testing.assert_close(out, U[:, :3] @ Vh[:3], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("shape", [(1, 17), (17, 1), (16, 256), (256, 16)])
def test_vectors_and_extreme_aspect_ratios(method, shape):
    G = torch.randn(shape, dtype=torch.float64)
    out = msign(G, method=method, compute_dtype=torch.float64)
    lo, hi = msign_band(method)
    s = torch.linalg.svdvals(out)
    assert out.shape == G.shape and torch.isfinite(out).all()
    assert lo - 1e-9 <= s.min() <= s.max() <= hi + 1e-9
    if min(shape) == 1:  # a vector's polar factor is the unit vector, up to the band
        cos = (out * G).sum() / (out.norm() * G.norm())
        assert cos > 1 - 1e-12


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_output_keeps_input_dtype(method, dtype):
    G = torch.randn(12, 20).to(dtype)
    out = msign(G, method=method)
    assert out.dtype == dtype and out.shape == G.shape
    s = torch.linalg.svdvals(out.double())
    lo, hi = msign_band(method)
    assert lo - 0.03 <= s.min() and s.max() <= hi + 0.03


def _cpu_has_native_bf16() -> bool:
    """From the CPU's own flags, not from the function under test."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    return "avx512_bf16" in flags or "amx_tile" in flags


@pytest.mark.native_bf16_default
def test_default_compute_dtype_is_bf16_where_native_and_can_be_turned_off():
    G = matrix_with_singular_values(64, 64, normalized_spectrum(64, 1.02), seed=6, dtype=torch.float32)
    exact = msign(G.double(), compute_dtype=torch.float64)
    native = torch.bfloat16 if _cpu_has_native_bf16() else None
    assert default_compute_dtype(G.device) == native
    default = msign(G)
    assert torch.equal(default, msign(G, compute_dtype=native or torch.float32))
    fp32 = msign(G, compute_dtype=torch.float32)
    assert (fp32.double() - exact).abs().max() < 1e-4
    if native is torch.bfloat16:
        assert (default.double() - exact).abs().max() > 1e-4  # really computed in bf16


@pytest.mark.parametrize(
    "bad, match",
    [([[1.0, 2.0]], "torch.Tensor"), (torch.ones(3), "at least 2 dims"),
     (torch.ones(2, 2, dtype=torch.int64), "floating"), (torch.ones(2, 2, dtype=torch.complex64), "complex"),
     (torch.eye(3).to_sparse(), "dense")],
)
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        msign(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", ALL + CHEAPER)
def test_non_finite_input_is_reported_never_finite(value, method):
    G = torch.randn(8, 8)
    G[3, 4] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        msign(G, method=method)
    if method != "svd":  # unchecked: the result must not be a finite wrong answer
        assert not torch.isfinite(msign(G, method=method, check_finite=False)).all()


def test_bad_options_are_named():
    G = torch.randn(4, 4)
    with pytest.raises(ValueError, match="unknown msign method 'qr'"):
        msign(G, method="qr")
    with pytest.raises(ValueError, match="steps"):
        msign(G, steps=0)
    for method in ("svd", "polar_express"):  # the SVD takes no steps, but a bad count is refused all the same
        with pytest.raises(ValueError, match="steps must be a positive integer, got -1"):
            msign(G, method=method, steps=-1)
        with pytest.raises(ValueError, match="steps must be a positive integer, got True"):
            msign_band(method, steps=True)
    with pytest.raises(ValueError, match="compute_dtype"):
        msign(G, compute_dtype=torch.int32)
    for safety in (float("nan"), float("inf"), 0.5):  # inf had given all-zero coefficients, nan numpy's error
        with pytest.raises(ValueError, match="safety must be a finite number >= 1"):
            polar_express_coefficients(5, safety=safety)
    with pytest.raises(ValueError, match="steps must be a positive integer, got True"):
        polar_express_coefficients(True)
    with pytest.raises(ValueError, match="design_steps must be a positive integer, got 0"):
        cheaper_schedule("cubic", 5, design_steps=0)  # had silently used the default 5


def test_nuclear_norm_without_svd():
    G = matrix_with_singular_values(20, 30, np.linspace(0.1, 2, 20), seed=7)
    exact = torch.linalg.svdvals(G).sum()
    assert nuclear_norm(G, method="svd") == pytest.approx(float(exact), rel=1e-12)
    lo, hi = msign_band("polar_express")
    approx = nuclear_norm(G, compute_dtype=torch.float64)
    assert lo * exact <= approx <= hi * exact


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), batch=st.integers(0, 2), seed=st.integers(0, 2**16),
       method=st.sampled_from(ALL))
def test_property_singular_values_in_band_and_vectors_kept(m, n, batch, seed, method):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn((batch,) * (batch > 0) + (m, n), generator=g, dtype=torch.float64)
    out = msign(G, method=method, compute_dtype=torch.float64)
    assert out.shape == G.shape
    # U sign(Σ) Vᵀ shares singular vectors with G: Gᵀ·out is symmetric positive semi-definite
    P = G.mT @ out
    torch.testing.assert_close(P, P.mT, atol=1e-9, rtol=1e-9)
    assert torch.linalg.eigvalsh(P).min() > -1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(method, dtype):
    G = torch.randn(2, 64, 96).to(dtype)
    out = msign(G.cuda(), method=method, compute_dtype=torch.float32)
    assert out.device.type == "cuda" and out.dtype == dtype
    torch.testing.assert_close(out.cpu().float(), msign(G, method=method, compute_dtype=torch.float32).float(),
                               atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_gram_matches_cpu():
    G = torch.randn(3, 128, 512)
    cpu = msign(G, compute_dtype=torch.bfloat16, gram=True)
    cuda = msign(G.cuda(), compute_dtype=torch.bfloat16, gram=True).cpu()
    torch.testing.assert_close(torch.linalg.svdvals(cuda.double()), torch.linalg.svdvals(cpu.double()),
                               atol=0.05, rtol=0)


@pytest.mark.parametrize("method", POLY + CHEAPER)
@pytest.mark.parametrize("shape", [(16, 256), (2, 3, 24, 60), (60, 24), (1, 40)])
@pytest.mark.parametrize("spectrum", ["gaussian", "ill-conditioned"])
def test_gram_variant_equals_plain_iteration(method, shape, spectrum):
    m = min(shape[-2:])
    if spectrum == "gaussian":
        G = torch.randn(shape, dtype=torch.float64)
    else:
        G = matrix_with_singular_values(shape[-2], shape[-1], normalized_spectrum(m, 1.02) if m > 1 else [1.0])
        G = G.expand(shape).contiguous()
    plain = msign(G, method=method, compute_dtype=torch.float64, gram=False)
    gram = msign(G, method=method, compute_dtype=torch.float64, gram=True)
    torch.testing.assert_close(gram, plain, atol=1e-9, rtol=0)
    gram32 = msign(G.float(), method=method, compute_dtype=torch.float32, gram=True)
    assert (gram32.double() - plain).abs().max() < 1e-4


def test_gram_is_chosen_only_where_it_pays():
    from specopt.linalg import use_gram

    assert use_gram(None, torch.float32, (64, 256))
    assert not use_gram(None, torch.float32, (64, 100))  # aspect < 2
    assert not use_gram(None, torch.bfloat16, (768, 3072))  # bf16: less accurate, so only on request
    assert use_gram(True, torch.bfloat16, (768, 3072))
    assert not use_gram(True, torch.bfloat16, (768, 1536))  # aspect 2: slower in bf16 (measured)
    assert not use_gram(True, torch.bfloat16, (64, 256))  # too small to pay for the extra products
    assert not use_gram(True, torch.float32, (64, 64))  # no flops to save
    assert not use_gram(False, torch.float32, (64, 256))
    with pytest.raises(ValueError, match="gram"):
        msign(torch.randn(4, 8), gram="yes")


def test_gram_segments_restart_twice_as_often_in_half_precision():
    from specopt.linalg import gram_segments

    assert [list(r) for r in gram_segments(5, torch.float32)] == [[0, 1, 2], [3, 4]]
    assert [list(r) for r in gram_segments(5, torch.bfloat16)] == [[0], [1, 2], [3, 4]]
    assert [list(r) for r in gram_segments(8, torch.float64)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [list(r) for r in gram_segments(1, torch.bfloat16)] == [[0]]


@pytest.mark.parametrize("shape", [(24, 100), (3, 24, 100), (800, 1700)])  # a batch (the GPU path); blocks
def test_half_precision_segments_are_the_same_iteration(shape):
    from specopt.linalg import _gram_polynomial_sign, _polynomial_sign, gram_segments, schedule

    sched = schedule("polar_express")
    G = matrix_with_singular_values(*shape[-2:], normalized_spectrum(shape[-2], 1.02), seed=3).expand(shape)
    plain = _polynomial_sign(G.clone(), sched)
    gram = _gram_polynomial_sign(G.clone(), sched, gram_segments(5, torch.bfloat16))
    torch.testing.assert_close(gram, plain, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", [(64, 256), (128, 512), (200, 900)])
def test_bf16_gram_stays_within_the_band_of_the_plain_iteration(shape, seed):
    """bf16 rounding of R grows spurious negative eigenvalues within a segment; with two-step segments the
    result stays near the plain bf16 iteration (with the float32 segmentation it exceeded 10⁴ here)."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    spectra = [torch.randn(m, n, generator=g),
               torch.randn(m, 3, generator=g) @ torch.randn(3, n, generator=g) + 1e-3 * torch.randn(m, n, generator=g),
               matrix_with_singular_values(m, n, normalized_spectrum(m, 1.02), seed=seed).float()]
    from specopt.linalg import _gram_polynomial_sign, schedule

    for G in spectra:
        plain = torch.linalg.svdvals(msign(G, compute_dtype=torch.bfloat16, gram=False).double())
        gram = _gram_polynomial_sign(G.to(torch.bfloat16), schedule("polar_express"))
        gram = torch.linalg.svdvals(gram.double())
        assert gram.max() <= 1.2  # measured ≤ 1.154 (plain: 1.143); 466 with three-step segments
        assert (gram - plain).abs().max() <= 0.15  # measured ≤ 0.116


@pytest.mark.parametrize("shape", [(800, 900), (2, 780, 800)])
def test_symmetric_product_equals_the_plain_products(shape):
    from specopt.linalg import SYMMETRIC_MIN_ROWS, symmetric_product

    assert shape[-2] >= SYMMETRIC_MIN_ROWS  # the blocked path
    X = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(symmetric_product(X, X.mT), X @ X.mT)
    A = X @ X.mT
    torch.testing.assert_close(symmetric_product(A, A, add=A, beta=-2.0, alpha=0.5), -2.0 * A + 0.5 * A @ A)
    P = 3.0 * A + A @ A  # commutes with A: A·P is symmetric
    torch.testing.assert_close(symmetric_product(A, P), A @ P)


def test_large_matrix_msign_uses_blocked_products_and_agrees_with_svd():
    G = matrix_with_singular_values(800, 1000, np.linspace(0.2, 1.0, 800), seed=8)
    lo, hi = msign_band("polar_express")
    s = torch.linalg.svdvals(msign(G, compute_dtype=torch.float64, gram=False))
    assert lo - 1e-9 <= s.min() and s.max() <= hi + 1e-9
    out = msign(G, steps=10, compute_dtype=torch.float64, gram=False)
    assert torch.linalg.matrix_norm(out - svd_sign(G), ord=2) < 1e-6


@pytest.mark.parametrize("scale, dtype", [(1e-37, torch.float32), (1e-12, torch.float32), (1e25, torch.float32),
                                          (1e36, torch.float32), (1e-300, torch.float64), (1e300, torch.float64)])
def test_msign_stays_orthogonal_from_the_smallest_normal_to_the_dtype_range(scale, dtype):
    """‖G‖_F below eps made the output non-orthogonal (Muon's step vanished); ‖G‖_F² overflowing float32 beyond
    ~1e19 made it all zeros."""
    G = (matrix_with_singular_values(32, 96, normalized_spectrum(32, 1.02), seed=3) * scale).to(dtype)
    assert torch.isfinite(G).all() and G.abs().max() > 0
    s = torch.linalg.svdvals(msign(G, compute_dtype=torch.float32 if dtype == torch.float32 else dtype).double())
    lo, hi = msign_band("polar_express")
    assert lo - 0.03 <= float(s.min()) and float(s.max()) <= hi + 0.03
