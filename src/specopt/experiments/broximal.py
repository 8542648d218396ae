"""`bpm`: the Broximal Point Method's finite termination across condition numbers (Gruntkowska, Li, Rane &
Richtárik 2025, *The Ball-Proximal ("Broximal") Point Method*, arXiv:2502.02002).

Claim: for convex f, BPM ``x_{k+1} = argmin_{‖z − x_k‖ ≤ t} f(z)`` with a constant radius t reaches a minimizer
within ``K = ⌈‖x₀ − x*‖²/t²⌉`` steps whatever the conditioning, because every step that stays on the ball's
boundary cuts the squared distance by t²: ``‖x_{k+1} − x*‖² ≤ ‖x_k − x*‖² − t²``.

Problems (float64), each at κ = 10, 10², …, 10⁶ and 3 seeds:

* quadratic ``½xᵀHx − bᵀx``, n = 20, ``H = Q diag(λ) Qᵀ``, λ log-spaced from 1 to κ; brox exact (the
  trust-region subproblem); x* by a direct solve (``scipy.linalg.solve``);
* logistic regression, ``mean log(1 + exp(−y·aᵀx)) + 10⁻⁹‖x‖²``, 200 samples, d = 10, feature j scaled by
  ``κ^{j/(2(d−1))}``, noisy labels (not separable); brox = the prox with λ bisected so that it lands on the
  sphere, the prox by Newton's method; x* by scipy's ``trust-exact`` Newton solver, κ measured as the condition
  number of ``∇²f(x*)`` (it differs from the nominal κ, both are in the table);
* nonsmooth ``‖Ax − b‖₁``, 30 × 6, column j of A scaled by ``κ^{j/(2(d−1))}``; brox through the exact prox
  (:func:`specopt.bpm.prox_l1_affine`, a homotopy in λ); x* by linear programming (scipy's HiGHS); κ measured as
  ``cond(A)²``.

x* never comes from the BPM code (``max_x_star_residual``: ‖∇f(x*)‖ of the solver's answer; for the LP, HiGHS's
optimality is exact at a vertex). Every run starts at ``x₀ = x* + 5√n·u`` (u a random unit vector) with
``t = ‖x₀ − x*‖/4``, so K = 16, and runs K steps. Steps: the first k with relative gap
``(f(x_k) − f*)/(f(x₀) − f*) ≤ 1e-10``. The descent inequality is checked on every step that ends on the
boundary: its violation ``(‖x_{k+1} − x*‖² − ‖x_k − x*‖² + t²)/‖x₀ − x*‖²`` should be ≤ 0 up to rounding. For
contrast, gradient descent with step 1/L (L the largest Hessian eigenvalue; not run on the nonsmooth problem) on
the same starts, capped at 10,000 steps. The linearised brox step, ``x + t·lmo(∇f(x))`` with the ℓ2 ball's lmo,
is normalised gradient descent ``x − t∇f/‖∇f‖`` — the bridge to Muon/Scion/Gluon — checked at x₀.
GD's counts are single gradient steps and BPM's are outer steps, each a full subproblem solve (a trust-region
solve, a bisection over Newton-solved proxes, a homotopy): the contrast is in iterations, not in cost.

Refutation: BPM needs more than K steps (or does not reach the gap within K) at some κ and seed, or a boundary
step violates the descent inequality by more than 1e-9. K bounds the worst case; a count that grows with κ while
staying below K is allowed by the theorem but weakens "whatever the conditioning", so the growth is reported too.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.special
import torch

from specopt.bpm import bpm, brox_prox, brox_quadratic, prox_l1_affine
from specopt.experiments.common import progress_bar, pyplot, write_report
from specopt.norms import Euclidean

KAPPAS = (10.0, 1e2, 1e3, 1e4, 1e5, 1e6)
SEEDS = 3
GAP = 1e-10
SHRINK = 4  # t = ‖x₀ − x*‖/SHRINK, so K = SHRINK²
GD_CAP = 10_000
MU = 1e-9  # the logistic regression's ridge


def _column_scales(kappa: float, d: int) -> np.ndarray:
    return np.geomspace(1.0, math.sqrt(kappa), d)


def quadratic(kappa: float, seed: int, n: int = 20) -> dict:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.geomspace(1.0, kappa, n)
    H = (Q * lam) @ Q.T
    H = (H + H.T) / 2
    b = rng.standard_normal(n)
    x_star = scipy.linalg.solve(H, b, assume_a="pos")
    Ht, bt = torch.as_tensor(H), torch.as_tensor(b)
    return {"f": lambda z: 0.5 * z @ H @ z - b @ z, "grad": lambda z: H @ z - b, "x_star": x_star,
            "L": float(lam[-1]), "kappa_measured": float(np.linalg.cond(H)),
            "x_star_residual": float(np.linalg.norm(H @ x_star - b)),
            "brox": lambda x, t: brox_quadratic(Ht, bt, x, t)}


def logistic(kappa: float, seed: int, n: int = 200, d: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    scales = _column_scales(kappa, d)
    A = rng.standard_normal((n, d)) * scales
    y = np.sign(A @ (rng.standard_normal(d) / scales) + rng.standard_normal(n))

    def f(z):
        return float(np.mean(np.logaddexp(0.0, -y * (A @ z))) + MU * z @ z)

    def grad(z):
        return A.T @ (-y * scipy.special.expit(-y * (A @ z))) / n + 2 * MU * z

    def hess(z):
        s = scipy.special.expit(y * (A @ z))
        return (A.T * (s * (1 - s))) @ A / n + 2 * MU * np.eye(d)

    res = scipy.optimize.minimize(f, np.zeros(d), jac=grad, hess=hess, method="trust-exact",
                                  options={"gtol": 1e-13, "maxiter": 2000})
    x_star = res.x
    eig = np.linalg.eigvalsh(hess(x_star))

    def newton_prox(x: torch.Tensor, lam: float) -> torch.Tensor:
        """argmin f(z) + ‖z − x‖²/(2λ) by Newton's method with backtracking (strongly convex, smooth)."""
        xn = x.numpy()
        z = xn.copy()

        def obj(w):
            return f(w) + np.sum((w - xn) ** 2) / (2 * lam)

        for _ in range(200):
            g = grad(z) + (z - xn) / lam
            step = np.linalg.solve(hess(z) + np.eye(d) / lam, g)
            decrement, base = float(g @ step), obj(z)
            if decrement <= 1e-20 * (1 + abs(base)):  # in the quadratic regime: a last full step, then done
                return torch.as_tensor(z - step)
            a = 1.0
            while obj(z - a * step) > base - 0.25 * a * decrement and a > 1e-12:
                a /= 2
            z = z - a * step
        return torch.as_tensor(z)

    return {"f": f, "grad": grad, "x_star": x_star, "L": float(eig[-1]), "kappa_measured": float(eig[-1] / eig[0]),
            "x_star_residual": float(np.linalg.norm(grad(x_star))),
            "brox": lambda x, t: brox_prox(None, x, t, prox_fn=newton_prox)}


