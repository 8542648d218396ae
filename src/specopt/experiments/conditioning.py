"""`muon-conditioning`: iterations to reach ε against the condition number κ for simplified Muon, GD and Adam,
on matrix factorisation and on in-context linear regression (Ma, Huang, Chi & Chen 2026, *Preconditioning Benefits
of Spectral Orthogonalization in Muon*, arXiv:2601.13474).

Claim: simplified Muon ``X ← X − η_t·polar(∇f)`` with geometric ``η_t = η₀qᵗ`` reaches ε in a number of
iterations that does not grow with κ, while gradient descent needs ~κ·log(1/ε) and Adam also depends on κ.

Set-up (float64, numpy): MF ``f(X) = ¼‖XXᵀ − M*‖_F²``, n = 50, r = 5, λ log-spaced from 1 to 1/κ,
``X₀ = 1e-3·U``; ICL ``L(Γ)``, d = 10, N = 20, covariance ``Λ = Q diag(λ) Qᵀ`` with random Q, ``Γ₀ = 0``.
ε: relative excess loss ``(f − f*)/(f₀ − f*) ≤ 1e-12``.
Muon: ``q = 0.9`` and ``η₀`` a fifth of the solution's scale, so that the total path ``η₀/(1−q)`` is twice
the distance to cover: ``η₀ = 0.1√λ₁`` (MF, as in the seed), ``η₀ = 0.2‖Γ*‖_op`` (ICL). GD: step ``1/L``
with L the largest Hessian eigenvalue at the solution (MF: 3λ₁, ICL: λ₁‖Φ‖). Adam: β = (0.9, 0.999),
lr ``η₀·qᵗ`` with the best of q ∈ {0.9, 0.95, 0.98, 0.99} per κ (its most favourable tuning). Every run
stops at its cap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specopt.experiments.common import progress_bar, pyplot, save_figure, write_report

KAPPAS = (10.0, 1e2, 1e3, 1e4)
EPS = 1e-12


def mf_problem(kappa: float, n: int = 50, r: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, r)))
    lam = np.geomspace(1.0, 1.0 / kappa, r)
    M = (U * lam) @ U.T

    def f(X):
        return 0.25 * np.linalg.norm(X @ X.T - M) ** 2

    def grad(X):
        return (X @ X.T - M) @ X

    return {"f": f, "grad": grad, "x0": 1e-3 * U, "fstar": 0.0, "L": 3.0 * lam[0], "eta0": 0.1 * np.sqrt(lam[0])}


def icl_problem(kappa: float, d: int = 10, N: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.geomspace(1.0, 1.0 / kappa, d)
    Lam = (Q * lam) @ Q.T  # covariance with random eigenvectors: no coordinate system is favoured
    Phi = (N + 1) / N * Lam @ Lam + lam.sum() / N * Lam

    def f(G):
        return 0.5 * (np.trace(G.T @ Lam @ G @ Phi) - 2 * np.trace(Lam @ G @ Lam) + lam.sum())

    def grad(G):
        return Lam @ G @ Phi - Lam @ Lam

    G_star = Lam @ np.linalg.inv(Phi)
    return {"f": f, "grad": grad, "x0": np.zeros((d, d)), "fstar": f(G_star), "L": lam[0] * np.linalg.norm(Phi, 2),
            "eta0": 0.2 * np.linalg.norm(G_star, 2)}


def polar(G: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    return U @ Vt


def iterations_to_eps(problem: dict, method: str, cap: int, q: float = 0.9) -> int | None:
    """First iteration whose relative excess loss is ≤ EPS (None if not reached by ``cap``)."""
    f, grad, x = problem["f"], problem["grad"], problem["x0"].copy()
    f0 = f(x) - problem["fstar"]
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for t in range(1, cap + 1):
        g = grad(x)
        if method == "muon":
            x -= problem["eta0"] * q ** (t - 1) * polar(g)
        elif method == "gd":
            x -= g / problem["L"]
        else:  # adam
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            step = problem["eta0"] * q ** (t - 1)
            x -= step * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-12)
        excess = f(x) - problem["fstar"]
        if not np.isfinite(excess):
            return None
        if excess <= EPS * f0:
            return t
    return None


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    kappas = KAPPAS[:2] if quick else KAPPAS
    caps = {"muon": 2000, "adam": 20_000 if not quick else 2000, "gd": 1_000_000 if not quick else 20_000}
    problems = {"matrix factorization": mf_problem, "in-context regression": icl_problem}
    rows = []
    bar = progress_bar(len(kappas) * len(problems) * 3, "muon-conditioning", progress)
    for pname, make in problems.items():
        for kappa in kappas:
            problem = make(kappa)
            for method in ("muon", "gd", "adam"):
                if method == "adam":
                    counts = [iterations_to_eps(problem, "adam", caps["adam"], q) for q in (0.9, 0.95, 0.98, 0.99)]
                    reached = [c for c in counts if c is not None]
                    count = min(reached) if reached else None
                else:
                    count = iterations_to_eps(problem, method, caps[method])
                rows.append({"problem": pname, "kappa": kappa, "method": method,
                             "iterations": count if count is not None else f">{caps[method]}"})
                bar.update(1)
    bar.close()
    _plot(rows, problems, kappas, out / "plot.png")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", ""]
    for pname in problems:
        for method in ("muon", "gd", "adam"):
            counts = [r["iterations"] for r in rows if r["problem"] == pname and r["method"] == method]
            numeric = [c for c in counts if isinstance(c, int)]
            if len(numeric) == len(counts) and numeric:
                body.append(f"- {pname}, {method}: {min(numeric)}–{max(numeric)} iterations across κ = "
                            f"{kappas[0]:g}…{kappas[-1]:g} (max/min = {max(numeric) / min(numeric):.2f}).")
            else:
                body.append(f"- {pname}, {method}: {counts} (> means not reached by the cap).")
    return write_report(out, "Muon's iteration count does not grow with κ", body, rows)


def _plot(rows, problems, kappas, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(problems), figsize=(11, 4.2))
    for ax, pname in zip(axes, problems, strict=True):
        for method, marker in (("muon", "o"), ("gd", "s"), ("adam", "^")):
            pts = [(r["kappa"], r["iterations"]) for r in rows if r["problem"] == pname and r["method"] == method]
            xs = [k for k, c in pts if isinstance(c, int)]
            ys = [c for k, c in pts if isinstance(c, int)]
            ax.loglog(xs, ys, marker=marker, label=method)
        ax.set_title(pname)
        ax.set_xlabel("condition number κ")
        ax.set_ylabel(f"iterations to relative excess loss {EPS:g}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    save_figure(fig, path)
