"""`hparam-transfer`: does the best step size stay put as the model widens? UScion against AdamW on a char-GPT.

Claim (Pethick et al. 2025, *Training Deep Learning Models with Norm-Constrained LMOs*, arXiv:2502.07529, after the
modular norm of Large et al. 2024, arXiv:2405.14813): when every layer's step is measured in a norm that scales with
its shape (RMS→RMS spectral for hidden matrices, ℓ∞ for embeddings, fan-in-scaled ℓ∞ for the head) and the init has
the same norm at every width, the best step size γ* does not depend on the width; AdamW in the standard
parametrization (PyTorch's fan-in init, one global step size) has a γ* that shrinks as the model widens (Yang et al.
2022, *Tensor Programs V*, arXiv:2203.03466).

Design. A one-layer char-GPT with a fixed head dimension of 16 (width/16 heads), widths 16…256 (16×), context 32,
batch 16, 100 steps (linear decay over the last 30 %), 3 seeds (each its own init and data order). UScion (uSCG,
momentum 0.9, the default role radii 10 / 30 / 100) starts from the norms init (task option ``init="norms"``: every
matrix on the unit sphere of its role's norm); AdamW (β = (0.9, 0.95), no weight decay) from PyTorch's own init
(``init="standard"``). Step sizes lie on one half-octave lattice γ = 2^(k/2). For each optimizer and width the grid
starts as 5 points around a guess (the registry's default step size for the first width, the second width takes the
first's γ*, later ones extend the line through the last two) and grows by one point on the side where the
seed-mean argmin has fewer than 2 neighbours, up to 18 points; the guess only saves runs. γ* of each seed is the
vertex of a parabola fitted by least squares to the final validation loss against log₂ γ over the grid points
within 2 of that seed's argmin (5, or fewer where a seed's argmin lies next to the grid's edge). A seed whose argmin
lies on the grid's edge, or whose parabola opens downwards or has its vertex outside those points, is censored:
drawn as a triangle, left out of the slope. The slope s of log₂ γ* against log₂ width is the least-squares line
through the widths' means of their uncensored seeds' log₂ γ*, with a 95 % t-interval on (widths − 2) degrees of
freedom. Width means, not every (width, seed) point: the seeds of one width share that width's departure from a
line (a γ* that is U-shaped in width is the same U for every seed), so a fit through all points would count them
as independent and understate the interval (the first full run, 2 seeds, did: UScion −0.12 [−0.21, −0.03], read as
a drift; through the width means −0.12 [−0.32, +0.07]).

Verdict (stated before the full run). Reproduced: UScion's interval contains 0 and lies inside ±0.25 (γ* moves by
less than 2× over the 16× range of widths), and AdamW's interval excludes 0. Refuted: UScion's interval excludes 0
(its γ* drifts with width), or AdamW's lies inside ±0.25 (AdamW's γ* transfers as well: no contrast). Anything else
(an interval too wide to tell) is inconclusive.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from specopt.experiments.common import (
    finish_log_log,
    markdown_table,
    progress_bar,
    pyplot,
    save_figure,
    write_csv,
    write_report,
)
from specopt.registry import DEFAULTS
from specopt.training import RunConfig, train

INITS = {"uscion": "norms", "adamw": "standard"}
"""The optimizers compared, each with the init of its parametrization."""
COLORS = {"uscion": "C0", "adamw": "C3"}
HEAD_DIM = 16
COLUMNS = {
    "optimizer": "uscion or adamw", "width": "n_embd", "heads": "width / 16", "seed": "the seed",
    "lr_star": "γ*, the vertex of the parabola (the argmin where censored)", "log2_lr_star": "log₂ γ*",
    "censored": "why γ* is not an interior optimum (no: it is)", "grid": "the step sizes run at this width",
    "points": "how many"}
"""What each column of ``results.csv`` holds."""
MARGIN = 0.25
"""|slope| below which γ* counts as transferring: γ* changes by less than 2^(0.25·4) = 2× over 16× in width."""


@dataclass(frozen=True)
class Design:
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    window: int
    """Points either side of the argmin that the parabola is fitted over."""
    max_points: int
    """The most step sizes one (optimizer, width) grid may grow to."""
    first_guess: dict[str, int] | None = None
    """Lattice index each optimizer's first grid is centred on; None: the registry's default step size."""


FULL = Design(widths=(16, 32, 64, 128, 256), seeds=(0, 1, 2), steps=100, window=2, max_points=18)
QUICK = Design(widths=(16, 32, 64), seeds=(0, 1), steps=20, window=1, max_points=5,
               first_guess={"uscion": -12, "adamw": -6})  # short runs want large steps


def lattice_lr(k: int) -> float:
    """The step size of lattice index k: γ = 2^(k/2) (half-octaves)."""
    return 2.0 ** (k / 2)


def final_loss(name: str, width: int, seed: int, k: int, design: Design) -> float:
    """Final validation loss of one run (NaN if it diverged)."""
    options = {"size": "tiny", "n_layer": 1, "n_embd": width, "head_dim": HEAD_DIM, "block_size": 32,
               "batch_size": 16, "init": INITS[name]}
    cfg = RunConfig(task="char-gpt", optimizer=name, steps=design.steps, seed=seed, hparams={"lr": lattice_lr(k)},
                    task_options=options, val_every=design.steps, checkpoint_every=design.steps)
    with TemporaryDirectory() as d:
        result = train(cfg, d, progress=False)  # a non-finite gradient ends the run as diverged, not in an error
    return math.nan if result.diverged else result.val_rows()[-1]["val_loss"]


def sweep(name: str, width: int, centre: int, design: Design, bar) -> dict[int, list[float]]:
    """``{k: [final loss of each seed]}`` on a grid grown until the seed-mean argmin has ``window`` neighbours on
    both sides (or the grid holds ``max_points``)."""
    losses: dict[int, list[float]] = {}

    def measure(k: int) -> None:
        losses[k] = []
        for seed in design.seeds:
            losses[k].append(final_loss(name, width, seed, k, design))
            bar.update(1)

    for k in range(centre - design.window, centre + design.window + 1):
        measure(k)
    while len(losses) < design.max_points:
        ks = sorted(losses)
        best = min(ks, key=lambda k: _mean_or_inf(losses[k]))
        if best - ks[0] < design.window:
            measure(ks[0] - 1)
        elif ks[-1] - best < design.window:
            measure(ks[-1] + 1)
        else:
            break
    return dict(sorted(losses.items()))


def _mean_or_inf(values: list[float]) -> float:
    return math.inf if any(math.isnan(v) for v in values) else sum(values) / len(values)


@dataclass(frozen=True)
class Optimum:
    log2_lr: float
    censored: str
    """Why the fitted value is not an interior optimum ("" when it is)."""
    coefficients: tuple[float, float, float] | None = None
    """The parabola a·x² + b·x + c in x = log₂ γ, when one was fitted."""


def fit_optimum(ks: list[int], losses: list[float], window: int) -> Optimum:
    """γ* from the parabola through the ``2·window + 1`` grid points around the argmin (diverged points left out).

    Censored where the argmin lies on the grid's edge (fewer than one point either side), or the parabola opens
    downwards, or its vertex lies outside the fitted points; the returned value is then the argmin's."""
    finite = [(k, v) for k, v in zip(ks, losses, strict=True) if math.isfinite(v)]
    if not finite:
        return Optimum(math.nan, "every run diverged")
    best = min(finite, key=lambda kv: kv[1])[0]
    if best in (ks[0], ks[-1]):
        return Optimum(best / 2, "below the grid" if best == ks[0] else "above the grid")
    points = [(k / 2, v) for k, v in finite if abs(k - best) <= window]
    x, y = np.array(points).T
    a, b, c = np.polyfit(x, y, 2)
    if a <= 0:
        return Optimum(best / 2, "no curvature", (a, b, c))
    vertex = -b / (2 * a)
    if not x.min() <= vertex <= x.max():
        return Optimum(best / 2, "vertex outside the fit", (a, b, c))
    return Optimum(float(vertex), "", (a, b, c))


