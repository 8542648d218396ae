"""`stationarity`: the rates of proximal spectral preconditioning on a constrained nonconvex problem (Oikonomidis,
Quan, Antonakopoulos, Silveti-Falls, Cevher, Patrinos 2026, *Constrained Stochastic Spectral Preconditioning
Converges for Nonconvex Objectives*, arXiv:2605.11850).

Claim: with EMA momentum (``1 − β_k = (k+1)^{-1/2}``, ``γ_k = γ_0 (k+1)^{-3/4}``) the method reaches a stationary
point of a nonconvex objective over its constraint set at the rate O(K^{-1/4}); with STORM (``a_k = (k+1)^{-2/3}``,
``γ_k = γ_0 (k+1)^{-2/3}``) at O(K^{-1/3}), faster.

Measure (reconstructed: our source states the rates, not the measure). The Frank–Wolfe gap of the constrained
problem, ``G(W) = max_{S ∈ C} ⟨∇f(W), W − S⟩ = Σ_l ⟨∇_l f, W_l⟩ + r_l‖∇_l f‖_nuc`` on the product of spectral
balls ``‖W_l‖_op ≤ r_l``: zero exactly at the stationary points of f over C, and the quantity Pethick et al. (2025,
arXiv:2502.07529) bound at O(K^{-1/4}) for conditional gradient under a norm constraint. It is computed with the
full-batch gradient after every step. The bound is on ``min_{k≤K} E G(W_k)``; each seed's gap is read at K by its
level, the mean of its curve over the last quarter-octave, ``k ∈ (K·2^{-1/4}, K]`` (a running minimum of the noisy
curve would fall with the noise's own extremes: a bias toward the claim), and the seeds' rates are averaged (the
plot and the final levels show the mean over the seeds). Where E G decreases, as here, its running minimum is its
current level. The running mean of the seed-mean curve, which the analyses bound too, is reported beside it.

Problem. A bias-free tanh network 16 → 32 → 4 fitted to N = 1024 examples of a bias-free tanh teacher of the same
shape whose weights are 3× a standard initialisation, labels with Gaussian noise 0.5; f is the mean squared error
over the N examples, and each step draws a batch of 8 of them with replacement (the gradient noise). The radii are
half the teacher's operator norms, so the constraint binds: the teacher lies outside C, and the gap, not the
gradient, goes to zero. ProxSpectral with its default Polar Express preconditioner projects every weight matrix onto
its ball after every step. γ_0 of each arm is its best on a grid of half decades on a tuning seed (the lowest final
running-mean gap), then held for the evaluation seeds.

Fit. For each seed, the slope of log(level of its gap) on log K at 24 log-spaced K in the last 1.8 decades,
[K_max/64, K_max] (the first steps' transient left out); an arm's slope is the mean over its seeds, with the 95 %
Student-t interval of that mean, and two arms are compared by their per-seed differences (the same seeds, paired),
with the same interval. (The first full run resampled the seeds of the seed-mean curve instead — a percentile
bootstrap, which over 5 seeds has 126 distinct resamples and is too narrow: it read STORM − momentum as −0.03
[−0.06, −0.00], "faster: holds", where the per-seed differences' t-interval is [−0.08, +0.02]. An outside review
found it; the runs are the same.)

What would refute each claim, stated before the runs. The rates are upper bounds: a decay *slower* than the bound
refutes it — the 95 % interval of the slope above −1/4 (momentum) or above −1/3 (STORM); an interval below the
exponent is a decay at least as fast ("holds"), one that contains it is consistent ("not resolved"). STORM is
faster if its slope is below momentum's, paired by seed, with the interval of the difference below zero, and
refuted if that interval is above zero (per step; at equal gradient evaluations STORM, which evaluates two per
step, is compared at K/2 with momentum at K). The control — the momentum arm with its step size and momentum
frozen at their values three octaves before the window (K_max/512), so that it stops converging and settles at
the noise floor of that step inside the window — shows that the test can fail: if its slope's interval is not
above −1/4 the window cannot tell a stalled run from the claimed rate, and no verdict is given. (A first control,
frozen at the window's first step, γ = 0.0083, had not reached its floor by K_max — slope −0.31 [−0.33, −0.29],
no verdict — so it was moved three octaves earlier; the arms' runs were the same.)
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import specopt
from specopt.experiments.common import progress_bar, pyplot, save_figure, t_interval, write_report

COLUMNS = {
    "arm": "the method (control: momentum's γ and β frozen three octaves before the window)",
    "claimed_exponent": "the rate's exponent the analysis gives (none for the control)",
    "lr0": "γ_0, tuned on the tuning seed (the control: its constant γ)",
    "lr0_at_grid_edge": "whether the tuned γ_0 is the grid's smallest or largest", "seeds": "evaluation seeds",
    "slope": "mean over the seeds of the slope of log(level of the seed's gap) on log K over the window (the level "
    "at K: the gap's mean over the last quarter-octave)", "slope_low": "its 95 % Student-t interval over the seeds, "
    "lower end",
    "slope_high": "upper end", "slope_mean": "slope of log(running mean of the seed-mean gap) on log K over the window",
    "final_gap": "the level of the seed-mean gap at K_max", "final_gap_mean": "its running mean at K_max",
    "verdict": "the claim's verdict (the stated rule)"}
"""What each column of ``results.csv`` holds."""

ARMS = {"momentum": -0.25, "storm": -1.0 / 3.0, "control": None}
LR_GRID = tuple(10.0 ** (k / 2) for k in range(-5, 2))
N, BATCH, WIDTH, NOISE, TEACHER_SCALE = 1024, 8, 32, 0.5, 3.0
TUNING_SEED = 100
WINDOW = 64  # the fit runs over [K_max / WINDOW, K_max]
POINTS = 24


class Problem:
    """The teacher–student problem of the module docstring: data, student, radii and the Frank–Wolfe gap."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        teacher = [TEACHER_SCALE * torch.randn(WIDTH, 16, generator=g) / 4.0,
                   TEACHER_SCALE * torch.randn(4, WIDTH, generator=g) / math.sqrt(WIDTH)]
        self.x = torch.randn(N, 16, generator=g)
        self.y = torch.tanh(self.x @ teacher[0].T) @ teacher[1].T + NOISE * torch.randn(N, 4, generator=g)
        self.radii = [0.5 * float(torch.linalg.matrix_norm(w, 2)) for w in teacher]
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(16, WIDTH, bias=False), nn.Tanh(), nn.Linear(WIDTH, 4, bias=False))
        self.weights = [self.model[0].weight, self.model[2].weight]
        self.rng = np.random.default_rng(seed)

    def loss(self, rows=None) -> torch.Tensor:
        x, y = (self.x, self.y) if rows is None else (self.x[rows], self.y[rows])
        return 0.5 * (self.model(x) - y).square().sum(1).mean()

    def batch(self) -> torch.Tensor:
        return torch.as_tensor(self.rng.integers(N, size=BATCH))

    def gap(self) -> float:
        """``Σ_l ⟨∇_l f, W_l⟩ + r_l‖∇_l f‖_nuc`` with the full-batch gradient (≥ 0 inside the balls)."""
        with torch.enable_grad():
            grads = torch.autograd.grad(self.loss(), self.weights)
        return float(sum((g * w.detach()).sum() + r * torch.linalg.svdvals(g).sum()
                         for g, w, r in zip(grads, self.weights, self.radii, strict=True)))


