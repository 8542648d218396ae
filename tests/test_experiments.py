"""Every experiment runs in its quick mode and writes a real plot, a table and a report; the claims hold."""

import csv

import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from specopt.cli import app
from specopt.experiments import EXPERIMENTS, QUICK_NOTE


def run_quick(name, tmp_path):
    out = tmp_path / name
    result = CliRunner().invoke(app, ["experiment", name, "--quick", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert report.startswith("# ") and "results.csv" in report and "plot.png" in report
    assert report.splitlines()[2] == QUICK_NOTE  # a quick run's report says so at its top
    image = imread(out / "plot.png")
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    explained = report.split("Columns of `results.csv`:", 1)[1]
    for column in rows[0]:  # every column of the CSV is explained in the report
        assert f"\n- `{column}`: " in explained, column
    return rows, report


WITH_CLAIM_TEST = {"nonlinear-preconditioner", "constraints", "heavy-tails", "hparam-transfer", "clipping",
                   "muon-conditioning", "bpm", "norm-control"}  # run (and checked) below


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n not in WITH_CLAIM_TEST])
def test_experiment_quick_mode_writes_plot_table_report(name, tmp_path):
    run_quick(name, tmp_path)


def test_nonlinear_preconditioner_confirms_the_quoted_fit(tmp_path):
    rows, report = run_quick("nonlinear-preconditioner", tmp_path)
    row = next(r for r in rows if r["steps"] == "6" and float(r["kappa"]) == 4.0)
    assert abs(float(row["eps"]) / 5.8e-4 - 1) < 0.05 and float(row["sup_error"]) < 0.025
    best6 = min((r for r in rows if r["steps"] == "6"), key=lambda r: float(r["sup_error"]))
    assert float(best6["kappa"]) == 4.0
    assert "is **confirmed** (to the precision quoted: ε within 5 %, the error within 0.005" in report


def _constraint_rows(**losses):
    """A constraints table: each arm's test loss (± 0.01) and infeasible steps (loose clipping leaves the ball)."""
    loss = {"unconstrained": 0.2, "spectral-ball (svd)": 0.30, "spectral-ball (svd-free)": 0.31,
            "weight clipping": 2.27, "weight clipping (loose)": 0.27, "rescaling": 0.5, **losses}
    return [{"run": run, "test_loss": value, "test_loss_sd": 0.01, "diverged": 0, "max_norm_over_radius": 1.0,
             "infeasible_steps": "—" if run == "unconstrained" else 900 if run.endswith("(loose)") else 0}
            for run, value in loss.items()]


@pytest.mark.parametrize(("losses", "says"), [
    ({}, "— the claim **holds**"),
    ({"rescaling": 0.305}, "spectral-ball (svd) ties with rescaling (0.3050 ± 0.0100) — the claim is **refuted**"),
    ({"weight clipping": 0.25}, "spectral-ball (svd) loses to weight clipping (0.2500 ± 0.0100); spectral-ball "
                                "(svd) beats rescaling (0.5000 ± 0.0100) — the claim is **refuted**"),
])
def test_constraints_verdict_turns_when_a_feasible_rival_trains_as_well(losses, says):
    from specopt.experiments.constraints import claim

    text = "\n".join(claim(_constraint_rows(**losses), 1200))
    assert says in text and "Feasibility of the projected arms: **holds**" in text
    assert "Loose clipping (0.2700 ± 0.0100) is no rival: it leaves the ball at 900 of 1200 steps" in text


def test_constraints_verdict_without_a_feasible_rival_or_with_an_infeasible_projection():
    from specopt.experiments.constraints import claim

    rows = [r | {"infeasible_steps": 5} if r["run"] in ("weight clipping", "rescaling", "spectral-ball (svd-free)")
            else r for r in _constraint_rows()]
    text = "\n".join(claim(rows, 1200))
    assert "**refuted** — infeasible steps in spectral-ball (svd-free)." in text
    assert "**not measurable** — no rival arm stayed feasible at every step." in text