def l1_regression(kappa: float, seed: int, n: int = 30, d: int = 6) -> dict:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)) * _column_scales(kappa, d)
    b = rng.standard_normal(n)
    lp = scipy.optimize.linprog(np.r_[np.zeros(d), np.ones(n)], A_ub=np.block([[A, -np.eye(n)], [-A, -np.eye(n)]]),
                                b_ub=np.r_[b, -b], bounds=[(None, None)] * d + [(0, None)] * n, method="highs")
    if lp.status != 0:
        raise RuntimeError(f"linprog failed on the ℓ1 problem (κ = {kappa:g}, seed {seed}): {lp.message}")
    At, bt = torch.as_tensor(A), torch.as_tensor(b)
    return {"f": lambda z: float(np.abs(A @ z - b).sum()), "grad": None, "x_star": lp.x[:d],
            "kappa_measured": float(np.linalg.cond(A) ** 2),
            "brox": lambda x, t: brox_prox(None, x, t, prox_fn=lambda p, lam: prox_l1_affine(At, bt, p, lam))}


COLUMNS = {
    "problem": "the objective", "kappa": "the nominal condition number", "kappa_measured_median": "the measured one "
    "(the Hessian's at x*, or cond(A)²), median over the seeds", "K": "the bound ⌈‖x₀ − x*‖²/t²⌉",
    "bpm_steps_median": "BPM's steps to relative gap 1e-10, median over the seeds (censored: not within K)",
    "bpm_steps_min": "the fewest", "bpm_steps_max": "the most", "max_descent_violation": "the largest "
    "(‖x_{k+1} − x*‖² − ‖x_k − x*‖² + t²)/‖x₀ − x*‖² over the boundary steps (≤ 0: the inequality holds)",
    "max_final_gap": "the largest relative gap after K steps", "max_final_distance": "the largest ‖x_K − x*‖/‖x₀ − "
    "x*‖", "gd_steps_median": "gradient descent's steps to the same gap (— not run; censored: over 10,000)",
    "max_x_star_residual": "the largest ‖∇f(x*)‖ of the solver's x*", "linearised_brox_minus_normalised_gd":
    "‖(x + t·lmo(∇f)) − (x − t∇f/‖∇f‖)‖ at x₀"}