@dataclass(frozen=True)
class Slope:
    value: float
    low: float
    high: float
    points: int

    def verdict(self) -> str:
        if self.points < 3:
            return "too few points"
        if self.low <= 0 <= self.high:
            return "transfers" if -MARGIN < self.low and self.high < MARGIN else "contains 0, too wide"
        return "drifts"

    def text(self) -> str:
        return f"{self.value:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def fit_slope(widths: list[int], log2_lrs: list[float]) -> Slope:
    """Least squares of log₂ γ* on log₂ width with a 95 % t-interval (n − 2 degrees of freedom)."""
    from scipy.stats import t as student_t

    x, y = np.log2(np.asarray(widths, dtype=float)), np.asarray(log2_lrs, dtype=float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return Slope(math.nan, math.nan, math.nan, n)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    se = math.sqrt(float(residual @ residual) / (n - 2) / float(((x - x.mean()) ** 2).sum()))
    half = float(student_t.ppf(0.975, n - 2)) * se
    return Slope(float(slope), float(slope - half), float(slope + half), n)


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    design = QUICK if quick else FULL
    bar = progress_bar(len(INITS) * len(design.widths) * len(design.seeds) * (2 * design.window + 2),
                       "hparam-transfer runs", progress)
    runs = []
    for name in INITS:
        guess = (design.first_guess or {}).get(name, round(2 * math.log2(DEFAULTS[name]["lr"])))
        found = [guess]  # lattice indices of the optima so far
        for width in design.widths:
            centre = found[-1] if len(found) < 3 else 2 * found[-1] - found[-2]  # the trend so far, extrapolated
            grid = sweep(name, width, centre, design, bar)
            for k, values in grid.items():
                runs += [{"optimizer": name, "width": width, "seed": s, "lr": lattice_lr(k), "final_val_loss": v}
                         for s, v in zip(design.seeds, values, strict=True)]
            mean_opt = fit_optimum(list(grid), [_mean_or_inf(v) for v in grid.values()], design.window)
            found.append(round(2 * mean_opt.log2_lr) if math.isfinite(mean_opt.log2_lr) else centre)
    bar.close()
    write_csv(out / "runs.csv", runs)
    return report(out, runs, design)


def read_runs(path: Path) -> list[dict]:
    """The rows of a saved ``runs.csv``, typed as :func:`run` wrote them (to redo the analysis: :func:`report`)."""
    with open(path, newline="") as f:
        return [{"optimizer": r["optimizer"], "width": int(r["width"]), "seed": int(r["seed"]), "lr": float(r["lr"]),
                 "final_val_loss": float(r["final_val_loss"])} for r in csv.DictReader(f)]


def report(out: Path, runs: list[dict], design: Design) -> Path:
    """Fit γ* per (optimizer, width, seed) and the slopes from every run's final loss, and write the report, its
    table and plots into ``out`` (``runs``: :func:`run`'s rows, or :func:`read_runs` of a saved ``runs.csv``)."""
    optima, mean_curves = [], {}
    for name in INITS:
        for width in design.widths:
            mine = [r for r in runs if r["optimizer"] == name and r["width"] == width]
            ks = sorted({round(2 * math.log2(r["lr"])) for r in mine})
            loss = {(round(2 * math.log2(r["lr"])), r["seed"]): r["final_val_loss"] for r in mine}
            for seed in design.seeds:
                opt = fit_optimum(ks, [loss[k, seed] for k in ks], design.window)
                optima.append({"optimizer": name, "width": width, "heads": width // HEAD_DIM, "seed": seed,
                               "lr_star": 2 ** opt.log2_lr, "log2_lr_star": opt.log2_lr,
                               "censored": opt.censored or "no", "grid": f"2^{ks[0] / 2:g}…2^{ks[-1] / 2:g}",
                               "points": len(ks)})
            mean = [_mean_or_inf([loss[k, seed] for seed in design.seeds]) for k in ks]
            mean_curves[(name, width)] = (ks, mean, fit_optimum(ks, mean, design.window))
    slopes = {name: _slope(optima, name, min(design.widths)) for name in INITS}
    check = {name: _slope(optima, name, sorted(design.widths)[1]) for name in INITS}
    _plot_optima(optima, slopes, design, out / "plot.png")
    _plot_curves(mean_curves, design, out / "curves.png")
    first, second, last = min(design.widths), sorted(design.widths)[1], max(design.widths)
    table = [{"optimizer": n, "widths": f"{low}–{last}", "slope of log₂ γ* on log₂ width": s.text(),
              "widths fitted": s.points, "reading": s.verdict()}
             for low, fits in ((first, slopes), (second, check)) for n, s in fits.items()]
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "", *_result(slopes, optima, design), "",
            "### Fitted slopes", "", markdown_table(table), "",
            f"The rows from width {second} leave the narrowest model out: a check of where a drift comes from, "
            "chosen after the first full run, not part of the verdict.", "",
            "![loss against step size per width](curves.png)", "",
            f"Every run: `runs.csv` ({len(runs)} runs; `transfer.read_runs` and `transfer.report` redo this "
            "analysis from it). Below, γ* per optimizer, width and seed."]
    return write_report(out, "Learning-rate transfer across width", body, optima, glossary=COLUMNS)


