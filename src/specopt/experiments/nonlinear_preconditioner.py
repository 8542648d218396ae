"""`nonlinear-preconditioner`: how well the smooth family ``h'_κ(s) = s/(ε^κ + s^κ)^{1/κ}`` models Polar Express.

Polar Express maps each singular value ``x = σ/‖G‖_F ∈ [0, 1]`` through a composed odd polynomial ``p(x)``;
*Constrained Stochastic Spectral Preconditioning Converges for Nonconvex Objectives* (2026) models Muon's real
update as the nonlinear preconditioner ``P = U h'(Σ) Vᵀ`` with ``h = h_κ``.
For κ ∈ {2, 4, 8} and 5 and 6 Polar Express steps we fit ε to minimise the sup error ``max_x |p(x) − h'_κ(x)|``
on a grid of 40,000 points of [0, 1] (log-spaced from 1e-7 and linear), by a grid search over log ε followed
by a bounded scalar minimisation. The paper quotes, for κ = 4 and 6 steps, ε ≈ 5.8e-4 and a sup error
≈ 0.02; the table below confirms or corrects it. To the precision quoted (two significant digits of ε, one of the
error), the quote is confirmed if the fitted ε is within 5 % of 5.8e-4 and the sup error within 0.005 of 0.02, and
corrected (refuted as stated) otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from specopt import preconditioners
from specopt.experiments.common import pyplot, save_figure, write_report
from specopt.linalg import schedule

COLUMNS = {
    "steps": "Polar Express's iterations", "kappa": "κ of the model h'_κ(s) = s/(ε^κ + |s|^κ)^(1/κ)",
    "eps": "ε fitted to the polynomial (least sup error)", "sup_error": "that sup error over s in [0, 1]",
    "sup_error_x_above_0.01": "the sup error over s ≥ 0.01"}
"""What each column of ``results.csv`` holds."""

KAPPAS = (2.0, 4.0, 8.0)
STEPS = (5, 6)
QUOTED = {"kappa": 4.0, "steps": 6, "eps": 5.8e-4, "sup_error": 0.02}
EPS_TOLERANCE, ERROR_TOLERANCE = 0.05, 0.005
"""The quote's precision: ε within 5 % (relative), the sup error within 0.005 (absolute)."""


def _grid(points: int) -> np.ndarray:
    return np.unique(np.concatenate([np.geomspace(1e-7, 1.0, points), np.linspace(0.0, 1.0, points)]))


def smooth_sign(x: np.ndarray, kappa: float, eps: float) -> np.ndarray:
    """The preconditioner's own ``h'_κ`` (:func:`specopt.preconditioners.smooth_sign`) on a numpy grid."""
    return preconditioners.smooth_sign(torch.from_numpy(x), kappa, eps).numpy()


def fit_eps(x: np.ndarray, p: np.ndarray, kappa: float) -> tuple[float, float]:
    """ε minimising ``max |p − h'_κ|`` on ``x``, and that sup error."""

    def sup_error(log_eps: float) -> float:
        return float(np.abs(p - smooth_sign(x, kappa, 10.0**log_eps)).max())

    grid = np.linspace(-8.0, 0.0, 801)
    i = int(np.argmin([sup_error(g) for g in grid]))
    best = minimize_scalar(sup_error, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
                           method="bounded", options={"xatol": 1e-7})
    return 10.0**best.x, float(best.fun)


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    x = _grid(2_000 if quick else 20_000)
    rows, curves = [], {}
    for steps in STEPS:
        p = schedule("polar_express", steps).scalar_map(x)
        curves[steps] = p
        for kappa in KAPPAS:
            eps, err = fit_eps(x, p, kappa)
            rows.append({"steps": steps, "kappa": kappa, "eps": eps, "sup_error": err,
                         "sup_error_x_above_0.01": float(np.abs(p - smooth_sign(x, kappa, eps))[x >= 0.01].max())})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(STEPS), figsize=(12, 4.5), sharey=True)
    for ax, steps in zip(axes, STEPS, strict=True):
        ax.semilogx(x[1:], curves[steps][1:], "k", lw=2, label=f"Polar Express, {steps} steps")
        for row in (r for r in rows if r["steps"] == steps):
            ax.semilogx(x[1:], smooth_sign(x[1:], row["kappa"], row["eps"]), "--",
                        label=f"h'_κ κ={row['kappa']:g}, ε={row['eps']:.2e} (sup err {row['sup_error']:.3f})")
        ax.set_xlabel("normalised singular value σ/‖G‖_F")
        ax.set_title(f"{steps} steps")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("output singular value")
    save_figure(fig, out / "plot.png")
    quoted = next(r for r in rows if r["steps"] == QUOTED["steps"] and r["kappa"] == QUOTED["kappa"])
    best = {s: min((r for r in rows if r["steps"] == s), key=lambda r: r["sup_error"]) for s in STEPS}
    verdict = ("confirmed" if abs(quoted["eps"] / QUOTED["eps"] - 1) < EPS_TOLERANCE
               and abs(quoted["sup_error"] - QUOTED["sup_error"]) < ERROR_TOLERANCE else "corrected")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "",
            f"κ = 4, 6 steps: ε = {quoted['eps']:.3g}, sup error {quoted['sup_error']:.4f} — the quoted "
            f"ε ≈ 5.8e-4, sup error ≈ 0.02 is **{verdict}** (to the precision quoted: ε within "
            f"{100 * EPS_TOLERANCE:g} %, the error within {ERROR_TOLERANCE:g}; our fit gives ε "
            f"{100 * (quoted['eps'] / QUOTED['eps'] - 1):+.1f} % from 5.8e-4, the error "
            f"{quoted['sup_error'] - QUOTED['sup_error']:+.4f} from 0.02).",
            "Best κ: " + ", ".join(f"{s} steps → κ = {best[s]['kappa']:g} (sup error {best[s]['sup_error']:.3f})"
                                   for s in STEPS) + "."
            " With 5 steps no κ does well: the published 5-step polynomial stops in a band [0.85, 1.14] around 1,"
            " and that oscillation, not the shape near 0, sets the sup error; the 6th step flattens it to ≈ 1, and"
            " then κ = 4 matches the knee of the polynomial best (κ = 2 is too soft, κ = 8 too sharp).",
            "The model sets the geometry of `ProxSpectral(preconditioner=\"polar_express\")`'s projections (κ = 4)."]
    return write_report(out, "Polar Express as a nonlinear preconditioner h_κ", body, rows, glossary=COLUMNS)