"""What each column of ``results.csv`` holds."""

PROBLEMS = {"quadratic": quadratic, "logistic regression": logistic, "ℓ1 regression ‖Ax − b‖₁": l1_regression}


def run_bpm(problem: dict, seed: int) -> dict:
    """BPM from ``x* + 5√n·u`` with ``t = ‖x₀ − x*‖/SHRINK`` for K steps; steps to the gap, K, the worst violation
    of the descent inequality, GD's steps to the same gap and the linearised-brox check."""
    f, x_star = problem["f"], problem["x_star"]
    n = len(x_star)
    u = np.random.default_rng(100 + seed).standard_normal(n)
    x0 = x_star + 5 * math.sqrt(n) * u / np.linalg.norm(u)
    dist0 = float(np.linalg.norm(x0 - x_star))
    t = dist0 / SHRINK
    K = math.ceil(dist0**2 / t**2 - 1e-9)
    f_star, gap0 = f(x_star), f(x0) - f(x_star)
    xs = [x.numpy() for x in bpm(problem["brox"], torch.as_tensor(x0), [t] * K)]
    gaps = [(f(x) - f_star) / gap0 for x in xs]
    steps = next((k for k, g in enumerate(gaps) if g <= GAP), math.inf)
    violation = -math.inf
    for a, c in zip(xs[:-1], xs[1:], strict=True):
        if np.linalg.norm(c - a) >= t * (1 - 1e-9):  # a boundary step
            violation = max(violation, (np.linalg.norm(c - x_star) ** 2 - np.linalg.norm(a - x_star) ** 2 + t**2)
                            / dist0**2)
    out = {"steps": steps, "K": K, "violation": violation, "final_gap": gaps[-1],
           "final_distance": float(np.linalg.norm(xs[-1] - x_star)) / dist0, "gd_steps": math.nan, "lmo_gap": math.nan}
    if problem["grad"] is not None:
        x = x0.copy()
        out["gd_steps"] = math.inf
        for k in range(1, GD_CAP + 1):
            x = x - problem["grad"](x) / problem["L"]
            if (f(x) - f_star) / gap0 <= GAP:
                out["gd_steps"] = k
                break
        g0 = torch.as_tensor(problem["grad"](x0))
        lin = torch.as_tensor(x0) + t * Euclidean().lmo(g0)
        out["lmo_gap"] = float((lin - (torch.as_tensor(x0) - t * g0 / g0.norm())).norm())
    return out


def _fmt(value: float) -> str:
    return f"{int(value)}" if math.isfinite(value) else "censored"


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    kappas = (KAPPAS[0], KAPPAS[3]) if quick else KAPPAS
    seeds = 1 if quick else SEEDS
    rows = []
    bar = progress_bar(len(PROBLEMS) * len(kappas) * seeds, "bpm", progress)
    for pname, make in PROBLEMS.items():
        for kappa in kappas:
            runs, problems = [], []
            for seed in range(seeds):
                problems.append(make(kappa, seed))
                runs.append(run_bpm(problems[-1], seed))
                bar.update(1)
            steps = np.array([r["steps"] for r in runs], dtype=float)
            gd = np.array([r["gd_steps"] for r in runs], dtype=float)
            rows.append({"problem": pname, "kappa": kappa,
                         "kappa_measured_median": float(np.median([p["kappa_measured"] for p in problems])),
                         "K": runs[0]["K"], "bpm_steps_median": _fmt(np.median(steps)),
                         "bpm_steps_min": _fmt(steps.min()), "bpm_steps_max": _fmt(steps.max()),
                         "max_descent_violation": max(r["violation"] for r in runs),
                         "max_final_gap": max(r["final_gap"] for r in runs),
                         "max_final_distance": max(r["final_distance"] for r in runs),
                         "gd_steps_median": "—" if np.isnan(gd).all() else _fmt(np.median(gd)),
                         "max_x_star_residual": max(p.get("x_star_residual", math.nan) for p in problems),
                         "linearised_brox_minus_normalised_gd": max(r["lmo_gap"] for r in runs)})
    bar.close()
    _plot(rows, out / "plot.png")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "", *_summary(rows, seeds)]
    return write_report(out, "Broximal Point Method: steps to the minimizer against κ", body, rows,
                        glossary=COLUMNS)