def width_means(optima: list[dict], name: str, narrowest: int) -> tuple[list[int], list[float]]:
    """The widths from ``narrowest`` up where ``name`` has an uncensored fit, and the mean of their log₂ γ*."""
    mine = [r for r in optima if r["optimizer"] == name and r["censored"] == "no" and r["width"] >= narrowest]
    widths = sorted({r["width"] for r in mine})
    return widths, [float(np.mean([r["log2_lr_star"] for r in mine if r["width"] == w])) for w in widths]


def _slope(optima: list[dict], name: str, narrowest: int) -> Slope:
    """The slope through the width means of ``name``'s uncensored fits at widths from ``narrowest`` up."""
    return fit_slope(*width_means(optima, name, narrowest))


def verdict(slopes: dict[str, Slope]) -> str:
    """The stated rule: Reproduced, Refuted or Inconclusive from UScion's and AdamW's slopes."""
    norm, adam = slopes["uscion"].verdict(), slopes["adamw"].verdict()
    if norm == "drifts" or adam == "transfers":
        return "Refuted"
    return "Reproduced" if norm == "transfers" and adam == "drifts" else "Inconclusive"


def _result(slopes: dict[str, Slope], optima: list[dict], design: Design) -> list[str]:
    norm, adam = slopes["uscion"], slopes["adamw"]
    censored = sum(r["censored"] != "no" for r in optima)
    octaves = math.log2(max(design.widths) / min(design.widths))
    lines = [f"**{verdict(slopes)}**: slope of log₂ γ* against log₂ width (95 % interval) — UScion {norm.text()} "
             f"({norm.verdict()}), AdamW {adam.text()} ({adam.verdict()}).", "",
             f"Over the {2 ** octaves:g}× range of widths the fitted line moves UScion's γ* by "
             f"{2 ** (abs(norm.value) * octaves):.2g}× and AdamW's by {2 ** (abs(adam.value) * octaves):.2g}×; "
             f"the band ±{MARGIN} allows {2 ** (MARGIN * octaves):.2g}×."]
    inside = -MARGIN < norm.low and norm.high < MARGIN
    if norm.verdict() == "drifts" and inside and (adam.high < -MARGIN or adam.low > MARGIN):
        lines.append("UScion's drift is resolved but inside the band and AdamW's lies outside it: the exact claim "
                     "(γ* independent of width) is refuted at these widths, the weaker one (UScion's γ* within the "
                     "band, AdamW's not) holds.")
    lines.append("")
    for name in INITS:
        by_width = []
        for width in design.widths:
            mine = [r for r in optima if r["optimizer"] == name and r["width"] == width]
            cells = [f"{r['lr_star']:.3g}" + ("" if r["censored"] == "no" else "†") for r in mine]
            by_width.append(f"{width}: {' / '.join(cells)}")
        lines.append(f"- {name} γ* by width (seeds {', '.join(map(str, design.seeds))}): {'; '.join(by_width)}.")
    lines += ["", f"† censored ({censored} of {len(optima)} fits): the optimum lies at or beyond the grid's edge or "
              "the loss has no interior minimum there; left out of the slopes.",
              f"{design.steps} steps per run, widths {', '.join(map(str, design.widths))} (head dimension {HEAD_DIM}), "
              f"{len(design.seeds)} seeds."]
    return lines


