"""`batch-size`: the critical batch of momentum SCG (Scion) against the token budget, on a convex and a nonconvex
problem (Islamov, Machacek, Lucchi, Silveti-Falls, Gorbunov & Cevher 2026, *On the Role of Batch Size in Stochastic
Conditional Gradient Methods*, arXiv:2603.21191).

Claim. Under a μ-KL condition, momentum SCG run for ``K = T/B`` steps of ``B`` samples reaches
``ε = Õ(max{σ/(T^{1/3} B^{1/6}), floor·T^{-1/3}, L·B/T})``: at a fixed token budget T the loss falls with B, then
stays flat (a plateau), then grows once the run is starved of steps. The plateau's right edge, the *critical batch*,
grows as ``B* ∝ T^{2/3}``, and the step size tuned there as ``γ* ∝ T^{-1/3}``.

Design. Two problems whose optimal loss is known, so the excess loss ``f(x_K) − f*`` is measured exactly
(:mod:`specopt.experiments.batch_problems`): noisy linear regression in the ℓ∞ geometry (convex) and a tanh
teacher–student network in the spectral geometry (nonconvex). Every run takes Scion's step with a constant step size
γ and momentum β and reports the final iterate's excess loss, as in the theorem. For each budget T (powers of 4,
more than two decades) and each batch B (powers of two, ``T/B`` between ``MIN_STEPS`` and the problem's
``max_steps``), γ and β are tuned on a grid: ``γ = c/K`` with ``c = γK`` (the total distance ``Σγ`` the run may
travel, in units of ρ) on half octaves, and ``α = 1 − β`` on powers of 2 (of 4 below 1/4 for the network); the
tuned loss is the grid's smallest mean over seeds. A best value on the edge of the grid is counted and reported.

Critical batch. At each budget, ``B*`` is the largest batch whose tuned excess loss is within ``FACTOR`` × the best
batch's, interpolated log-linearly between the two grid batches around the crossing; it is *censored* when even
the largest batch run is within the factor. Intervals: percentiles 2.5–97.5 of ``BOOTSTRAP`` resamples of the
seeds (the whole pipeline — tuning, best batch, crossing, fits — rerun on each). The exponent is the least-squares
slope of ``log B*`` against ``log T`` over the uncensored budgets; the tuned step size ``γ*`` is read at ``B*``
(interpolated the same way) and fitted likewise.

A sample plays the role of a token (S = 1, so B·S = B). The tuned loss is a minimum over the grid, hence biased low
by the seed noise (most where the grid is large and the seeds few); the bootstrap redoes the minimum on every
resample, so the intervals carry the variability of that choice (not its bias).

What would refute the claim: no plateau (no batch but the best within the factor), an edge that does not move with
T (an exponent interval reaching 0), or a fitted exponent whose interval excludes 2/3 (for the batch) or −1/3 (for
the step size). An exponent other than 2/3 is reported as a result. Two readings beside it: a budget whose best batch
is the smallest batch run has no resolved left end (its best is an upper bound), so the exponent is also fitted
without such budgets; and 2/3 is where the bound's rates meet (floor·T^(-1/3) and L·B/T), which a run can beat, so
the exponent is also predicted from the measured ones — the best loss's rate a in T and the starved cells' rate b in
the steps K = T/B meet at B ∝ T^(1 + a/b).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specopt.experiments.batch_problems import LinearRegression, TeacherStudent, train
from specopt.experiments.common import (
    finish_log_log,
    markdown_table,
    progress_bar,
    pyplot,
    save_figure,
    write_csv,
    write_report,
)

FACTOR = 1.5
"""A batch is on the plateau while its tuned excess loss is at most this factor × the best batch's."""
OTHER_FACTORS = (1.25, 2.0)  # the same fits at other factors: how much the exponent depends on the choice
MIN_STEPS = 2  # the theorem asks T ≥ 2B
BOOTSTRAP = 1000
THEORY_BATCH, THEORY_STEP = 2 / 3, -1 / 3
STARVED = 2.0
"""Cells whose tuned excess is above this factor × the budget's best are the starved arm (their rate in K = T/B)."""


