"""Every experiment runs in its quick mode and writes a real plot, a table and a report; the claims hold."""

import csv

import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from specopt.cli import app
from specopt.experiments import EXPERIMENTS


def run_quick(name, tmp_path):
    out = tmp_path / name
    result = CliRunner().invoke(app, ["experiment", name, "--quick", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert report.startswith("# ") and "results.csv" in report and "plot.png" in report
    image = imread(out / "plot.png")
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    return rows, report


# run (and checked) below
WITH_CLAIM_TEST = {"nonlinear-preconditioner", "constraints", "heavy-tails", "muon-conditioning", "bpm"}


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n not in WITH_CLAIM_TEST])
def test_experiment_quick_mode_writes_plot_table_report(name, tmp_path):
    run_quick(name, tmp_path)


def test_nonlinear_preconditioner_confirms_the_quoted_fit(tmp_path):
    rows, report = run_quick("nonlinear-preconditioner", tmp_path)
    row = next(r for r in rows if r["steps"] == "6" and float(r["kappa"]) == 4.0)
    assert abs(float(row["eps"]) / 5.8e-4 - 1) < 0.05 and float(row["sup_error"]) < 0.025
    best6 = min((r for r in rows if r["steps"] == "6"), key=lambda r: float(r["sup_error"]))
    assert float(best6["kappa"]) == 4.0
    assert "confirmed" in report


def test_constraints_experiment_projected_runs_stay_feasible(tmp_path):
    rows, _ = run_quick("constraints", tmp_path)
    by = {r["run"]: r for r in rows}
    for run in ("spectral-ball (svd)", "spectral-ball (svd-free)"):
        assert int(by[run]["infeasible_steps"]) == 0
        assert float(by[run]["max_norm_over_radius"]) <= 1 + 1e-4
    assert float(by["unconstrained"]["max_norm_over_radius"]) == pytest.approx(2.0)  # radii = half its norms
    assert int(by["weight clipping (loose)"]["infeasible_steps"]) > 0


def test_heavy_tails_experiment_runs_every_method_and_the_proximal_ones_never_diverge(tmp_path):
    rows, report = run_quick("heavy-tails", tmp_path)
    methods = {r["method"] for r in rows}
    assert methods == {"prox-momentum", "prox-storm", "scion", "sgd", "sgd-clip", "adam"}
    assert all(r["diverged"].startswith("0/") for r in rows if r["method"].startswith("prox"))
    assert (tmp_path / "heavy-tails" / "curves.csv").exists()
    # the report's STORM claim is the count in the rows (computed here, independently of the report's code)
    cells = {(r["problem"], r["noise"], r["alpha"]) for r in rows}
    light = [c for c in cells if float(c[2]) >= 2]
    final = {(r["problem"], r["noise"], r["alpha"], r["method"]): float(r["final_loss_mean"]) for r in rows}
    sd = {(r["problem"], r["noise"], r["alpha"], r["method"]): float(r["final_loss_sd"]) for r in rows}
    wins = sum(final[(*c, "prox-storm")] + max(sd[(*c, "prox-storm")], sd[(*c, "prox-momentum")])
               < final[(*c, "prox-momentum")] for c in light)
    assert f"by more than the seed spread in {wins} of {len(light)} cells" in report


def test_heavy_tails_gives_every_method_the_same_number_of_gradients(monkeypatch):
    from specopt.experiments import heavy_tails

    calls = {}
    loss = heavy_tails.LeastSquares.loss

    def counted(self, batch):
        calls[method] = calls.get(method, 0) + 1
        return loss(self, batch)

    monkeypatch.setattr(heavy_tails.LeastSquares, "loss", counted)
    for method in ("prox-momentum", "prox-storm"):
        heavy_tails.run_one("least-squares", method, 0.01, "gaussian", float("inf"), 0, steps=20, evals=5)
    assert calls["prox-momentum"] == 20
    assert 18 <= calls["prox-storm"] <= 20  # 10 steps of two gradients (the first step has no previous iterate)


def test_muon_conditioning_claim(tmp_path):
    rows, report = run_quick("muon-conditioning", tmp_path)

    def median(problem, start, method):
        return [float(r["iterations_median"]) if r["iterations_median"] != "censored" else float("inf")
                for r in rows if (r["problem"], r["start"], r["method"]) == (problem, start, method)]

    for problem in ("matrix factorization", "in-context regression"):
        muon = median(problem, "aligned", "muon")
        assert len(muon) == 2 and max(muon) < 2 * min(muon)  # does not grow with κ (from the paper's start)
        gd = median(problem, "aligned", "gd")
        assert gd[1] > 4 * gd[0]  # GD grows with κ
        adam = median(problem, "aligned", "adam")
        assert adam[1] > adam[0]  # so does Adam (here: κ = 10 → 100)
    assert {r["start"] for r in rows} == {"aligned", "random"}
    assert "Verdicts" in report