def _plot_optima(optima: list[dict], slopes: dict[str, Slope], design: Design, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    labels = {"uscion": "UScion", "adamw": "AdamW (SP)"}
    for name in INITS:
        color = COLORS[name]
        mine = [r for r in optima if r["optimizer"] == name]
        ok = [r for r in mine if r["censored"] == "no"]
        cut = [r for r in mine if r["censored"] != "no" and math.isfinite(r["log2_lr_star"])]
        ax.scatter([r["width"] for r in ok], [r["lr_star"] for r in ok], color=color, alpha=0.35, s=18)
        if cut:
            ax.scatter([r["width"] for r in cut], [r["lr_star"] for r in cut], marker="^", facecolors="none",
                       edgecolors=color, s=60, label=f"{labels[name]}: censored seed (grid edge)")
        widths = sorted({r["width"] for r in ok})
        centre, low, high = [], [], []
        for w in widths:
            values = [r["log2_lr_star"] for r in ok if r["width"] == w]
            centre.append(2 ** np.mean(values))
            low.append(centre[-1] - 2 ** min(values))
            high.append(2 ** max(values) - centre[-1])
        s = slopes[name]
        ax.errorbar(widths, centre, yerr=[low, high], color=color, marker="o", linestyle="none", capsize=4,
                    label=f"{labels[name]}: seed mean, bars = seed range")
        if math.isfinite(s.value):
            x = np.array([min(design.widths), max(design.widths)], dtype=float)
            ys = [r["log2_lr_star"] - s.value * math.log2(r["width"]) for r in ok]
            ax.plot(x, 2 ** (float(np.mean(ys)) + s.value * np.log2(x)), color=color, linestyle="--",
                    label=f"{labels[name]}: fit, slope {s.text()}")
    finish_log_log(fig, ax, "width (n_embd; head dimension fixed at 16)", "fitted best step size γ*",
                   "Best step size against width: flat = transfers", path, xticks=design.widths)


def _plot_curves(curves: dict, design: Design, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(INITS), figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    for ax, name in zip(axes, INITS, strict=True):
        lowest = min(v for (n, _), (_, mean, _) in curves.items() if n == name for v in mean if math.isfinite(v))
        ax.set_ylim(lowest - 0.05, lowest + 1.2)  # the minima, not the diverging ends
        for i, width in enumerate(design.widths):
            ks, mean, opt = curves[(name, width)]
            color = cmap(i / max(1, len(design.widths) - 1))
            x = np.array(ks) / 2
            y = np.array([v if math.isfinite(v) else np.nan for v in mean])
            ax.plot(2 ** x, y, marker="o", ms=3, color=color, label=f"width {width}")
            if opt.coefficients is not None and not opt.censored:
                xs = np.linspace(opt.log2_lr - design.window / 2, opt.log2_lr + design.window / 2, 30)
                ax.plot(2 ** xs, np.polyval(opt.coefficients, xs), color=color, linestyle=":", linewidth=1)
                ax.plot(2 ** opt.log2_lr, np.polyval(opt.coefficients, opt.log2_lr), marker="*", ms=10,
                        color=color)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name}: seed-mean final loss (★ fitted optimum)")
        ax.set_xlabel("step size γ")
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path)
