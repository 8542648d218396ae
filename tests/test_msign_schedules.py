"""The cheaper msign schedules (cubic, CANS, AOL): generated coefficients, the band on their interval, matmul counts,
the normalisations' guarantees, and selection by name."""

import numpy as np
import pytest
import torch
from conftest import matrix_with_singular_values
from hypothesis import given, settings
from hypothesis import strategies as st
from test_polar_express_coefficients import PUBLISHED_5_STEP
from torch.utils._python_dispatch import TorchDispatchMode

import specopt
from specopt import msign, msign_band
from specopt.linalg import _optimal_odd_cubic, odd_polynomial, polar_express_coefficients, schedule
from specopt.msign_schedules import DESIGNS, cheaper_schedule, target_band, widest_interval

CHEAPER = list(DESIGNS)


def _worst(band) -> float:
    return max(1 - band[0], band[1] - 1)


def test_optimal_cubic_equioscillates_and_cannot_be_improved():
    lo, hi = 0.05, 1.0
    a, b = _optimal_odd_cubic(lo, hi)
    x = np.linspace(lo, hi, 200_001)
    err = 1 - odd_polynomial((a, b), x)
    level = np.abs(err).max()
    e = np.sqrt((lo * lo + lo * hi + hi * hi) / 3)  # the interior alternation point
    assert err[0] == pytest.approx(level, rel=1e-9) and err[-1] == pytest.approx(level, rel=1e-9)
    assert 1 - odd_polynomial((a, b), e) == pytest.approx(-level, rel=1e-9)
    for da, db in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
        assert np.abs(1 - odd_polynomial((a + da, b + db), x)).max() > level


