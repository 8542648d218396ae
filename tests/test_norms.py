"""The norm catalogue: lmo/dual duality, sup over the unit ball, init on the sphere, projections."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specopt import BiasRMS, ColNorm, Euclidean, RowNorm, Sign, Spectral, SpectralConv, get_norm, msign_band
from specopt.norms import CATALOGUE

# (norm, item shape) pairs: exact (svd) spectral norms, so every identity holds to rounding.
EXACT = {
    "euclidean": (Euclidean(), (5, 7)),
    "sign": (Sign(), (5, 7)),
    "sign_fan_in": (Sign(fan_in_scaled=True), (5, 7)),
    "bias_rms": (BiasRMS(), (9,)),
    "col_norm": (ColNorm(), (6, 4)),
    "col_norm_T": (ColNorm(transpose=True), (10, 3)),
    "row_norm": (RowNorm(), (4, 6)),
    "spectral": (Spectral(method="svd"), (5, 8)),
    "spectral_tall": (Spectral(method="svd"), (8, 3)),
    "spectral_conv": (SpectralConv(method="svd"), (4, 3, 3, 3)),
    "spectral_conv1d": (SpectralConv(kernel_dims=1, method="svd"), (6, 2, 5)),
}
IDS = list(EXACT)


def exact_dual(name: str, g: np.ndarray) -> float:
    """Closed forms of the norm catalogue (docs/reference/norms.md), computed independently with numpy."""
    if name == "euclidean":
        return np.linalg.norm(g)
    if name == "sign":
        return np.abs(g).sum()
    if name == "sign_fan_in":
        return np.abs(g).sum() / g.shape[-1]
    if name == "bias_rms":
        return math.sqrt(g.size) * np.linalg.norm(g)
    if name == "col_norm":
        return math.sqrt(g.shape[0]) * np.linalg.norm(g, axis=0).sum()
    if name == "col_norm_T":
        return math.sqrt(g.shape[1]) * np.linalg.norm(g, axis=1).sum()
    if name == "row_norm":
        return np.linalg.norm(g, axis=1).sum() / math.sqrt(g.shape[1])
    if name.startswith("spectral_conv"):
        taps = int(np.prod(g.shape[2:]))
        nuclear = np.linalg.svd(g.reshape(g.shape[0], -1), compute_uv=False).sum()
        return math.sqrt(g.shape[0] / g.shape[1]) / taps * nuclear
    return math.sqrt(g.shape[0] / g.shape[1]) * np.linalg.svd(g, compute_uv=False).sum()


def batched(norm, x):
    """batch_dims for a stacked batch of one leading dim (None where the norm infers it)."""
    return 1 if norm.item_ndim is None and not getattr(norm, "fan_in_scaled", False) else None


@pytest.mark.parametrize("name", IDS)
def test_lmo_attains_the_dual_and_has_unit_norm(name):
    norm, shape = EXACT[name]
    g = torch.randn(shape, dtype=torch.float64)
    s = norm.lmo(g)
    assert s.shape == g.shape and s.dtype == g.dtype
    assert float((g * s).sum()) == pytest.approx(-float(norm.dual(g)), rel=1e-12)
    assert float(norm.norm(s)) == pytest.approx(1.0, rel=1e-12)
    assert float(norm.dual(g)) == pytest.approx(exact_dual(name, g.numpy()), rel=1e-12)


@pytest.mark.parametrize("name", IDS)
def test_dual_is_the_supremum_over_the_unit_ball(name):
    """No feasible point beats the dual norm; random points of the unit ball come from init/scaling."""
    norm, shape = EXACT[name]
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    dual = float(norm.dual(g))
    for _ in range(200):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * torch.rand((), generator=gen, dtype=torch.float64)
        s = x / norm.norm(x) * torch.rand((), generator=gen, dtype=torch.float64)  # ‖s‖ ≤ 1
        assert float((g * s).sum()) <= dual + 1e-12
        assert float((g * norm.init(shape, 1.0, generator=gen, dtype=torch.float64)).sum()) <= dual + 1e-12
    # and the dual is a norm: homogeneous and subadditive
    h = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert float(norm.dual(-2.5 * g)) == pytest.approx(2.5 * dual, rel=1e-12)
    assert float(norm.dual(g + h)) <= dual + float(norm.dual(h)) + 1e-12


@pytest.mark.parametrize("name", IDS)
def test_lmo_of_zero_is_zero(name):
    norm, shape = EXACT[name]
    assert torch.equal(norm.lmo(torch.zeros(shape)), torch.zeros(shape))
    assert float(norm.dual(torch.zeros(shape))) == 0.0


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("radius", [0.3, 1.0, 7.0])
def test_init_lands_on_the_sphere(name, radius):
    norm, shape = EXACT[name]
    x = norm.init(shape, radius, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x.shape == shape and x.dtype == torch.float64
    assert float(norm.norm(x)) == pytest.approx(radius, rel=1e-12)


@pytest.mark.parametrize("name", ["spectral", "spectral_tall", "spectral_conv"])
def test_spectral_init_is_orthogonal(name):
    norm, shape = EXACT[name]
    x = norm.init(shape, 2.0, dtype=torch.float64).reshape(shape[0], -1)
    s = torch.linalg.svdvals(x)
    torch.testing.assert_close(s, torch.full_like(s, float(s[0])))


@pytest.mark.parametrize("name", IDS)
def test_project_is_feasible_idempotent_nonexpansive(name):
    norm, shape = EXACT[name]
    gen = torch.Generator().manual_seed(4)
    for radius in (0.5, 2.0):
        x = 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
        y = 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
        px, py = norm.project(x, radius), norm.project(y, radius)
        assert float(norm.norm(px)) <= radius * (1 + 1e-12)
        torch.testing.assert_close(norm.project(px, radius), px, rtol=1e-12, atol=1e-12)
        assert torch.linalg.vector_norm(px - py) <= torch.linalg.vector_norm(x - y) + 1e-12
        inside = norm.init(shape, radius / 2, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(norm.project(inside, radius), inside)  # feasible points stay put


@pytest.mark.parametrize("name", IDS)
def test_batch_equals_item_by_item(name):
    norm, shape = EXACT[name]
    g = torch.randn((3,) + shape, dtype=torch.float64)
    bd = batched(norm, g)
    lmo, dual, nrm = norm.lmo(g, bd), norm.dual(g, bd), norm.norm(g, bd)
    assert dual.shape == (3,) and nrm.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(lmo[i], norm.lmo(g[i]))
        torch.testing.assert_close(dual[i], norm.dual(g[i]))
        torch.testing.assert_close(nrm[i], norm.norm(g[i]))
        torch.testing.assert_close(norm.project(g, 0.5, bd)[i], norm.project(g[i], 0.5))


@pytest.mark.parametrize("method", ["polar_express", "newton_schulz"])
def test_spectral_lmo_within_method_band(method):
    norm, exact = Spectral(method=method, compute_dtype=torch.float64), Spectral(method="svd")
    g = torch.randn(32, 48, dtype=torch.float64)
    lo, hi = msign_band(method)
    s = norm.lmo(g)
    assert lo - 1e-9 <= float(norm.norm(s)) <= hi + 1e-9
    assert float((g * s).sum()) == pytest.approx(-float(norm.dual(g)), rel=1e-12)
    assert lo * float(exact.dual(g)) <= float(norm.dual(g)) <= hi * float(exact.dual(g))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(IDS), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16),
       d0=st.integers(1, 6), d1=st.integers(1, 6))
def test_property_duality_any_shape_and_scale(name, scale, seed, d0, d1):
    norm, shape = EXACT[name]
    shape = (d0 * d1,) if len(shape) == 1 else (d0, d1) + tuple(shape[2:])
    g = scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s = norm.lmo(g)
    assert float(norm.norm(s)) == pytest.approx(1.0, rel=1e-9)
    assert float((g * s).sum()) == pytest.approx(-float(norm.dual(g)), rel=1e-9)
    assert float(norm.dual(g)) == pytest.approx(exact_dual(name, g.numpy()), rel=1e-9)


@pytest.mark.parametrize("name", IDS)
def test_dtype_is_kept(name):
    norm, shape = EXACT[name]
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.randn(shape).to(dtype)
        assert norm.lmo(g).dtype == dtype
        assert norm.init(shape, 1.0, dtype=dtype).dtype == dtype


def test_catalogue_by_name_and_errors():
    assert set(CATALOGUE) >= {"euclidean", "sign", "spectral", "spectral_conv", "col_norm", "row_norm", "bias_rms"}
    assert get_norm("spectral", method="svd") == Spectral(method="svd")
    with pytest.raises(ValueError, match="unknown norm 'nuclear'.*valid norms"):
        get_norm("nuclear")
    with pytest.raises(ValueError, match="unknown msign method"):
        Spectral(method="qr")
    with pytest.raises(ValueError, match="kernel_dims"):
        SpectralConv(kernel_dims=4)


@pytest.mark.parametrize(
    "bad, match",
    [(np.ones((3, 3)), "torch.Tensor"), (torch.ones(3, 3, dtype=torch.complex64), "complex"),
     (torch.ones(3, 3, dtype=torch.int32), "floating"), (torch.ones(3), "at least 2 dims")],
)
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        Spectral().lmo(bad)


def test_bad_radius_and_batch_dims():
    with pytest.raises(ValueError, match="radius"):
        Euclidean().project(torch.ones(3), radius=0.0)
    with pytest.raises(ValueError, match="batch_dims"):
        Spectral().lmo(torch.ones(2, 3, 4), batch_dims=2)