@dataclass(frozen=True)
class Setting:
    """One problem's sweep: budgets T, seeds, step-size factors c = γK, momenta α = 1 − β, the batch range."""

    key: str
    problem: type
    options: dict
    budgets: tuple[int, ...]
    seeds: int
    travel: tuple[float, ...]
    alphas: tuple[float, ...]
    max_steps: int
    min_batch: int = 1

    def batches(self, budget: int) -> list[int]:
        """Powers of two B with ``MIN_STEPS ≤ T/B ≤ max_steps``."""
        return [2**k for k in range(40) if 2**k >= self.min_batch
                and MIN_STEPS <= budget // 2**k <= self.max_steps]

    def grid(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step sizes ``γ = min(1, c/K)`` and momenta β of every configuration (c major, α minor)."""
        c, a = torch.meshgrid(torch.tensor(self.travel), torch.tensor(self.alphas), indexing="ij")
        return (c.flatten() / steps).clamp(max=1.0), 1 - a.flatten()


HALF_OCTAVES = tuple(2 ** (k / 2) for k in range(-5, 4))  # c = γK from 0.18 to 2.8
POWERS_OF_2 = tuple(2.0**-k for k in range(11))  # α = 1 − β from 1 to 1/1024


def settings(quick: bool) -> list[Setting]:
    if quick:
        budgets = (256, 1024, 4096)
        return [Setting("convex", LinearRegression, {}, budgets, 4, HALF_OCTAVES[2:7:2], POWERS_OF_2[:7:2],
                        max_steps=128),
                Setting("nonconvex", TeacherStudent, {"eval_size": 512}, budgets, 3, HALF_OCTAVES[2:7:2],
                        POWERS_OF_2[:7:4], max_steps=64)]
    return [Setting("convex", LinearRegression, {}, tuple(4**k for k in range(4, 10)), 16, HALF_OCTAVES, POWERS_OF_2,
                    max_steps=16384),
            Setting("nonconvex", TeacherStudent, {}, tuple(4**k for k in range(4, 9)), 6, HALF_OCTAVES[1:8],
                    POWERS_OF_2[:3] + POWERS_OF_2[4:9:2], max_steps=1024)]


def sweep(setting: Setting, bar) -> list[dict]:
    """Every (budget, batch, configuration, seed): its final excess loss."""
    problem = setting.problem(setting.seeds, **setting.options)
    records = []
    for budget in setting.budgets:
        for batch in setting.batches(budget):
            steps = budget // batch
            lr, beta = setting.grid(steps)
            excess = train(problem, batch, steps, lr, beta, seed=budget * 7919 + batch)
            for p in range(lr.shape[0]):
                for s in range(setting.seeds):
                    records.append({"problem": setting.key, "budget": budget, "batch": batch, "steps": steps,
                                    "config": p, "travel": setting.travel[p // len(setting.alphas)],
                                    "lr": float(lr[p]), "momentum": float(beta[p]), "seed": s,
                                    "excess": float(excess[s, p])})
            bar.update(steps)
    return records


# ---------------------------------------------------------------- analysis (point estimate and bootstrap)

@dataclass
class Table:
    """The sweep of one problem as arrays: ``excess[seed, budget, batch, config]`` (NaN where not run)."""

    budgets: np.ndarray
    batches: np.ndarray
    lr: np.ndarray  # [budget, batch, config]
    momentum: np.ndarray  # [config]
    excess: np.ndarray

    @classmethod
    def of(cls, records: list[dict]) -> Table:
        budgets = np.array(sorted({r["budget"] for r in records}))
        batches = np.array(sorted({r["batch"] for r in records}))
        configs = 1 + max(r["config"] for r in records)
        seeds = 1 + max(r["seed"] for r in records)
        excess = np.full((seeds, len(budgets), len(batches), configs), np.nan)
        lr = np.full((len(budgets), len(batches), configs), np.nan)
        momentum = np.full(configs, np.nan)
        for r in records:
            t, b, p = np.searchsorted(budgets, r["budget"]), np.searchsorted(batches, r["batch"]), r["config"]
            excess[r["seed"], t, b, p] = r["excess"]
            lr[t, b, p] = r["lr"]
            momentum[p] = r["momentum"]
        return cls(budgets, batches, lr, momentum, excess)


def tuned(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (budget, batch): the smallest seed-mean excess over the configurations, and which configuration."""
    filled = np.where(np.isnan(mean), np.inf, mean)
    best = filled.argmin(-1)
    loss = np.take_along_axis(filled, best[..., None], -1)[..., 0]
    return np.where(np.isinf(loss), np.nan, loss), best


def crossing(loss: np.ndarray, batches: np.ndarray, factor: float = FACTOR) -> tuple[float, bool, int]:
    """``(B*, censored, i)``: the largest batch with ``loss ≤ factor·min loss``, interpolated in log-log towards the
    next batch run; censored (``B*`` = that batch) when it is the largest batch run. ``i``: its grid index."""
    ran = np.flatnonzero(~np.isnan(loss))
    limit = factor * np.nanmin(loss)
    i = ran[loss[ran] <= limit][-1]
    if i == ran[-1]:
        return float(batches[i]), True, int(i)
    j = ran[ran > i][0]
    frac = math.log(limit / loss[i]) / math.log(loss[j] / loss[i])
    return float(math.exp(math.log(batches[i]) + frac * math.log(batches[j] / batches[i]))), False, int(i)


def at_batch(value: np.ndarray, batches: np.ndarray, batch: float, i: int) -> float:
    """``value`` (one per grid batch) read at ``batch`` by log-log interpolation from grid index ``i``."""
    if batch <= batches[i] or i + 1 >= len(batches) or np.isnan(value[i + 1]):
        return float(value[i])
    frac = math.log(batch / batches[i]) / math.log(batches[i + 1] / batches[i])
    return float(math.exp((1 - frac) * math.log(value[i]) + frac * math.log(value[i + 1])))


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than 3 points)."""
    keep = ~np.isnan(y)
    if keep.sum() < 3:
        return math.nan
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def estimate(table: Table, weights: np.ndarray, factor: float = FACTOR) -> dict:
    """Per budget: best excess, critical batch (NaN when censored), tuned step size there; and the three slopes.
    ``weights[seed]``: how often each seed is drawn (all ones for the point estimate)."""
    mean = np.einsum("s,stbp->tbp", weights, np.nan_to_num(table.excess)) / weights.sum()
    mean[np.isnan(table.excess[0])] = np.nan
    loss, choice = tuned(mean)
    lr = np.take_along_axis(table.lr, choice[..., None], -1)[..., 0]
    out = {"best": np.nanmin(loss, axis=1), "critical": [], "censored": [], "lr": [], "loss": loss, "choice": choice}
    for t in range(len(table.budgets)):
        b, censored, i = crossing(loss[t], table.batches, factor)
        out["critical"].append(math.nan if censored else b)
        out["censored"].append(censored)
        out["lr"].append(math.nan if censored else at_batch(lr[t], table.batches, b, i))
    for key in ("critical", "censored", "lr"):
        out[key] = np.array(out[key])
    ratio = loss / out["best"][:, None]
    out["plateau"] = (ratio <= factor).sum(axis=1) >= 2  # a batch besides the best within the factor
    best_index = np.array([np.nanargmin(row) for row in loss])
    out["best_at_smallest"] = best_index == np.argmax(~np.isnan(loss), axis=1)  # the best is the smallest batch run
    out["batch_exponent"] = slope(table.budgets, out["critical"])
    out["batch_exponent_interior"] = slope(table.budgets, np.where(out["best_at_smallest"], np.nan, out["critical"]))
    out["step_exponent"] = slope(table.budgets, out["lr"])
    out["loss_exponent"] = slope(table.budgets, out["best"])
    starved = (ratio > STARVED) & (np.arange(len(table.batches))[None, :] > best_index[:, None])  # right of the best
    steps = (table.budgets[:, None] // table.batches[None, :]).astype(float)
    out["starved_exponent"] = -slope(steps[starved], loss[starved])  # excess ∝ K^(−b) on the starved arm
    out["predicted_batch_exponent"] = 1 + out["loss_exponent"] / out["starved_exponent"]
    return out


def bootstrap(table: Table, rng: np.random.Generator, n: int = BOOTSTRAP, factor: float = FACTOR) -> dict:
    """The point estimate and the 2.5/97.5 percentiles of its bootstrap resamples of the seeds."""
    seeds = table.excess.shape[0]
    point = estimate(table, np.ones(seeds), factor)
    draws = [estimate(table, np.bincount(rng.integers(0, seeds, seeds), minlength=seeds).astype(float), factor)
             for _ in range(n)]
    for key in ("critical", "lr", "best", "batch_exponent", "batch_exponent_interior", "step_exponent",
                "loss_exponent", "starved_exponent", "predicted_batch_exponent"):
        values = np.array([d[key] for d in draws], dtype=float)
        point[key + "_ci"] = _percentiles(values)
        point[key + "_defined"] = np.mean(~np.isnan(values), axis=0)
    return point


def _percentiles(values: np.ndarray) -> np.ndarray:
    """2.5 and 97.5 percentiles over the first axis, ignoring NaN (NaN where every draw is NaN)."""
    flat = values.reshape(len(values), -1)
    out = np.full((2, flat.shape[1]), np.nan)
    for j in range(flat.shape[1]):
        column = flat[:, j][~np.isnan(flat[:, j])]
        if len(column):
            out[:, j] = np.percentile(column, [2.5, 97.5])
    return out.reshape(2, *values.shape[1:])


# ---------------------------------------------------------------- run, report, figures

def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    chosen = settings(quick)
    torch.manual_seed(0)
    total = sum(b // B for s in chosen for b in s.budgets for B in s.batches(b))
    records = []
    with progress_bar(total, "batch-size (steps)", progress) as bar:
        for setting in chosen:
            records += sweep(setting, bar)
    write_runs(out / "runs.csv.gz", records)
    return report(out, chosen, records, draws=200 if quick else BOOTSTRAP)


def report(out: Path, chosen: list[Setting], records: list[dict], draws: int = BOOTSTRAP) -> Path:
    """Analyse a sweep's records (from :func:`sweep`, or :func:`read_runs` of a saved ``runs.csv.gz``) and write the
    report, the tables and the figures into ``out``."""
    rng = np.random.default_rng(0)
    results, others = {}, {}
    for setting in chosen:
        table = Table.of([r for r in records if r["problem"] == setting.key])
        results[setting.key] = (setting, table, bootstrap(table, rng, draws))
        others[setting.key] = {f: bootstrap(table, rng, draws, f) for f in OTHER_FACTORS}
    rows = _rows(results)
    summary = _summary(results)
    write_csv(out / "summary.csv", summary)
    _plot_critical(results, out / "plot.png")
    _plot_plateaus(results, out / "loss_vs_batch.png")
    _plot_step_size(results, out / "step_size.png")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", *_setup_text(chosen), "", *_result_text(results, others, rows), "",
            "### Per budget", "", markdown_table(summary), "",
            "![tuned excess loss against batch](loss_vs_batch.png)", "",
            "![tuned step size at the critical batch](step_size.png)", "",
            "Every run's final excess loss is in `runs.csv.gz` (`batch_size.read_runs` reads it back, "
            "`batch_size.report` redoes this analysis from it); the per-budget table is `summary.csv`.", "",
            "### Per budget and batch (tuned configuration)", ""]
    return write_report(out, "Critical batch size against the token budget", body, rows, glossary=COLUMNS)


RUN_FIELDS = {"problem": str, "budget": int, "batch": int, "steps": int, "config": int, "travel": float, "lr": float,
              "momentum": float, "seed": int, "excess": float}


def write_runs(path: Path, records: list[dict]) -> None:
    """Every run's final excess loss (``runs.csv.gz``, 7 significant digits): enough to redo the analysis."""
    with gzip.open(path, "wt") as f:
        f.write(",".join(RUN_FIELDS) + "\n")
        for r in records:
            f.write(",".join(f"{r[k]:.7g}" if kind is float else str(r[k]) for k, kind in RUN_FIELDS.items()) + "\n")


def read_runs(path: Path) -> list[dict]:
    """The records :func:`write_runs` saved."""
    with gzip.open(path, "rt") as f:
        header = f.readline().strip().split(",")
        if header != list(RUN_FIELDS):
            raise ValueError(f"{path}: expected the columns {list(RUN_FIELDS)}, got {header}")
        return [{k: RUN_FIELDS[k](v) for k, v in zip(header, line.strip().split(","), strict=True)} for line in f]


def _rows(results: dict) -> list[dict]:
    rows = []
    for key, (setting, table, est) in results.items():
        for t, budget in enumerate(table.budgets):
            for b, batch in enumerate(table.batches):
                if np.isnan(est["loss"][t, b]):
                    continue
                p = est["choice"][t, b]
                rows.append({"problem": key, "budget": int(budget), "batch": int(batch),
                             "steps": int(budget // batch), "lr": float(table.lr[t, b, p]),
                             "travel": float(table.lr[t, b, p] * (budget // batch)),
                             "momentum": float(table.momentum[p]), "excess": float(est["loss"][t, b]),
                             "excess_sd": float(np.std(table.excess[:, t, b, p], ddof=1)),
                             "over_best": float(est["loss"][t, b] / est["best"][t]),
                             "on_grid_edge": _edge(setting, table, t, b, p)})
    return rows


def _edge(setting: Setting, table: Table, t: int, b: int, p: int) -> str:
    """Which grid edge the tuned configuration sits on ('' if inside): a censored tuning."""
    c, a = divmod(int(p), len(setting.alphas))
    steps = table.budgets[t] // table.batches[b]
    edges = []
    if c == 0 or (c == len(setting.travel) - 1 and setting.travel[c] / steps < 1):
        edges.append("step")
    if a == len(setting.alphas) - 1 and setting.alphas[a] * steps >= 1:
        edges.append("momentum")
    return "+".join(edges)


def _summary(results: dict) -> list[dict]:
    rows = []
    for key, (_, table, est) in results.items():
        for t, budget in enumerate(table.budgets):
            lo, hi = est["critical_ci"][:, t]
            censored = bool(est["censored"][t])
            ran = np.flatnonzero(~np.isnan(est["loss"][t]))
            best = int(np.nanargmin(est["loss"][t]))
            rows.append({"problem": key, "budget": int(budget), "best_excess": float(est["best"][t]),
                         "smallest_batch_run": int(table.batches[ran[0]]), "best_batch": int(table.batches[best]),
                         "critical_batch": "censored" if censored else round(float(est["critical"][t]), 1),
                         "critical_ci": "" if censored else f"[{lo:.0f}, {hi:.0f}]",
                         "censored_in_resamples": round(1 - float(est["critical_defined"][t]), 3),
                         "plateau": bool(est["plateau"][t]),
                         "lr_at_critical": "" if censored else float(est["lr"][t])})
    return rows


def _interval(est: dict, key: str) -> str:
    lo, hi = est[key + "_ci"]
    if math.isnan(est[key]):
        return "not measurable (fewer than 3 points)"
    return f"{est[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def _verdict(est: dict, key: str, theory: float) -> str:
    lo, hi = est[key + "_ci"]
    if math.isnan(est[key]):
        return "not measurable (fewer than 3 uncensored budgets)"
    return "consistent with the theory" if lo <= theory <= hi else "the interval excludes the theory's value"


def _setup_text(chosen: list[Setting]) -> list[str]:
    lines = ["## Setup", ""]
    for s in chosen:
        problem = s.problem(1, **s.options)
        lines.append(f"- **{s.key}** — {problem.name}: budgets T = {', '.join(f'{b:,}' for b in s.budgets)} samples, "
                     f"{s.seeds} seeds, B = powers of two with {MIN_STEPS} ≤ T/B ≤ {s.max_steps:,}; "
                     f"c = γK ∈ {{{', '.join(f'{c:.2g}' for c in s.travel)}}}, "
                     f"α = 1 − β ∈ {{{', '.join(f'{a:.3g}' for a in s.alphas)}}} "
                     f"({len(s.travel) * len(s.alphas)} configurations per (T, B)).")
    lines.append(f"- critical batch: largest B with tuned excess ≤ {FACTOR} × the budget's best; "
                 f"intervals from {BOOTSTRAP} bootstrap resamples of the seeds.")
    return lines


def overlap(predicted: tuple[float, float], measured: tuple[float, float]) -> str:
    """Whether the critical batch exponent the measured rates predict and the one measured agree (their 95 %
    intervals overlap); an interval that is not measurable (NaN) is neither."""
    if not all(map(math.isfinite, (*predicted, *measured))):  # a NaN compares False: it read "do not overlap"
        return "not comparable (an interval is not measurable)"
    if predicted[0] <= measured[1] and measured[0] <= predicted[1]:
        return "the intervals overlap: the edge moves as the measured rates put it"
    return "the intervals do not overlap"


def _result_text(results: dict, others: dict, rows: list[dict]) -> list[str]:
    lines = ["## Result", ""]
    for key, (_, table, est) in results.items():
        n = int((~est["censored"]).sum())
        cells = [r for r in rows if r["problem"] == key]
        edges = sum(bool(r["on_grid_edge"]) for r in cells)
        travel = est["step_exponent"] - est["batch_exponent"] + 1
        first = [np.flatnonzero(~np.isnan(est["loss"][t]))[0] for t in range(len(table.budgets))]
        at_smallest = sum(int(np.nanargmin(est["loss"][t])) == i for t, i in enumerate(first))
        flat = max(est["loss"][t, i] / est["best"][t] for t, i in enumerate(first))
        lo = est["batch_exponent_ci"][0]
        moves = "the edge moves right with T (interval above 0)" if lo > 0 else "no growth resolved (interval ≤ 0)"
        no_plateau = [f"{int(b):,}" for b, ok in zip(table.budgets, est["plateau"], strict=True) if not ok]
        plateau = (f"a plateau (a batch besides the best within {FACTOR}× it) at every budget" if not no_plateau else
                   f"**no plateau** at T = {', '.join(no_plateau)} (refutes the claim there)")
        penalty = (f"within the plateau's {FACTOR}×: no small-batch penalty resolved" if flat <= FACTOR else
                   f"a small-batch penalty up to {flat:.2f}× the best")
        smallest = [f"{int(b):,}" for b, s in zip(table.budgets, est["best_at_smallest"], strict=True) if s]
        lower = ("" if not smallest else
                 f" (at T = {', '.join(smallest)} the plateau's left end is not resolved: the best is an upper bound "
                 f"of what a smaller batch might reach; the exponent without those budgets: "
                 f"{_interval(est, 'batch_exponent_interior')})")
        predicted = est["predicted_batch_exponent_ci"]
        measured = est["batch_exponent_ci"]
        agree = overlap(predicted, measured)
        sensitivity = ", ".join(f"{f}×: {_interval(o, 'batch_exponent')}" for f, o in others[key].items())
        lines += [f"**{key}** — {n} of {len(table.budgets)} budgets with an uncensored critical batch:", "",
                  f"- {plateau};",
                  f"- critical batch exponent: **{_interval(est, 'batch_exponent')}** (theory 2/3) — "
                  f"{_verdict(est, 'batch_exponent', THEORY_BATCH)}; {moves}. With the plateau defined at other "
                  f"factors: {sensitivity};",
                  f"- tuned step size at the critical batch: exponent **{_interval(est, 'step_exponent')}** "
                  f"(theory −1/3) — {_verdict(est, 'step_exponent', THEORY_STEP)}. Not an independent test: "
                  f"γ* = c*/K* with K* = T/B*, so the two exponents differ by 1 plus the drift of the tuned c* = γ*K* "
                  f"(here T^{travel:+.2f});",
                  f"- below the edge: the best batch is the smallest batch run at {at_smallest} of "
                  f"{len(table.budgets)} budgets, and the smallest batch is within {flat:.2f}× the best at every "
                  f"budget — {penalty}{lower};",
                  f"- best excess loss: exponent {_interval(est, 'loss_exponent')} (the theorem's upper bound decays "
                  f"as T^(-1/3));",
                  f"- the rates behind the exponent: 2/3 is where the bound's floor·T^(-1/3) meets its L·B/T. Measured "
                  f"here, the best loss falls as T^a with a = {est['loss_exponent']:.2f} and the starved cells "
                  f"(> {STARVED:g}× the best) as K^(−b) in the steps K = T/B, b = {_interval(est, 'starved_exponent')} "
                  f"(one fit over every budget); they meet at B ∝ T^(1 + a/b): "
                  f"**{_interval(est, 'predicted_batch_exponent')}** against the fitted "
                  f"{_interval(est, 'batch_exponent')} — {agree};",
                  f"- tuned configuration on an edge of its grid in {edges} of {len(cells)} (T, B) cells.", ""]
    return lines


def _budget_colour(budget: float, results: dict):
    """One colour per budget, the same in every panel (viridis over log T across all problems)."""
    every = np.log([float(b) for _, table, _ in results.values() for b in table.budgets])
    lo, hi = every.min(), every.max()
    return pyplot().get_cmap("viridis")(0.9 * (math.log(budget) - lo) / max(hi - lo, 1e-12))


COLUMNS = {
    "problem": "convex (linear regression) or nonconvex (teacher–student network)", "budget": "the budget T in "
    "samples", "batch": "the batch B", "steps": "K = T/B", "lr": "the tuned step size γ", "travel": "c = γK, the "
    "tuned distance in units of ρ", "momentum": "the tuned momentum β", "excess": "the tuned configuration's final "
    "excess loss f(x_K) − f*, mean over the seeds", "excess_sd": "its standard deviation over the seeds",
    "over_best": "excess / the budget's best excess (the plateau holds the batches at most 1.5)",
    "on_grid_edge": "which edge of the (c, α) grid the tuned configuration sits on (step, momentum; empty: inside)"}
"""What each column of ``results.csv`` holds (``summary.csv``: one row per budget, as the report's table)."""
PROBLEM_STYLE = {"convex": ("C0", "o"), "nonconvex": ("C3", "s")}


def _plot_critical(results: dict, path: Path) -> None:
    """Figure 1 (the claim): critical batch against T, log-log, with the fit and the T^{2/3} reference."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for key, (_, table, est) in results.items():
        colour, marker = PROBLEM_STYLE[key]
        T = table.budgets.astype(float)
        ok = ~est["censored"]
        lo, hi = est["critical_ci"]
        crit = est["critical"]
        ax.errorbar(T[ok], crit[ok], yerr=[crit[ok] - lo[ok], hi[ok] - crit[ok]], fmt=marker, color=colour,
                    capsize=3, label=f"{key}: B* (95% bootstrap interval)")
        if (~ok).any():
            bound = [_largest_run(table, est, t) for t in np.flatnonzero(~ok)]
            ax.scatter(T[~ok], bound, marker="^", facecolors="none", edgecolors=colour, s=60,
                       label=f"{key}: censored (B* ≥ largest batch run)")
        _plot_power_law(ax, T, crit, est, "batch_exponent", THEORY_BATCH, "T^(2/3)", colour, key)
    finish_log_log(fig, ax, "token budget T (samples)", f"critical batch B* (loss ≤ {FACTOR}× best)",
                   "The critical batch grows with the budget (theory: T^(2/3))", path)


def _plot_power_law(ax, T, values, est: dict, exponent: str, theory: float, reference: str, colour, key: str) -> None:
    """The fitted power law ``c·T^a`` (a = ``est[exponent]``, with its interval) and the theory's exponent through the
    same points, dashed."""
    if math.isnan(est[exponent]):
        return
    a = est[exponent]
    lo_a, hi_a = est[f"{exponent}_ci"]
    fit = np.exp(np.nanmean(np.log(values) - a * np.log(T)))
    ax.plot(T, fit * T**a, color=colour, lw=1.5, label=f"{key}: fit T^{a:.2f} [{lo_a:.2f}, {hi_a:.2f}]")
    ref = np.exp(np.nanmean(np.log(values) - theory * np.log(T)))
    ax.plot(T, ref * T**theory, color=colour, lw=1, ls="--", alpha=0.6, label=f"{key}: {reference} reference")


def _largest_run(table: Table, est: dict, t: int) -> float:
    return float(table.batches[np.flatnonzero(~np.isnan(est["loss"][t]))[-1]])


def _plot_plateaus(results: dict, path: Path) -> None:
    """Figure 2: tuned excess loss / best against B, one curve per budget, the critical batch marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(12, 4.6), sharey=True)
    for ax, (key, (_, table, est)) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for t, budget in enumerate(table.budgets):
            colour = _budget_colour(float(budget), results)
            ratio = est["loss"][t] / est["best"][t]
            ran = ~np.isnan(ratio)
            ax.plot(table.batches[ran], ratio[ran], marker=".", color=colour, label=f"T = {table.budgets[t]:,}")
            if est["censored"][t]:
                last = np.flatnonzero(ran)[-1]
                ax.scatter([table.batches[last]], [ratio[last]], marker="^", facecolors="none", edgecolors=colour,
                           s=70, zorder=3)
            else:
                ax.scatter([est["critical"][t]], [FACTOR], marker="x", color=colour, s=70, zorder=3)
        ax.axhline(FACTOR, color="grey", ls="--", lw=1, label=f"{FACTOR}× best")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        top = max(np.nanmax(est["loss"][t] / est["best"][t]) for t in range(len(table.budgets)))
        ax.set_yticks([v for v in (1, 1.5, 2, 3, 5, 10, 20, 50, 100) if v <= 1.1 * top])
        ax.yaxis.set_major_formatter(pyplot().ScalarFormatter())
        ax.yaxis.set_minor_formatter(pyplot().NullFormatter())
        ax.set_title(f"{key}: × marks B*, △ censored")
        ax.set_xlabel("batch B")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("tuned excess loss / best at that budget")
    fig.suptitle("A plateau in B whose right edge moves right as the budget grows")
    save_figure(fig, path)


def _plot_step_size(results: dict, path: Path) -> None:
    """Figure 3: the tuned step size at the critical batch against T, with the fit and the T^{-1/3} reference."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for key, (_, table, est) in results.items():
        colour, marker = PROBLEM_STYLE[key]
        T = table.budgets.astype(float)
        lr = est["lr"]
        ok = ~np.isnan(lr)
        lo, hi = est["lr_ci"]
        ax.errorbar(T[ok], lr[ok], yerr=[lr[ok] - lo[ok], hi[ok] - lr[ok]], fmt=marker, color=colour, capsize=3,
                    label=f"{key}: γ* at B*")
        _plot_power_law(ax, T, lr, est, "step_exponent", THEORY_STEP, "T^(-1/3)", colour, key)
    finish_log_log(fig, ax, "token budget T (samples)", "tuned step size γ* at the critical batch",
                   "The tuned step size falls with the budget (theory: T^(-1/3))", path)