def test_muon_conditioning_errors_and_closed_form_gd_match_direct_computation():
    import numpy as np

    from specopt.experiments.conditioning import DELTAS, InContextRegression, MatrixFactorization, first_hits

    mf = MatrixFactorization([10.0, 1e4], 2)
    X = mf.start("random") + 0.1 * np.random.default_rng(0).standard_normal(mf.U.shape)
    M = (mf.U * mf.lam[:, None, :]) @ np.swapaxes(mf.U, 1, 2)
    R = X @ np.swapaxes(X, 1, 2) - M
    np.testing.assert_allclose(mf.errors(X)[0], np.linalg.norm(R, axis=(1, 2)) / mf.lam[:, -1], rtol=1e-10)
    np.testing.assert_allclose(mf.grad(X), R @ X, atol=1e-14)
    icl = InContextRegression([10.0], 1)
    for start in ("aligned", "random"):
        G0 = icl.start(start)
        iterated = first_hits(icl, "gd", G0, np.ones(1), np.ones(1), 5000)
        np.testing.assert_array_equal(icl.gd_first_hits(G0, 5000), iterated)
        assert np.isfinite(iterated[0, len(DELTAS) - 1])


def test_muon_reaches_delta_from_the_aligned_start_but_stalls_from_a_random_one_on_icl():
    """The non-aligned start: at κ = 10⁴ the paper's schedule reaches δ from Γ₀ = 0 on every seed, and from a small
    random Γ₀ on none (its iterates stop moving with an error in the off-diagonal directions)."""
    import numpy as np

    from specopt.experiments.conditioning import DELTAS, MUON, InContextRegression, first_hits

    icl = InContextRegression([10.0, 1e4], 5)
    lr0, q = icl.eta0 * MUON[0], np.full(10, MUON[1])
    aligned = first_hits(icl, "muon", icl.start("aligned"), lr0, q, 3000)[:, len(DELTAS) - 1]
    random = first_hits(icl, "muon", icl.start("random"), lr0, q, 3000)[:, len(DELTAS) - 1]
    assert np.isfinite(aligned).all() and aligned[5:].max() < 2 * aligned[:5].min()
    assert np.isfinite(random[:5]).all() and np.isinf(random[5:]).all()


def test_norm_control_claim(tmp_path):
    rows, _ = run_quick("norm-control", tmp_path)
    from specopt import msign_band

    hi = msign_band("polar_express")[1]
    for r in rows:
        if r["optimizer"] == "scion":
            assert float(r["max_norm_over_radius"]) <= hi + 0.02
        if r["optimizer"] == "uscion":
            assert float(r["max_distance_over_bound"]) <= hi + 0.02


def test_msign_maps_match_the_documented_bands(tmp_path):
    rows, _ = run_quick("msign", tmp_path)
    last = {r["method"]: r for r in rows if r["iteration"] == ("5" if r["method"] != "svd" else "1")}
    assert abs(float(last["polar_express"]["band_min"]) - 0.8466) < 1e-3
    assert abs(float(last["newton_schulz"]["band_min"]) - 0.4705) < 1e-3
    for r in rows:  # the matrix's singular values stay inside the scalar band
        assert float(r["band_min"]) - 1e-3 <= float(r["matrix_min"])
        assert float(r["matrix_max"]) <= float(r["band_max"]) + 1e-3


def test_bpm_experiment_claim(tmp_path):
    rows, _ = run_quick("bpm", tmp_path)
    assert {r["problem"] for r in rows} == {"quadratic", "logistic regression", "ℓ1 regression ‖Ax − b‖₁"}
    for r in rows:  # x* from an independent solver; the bound K = ⌈‖x₀ − x*‖²/t²⌉ at every κ
        assert r["bpm_steps_max"] != "censored" and int(r["bpm_steps_max"]) <= int(r["K"]) == 16
        assert float(r["max_descent_violation"]) <= 1e-9  # ‖x_{k+1} − x*‖² ≤ ‖x_k − x*‖² − t² on boundary steps
        assert float(r["max_final_distance"]) <= 1e-8
        if r["linearised_brox_minus_normalised_gd"] != "nan":
            assert float(r["linearised_brox_minus_normalised_gd"]) < 1e-12
    assert any(r["gd_steps_median"] == "censored" for r in rows)  # GD does not get there at κ = 10⁴
