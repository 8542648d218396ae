"""`bpm`: the Broximal Point Method against the proximal point method and gradient descent (Gruntkowska, Li, Rane &
Richtárik 2025).

Problems (float64): a quadratic ``½xᵀHx − bᵀx`` with κ = 10⁴ (exact brox by the trust-region subproblem),
an ℓ2-regularised logistic regression (brox through the prox with a bisected λ) and the nonsmooth
``‖Ax − b‖₁`` (the same, with a dual prox; its "gradient descent" is the subgradient method). All methods start at
``x* + 5·1``. BPM uses a constant radius t; the proximal point method uses ``λ = 1/L`` and ``λ = 10/L``;
gradient descent uses ``1/L``. Theory: BPM reaches the minimizer exactly after ``K = ⌈‖x₀ − x*‖²/t²⌉``
steps, whatever the conditioning; its linearisation, ``x − t·∇f/‖∇f‖`` (the lmo step of the ℓ2 ball), is
normalised gradient descent — the bridge to Muon/Scion/Gluon, checked in the last column.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from specopt.bpm import bpm, brox_prox, brox_quadratic, prox, prox_l1_affine
from specopt.experiments.common import pyplot, save_figure, write_report
from specopt.norms import Euclidean

F64 = {"dtype": torch.float64}


def _quadratic(kappa: float = 1e4, n: int = 20):
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, **F64))
    lam = torch.logspace(0, math.log10(kappa), n, **F64)
    H = (Q * lam) @ Q.T
    b = torch.randn(n, generator=g, **F64)
    x_star = torch.linalg.solve(H, b)
    f = lambda z: 0.5 * z @ H @ z - b @ z  # noqa: E731
    return {"f": f, "x_star": x_star, "L": float(lam[-1]), "brox": lambda x, t: brox_quadratic(H, b, x, t),
            "grad": lambda z: H @ z - b, "prox": lambda x, lam_: prox(f, x, lam_)}


def _logistic(n: int = 100, d: int = 10):
    g = torch.Generator().manual_seed(1)
    A = torch.randn(n, d, generator=g, **F64) * torch.logspace(0, 1, d, **F64)
    y = torch.sign(A @ torch.randn(d, generator=g, **F64) + torch.randn(n, generator=g, **F64))

    def f(z):
        return torch.nn.functional.softplus(-y * (A @ z)).mean() + 1e-3 * z.pow(2).sum()

    def grad(z):
        z = z.clone().requires_grad_(True)
        f(z).backward()
        return z.grad

    x_star = prox(f, torch.zeros(d, **F64), 1e8, iters=2000)
    L = float(torch.linalg.matrix_norm(A, 2) ** 2 / (4 * n) + 2e-3)
    return {"f": f, "x_star": x_star, "L": L, "brox": lambda x, t: brox_prox(f, x, t), "grad": grad,
            "prox": lambda x, lam_: prox(f, x, lam_)}


def _l1_regression(n: int = 30, d: int = 6):
    """The nonsmooth ``‖Az − b‖₁``: brox and the proximal point method through the dual prox; the "gradient"
    method is the subgradient method."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(n, d, generator=g, **F64)
    b = torch.randn(n, generator=g, **F64)

    def f(z):
        return (A @ z - b).abs().sum()

    def l1_prox(x, lam):
        return prox_l1_affine(A, b, x, lam)

    x_star = brox_prox(f, torch.zeros(d, **F64), 1e3, prox_fn=l1_prox)
    return {"f": f, "x_star": x_star, "L": float(torch.linalg.matrix_norm(A, 2) ** 2),
            "brox": lambda x, t: brox_prox(f, x, t, prox_fn=l1_prox), "prox": l1_prox,
            "grad": lambda z: A.T @ torch.sign(A @ z - b)}


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    problems = {"quadratic κ=1e4": _quadratic(), "logistic regression": _logistic(),
                "ℓ1 regression ‖Ax−b‖₁ (nonsmooth)": _l1_regression()}
    steps = 15 if quick else 60
    curves, rows = {}, []
    for pname, p in problems.items():
        f, x_star, L = p["f"], p["x_star"], p["L"]
        x0 = x_star + 5.0
        f_star = float(f(x_star))
        dist0 = float((x0 - x_star).norm())
        t = dist0 / 4
        methods = {
            "BPM t = ‖x₀−x*‖/4": bpm(p["brox"], x0, [t] * steps),
            "proximal point λ = 1/L": _iterate(lambda x, px=p["prox"], L=L: px(x, 1 / L), x0, steps),
            "proximal point λ = 10/L": _iterate(lambda x, px=p["prox"], L=L: px(x, 10 / L), x0, steps),
            "gradient descent 1/L": _iterate(lambda x, g=p["grad"], L=L: x - g(x) / L, x0, steps),
        }
        g0 = p["grad"](x0)
        linear_brox = x0 + t * Euclidean().lmo(g0)
        normalized_gd = x0 - t * g0 / g0.norm()
        for name, xs in methods.items():
            gaps = [max(float(f(x)) - f_star, 1e-16) for x in xs]
            curves[(pname, name)] = gaps
            reached = next((k for k, v in enumerate(gaps) if v <= 1e-10 * gaps[0]), None)
            rows.append({"problem": pname, "method": name, "iterations_to_1e-10": reached if reached is not None
                         else f">{steps}", "final_gap": gaps[-1],
                         "linearised_brox_minus_normalised_gd": float((linear_brox - normalized_gd).norm())})
    _plot(curves, problems, out / "plot.png")
    bpm_rows = [r for r in rows if r["method"].startswith("BPM")]
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "",
            "BPM reaches relative gap 1e-10 in " + ", ".join(f"{r['iterations_to_1e-10']} steps ({r['problem']})"
                                                              for r in bpm_rows)
            + " — within the theory's bound K = ⌈‖x₀ − x*‖²/t²⌉ = 16 for t = ‖x₀ − x*‖/4, whatever the "
            "conditioning; the table gives the proximal point method and gradient (subgradient) descent for "
            f"comparison over {steps} steps. The linearised brox step equals the normalised gradient step to "
            "rounding (last column)."]
    return write_report(out, "Broximal Point Method vs proximal point and gradient descent", body, rows)


def _iterate(step, x0, steps: int) -> list:
    xs = [x0]
    for _ in range(steps):
        xs.append(step(xs[-1]))
    return xs


def _plot(curves, problems, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4.2))
    for ax, pname in zip(axes, problems, strict=True):
        for (p, name), gaps in curves.items():
            if p == pname:
                ax.semilogy(range(len(gaps)), gaps, marker=".", label=name)
        ax.set_title(pname)
        ax.set_xlabel("iteration")
        ax.set_ylabel("f(x_k) − f*")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path)
