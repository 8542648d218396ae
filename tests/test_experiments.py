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


WITH_CLAIM_TEST = {"nonlinear-preconditioner", "constraints", "heavy-tails", "norm-control"}  # run (and checked) below


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


def test_constraints_experiment_tunes_every_arm_alike_and_projected_runs_stay_feasible(tmp_path):
    rows, report = run_quick("constraints", tmp_path)
    by = {r["run"]: r for r in rows}
    for run in ("spectral-ball (svd)", "spectral-ball (svd-free)"):
        assert int(by[run]["infeasible_steps"]) == 0
        assert float(by[run]["max_norm_over_radius"]) <= 1 + 1e-4
    assert float(by["unconstrained"]["max_norm_over_radius"]) > 1.5  # radii = half its tuned run's norms: they bind
    assert int(by["weight clipping (loose)"]["infeasible_steps"]) > 0
    with open(tmp_path / "constraints" / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    tune = [r for r in runs if r["phase"] == "tune"]
    grids = {arm: sorted(float(r["lr"]) for r in tune if r["run"] == arm) for arm in by}
    assert len({tuple(g) for g in grids.values()}) == 1 and len(grids["unconstrained"]) >= 2  # one grid for all
    for arm, row in by.items():  # each arm evaluated at its own best step size, on seeds it was not tuned on
        best = min((r for r in tune if r["run"] == arm), key=lambda r: float(r["tune_loss"]))
        assert float(row["lr"]) == float(best["lr"])
        evaluated = [r for r in runs if r["phase"] == "evaluate" and r["run"] == arm]
        assert len(evaluated) == int(row["seeds"]) >= 2
        assert all(float(r["lr"]) == float(row["lr"]) and r["seed"] != best["seed"] for r in evaluated)
    best = min(rows, key=lambda r: float(r["test_loss"]))
    assert f"By test loss: **{best['run']}**" in report


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
    rows, _ = run_quick("muon-conditioning", tmp_path)
    for problem in ("matrix factorization", "in-context regression"):
        muon = [int(r["iterations"]) for r in rows if r["problem"] == problem and r["method"] == "muon"]
        assert max(muon) < 2 * min(muon)  # does not grow with κ
    gd = [r["iterations"] for r in rows if r["problem"] == "matrix factorization" and r["method"] == "gd"]
    assert int(gd[1]) > 4 * int(gd[0])  # GD grows with κ


def test_norm_control_bounds_hold_where_they_bind_and_adamw_drifts(tmp_path):
    rows, report = run_quick("norm-control", tmp_path)
    from specopt import msign_band

    band = {"svd": 1.0, "polar_express": msign_band("polar_express")[1]}

    def pick(setting, optimizer, lmo=None):
        return [r for r in rows if r["setting"] == setting and r["optimizer"] == optimizer
                and (lmo is None or r["lmo"] == lmo)]

    for r in rows:
        if r["optimizer"] in ("scion", "uscion"):  # the tolerance is the lmo's band (exact for the biases' lmo)
            top = 1.0 if r["tensor"].endswith("bias") else band[r["lmo"]]
            assert float(r["tolerance"]) == pytest.approx(top + 1e-4)
        if r["optimizer"] == "scion":  # SCG: inside the ball at every step
            assert float(r["init_norm_over_radius"]) <= 1
            assert float(r["max_norm_over_radius"]) <= float(r["tolerance"])
        if r["optimizer"] == "uscion":  # uSCG: within ρΣγ of the start at every step
            assert float(r["max_distance_over_bound"]) <= float(r["tolerance"])
    # the bounds bind: SCG's exact-lmo iterates reach the sphere, uSCG's exact-lmo steps stay aligned
    assert max(float(r["max_norm_over_radius"]) for r in pick("full batch", "scion", "svd")) >= 0.99
    assert min(float(r["final_distance_over_bound"]) for r in pick("full batch", "uscion", "svd")
               if r["tensor"].endswith("weight")) >= 0.9
    # AdamW's weight norms keep growing in the minibatch setting; SCG's, in the same setting, do not
    growth = {o: [float(r["growth_exponent"]) for r in pick("minibatch", o) if r["tensor"].endswith("weight")]
              for o in ("adamw", "scion")}
    assert max(growth["adamw"]) >= 0.1 and max(abs(a) for a in growth["scion"]) < 0.05
    assert report.count(": holds — ") == 2 and report.count("(reached)") == 2 and "(drift: not controlled)" in report


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
    for r in rows:
        if r["method"].startswith("BPM"):
            assert int(r["iterations_to_1e-10"]) <= 16  # finite convergence within K = ⌈‖x₀ − x*‖²/t²⌉
        assert float(r["linearised_brox_minus_normalised_gd"]) < 1e-12