def frozen(lr0: float, steps: int) -> tuple[float, float]:
    """The control's constant ``(γ, β)``: the momentum arm's at step K_max/(8·WINDOW), three octaves before the
    window, so that the control reaches the noise floor of its step inside the window."""
    k = max(steps // (8 * WINDOW), 1)
    return lr0 * k ** -0.75, 1.0 - k ** -0.5


def run_one(arm: str, lr0: float, seed: int, steps: int) -> np.ndarray:
    """The gap after each of ``steps`` steps (NaN from a divergence on)."""
    problem = Problem(seed)
    groups = [{"params": [w], "constraint": specopt.SpectralBall(r)}
              for w, r in zip(problem.weights, problem.radii, strict=True)]
    storm = arm == "storm"
    lr, momentum = frozen(lr0, steps) if arm == "control" else (lr0, "storm" if storm else "theory")
    opt = specopt.ProxSpectral(groups, lr=lr, momentum=momentum, estimator="storm" if storm else "momentum")
    schedule = None if arm == "control" else specopt.schedules.power_decay(opt, "storm" if storm else "heavy-tails")
    gaps = np.full(steps, math.nan)
    for k in range(steps):
        rows = problem.batch()

        def closure(rows=rows):
            opt.zero_grad()
            loss = problem.loss(rows)
            loss.backward()
            return loss

        try:
            opt.step(closure)
        except specopt.NonFiniteGradient:  # diverged
            break
        if schedule is not None:
            schedule.step()
        gaps[k] = problem.gap()
        if not math.isfinite(gaps[k]):
            break
    return gaps


def running_mean(curve: np.ndarray) -> np.ndarray:
    """``(1/K) Σ_{k≤K} curve_k`` for K = 1…len(curve)."""
    return np.cumsum(curve) / np.arange(1, len(curve) + 1)


def window(steps: int) -> np.ndarray:
    """The K (1-based) at which the slope is fitted: log-spaced over [steps / WINDOW, steps]."""
    return np.unique(np.geomspace(max(steps // WINDOW, 1), steps, POINTS).round().astype(int))


def levels(curve: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """The curve's mean over the last quarter-octave before each K, ``k ∈ (K·2^{-1/4}, K]``: its level at K, with
    the step-to-step noise averaged out (a running minimum would fall with the noise's own extremes)."""
    return np.array([curve[int(k * 2 ** -0.25):k].mean() for k in ks])


def slope(values: np.ndarray, ks: np.ndarray) -> float:
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        return math.nan
    return float(np.polyfit(np.log(ks), np.log(values), 1)[0])


def slopes(gaps: np.ndarray, ks: np.ndarray) -> dict:
    """Each seed's slope of its gap's levels (:func:`levels`) and their mean, the slope of the seed-mean gap's
    running mean, and the seed-mean gap's level and running mean at K_max."""
    mean = gaps.mean(axis=0)
    per_seed = np.array([slope(levels(curve, ks), ks) for curve in gaps])
    return {"slope": float(per_seed.mean()), "per_seed": per_seed,
            "slope_mean": slope(running_mean(mean)[ks - 1], ks),
            "final_gap": float(levels(mean, ks[-1:])[0]), "final_gap_mean": float(running_mean(mean)[-1])}


def rate_verdict(low: float, high: float, exponent: float) -> str:
    """The stated rule for a claimed rate K^exponent (an upper bound) from the slope's 95 % interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not measurable (a run diverged or a gap was not positive)"
    if low > exponent:
        return "refuted (slower than the bound)"
    if high < exponent:
        return "holds (at least as fast as the bound)"
    return "not resolved (the interval contains the bound's exponent)"


def control_stalls(fits: dict) -> bool:
    """Whether the control's slope interval lies above −1/4: only then can the window tell a stalled run from the
    claimed rate, and a verdict be given."""
    return t_interval(fits["control"]["per_seed"])[0] > ARMS["momentum"]


def arm_verdict(fits: dict, arm: str) -> str:
    """The verdict of one arm's rate (the table's column), none where the control does not stall."""
    if ARMS[arm] is None:
        return "control"
    if not control_stalls(fits):
        return "no verdict (the control does not stall over the window)"
    return rate_verdict(*t_interval(fits[arm]["per_seed"]), ARMS[arm])


def verdicts(fits: dict) -> list[str]:
    """The claims' lines from each arm's fit (per-seed slopes; the arms ran the same seeds, so their differences
    are paired)."""
    control = t_interval(fits["control"]["per_seed"])
    if not control_stalls(fits):
        return [f"- **No verdict**: the control's slope interval [{control[0]:.2f}, {control[1]:.2f}] is not above "
                f"−1/4, so over this window a stalled run cannot be told from the claimed rate."]
    lines = [f"- The control (constant γ and β) stalls: slope {fits['control']['slope']:.2f} "
             f"[{control[0]:.2f}, {control[1]:.2f}], above −1/4 — the test can refute a rate."]
    for arm, name in (("momentum", "Momentum at O(K^{-1/4})"), ("storm", "STORM at O(K^{-1/3})")):
        low, high = t_interval(fits[arm]["per_seed"])
        lines.append(f"- **{name}: {arm_verdict(fits, arm)}** — slope {fits[arm]['slope']:.2f} "
                     f"[{low:.2f}, {high:.2f}].")
    difference = fits["storm"]["per_seed"] - fits["momentum"]["per_seed"]
    low, high = t_interval(difference)
    faster = ("holds" if high < 0 else "refuted" if low > 0 else "not resolved")
    lines.append(f"- **STORM faster than momentum: {faster}** — slope difference (STORM − momentum, paired by "
                 f"seed: {', '.join(f'{d:+.3f}' for d in difference)}) {difference.mean():+.3f} "
                 f"[{low:+.3f}, {high:+.3f}], per step (STORM evaluates two gradients per step: a constant factor, "
                 "the same exponent).")
    return lines


def equal_cost(curves: dict, ks: np.ndarray) -> str:
    """STORM's level after K_max/2 steps against momentum's after K_max: the same number of gradient evaluations."""
    storm, momentum = levels(curves["storm"], ks[-1:] // 2)[0], levels(curves["momentum"], ks[-1:])[0]
    ahead = "STORM" if storm < momentum else "momentum"
    return (f"- At equal gradient evaluations ({2 * (ks[-1] // 2)}): STORM's gap {storm:.3g} after {ks[-1] // 2} "
            f"steps, momentum's {momentum:.3g} after {ks[-1]}: {ahead} is ahead (one seed-mean level each, no "
            "interval).")


def tune(arm: str, steps: int, grid, bar) -> float:
    scores = {}
    for lr in grid:
        gaps = run_one(arm, lr, TUNING_SEED, steps)
        scores[lr] = float(np.mean(gaps)) if np.all(np.isfinite(gaps)) else math.inf
        bar.update(1)
    return min(scores, key=scores.get)


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    steps, seeds = (512, 2) if quick else (8192, 5)
    grid = LR_GRID[1:4:2] if quick else LR_GRID
    ks = window(steps)
    fits, rows, curves = {}, [], {}
    with progress_bar(2 * len(grid) + len(ARMS) * seeds, "stationarity", progress) as bar:
        lr0 = {arm: tune(arm, steps, grid, bar) for arm in ("momentum", "storm")}
        for arm in ARMS:
            gaps = []
            for seed in range(seeds):
                gaps.append(run_one(arm, lr0.get(arm, lr0["momentum"]), seed, steps))
                bar.update(1)
            gaps = np.array(gaps)
            curves[arm] = gaps.mean(axis=0)
            fits[arm] = slopes(gaps, ks)
    lines = verdicts(fits) + [equal_cost(curves, ks)]
    for arm, exponent in ARMS.items():
        low, high = t_interval(fits[arm]["per_seed"])
        lr = frozen(lr0["momentum"], steps)[0] if arm == "control" else lr0[arm]
        rows.append({"arm": arm, "claimed_exponent": "—" if exponent is None else round(exponent, 4), "lr0": lr,
                     "lr0_at_grid_edge": arm != "control" and lr in (grid[0], grid[-1]), "seeds": seeds,
                     "slope": fits[arm]["slope"], "slope_low": low, "slope_high": high,
                     "slope_mean": fits[arm]["slope_mean"], "final_gap": fits[arm]["final_gap"],
                     "final_gap_mean": fits[arm]["final_gap_mean"],
                     "verdict": arm_verdict(fits, arm)})
    with gzip.open(out / "curves.csv.gz", "wt") as f:  # the seed-mean gap after every step: the plot's data
        f.write("arm,step,mean_gap\n")
        f.writelines(f"{arm},{k + 1},{c[k]:.6g}\n" for arm, c in curves.items() for k in range(len(c)))
    _plot(out, curves, ks)
    body = [__doc__.split("\n\n", 1)[1].strip(), "",
            f"{steps} steps, {seeds} evaluation seeds; window K ∈ [{ks[0]}, {ks[-1]}]; γ_0 grid "
            f"{', '.join(f'{lr:.3g}' for lr in grid)} (tuning seed {TUNING_SEED}).", "", "## Result", "", *lines]
    return write_report(out, "Stationarity rates of proximal spectral preconditioning", body, rows, glossary=COLUMNS)


def _plot(out: Path, curves: dict, ks: np.ndarray) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    k = np.arange(1, len(next(iter(curves.values()))) + 1)
    for arm, curve in curves.items():
        line, = ax.plot(k, curve, alpha=0.3, lw=0.6)
        ax.plot(ks, levels(curve, ks), "o-", ms=3, color=line.get_color(), label=f"{arm}: level of the mean gap")
    anchor = levels(curves["momentum"], ks[:1])[0]
    for exponent, style in ((-0.25, ":"), (-1 / 3, "--")):
        ax.plot(ks, anchor * (ks / ks[0]) ** exponent, "k" + style, lw=1, label=f"K^{exponent:.2f} (the bound's rate)")
    ax.axvspan(ks[0], ks[-1], color="0.9", zorder=0, label="fitted window")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step K")
    ax.set_ylabel("Frank–Wolfe gap (full batch), mean over seeds")
    ax.set_title("ProxSpectral on a constrained teacher–student network")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, out / "plot.png")