def test_design_rule_recovers_polar_express_at_five_quintic_steps():
    """Polar Express's 5-step set is the composition that reaches its band on [1e-3, 1]: asked for the widest
    interval on which 5 quintic steps keep that band, the design rule finds l = 1e-3 and the published set."""
    l = widest_interval(5, 5, 0.02)  # noqa: E741
    assert l == pytest.approx(1e-3, rel=1e-5)
    generated = polar_express_coefficients(5, l=l, cushion=0.02, safety=1.02)
    np.testing.assert_allclose(np.array(generated), np.array(PUBLISHED_5_STEP), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", CHEAPER)
def test_band_is_polar_express_band_on_the_widest_interval(method):
    sched = schedule(method)
    delta = target_band()
    assert 0.15 < delta < 0.16
    assert sched.l > 1e-3 and sched.matmuls < 15
    assert _worst(msign_band(method)) <= delta + 1e-12  # the band holds on [l, 1]
    assert _worst(msign_band(method, l=sched.l * 0.99)) > delta  # and on no wider interval
    assert _worst(msign_band(method, l=1e-3)) > delta  # so not on Polar Express's


@pytest.mark.parametrize("method", CHEAPER)
@pytest.mark.parametrize("steps", [2, 3, 6])
def test_trade_off_schedules_move_the_interval(method, steps):
    """Designed for ``steps`` steps, a schedule keeps the band and moves l: fewer steps, a narrower interval."""
    sched = cheaper_schedule(method, steps, design_steps=steps)
    default = schedule(method)
    y = sched.scalar_map(np.geomspace(sched.l, 1, 100_001))
    assert _worst((y.min(), y.max())) <= target_band() + 1e-12
    assert (sched.l > default.l) == (steps < DESIGNS[method].steps)


@pytest.mark.parametrize("method", CHEAPER)
def test_more_steps_narrow_the_band_on_the_same_interval(method):
    worst = [_worst(msign_band(method, k)) for k in range(2, 9)]
    assert all(b < a for a, b in zip(worst, worst[1:], strict=False))
    assert worst[-1] < 1e-4


@pytest.mark.parametrize("method", CHEAPER)
def test_worst_error_falls_as_the_interval_narrows(method):
    """The bisection's premise: a narrower interval [l, 1] never has a larger worst error."""
    d = DESIGNS[method]
    worst = []
    for l in np.geomspace(1e-4, 0.5, 25):  # noqa: E741
        coefficients = polar_express_coefficients(d.steps, l=float(l), cushion=d.cushion, safety=1.02,
                                                  degree=d.degree)
        y = type(schedule(method))(coefficients, 1.02, 1e-6, normalization=d.normalization).scalar_map(
            np.geomspace(l, 1, 20_001))
        worst.append(max(1 - y.min(), y.max() - 1))
    assert all(b <= a + 1e-12 for a, b in zip(worst, worst[1:], strict=False))


def test_cubic_needs_eight_steps_for_polar_express_interval():
    """The cubic's saving is a narrower interval: on [1e-3, 1] it needs 8 steps (16 matmuls) for the band that
    Polar Express reaches in 15."""
    assert cheaper_schedule("cubic", 7, design_steps=7).l > 1e-3 > cheaper_schedule("cubic", 8, design_steps=8).l
    assert cheaper_schedule("cubic", 8, design_steps=8).matmuls == 16


class _CountMatmuls(TorchDispatchMode):
    PRODUCTS = {"mm", "addmm", "bmm", "baddbmm"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.PRODUCTS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method, expected", [("polar_express", 15), ("cubic", 10), ("cans", 12), ("aol", 12)])
def test_matmul_count(method, expected):
    """The products really executed (plain iteration; below the row-block size one product is one call)."""
    G = torch.randn(64, 160, dtype=torch.float64)
    with _CountMatmuls() as counter:
        msign(G, method=method, compute_dtype=torch.float64, gram=False)
    assert counter.count == schedule(method).matmuls == expected


def _normalised(G: torch.Tensor, method: str) -> torch.Tensor:
    """The singular values the iteration starts from, before the safety factor, computed here from the definitions:
    σ/‖G‖_F, σ/‖σ‖_8, or σ(D^{-1/2}G) with D_ii = Σ_j |GGᵀ|_ij."""
    wide = G if G.shape[0] <= G.shape[1] else G.T
    s = torch.linalg.svdvals(wide)
    norm = schedule(method).normalization
    if norm == "frobenius":
        return s / torch.linalg.norm(wide)
    if norm == "gelfand":
        return s / (s**8).sum() ** (1 / 8)
    d = (wide @ wide.T).abs().sum(dim=1)
    return torch.linalg.svdvals(wide / d.sqrt()[:, None])


@pytest.mark.parametrize("method", CHEAPER)
@pytest.mark.parametrize("shape", [(48, 48), (40, 160), (160, 40)])
def test_band_holds_across_condition_numbers(method, shape):
    """fp64: inside the design interval every output singular value is in the band; a matrix reaching below it
    comes out below the band (the interval is what the schedule gives up, and it is sharp)."""
    lo, hi = msign_band(method)
    sched = schedule(method)
    k = min(shape)
    inside = outside = 0
    for seed, kappa in enumerate([1.0, 10.0, 1e2, 1e3, 1e4]):
        G = matrix_with_singular_values(*shape, np.geomspace(1.0, 1 / kappa, k), seed=seed)
        x = _normalised(G, method)
        assert float(x.max()) <= 1 + 1e-12
        s = torch.linalg.svdvals(msign(G, method=method, compute_dtype=torch.float64))
        if float(x.min()) >= sched.l:
            inside += 1
            assert lo - 1e-9 <= float(s.min()) and float(s.max()) <= hi + 1e-9
        else:
            outside += 1
            assert float(s.min()) < lo and float(s.max()) <= hi + 1e-9
    assert inside >= 2 and outside >= 1  # the sweep exercises both sides of the interval


@pytest.mark.parametrize("method", CHEAPER)
@pytest.mark.parametrize("dtype, slack", [(torch.float32, 1e-4), (torch.bfloat16, 0.03)])
@pytest.mark.parametrize("gram", [False, True])
def test_band_holds_in_low_precision(method, dtype, slack, gram):
    g = torch.Generator().manual_seed(5)
    for G in (torch.randn(64, 256, generator=g), matrix_with_singular_values(96, 96, np.geomspace(1, 0.2, 96)).float(),
              matrix_with_singular_values(128, 512, np.geomspace(1, 0.1, 128), seed=4).float()):
        assert float(_normalised(G.double(), method).min()) >= schedule(method).l
        lo, hi = msign_band(method)
        s = torch.linalg.svdvals(msign(G, method=method, compute_dtype=dtype, gram=gram).double())
        assert lo - slack <= float(s.min()) and float(s.max()) <= hi + slack


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["gaussian", "nonnegative", "rank-2", "rows-scaled", "heavy-tailed"]))
def test_aol_rescaling_bounds_the_spectral_norm(m, n, seed, kind):
    """Prach & Lampert's theorem for W = Gᵀ: ‖D^{-1/2}G‖₂ ≤ 1; and the lower end it guarantees, from
    D_ii ≤ √m·σ_max², is σ_min/(m^{1/4}σ_max) — Frobenius guarantees only σ_min/(√m·σ_max)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, generator=g, dtype=torch.float64)
    if kind == "nonnegative":
        G = G.abs()
    elif kind == "rank-2":
        G = torch.randn(m, 2, generator=g, dtype=torch.float64) @ torch.randn(2, n, generator=g, dtype=torch.float64)
    elif kind == "rows-scaled":
        G = G * torch.logspace(-3, 0, m, dtype=torch.float64)[:, None]
    elif kind == "heavy-tailed":
        G = G**3
    wide = G if m <= n else G.T
    s = torch.linalg.svdvals(wide)
    x = _normalised(G, "aol")
    assert float(x.max()) <= 1 + 1e-12
    if float(s.min()) > 1e-9 * float(s.max()):
        k = min(m, n)
        assert float(x.min()) >= float(s.min() / (k**0.25 * s.max())) * (1 - 1e-12)
        assert float(_normalised(G, "cans").min()) >= float(s.min() / (k**0.125 * s.max())) * (1 - 1e-12)


def test_aol_is_the_polar_factor_of_the_rescaled_matrix():
    """Turbo-Muon's preconditioning changes the target: with enough steps the result is polar(D^{-1/2}G), which for
    rows of unequal weight is far from polar(G); for a Gaussian matrix the two are close."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(24, 60, generator=g, dtype=torch.float64) * torch.logspace(-1, 0, 24, dtype=torch.float64)[:, None]
    d = (G @ G.T).abs().sum(dim=1)
    U, _, Vh = torch.linalg.svd(G / d.sqrt()[:, None], full_matrices=False)
    out = msign(G, method="aol", steps=9, compute_dtype=torch.float64)
    assert torch.linalg.matrix_norm(out - U @ Vh, ord=2) < 1e-6
    exact = msign(G, method="svd")
    assert torch.linalg.matrix_norm(out - exact, ord=2) > 0.1
    H = torch.randn(64, 256, generator=g, dtype=torch.float64)
    close = msign(H, method="aol", steps=9, compute_dtype=torch.float64) - msign(H, method="svd")
    assert torch.linalg.matrix_norm(close, ord=2) < 0.1