def test_nonlinear_preconditioner_corrects_a_quote_its_fit_does_not_match(tmp_path, monkeypatch):
    from specopt.experiments import nonlinear_preconditioner

    monkeypatch.setitem(nonlinear_preconditioner.QUOTED, "eps", 6.2e-4)  # 7 % above the fit
    report = EXPERIMENTS["nonlinear-preconditioner"](tmp_path, quick=True, progress=False).read_text()
    assert "is **corrected**" in report


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
    verdict = "holds" if 2 * wins >= len(light) else "not reproduced"
    assert f"**STORM is faster when the variance is finite: {verdict}.**" in report
    heavy = [c for c in cells if float(c[2]) < 2]
    holds = all(final[(*c, "prox-momentum")] < final[(*c, "sgd")] for c in heavy) and all(
        r["diverged"].startswith("0/") for r in rows if r["method"] == "prox-momentum" and float(r["alpha"]) < 2)
    assert f"**Bounded preconditioner, no clipping: {'holds' if holds else 'not reproduced'}.**" in report


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
    assert "Verdicts" in report and "Tuned settings on an edge of their grid" in report


def _conditioning_rows(method, counts, settings=None):
    return [{"problem": "mf", "start": start, "method": method, "kappa": 10.0 ** (1 + i),
             "iterations_median": str(c), "setting": (settings or ["c=1, q=0.9"] * len(counts))[i]}
            for start in ("aligned", "random") for i, c in enumerate(counts)]


@pytest.mark.parametrize(("method", "counts", "expected"), [
    ("muon", [100, 150], "×1.5 over the κ range — κ-independent within 2×"),
    ("muon", [100, 250], "×2.5 over the κ range — refuted: grows more than 2×"),
    ("muon", [100, "censored"], "censored at the largest — refuted: censored at some κ"),
    ("gd", [100, 150], "×1.5 over the κ range — refuted: grows less than 2×"),
    ("gd", [100, 900], "×9 over the κ range — grows with κ"),
    ("adam", [100, "censored"], "measured at the smallest κ, censored at the largest — grows with κ"),
    ("adam", ["censored", "censored"], "censored at the smallest κ — not measurable: censored at the smallest κ"),
])
def test_muon_conditioning_verdicts_follow_the_refutation_rule(method, counts, expected):
    from specopt.experiments.conditioning import verdicts

    lines = [line for line in verdicts(_conditioning_rows(method, counts)) if ", mf, aligned start:" in line]
    assert len(lines) == 1 and lines[0].endswith(expected + ".")


def test_muon_conditioning_reports_tuned_settings_on_either_edge_of_either_axis():
    from specopt.experiments.conditioning import grid_edges

    grids = {"adam": {"c": (0.1, 0.3, 1.0), "q": (0.98, 0.99, 0.999)}}
    rows = _conditioning_rows("adam", [10, 20, 30, "censored"],
                              ["c=1, q=0.99", "c=0.1, q=0.98", "c=0.3, q=0.99", "c=1, q=0.999"])
    text = "\n".join(grid_edges(rows, grids))
    assert ("smallest c (smallest step), 0.1, in 2 of 6; largest c (largest step), 1, in 2 of 6; "
            "smallest q (fastest decay), 0.98, in 2 of 6.") in text  # the censored cell (q at its top) not counted
    assert "largest q" not in text


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
    assert report.count(": holds — ") == 2 and report.count("(the bound binds)") == 2
    assert "(drift: not controlled)" in report


def _norm_control_rows(scg=0.999, uscg=0.95, scg_pe=1.1, uscg_pe=1.05, adamw=(0.6, 0.36), full=(0.2, 0.3)):
    """A table as norm-control writes it: SCG's and uSCG's largest ratios, AdamW's α of two weight matrices."""
    rows = []
    for setting in ("full batch", "minibatch"):
        for optimizer, lmo, top in (("scion", "svd", 1.0), ("scion", "polar_express", 1.1413),
                                    ("uscion", "svd", 1.0), ("uscion", "polar_express", 1.1413), ("adamw", "—", 0)):
            for i, tensor in enumerate(("1.weight", "5.weight")):
                ratio = {("scion", "svd"): scg, ("scion", "polar_express"): scg_pe}.get((optimizer, lmo), 0.5)
                distance = {("uscion", "svd"): uscg, ("uscion", "polar_express"): uscg_pe}.get((optimizer, lmo), 0.5)
                alpha = (adamw if setting == "minibatch" else full)[i]
                rows.append({"setting": setting, "optimizer": optimizer, "lmo": lmo, "tensor": tensor,
                             "role": "hidden", "tolerance": top + 1e-4, "init_norm_over_radius": 0.1,
                             "max_norm_over_radius": ratio if optimizer != "adamw" else 10 - 9 * i,
                             "max_distance_over_bound": distance, "final_distance_over_bound": distance,
                             "growth_exponent": alpha, "final_loss": 1e-6})
    return rows


