"""`heavy-tails`: proximal spectral preconditioning under heavy-tailed gradient noise (*Constrained Stochastic
Spectral Preconditioning Converges for Nonconvex Objectives* (2026)).

Claim: because the preconditioner is bounded (``‖P(d)‖_op ≤ 1``), the momentum method needs no gradient
clipping to converge under noise with only a ``p``-th moment, ``p ∈ (1, 2]`` (infinite variance), and STORM
converges faster when the variance is finite.

Setup. Two problems whose stochastic gradients carry heavy-tailed noise through their labels,
``y = f*(x) + s·ξ``, with ξ Student-t with ``df = α`` or symmetric Pareto with tail index α (``|ξ| + 1`` Pareto(α)),
α ∈ {1.5, 2.5, ∞} (∞: Gaussian; α = 1.5 has infinite variance):

* ``least-squares``: ``W ∈ R^{16×32}``, ``x ~ N(0, I)``, ``f*(x) = W* x``, batch 16; loss ``½‖W − W*‖_F²``
  (the noiseless objective up to a constant).
* ``network``: a 16→64→4 tanh network fitting a random 16→32→4 tanh teacher, batch 32; loss: noiseless MSE on a
  held-out set of 512 inputs.

Methods: ``prox-momentum`` (ProxSpectral, Polar Express preconditioner, ``1 − β_k = (k+1)^{-1/2}``,
``γ_k ∝ (k+1)^{-3/4}``), ``prox-storm`` (STORM, ``a_k, γ_k ∝ (k+1)^{-2/3}``, two gradients per step on the same
batch), ``scion`` (Scion, ρ = 3, α = 0.1), ``sgd`` (momentum 0.9), ``sgd-clip`` (momentum 0.9, global gradient
norm clipped at 1) and ``adam``. On ``least-squares`` the proximal methods carry the constraint
``‖W‖_op ≤ 2‖W*‖_op`` (the solution is inside; every iterate is projected). Every method but STORM uses the same
``γ_k = γ_0 (k+1)^{-3/4}``; γ_0 is each method's best on a grid of 10^{-3…0} (half decades) on the Gaussian case,
seed 0, then held fixed as the tails get heavier. A run *diverges* when its loss becomes NaN/Inf or exceeds 100×
its initial value; the mean final loss is over the runs that did not diverge.

Cost is counted in gradient evaluations: every method gets the same budget, so STORM, which evaluates two gradients
per step, takes half as many steps. A method "beats" another in a cell only where its mean final loss is lower by
more than the larger of the two seed standard deviations; smaller differences are ties.

What would refute each claim here, stated before the runs: the first, a prox-momentum run that diverges, or that
ends above unclipped SGD's loss, in any infinite-variance cell; the second, prox-storm beating prox-momentum in
fewer than half of the finite-variance cells (each claim's line in the Result says "holds" or "not reproduced").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import specopt
from specopt.experiments.common import progress_bar, pyplot, save_figure, write_csv, write_report

COLUMNS = {
    "problem": "least squares or the teacher–student network", "noise": "the gradient noise's law",
    "alpha": "its tail index (inf: Gaussian, finite variance)", "method": "the optimizer", "lr0": "its tuned "
    "initial step size", "final_loss_mean": "final loss, mean over the seeds that did not diverge",
    "final_loss_median": "their median", "final_loss_sd": "their standard deviation", "diverged": "seeds that "
    "diverged / seeds"}
"""What each column of ``results.csv`` holds."""

METHODS = ("prox-momentum", "prox-storm", "scion", "sgd", "sgd-clip", "adam")
GRADIENTS_PER_STEP = {"prox-storm": 2}
PROBLEMS = ("least-squares", "network")
NOISES = (("student-t", 1.5), ("student-t", 2.5), ("pareto", 1.5), ("pareto", 2.5), ("gaussian", math.inf))
LR_GRID = tuple(10.0 ** (k / 2) for k in range(-6, 1))
NOISE_SCALE = 1.0
DIVERGED_FACTOR = 100.0


def heavy_noise(shape, kind: str, alpha: float, rng: np.random.Generator) -> torch.Tensor:
    """Zero-median noise with tail index α: Student-t(df = α), symmetric Pareto (``|ξ| + 1 ~ Pareto(α)``), or
    Gaussian (α = ∞)."""
    if kind == "gaussian" or math.isinf(alpha):
        x = rng.standard_normal(shape)
    elif kind == "student-t":
        x = rng.standard_t(alpha, shape)
    else:
        x = rng.choice([-1.0, 1.0], shape) * rng.pareto(alpha, shape)
    return torch.as_tensor(x, dtype=torch.float32)


class LeastSquares:
    def __init__(self, seed: int, noise: str, alpha: float):
        g = torch.Generator().manual_seed(seed)
        self.W_star = torch.randn(16, 32, generator=g) / math.sqrt(32)
        self.seed, self.noise, self.alpha = seed, noise, alpha
        self.model = nn.Linear(32, 16, bias=False)
        nn.init.zeros_(self.model.weight)

    def constraint(self):
        return specopt.SpectralBall(2 * float(torch.linalg.matrix_norm(self.W_star, 2)))

    def batch(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        x = torch.as_tensor(rng.standard_normal((16, 32)), dtype=torch.float32)
        return x, x @ self.W_star.T + NOISE_SCALE * heavy_noise((16, 16), self.noise, self.alpha, rng)

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return 0.5 * ((self.model(x) - y) ** 2).sum(1).mean()

    @torch.no_grad()
    def clean_loss(self) -> float:
        return float(0.5 * ((self.model.weight - self.W_star) ** 2).sum())


class TeacherStudent:
    def __init__(self, seed: int, noise: str, alpha: float):
        torch.manual_seed(10_000 + seed)
        self.teacher = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
        self.model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4))
        g = torch.Generator().manual_seed(20_000 + seed)
        self.x_test = torch.randn(512, 16, generator=g)
        with torch.no_grad():
            self.y_test = self.teacher(self.x_test)
        self.seed, self.noise, self.alpha = seed, noise, alpha

    def constraint(self):
        return None

    def batch(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        x = torch.as_tensor(rng.standard_normal((32, 16)), dtype=torch.float32)
        with torch.no_grad():
            y = self.teacher(x) + NOISE_SCALE * heavy_noise((32, 4), self.noise, self.alpha, rng)
        return x, y

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return ((self.model(x) - y) ** 2).sum(1).mean()

    @torch.no_grad()
    def clean_loss(self) -> float:
        return float(((self.model(self.x_test) - self.y_test) ** 2).sum(1).mean())


def _optimizer(method: str, problem, lr: float):
    params = list(problem.model.parameters())
    if method in ("prox-momentum", "prox-storm"):
        storm = method == "prox-storm"
        c = problem.constraint()
        groups = [{"params": [p], "constraint": c if p.ndim == 2 else None} for p in params]
        opt = specopt.ProxSpectral(groups, lr=lr, momentum="storm" if storm else "theory",
                                   estimator="storm" if storm else "momentum")
        return opt, specopt.schedules.power_decay(opt, "storm" if storm else "heavy-tails")
    if method == "scion":
        opt = specopt.Scion(params, lr=min(lr, 1.0), momentum=0.9, radius=3.0)  # the setup stated above
    elif method in ("sgd", "sgd-clip"):
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    elif method == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        raise ValueError(f"unknown method {method!r}")
    return opt, specopt.schedules.power_decay(opt, "heavy-tails")


def run_one(problem_name: str, method: str, lr: float, noise: str, alpha: float, seed: int, steps: int,
            evals: int = 30) -> list[float]:
    """Clean loss at ``evals + 1`` evenly spaced points of a budget of ``steps`` gradient evaluations (NaN after a
    divergence); STORM, two gradients per step, takes ``steps // 2`` steps."""
    torch.manual_seed(seed)
    problem = (LeastSquares if problem_name == "least-squares" else TeacherStudent)(seed, noise, alpha)
    opt, sched = _optimizer(method, problem, lr)
    iterations = steps // GRADIENTS_PER_STEP.get(method, 1)
    every = max(iterations // evals, 1)
    curve = [problem.clean_loss()]
    limit = DIVERGED_FACTOR * curve[0]
    for step in range(iterations):
        batch = problem.batch(step)

        def closure(batch=batch):
            opt.zero_grad()
            loss = problem.loss(batch)
            loss.backward()
            if method == "sgd-clip":
                nn.utils.clip_grad_norm_(problem.model.parameters(), 1.0)
            return loss

        try:
            opt.step(closure)
        except specopt.NonFiniteGradient:  # the run has diverged
            return curve + [math.nan] * (evals + 1 - len(curve))
        sched.step()
        if (step + 1) % every == 0 and len(curve) <= evals:
            value = problem.clean_loss()
            if not math.isfinite(value) or value > limit:
                return curve + [math.nan] * (evals + 1 - len(curve))
            curve.append(value)
    return curve


def tune(problem: str, steps: int, bar) -> dict[str, float]:
    best = {}
    for method in METHODS:
        scores = {}
        for lr in LR_GRID:
            final = run_one(problem, method, lr, "gaussian", math.inf, 0, steps)[-1]
            scores[lr] = final if math.isfinite(final) else math.inf
            bar.update(1)
        best[method] = min(scores, key=scores.get)
    return best


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    steps, seeds = (60, 2) if quick else (400, 5)
    noises = NOISES[:1] + NOISES[-1:] if quick else NOISES
    total = len(PROBLEMS) * len(METHODS) * (len(LR_GRID) + len(noises) * seeds)
    rows, curves = [], {}
    with progress_bar(total, "heavy-tails", progress) as bar:
        for problem in PROBLEMS:
            lrs = tune(problem, steps, bar)
            for noise, alpha in noises:
                for method in METHODS:
                    runs = []
                    for seed in range(seeds):
                        runs.append(run_one(problem, method, lrs[method], noise, alpha, seed, steps))
                        bar.update(1)
                    runs = np.array(runs)
                    ok = np.isfinite(runs[:, -1])
                    curves[(problem, noise, alpha, method)] = np.nanmedian(runs, axis=0) if ok.any() else None
                    rows.append({"problem": problem, "noise": noise, "alpha": alpha, "method": method,
                                 "lr0": lrs[method], "final_loss_mean": float(runs[ok, -1].mean()) if ok.any()
                                 else math.nan, "final_loss_median": float(np.median(runs[ok, -1])) if ok.any()
                                 else math.nan, "final_loss_sd": float(runs[ok, -1].std(ddof=1)) if ok.sum() > 1
                                 else math.nan, "diverged": f"{int((~ok).sum())}/{seeds}"})
    _plot(out, curves, noises, steps)
    write_csv(out / "curves.csv", [{"problem": p, "noise": n, "alpha": a, "method": m, "point": i,
                                    "gradients": round(i * steps / (len(c) - 1)), "median_loss": float(v)}
                                   for (p, n, a, m), c in curves.items() if c is not None for i, v in enumerate(c)])
    body = [__doc__.split("\n\n", 1)[1].strip(), "", f"{steps} gradient evaluations, {seeds} seeds per cell.", "",
            "## Result", "", *_summary(rows)]
    return write_report(out, "Heavy-tailed gradient noise", body, rows, glossary=COLUMNS)


def _claims(rows: list[dict]) -> list[str]:
    """The two claims, checked cell by cell: no clipping needed (bounded P), STORM faster at finite variance."""
    cell = {(r["problem"], r["noise"], r["alpha"], r["method"]): r for r in rows}
    keys = sorted({k[:3] for k in cell}, key=str)
    heavy = [k for k in keys if k[2] < 2]
    light = [k for k in keys if k[2] >= 2]

    def loss(k, m):
        return cell[(*k, m)]["final_loss_mean"]

    def beats(k, a, b):  # lower by more than the seed spread of either
        spread = max(cell[(*k, a)]["final_loss_sd"], cell[(*k, b)]["final_loss_sd"])
        return loss(k, a) + (spread if math.isfinite(spread) else 0.0) < loss(k, b)

    ratios = [loss(k, "prox-momentum") / loss(k, "sgd") for k in heavy]
    storm_wins_light = sum(beats(k, "prox-storm", "prox-momentum") for k in light)
    momentum_wins_heavy = sum(beats(k, "prox-momentum", "prox-storm") for k in heavy)
    diverged = {m: sum(int(cell[(*k, m)]["diverged"].split("/")[0]) for k in keys) for m in METHODS}
    clip_best = sum(min(METHODS, key=lambda m, k=k: loss(k, m)) == "sgd-clip" for k in keys)
    lines = []
    if heavy:
        prox_diverged = sum(int(cell[(*k, "prox-momentum")]["diverged"].split("/")[0]) for k in heavy)
        holds = prox_diverged == 0 and max(ratios) < 1
        lines.append(f"- **Bounded preconditioner, no clipping: {_verdict(holds)}.** With infinite variance (α = 1.5) "
                     "prox-momentum "
                     f"ends at {min(ratios):.2f}–{max(ratios):.2f}× the loss of unclipped SGD (same schedule, each "
                     f"tuned on the Gaussian case); runs diverged: "
                     f"{', '.join(f'{m} {n}' for m, n in diverged.items())}.")
        lines.append(f"- **STORM needs finite variance.** With α = 1.5 momentum beats STORM (by more than the seed "
                     f"spread, at equal gradient evaluations) in {momentum_wins_heavy} of {len(heavy)} cells.")
    lines.append(f"- **STORM is faster when the variance is finite: {_verdict(2 * storm_wins_light >= len(light))}."
                 f"** With α ∈ {{2.5, ∞}} and the same number of "
                 f"gradient evaluations, prox-storm ends below prox-momentum by more than the seed spread in "
                 f"{storm_wins_light} of {len(light)} cells.")
    vs_clip = [loss(k, "prox-momentum") / loss(k, "sgd-clip") for k in heavy]
    lines.append(f"- The strongest baseline: SGD with gradient-norm clipping is the best method in {clip_best} of "
                 f"{len(keys)} cells; at α = 1.5 prox-momentum ends at {min(vs_clip, default=math.nan):.2f}–"
                 f"{max(vs_clip, default=math.nan):.2f}× its loss, with no clipping threshold to choose.")
    return lines


def _verdict(holds: bool) -> str:
    return "holds" if holds else "not reproduced"


def _summary(rows: list[dict]) -> list[str]:
    lines = _claims(rows) + [""]
    for problem in PROBLEMS:
        for noise, alpha in NOISES:
            cell = [r for r in rows if r["problem"] == problem and r["noise"] == noise and r["alpha"] == alpha]
            if not cell:
                continue
            ranked = sorted(cell, key=lambda r: (int(r["diverged"].split("/")[0]),
                                                 r["final_loss_mean"] if math.isfinite(r["final_loss_mean"])
                                                 else math.inf))
            div = [f"{r['method']} {r['diverged']}" for r in cell if not r["diverged"].startswith("0/")]
            lines.append(f"- {problem}, {noise} α = {alpha:g}: best {ranked[0]['method']} "
                         f"({ranked[0]['final_loss_mean']:.4g}), then {ranked[1]['method']} "
                         f"({ranked[1]['final_loss_mean']:.4g}); diverged: {', '.join(div) or 'none'}.")
    return lines


def _plot(out: Path, curves: dict, noises, steps: int) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(PROBLEMS), len(noises), figsize=(3.6 * len(noises), 3.4 * len(PROBLEMS)),
                             squeeze=False)
    for i, problem in enumerate(PROBLEMS):
        for j, (noise, alpha) in enumerate(noises):
            ax = axes[i][j]
            for method in METHODS:
                c = curves.get((problem, noise, alpha, method))
                if c is not None:
                    ax.semilogy(np.linspace(0, steps, len(c)), c, label=method)
            ax.set_title(f"{problem}: {noise} α={alpha:g}", fontsize=9)
            ax.set_xlabel("gradient evaluations")
            ax.grid(alpha=0.3, which="both")
        axes[i][0].set_ylabel("noiseless loss (median over seeds)")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, out / "plot.png")