def _summary(rows, seeds: int) -> list[str]:
    worst = max(float(r["bpm_steps_max"]) if r["bpm_steps_max"] != "censored" else math.inf for r in rows)
    K = rows[0]["K"]
    lines = [f"BPM steps to relative gap {GAP:g} ({seeds} seed{'s' * (seeds > 1)} per κ; median [min–max]) against "
             f"the bound K = {K}:", ""]
    for pname in dict.fromkeys(r["problem"] for r in rows):
        sel = [r for r in rows if r["problem"] == pname]
        parts = ", ".join(f"κ = {r['kappa']:g}: {r['bpm_steps_median']} [{r['bpm_steps_min']}–{r['bpm_steps_max']}]"
                          for r in sel)
        gd = [r["gd_steps_median"] for r in sel]
        lines.append(f"- {pname}: {parts}" + (f"; GD: {', '.join(gd)}" if gd[0] != "—" else "") + ".")
    violation = max(r["max_descent_violation"] for r in rows)
    verdict = "holds" if worst <= K and violation <= 1e-9 else "is refuted"
    lmo = max(r["linearised_brox_minus_normalised_gd"] for r in rows if r["problem"] != "ℓ1 regression ‖Ax − b‖₁")
    growth = ", ".join(f"{p}: {sel[0]['bpm_steps_median']} → {sel[-1]['bpm_steps_median']}"
                       for p in dict.fromkeys(r["problem"] for r in rows)
                       for sel in [[r for r in rows if r["problem"] == p]])
    lines += ["", f"Median steps from the smallest to the largest κ: {growth} (against K = {K})."]
    return [*lines, "", f"Worst case over every problem, κ and seed: {_fmt(worst)} steps against K = {K}; largest "
            f"violation of the descent inequality {violation:.2g} (relative to ‖x₀ − x*‖²). Verdict: the claim "
            f"{verdict}.", "", f"Linearised brox − normalised GD at x₀: at most {lmo:.1g}."]


def _plot(rows, path: Path) -> None:
    plt = pyplot()
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(5.2 * len(problems), 4.6), sharey=True)
    for ax, pname in zip(axes, problems, strict=True):
        sel = [r for r in rows if r["problem"] == pname]
        ks = [r["kappa"] for r in sel]
        steps = {f: [float(r[f"bpm_steps_{f}"]) if r[f"bpm_steps_{f}"] != "censored" else GD_CAP for r in sel]
                 for f in ("median", "min", "max")}
        ax.errorbar(ks, steps["median"], color="tab:blue", marker="o", capsize=3,
                    yerr=[np.subtract(steps["median"], steps["min"]), np.subtract(steps["max"], steps["median"])])
        ax.axhline(sel[0]["K"], color="tab:red", linestyle="--")
        gd = [(k, r["gd_steps_median"]) for k, r in zip(ks, sel, strict=True) if r["gd_steps_median"] != "—"]
        reached = [(k, float(c)) for k, c in gd if c != "censored"]
        ax.plot([k for k, _ in reached], [c for _, c in reached], color="gray", marker="s")
        cens = [k for k, c in gd if c == "censored"]
        ax.scatter(cens, [GD_CAP] * len(cens), color="gray", marker="x", s=70)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(pname if gd else f"{pname} (nonsmooth: no GD)")
        ax.set_xlabel("condition number κ (nominal)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"steps to relative gap {GAP:g}")
    handles = [plt.Line2D([], [], color="tab:blue", marker="o", label="BPM, t = ‖x₀ − x*‖/4 (median, min–max)"),
               plt.Line2D([], [], color="tab:red", linestyle="--", label=f"bound K = ⌈‖x₀ − x*‖²/t²⌉ = {rows[0]['K']}"),
               plt.Line2D([], [], color="gray", marker="s", label="gradient descent, step 1/L (median)"),
               plt.Line2D([], [], color="gray", marker="x", linestyle="none", ms=8,
                          label=f"GD: not reached in {GD_CAP:,} steps")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle("Broximal Point Method: steps to the minimizer against κ, with the bound K")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