@pytest.mark.parametrize(("change", "says", "not_says"), [
    ({}, ["SCG: holds", "uSCG: holds", "above 1, inside the band", "`1.weight`, grows as k^α with α = 0.60",
          "reaches 10.00×", "grow more slowly (α from 0.20 to 0.30)", "drift: not controlled"], ["REFUTED"]),
    ({"scg": 1.5, "uscg_pe": 1.3}, ["SCG: **REFUTED** — a ‖W_k‖/ρ above its tolerance (largest 1.5000)",
                                    "uSCG: **REFUTED**", "1.300: above the band"], ["SCG: holds"]),
    ({"scg_pe": 0.9, "uscg": 0.5}, ["0.900: at most 1", "NOT reached: vacuous"], ["inside the band (the"]),
    ({"adamw": (0.01, 0.3), "full": (0.5, 0.7)}, ["`5.weight`, grows as k^α with α = 0.30 over the run's second half",
                                                  "and reaches 1.00×",
                                                  "the largest, `1.weight`, reaches 10.00× (α = 0.01)",
                                                  "grow as fast or faster"], ["more slowly"]),
    ({"adamw": (0.01, 0.02)}, ["levelled off: REFUTED"], ["drift: not controlled"]),
])
def test_norm_control_report_turns_with_its_numbers(change, says, not_says):
    from specopt.experiments.norm_control import _body, settings, verdicts

    text = "\n".join(_body(settings(True), verdicts(_norm_control_rows(**change))))
    for words in says:
        assert words in text
    for words in not_says:
        assert words not in text


def test_msign_maps_match_the_documented_bands(tmp_path):
    rows, report = run_quick("msign", tmp_path)
    assert "**Confirmed**" in report
    assert "agree with the scalar map at the matrix's singular values (within 0.001) at 23 of 23 iterations" in report
    last = {r["method"]: r for r in rows if r["iteration"] == ("5" if r["method"] != "svd" else "1")}
    assert abs(float(last["polar_express"]["band_min"]) - 0.8466) < 1e-3
    assert abs(float(last["newton_schulz"]["band_min"]) - 0.4705) < 1e-3
    for r in rows:  # the matrix's singular values are the map's at its own singular values, and inside the band
        assert float(r["matrix_gap"]) <= 1e-3
        assert float(r["band_min"]) - 1e-3 <= float(r["matrix_min"])
        assert float(r["matrix_max"]) <= float(r["band_max"]) + 1e-3
        deviation = max(1 - float(r["matrix_min"]), float(r["matrix_max"]) - 1)
        if r["method"] != "aol":  # the singular vectors are G's: the distance to UVᵀ is the max |σ − 1|
            assert abs(float(r["polar_distance"]) - deviation) < 1e-4
    aol = next(r for r in rows if r["method"] == "aol" and r["iteration"] == "4")
    assert float(aol["polar_distance"]) > max(1 - float(aol["matrix_min"]), float(aol["matrix_max"]) - 1) + 0.02
    assert "AOL's output is the polar factor of D^-1/2 G" in report


def test_msign_experiment_can_refute_its_claim(tmp_path, monkeypatch):
    """A matrix iteration one step behind the scalar map it is compared with (the kind of mismatch a comparison of
    msign(steps=k), a separately designed schedule, with the 5-step schedule's first k steps had hidden inside the
    band): the gap shows it and the verdict turns."""
    from dataclasses import replace

    from specopt.experiments import msign_maps
    from specopt.linalg import run_schedule

    def one_step_short(G, sched):
        return run_schedule(G, replace(sched, coefficients=sched.coefficients[:-1])) if len(
            sched.coefficients) > 1 else run_schedule(G, sched)

    monkeypatch.setattr(msign_maps, "run_schedule", one_step_short)
    report = EXPERIMENTS["msign"](tmp_path, quick=True, progress=False).read_text()
    assert "**Refuted**" in report and "; apart at newton_schulz iteration 2" in report


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