@pytest.mark.parametrize("method", CHEAPER)
def test_scalar_map_of_the_normalised_singular_values(method):
    """fp64: the iteration is U f(x) Vᵀ on the SVD of the matrix it starts from (G itself, or D^{-1/2}G for AOL)."""
    G = matrix_with_singular_values(24, 72, np.geomspace(0.05, 2.0, 24), seed=3)
    start = G / (G @ G.T).abs().sum(dim=1).sqrt()[:, None] if method == "aol" else G
    U, S, Vh = torch.linalg.svd(start, full_matrices=False)
    scale = {"frobenius": torch.linalg.norm(G), "gelfand": (S**8).sum() ** (1 / 8), "aol": 1.0}
    f = schedule(method).scalar_map(S.numpy(), fro=float(scale[schedule(method).normalization]))
    expected = (U * torch.from_numpy(f)) @ Vh
    for gram in (False, True):
        got = msign(G, method=method, compute_dtype=torch.float64, gram=gram)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_selected_by_name_in_muon_and_param_groups():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    groups = specopt.param_groups(model, msign={"method": "cans"})
    assert any(getattr(gr.get("norm"), "method", None) == "cans" for gr in groups)
    W = model[0].weight
    W.grad = torch.randn_like(W)
    before = W.detach().clone()
    opt = specopt.Muon([W], lr=0.1, momentum=0.0, nesterov=False, method="cubic", compute_dtype=torch.float32)
    opt.step()
    expected = msign(W.grad, method="cubic", compute_dtype=torch.float32) * max(1, 32 / 16) ** 0.5
    torch.testing.assert_close(before - W.detach(), 0.1 * expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("call", [
    lambda: msign(torch.randn(4, 6), method="cnas"),
    lambda: msign_band("turbo"),
    lambda: specopt.Spectral(method="aol4"),
    lambda: specopt.Muon([torch.nn.Parameter(torch.randn(4, 4))], method="cubic5"),
])
def test_unknown_names_are_named(call):
    with pytest.raises(ValueError, match="unknown msign method .*valid methods: .*cubic, cans, aol"):
        call()


def test_documented_intervals_and_matmuls_are_the_schedules():
    import re

    import specopt.msign_schedules as module

    for method in ("polar_express", *CHEAPER):
        row = re.search(rf"^\| {method} \| (\d+) \| (\d+) \| .* \| ``l [=≈] ([0-9.e-]+)`` \|$", module.__doc__, re.M)
        sched = schedule(method)
        assert (int(row[1]), int(row[2])) == (len(sched.coefficients), sched.matmuls)
        assert float(row[3]) == pytest.approx(sched.l, abs=5e-5)


def test_unknown_normalization_is_named():
    with pytest.raises(ValueError, match="unknown normalization 'schatten'"):
        type(schedule("cans"))(((1.5, -0.5),), 1.0, 1e-7, normalization="schatten")