@pytest.mark.parametrize(("worst", "violation", "verdict"), [
    ("16", 1e-12, "holds"), ("17", 1e-12, "is refuted"), ("censored", 1e-12, "is refuted"), ("9", 1e-6, "is refuted")])
def test_bpm_verdict_turns_with_the_steps_and_the_descent_inequality(worst, violation, verdict):
    from specopt.experiments.broximal import _summary

    rows = [{"problem": "quadratic", "kappa": k, "K": 16, "bpm_steps_median": "4", "bpm_steps_min": "4",
             "bpm_steps_max": w, "max_descent_violation": v, "gd_steps_median": "—",
             "linearised_brox_minus_normalised_gd": 0.0}
            for k, w, v in ((10.0, "5", -1.0), (1e6, worst, violation))]
    assert f"Verdict: the claim {verdict}." in "\n".join(_summary(rows, 3))


def test_hparam_transfer_report_states_the_slopes_of_its_own_table(tmp_path):
    import numpy as np
    from scipy.stats import t as student_t

    rows, report = run_quick("hparam-transfer", tmp_path)
    assert (tmp_path / "hparam-transfer" / "curves.png").exists()
    runs = list(csv.DictReader(open(tmp_path / "hparam-transfer" / "runs.csv")))
    for name in ("uscion", "adamw"):
        fitted = [r for r in rows if r["optimizer"] == name and r["censored"] == "no"]
        for r in fitted:  # an uncensored optimum lies strictly inside the step sizes its width was run at
            lrs = [float(u["lr"]) for u in runs if u["optimizer"] == name and u["width"] == r["width"]]
            assert min(lrs) < float(r["lr_star"]) < max(lrs)
        widths = sorted({float(r["width"]) for r in fitted})  # one point per width: the mean of its seeds
        x = np.log2(widths)
        y = np.array([np.mean([float(r["log2_lr_star"]) for r in fitted if float(r["width"]) == w]) for w in widths])
        if len(x) < 3:
            continue
        slope, intercept = np.polyfit(x, y, 1)  # recomputed here, independently of the experiment's code
        res = y - slope * x - intercept
        half = student_t.ppf(0.975, len(x) - 2) * np.sqrt(res @ res / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
        assert f"{slope:+.2f} [{slope - half:+.2f}, {slope + half:+.2f}]" in report


def test_hparam_transfer_report_redone_from_its_runs_is_the_same(tmp_path):
    from specopt.experiments import transfer

    run_quick("hparam-transfer", tmp_path)
    out = tmp_path / "hparam-transfer"
    (tmp_path / "redone").mkdir()
    redone = transfer.report(tmp_path / "redone", transfer.read_runs(out / "runs.csv"), transfer.QUICK)
    assert redone.read_text().split("## Result")[1] == (out / "report.md").read_text().split("## Result")[1]


def test_hparam_transfer_fit_finds_the_vertex_and_censors_the_edges():
    import numpy as np

    from specopt.experiments.transfer import fit_optimum

    ks = list(range(-20, -9))  # γ = 2^(k/2), log₂ γ from −10 to −5
    loss = [(k / 2 + 7.3) ** 2 + 2.5 for k in ks]
    assert fit_optimum(ks, loss, 2).log2_lr == pytest.approx(-7.3) and not fit_optimum(ks, loss, 2).censored
    diverged = [v if k < -13 else np.nan for k, v in zip(ks, loss, strict=True)]  # the largest steps blew up
    assert fit_optimum(ks, diverged, 2).log2_lr == pytest.approx(-7.3)
    edge = [(k / 2 + 4.0) ** 2 for k in ks]  # the optimum lies above the grid
    assert fit_optimum(ks, edge, 2).censored == "above the grid"
    assert fit_optimum(ks, [-v for v in loss], 2).censored  # a maximum is no optimum


def test_hparam_transfer_slope_interval_has_its_stated_coverage_when_seeds_share_their_widths_deviation():
    """Each width's γ* departs from the line by a deviation all its seeds share (the loss surface of that width),
    plus a small per-seed noise: the interval through the width means covers the true slope 95 % of the time; one
    through every (width, seed) point, which counts the seeds as independent, covers it far less often."""
    import numpy as np

    from specopt.experiments.transfer import _slope, fit_slope

    rng = np.random.default_rng(0)
    widths, seeds, trials = [16, 32, 64, 128, 256], 3, 2000
    covered = 0
    for _ in range(trials):  # true slope −0.3; width deviation 0.3 octaves, seed noise 0.05
        shared = 0.3 * rng.standard_normal(len(widths))
        optima = [{"optimizer": "uscion", "censored": "no", "width": w, "seed": s,
                   "log2_lr_star": -0.3 * np.log2(w) - 8 + shared[i] + 0.05 * rng.standard_normal()}
                  for i, w in enumerate(widths) for s in range(seeds)]
        slope = _slope(optima, "uscion", 16)
        covered += slope.low <= -0.3 <= slope.high
    assert 0.935 < covered / trials < 0.965
    exact = fit_slope(widths, [-8 - np.log2(w) for w in widths])
    assert exact.value == pytest.approx(-1.0) and exact.high - exact.low < 1e-9 and exact.verdict() == "drifts"
    flat = fit_slope(widths, [-8.0 + 0.05 * (-1) ** i for i in range(len(widths))])
    assert flat.verdict() == "transfers"


@pytest.mark.parametrize(("uscion", "adamw", "expected"), [
    ((0.02, -0.1, 0.14), (-1.1, -1.2, -1.0), "Reproduced"),
    ((-0.12, -0.21, -0.03), (-1.1, -1.2, -1.0), "Refuted"),  # UScion's γ* drifts
    ((0.02, -0.1, 0.14), (-0.05, -0.2, 0.1), "Refuted"),  # AdamW's transfers as well: no contrast
    ((-0.12, -0.32, 0.07), (-1.1, -1.2, -1.0), "Inconclusive"),  # UScion's interval too wide to tell
])
def test_hparam_transfer_verdict_follows_its_stated_rule(uscion, adamw, expected):
    from specopt.experiments.transfer import Slope, verdict

    assert verdict({"uscion": Slope(*uscion, 5), "adamw": Slope(*adamw, 5)}) == expected


def test_clipping_quick_run_records_a_clip_that_binds_and_releases(tmp_path):
    rows, report = run_quick("clipping", tmp_path)
    assert {(r["task"], r["schedule"]) for r in rows} == {
        (task, schedule) for task in ("teacher-student", "char-gpt") for schedule in ("constant", "linear-decay")}
    assert (tmp_path / "clipping" / "clip_factor.png").exists() and (tmp_path / "clipping" / "curves.png").exists()
    with open(tmp_path / "clipping" / "traces.csv") as f:
        traces = list(csv.DictReader(f))
    for r in rows:
        mine = [t for t in traces if (t["task"], t["schedule"]) == (r["task"], r["schedule"])]
        factors = [float(t["clip_factor"]) for t in mine]
        for t, c in zip(mine, factors, strict=True):  # c_k = min{1, D_k/ρ_c} of the recorded momentum norm
            assert c == pytest.approx(min(1.0, float(t["dual_norm"]) / float(t["clip_radius"])))
        per_seed = {}
        for t, c in zip(mine, factors, strict=True):
            per_seed.setdefault(t["seed"], []).append(c >= 1.0)
        assert len(per_seed) == 3
        binding = sum(sum(v) / len(v) for v in per_seed.values()) / len(per_seed)
        assert float(r["binding_fraction"]) == pytest.approx(binding)
        if r["task"] == "teacher-student":  # D_1 = (1−β)‖g_1‖ is below ρ_c, the peak of D_k above it
            assert min(factors) < 1.0 and max(factors) == 1.0
        assert r["verdict"] in report
    with open(tmp_path / "clipping" / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    for r in rows:  # the winners are compared on fresh seeds, not on the seed their step size was tuned on
        final = [float(u["best_val"]) for u in runs if (u["task"], u["schedule"], u["arm"]) == (
            r["task"], r["schedule"], "uscion") and float(u["lr"]) == float(r["lr_uscion"])
            and u["horizon"] == r["steps"] and u["seed"] != "0"]
        assert len(final) == 3 and float(r["best_uscion"]) == pytest.approx(sum(final) / 3)


@pytest.mark.parametrize(("speedups", "binding", "expected"), [
    ([1.116, 1.294, 1.323], 0.1, "not resolved (the 95 % interval of S contains 1)"),  # mean − sd > 1, yet n = 3
    ([1.20, 1.22, 1.24], 0.1, "reproduced (the 95 % interval of S above 1.10)"),
    ([1.15, 1.20, 1.25], 0.1, "a speed-up, consistent with the claim (the 95 % interval of S above 1, containing "
                              "1.10)"),  # the committed constant-lr teacher–student cell's shape: [1.093, 1.415]
    ([1.011, 1.012, 1.011], 0.2, "not reproduced (refuted here: the 95 % interval of S below 1.10)"),
    ([0.9, 1.0, 1.3], 0.2, "not resolved (the 95 % interval of S contains 1)"),
    ([1.20, 1.22, 1.24], 1.0, "no test (the clip never switches)"),
])
def test_clipping_verdict_reads_the_t_interval_of_the_speedup(speedups, binding, expected):
    from specopt.experiments.clipping import _verdict, t_interval

    low, high = t_interval(speedups)
    assert _verdict({"speedup_low": low, "speedup_high": high, "binding_fraction": binding}) == expected


def test_clipping_rules_step_as_uscion_and_clipped_scion_and_read_the_momentum():
    import torch

    import specopt
    from specopt.engine import GeometryOptimizer
    from specopt.experiments.clipping import MOMENTUM, TeacherStudent, TracedClipped, TracedUSCG

    task, lr = TeacherStudent(0), 2**-10

    def trajectory(build, steps=6):
        model = task.build_model()
        opt = build(specopt.param_groups(model))
        first = None
        for k in range(steps):
            opt.zero_grad()
            task.loss(model, task.batch(k)).backward()
            if first is None:
                first = sum(g["radius"] * float(-(p.grad * g["norm"].lmo(p.grad)).sum())
                            for g in opt.param_groups for p in g["params"])
            opt.step()
        return [p.detach().clone() for p in model.parameters()], opt, first

    def traced(rule):
        return lambda groups: GeometryOptimizer(groups, {"lr": lr, "momentum": MOMENTUM, "weight_decay": 0.0},
                                                rule=rule)

    ref, _, _ = trajectory(lambda groups: specopt.UScion(groups, lr=lr, momentum=MOMENTUM))
    mine, opt, gradient_dual = trajectory(traced(TracedUSCG()))
    assert all(torch.equal(a, b) for a, b in zip(ref, mine, strict=True))
    duals = opt.rule.duals
    assert len(duals) == 6
    # D_k is the momentum's dual norm: d_1 = (1−β)·g_1, so D_1 = (1−β)·Σρ‖g_1‖_*, not the gradient's
    assert duals[0] == pytest.approx((1 - MOMENTUM) * gradient_dual, rel=1e-3)
    rho_c = (duals[0] + max(duals)) / 2
    ref, _, _ = trajectory(lambda groups: specopt.ClippedScion(groups, lr=lr, momentum=MOMENTUM, clip_radius=rho_c))
    mine, opt, _ = trajectory(traced(TracedClipped(rho_c)))
    assert all(torch.equal(a, b) for a, b in zip(ref, mine, strict=True))
    factors = opt.rule.factors
    assert factors[0] < 1.0 and 1.0 in factors
    assert factors == [min(1.0, d / rho_c) for d in opt.rule.duals]


def test_clipping_speedup_is_the_horizon_ratio_at_equal_loss():
    from specopt.experiments.clipping import speedup

    slow, fast = [(100, 2.0), (200, 1.0)], [(100, 1.5), (200, 0.8)]
    reach = 100 + 100 * (1.5 - 1.0) / (1.5 - 0.8)  # where the faster run reaches 1.0, linearly between its points
    assert speedup(slow, fast, 200) == (pytest.approx(200 / reach), "=")
    assert speedup(fast, slow, 200) == (pytest.approx(reach / 200), "=")  # clipped slower: S < 1
    assert speedup(slow, [(100, 0.9), (200, 0.5)], 200) == (2.0, "≥")  # reached before the first horizon: a bound
