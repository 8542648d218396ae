"""`constraints`: training a network under per-layer spectral-norm constraints with the proximal method, against
weight clipping and no constraint, each arm with its own tuned step size.

Method: ``ProxSpectral`` (*Constrained Stochastic Spectral Preconditioning Converges for Nonconvex Objectives*,
2026): ``Y = W − γ·P(d)`` with the Polar Express preconditioner P and momentum 0.9 (d), then
``W ← proj_C(Y)``. Setup: the MNIST MLP task (784 → 128 → 128 → 10, ReLU, batches of 128) on the shipped digits:
4,000 for training, 500 held out for tuning the step size, and the task's 500 validation digits for the test.
Arms:

* ``unconstrained``: the step alone. Its run on the tuning seed at its tuned γ sets the per-layer radii
  ``r_l = ½‖W_l‖_op`` (its final operator norms), so that every constraint binds;
* ``spectral-ball (svd)`` / ``spectral-ball (svd-free)``: the proximal step projects every weight matrix onto
  ``‖W_l‖_op ≤ r_l`` after every step (singular-value clipping, by SVD or by two polar factors);
* ``weight clipping``: the unconstrained step followed by entrywise clipping ``|w_ij| ≤ c_l``, with
  ``c_l = r_l/√(d_out·d_in)`` — the largest clip that *guarantees* ``‖W‖_op ≤ ‖W‖_F ≤ r_l``;
* ``weight clipping (loose)``: ``c_l = r_l/√max(d_out, d_in)`` — a clip of the scale of the matrix's entries,
  which does not guarantee the bound;
* ``rescaling``: the unconstrained step followed by ``W ← W·min(1, r_l/‖W‖_op)`` (σ_max by SVD), as spectral
  normalisation does — feasible at every step like the projection, but it shrinks every singular value where the
  projection clips only those above the radius.

Fairness: every arm gets the same grid of step sizes (octaves), each point one run on the tuning seed (seed 0),
the best γ by the loss on the 500 held-out training digits; then the best γ of each arm is rerun on fresh seeds
(initialisation and batch order), and we report the test loss and accuracy as mean ± sd over them. One arm
*beats* another when their mean ± sd intervals do not overlap; otherwise they tie.

Feasibility (a check, not a finding: the projection is applied after every step): ``max_l ‖W_l‖_op / r_l`` by
SVD after every step of the evaluation runs (feasible ⇔ ≤ 1; a step counts as infeasible above 1 + 10⁻⁴).
What would refute the method's claim: a projected run infeasible at some step, or a feasible rival — guaranteed
weight clipping or rescaling, the other arms that keep every step feasible — training as well as the better
projected arm or better (test loss within the seed spread, or lower). The unconstrained arm measures the price of
the constraint, not a rival: its radii are half its own norms, so it is expected to do better; loose clipping is a
rival only if it stays feasible.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import specopt
from specopt.experiments.common import progress_bar, pyplot, save_figure, write_csv, write_report
from specopt.tasks import get_task

GRID = tuple(2.0**-k for k in range(11, 4, -1))  # 2⁻¹¹ … 2⁻⁵, octaves
QUICK_GRID = (2**-7, 2**-5)
TUNE_SEED, EVAL_SEEDS, QUICK_SEEDS = 0, (1, 2, 3), (1, 2)
TUNE_DIGITS = 500
RADIUS_FRACTION = 0.5
FEASIBLE = 1 + 1e-4
ARMS = {"unconstrained": "none", "spectral-ball (svd)": "svd", "spectral-ball (svd-free)": "svd-free",
        "weight clipping": "clip", "weight clipping (loose)": "clip-loose", "rescaling": "rescale"}
PROJECTED = ("spectral-ball (svd)", "spectral-ball (svd-free)")
COLUMNS = {
    "run": "the arm", "lr": "its tuned step size (tuning seed)", "lr_at_grid_edge": "whether it is an end of the "
    "grid", "seeds": "evaluation seeds", "diverged": "how many diverged", "test_loss": "test loss, mean over the "
    "seeds", "test_loss_sd": "its standard deviation", "test_accuracy": "test accuracy, mean",
    "test_accuracy_sd": "its standard deviation", "train_loss": "training loss, mean of the last 10 % of the steps, "
    "mean over the seeds", "train_loss_sd": "its standard deviation", "max_norm_over_radius": "the largest "
    "max_l ‖W_l‖_op/r_l after any step of any seed", "infeasible_steps": "steps above 1 + 1e-4 of the radius, over "
    "every seed (— unconstrained: no radius of its own)", "optimizer_seconds": "time in the optimizer step and the "
    "projection or clip, per run"}
"""What each column of ``results.csv`` holds."""
COLOURS = {label: f"C{i}" for i, label in enumerate(ARMS)}
STYLES = {label: "--" if label == "spectral-ball (svd-free)" else "-" for label in ARMS}  # it overlays the SVD one


def _matrices(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.ndim == 2]


def _op_norms(model) -> list[float]:
    """``‖W_l‖_op`` of every weight matrix, by SVD in float64 (of the tall orientation: same σ_max, faster)."""
    return [float(torch.linalg.matrix_norm((p.mT if p.shape[0] < p.shape[1] else p).detach().double(), 2))
            for p in _matrices(model)]


class Data:
    """One seed's task and the split: ``train`` (4,000 digits), ``tune`` (500), ``test`` (the task's 500)."""

    def __init__(self, seed: int):
        self.task = get_task("mlp", seed=seed, width=128)
        x, y = self.task.x, self.task.y
        self.train = (x[:-TUNE_DIGITS], y[:-TUNE_DIGITS])
        self.tune = (x[-TUNE_DIGITS:], y[-TUNE_DIGITS:])
        self.test = (self.task.vx, self.task.vy)

    def batch(self, step: int):
        idx = torch.randint(0, len(self.train[1]), (self.task.batch_size,), generator=self.task.generator(step))
        return self.train[0][idx], self.train[1][idx]


@torch.no_grad()
def _evaluate(model, data) -> tuple[float, float]:
    x, y = data
    logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())


def train(data: Data, mode: str, lr: float, radii: list[float] | None, steps: int, measure: bool, bar) -> dict:
    """One run of arm ``mode`` at step size ``lr``; ``measure``: the feasibility ratio after every step."""
    model = data.task.build_model()
    mats = _matrices(model)
    constrained = {}
    if mode in ("svd", "svd-free"):
        method = "polar" if mode == "svd-free" else "svd"
        constrained = {p: specopt.SpectralBall(r, method=method) for p, r in zip(mats, radii, strict=True)}
    groups = [{"params": [p], "constraint": constrained.get(p)} for p in model.parameters()]
    opt = specopt.ProxSpectral(groups, lr=lr, momentum=0.9)
    clip = None
    if mode.startswith("clip"):
        clip = [r / math.sqrt(p.shape[0] * p.shape[1] if mode == "clip" else max(p.shape))
                for p, r in zip(mats, radii, strict=True)]
    losses, ratios, elapsed, diverged = [], [], 0.0, False
    for step in range(steps):
        batch = data.batch(step)
        start = time.perf_counter()
        opt.zero_grad()
        loss = data.task.loss(model, batch)
        if not torch.isfinite(loss):
            diverged = True
            bar.update(steps - step)
            break
        loss.backward()
        opt.step()
        if clip is not None:
            with torch.no_grad():
                for p, c in zip(mats, clip, strict=True):
                    p.clamp_(-c, c)
        if mode == "rescale":
            with torch.no_grad():
                for p, r, n in zip(mats, radii, _op_norms(model), strict=True):
                    p.mul_(min(1.0, r / n))
        elapsed += time.perf_counter() - start
        losses.append(float(loss.detach()))
        if measure:
            ratios.append(max(n / r for n, r in zip(_op_norms(model), radii, strict=True)))
        bar.update(1)
    tune, test = ((math.inf, 0.0), (math.inf, 0.0)) if diverged else (_evaluate(model, data.tune),
                                                                       _evaluate(model, data.test))
    tail = max(steps // 10, 1)
    return {"lr": lr, "losses": losses, "ratios": ratios, "diverged": diverged, "seconds": elapsed,
            "tune_loss": tune[0], "test_loss": test[0], "test_accuracy": test[1],
            "train_loss": float(np.mean(losses[-tail:])) if not diverged else math.inf,
            "op_norms": None if diverged else _op_norms(model)}


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    steps = 30 if quick else 400
    grid, seeds = (QUICK_GRID, QUICK_SEEDS) if quick else (GRID, EVAL_SEEDS)
    data = {s: Data(s) for s in (TUNE_SEED, *seeds)}
    tuning, evaluation = {}, {}
    with progress_bar(steps * len(ARMS) * (len(grid) + len(seeds)), "constraints", progress) as bar:
        radii = None
        for label, mode in ARMS.items():
            for lr in grid:
                tuning[(label, lr)] = train(data[TUNE_SEED], mode, lr, radii, steps, False, bar)
            best = min(grid, key=lambda lr, label=label: tuning[(label, lr)]["tune_loss"])
            if radii is None:  # the unconstrained arm, tuned first, sets the radii
                radii = [RADIUS_FRACTION * n for n in tuning[(label, best)]["op_norms"]]
            for seed in seeds:
                evaluation[(label, seed)] = train(data[seed], mode, best, radii, steps, True, bar)
    best_lr = {label: min(grid, key=lambda lr, label=label: tuning[(label, lr)]["tune_loss"]) for label in ARMS}
    rows = [_summary(label, best_lr[label], grid, [evaluation[(label, s)] for s in seeds]) for label in ARMS]
    write_csv(out / "runs.csv", [{"phase": "tune", "run": label, "lr": r["lr"], "seed": TUNE_SEED,
                                  **{k: r[k] for k in ("diverged", "tune_loss", "test_loss", "test_accuracy")}}
                                 for (label, lr), r in tuning.items()]
              + [{"phase": "evaluate", "run": label, "lr": r["lr"], "seed": seed,
                  **{k: r[k] for k in ("diverged", "tune_loss", "test_loss", "test_accuracy")},
                  "train_loss": r["train_loss"], "max_norm_over_radius": max(r["ratios"], default=math.nan)}
                 for (label, seed), r in evaluation.items()])
    write_csv(out / "trace.csv", [{"run": label, "seed": seeds[0], "step": i + 1, "train_loss": loss,
                                   "max_norm_over_radius": r["ratios"][i]}
                                  for label in ARMS for r in [evaluation[(label, seeds[0])]]
                                  for i, loss in enumerate(r["losses"])])
    _plot(out / "plot.png", tuning, evaluation, grid, seeds, best_lr)
    _plot_feasibility(out / "feasibility.png", evaluation, seeds[0])
    body = _body(rows, radii, steps, grid, seeds)
    return write_report(out, "Training under per-layer spectral constraints: tuned arms, seeds, feasibility",
                        body, rows, glossary=COLUMNS)


def _summary(label: str, lr: float, grid, runs: list[dict]) -> dict:
    def stat(key):
        values = np.array([r[key] for r in runs])
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    (loss, loss_sd), (acc, acc_sd), (train_loss, train_sd) = stat("test_loss"), stat("test_accuracy"), \
        stat("train_loss")
    ratio = max(max(r["ratios"], default=math.inf) for r in runs)
    return {"run": label, "lr": lr, "lr_at_grid_edge": lr in (grid[0], grid[-1]), "seeds": len(runs),
            "diverged": sum(r["diverged"] for r in runs), "test_loss": loss, "test_loss_sd": loss_sd,
            "test_accuracy": acc, "test_accuracy_sd": acc_sd, "train_loss": train_loss, "train_loss_sd": train_sd,
            "max_norm_over_radius": ratio,
            "infeasible_steps": sum(x > FEASIBLE for r in runs for x in r["ratios"]) if label != "unconstrained"
            else "—", "optimizer_seconds": float(np.mean([r["seconds"] for r in runs]))}


def comparison(rows: list[dict], key: str, higher_is_better: bool) -> tuple[str, list[str], list[str]]:
    """The best arm by ``key``'s mean, the arms it beats (mean ± sd intervals apart) and those it ties with
    (``rows`` must not be empty)."""
    sign = -1 if higher_is_better else 1
    best = min(rows, key=lambda r: sign * r[key])
    beaten, tied = [], []
    for r in rows:
        if r is best:
            continue
        apart = sign * (r[key] - best[key]) > r[f"{key}_sd"] + best[f"{key}_sd"]
        (beaten if apart else tied).append(r["run"])
    return best["run"], beaten, tied


def _body(rows: list[dict], radii: list[float], steps: int, grid, seeds) -> list[str]:
    by = {r["run"]: r for r in rows}
    lines = [__doc__.split("\n\n", 1)[1].strip(), "",
             f"{steps} steps per run; step-size grid γ ∈ {{{', '.join(f'{g:g}' for g in grid)}}} for every arm "
             f"({len(grid)} runs each, seed {TUNE_SEED}); evaluation seeds {', '.join(map(str, seeds))}; radii "
             f"r_l = {', '.join(f'{r:.3g}' for r in radii)}.", "", "## Result", ""]
    for key, name, higher in (("test_loss", "test loss", False), ("test_accuracy", "test accuracy", True)):
        best, beaten, tied = comparison(rows, key, higher)
        lines.append(f"- By {name}: **{best}** ({by[best][key]:.4f} ± {by[best][key + '_sd']:.4f}) beats "
                     f"{', '.join(beaten) or 'no arm'} beyond the seed spread"
                     + (f"; it ties with {', '.join(tied)} (intervals overlap)." if tied else "."))
    lines += ["", *claim(rows, steps * len(seeds)), ""]
    edge = [r["run"] for r in rows if r["lr_at_grid_edge"]]
    tuned = ", ".join(f"{r['run']} {r['lr']:g}" for r in rows)
    lines += [f"- Tuned γ: {tuned}"
              + (f"; at the grid's edge (the optimum may lie beyond): {', '.join(edge)}." if edge else
                 "; every optimum inside the grid."),
              f"- Feasibility: the projected runs' max ‖W‖_op/r over every step of every seed is "
              f"{by['spectral-ball (svd)']['max_norm_over_radius']:.6f} (SVD) and "
              f"{by['spectral-ball (svd-free)']['max_norm_over_radius']:.6f} (SVD-free), infeasible steps "
              f"{by['spectral-ball (svd)']['infeasible_steps']} and "
              f"{by['spectral-ball (svd-free)']['infeasible_steps']}"
              f"; guaranteed clipping stays at ≤ {by['weight clipping']['max_norm_over_radius']:.3f} of the radius, "
              f"rescaling at ≤ {by['rescaling']['max_norm_over_radius']:.6f}; "
              f"loose clipping is infeasible at {by['weight clipping (loose)']['infeasible_steps']} of "
              f"{steps * len(seeds)} steps (max {by['weight clipping (loose)']['max_norm_over_radius']:.3f}); the "
              f"unconstrained runs reach {by['unconstrained']['max_norm_over_radius']:.2f}× the radii"
              + (", so the constraints bind" if by["unconstrained"]["max_norm_over_radius"] > FEASIBLE else
                 ", inside them: the constraints never bind and the comparison tests nothing")
              + " (figure: `feasibility.png`).",
              "- `optimizer_seconds` (per run, mean over the seeds) includes the projections (SVD or two polar "
              "factors per matrix per step).", "",
              "![Feasibility: max ‖W_l‖_op / r_l per step](feasibility.png)"]
    return lines


def claim(rows: list[dict], steps: int) -> list[str]:
    """The verdict of the stated rule: the projected arms feasible at every step, and better than every feasible
    rival (guaranteed clipping, rescaling, loose clipping where it stayed feasible) beyond the seed spread."""
    by = {r["run"]: r for r in rows}
    projected = [by[label] for label in PROJECTED]
    infeasible = [r["run"] for r in projected if r["infeasible_steps"] != 0]
    rivals = [r for r in rows if r["run"] not in PROJECTED and r["run"] != "unconstrained"
              and r["infeasible_steps"] == 0 and not r["diverged"]]
    best = min(projected, key=lambda r: r["test_loss"])
    lines = ["- Feasibility of the projected arms: "
             + (f"**refuted** — infeasible steps in {', '.join(infeasible)}." if infeasible else
                "**holds** — no infeasible step in any seed.")]
    if not rivals:
        lines.append("- Against the feasible rivals: **not measurable** — no rival arm stayed feasible at every step.")
        return lines
    outcomes = []
    for rival in rivals:
        winner, beaten, _ = comparison([best, rival], "test_loss", False)
        outcomes.append((rival, "beats" if beaten and winner == best["run"] else
                         "loses to" if beaten else "ties with"))
    text = "; ".join(f"{best['run']} {verb} {r['run']} ({r['test_loss']:.4f} ± {r['test_loss_sd']:.4f})"
                     for r, verb in outcomes)
    held = all(verb == "beats" for _, verb in outcomes)
    lines.append(f"- Against the feasible rivals, by test loss ({best['run']}: {best['test_loss']:.4f} ± "
                 f"{best['test_loss_sd']:.4f}): {text} — the claim "
                 + ("**holds**: the projection trains better than every other way of staying feasible."
                    if held else "is **refuted**: a feasible rival trains as well or better."))
    loose = by["weight clipping (loose)"]
    if loose["infeasible_steps"] != 0:
        lines.append(f"- Loose clipping ({loose['test_loss']:.4f} ± {loose['test_loss_sd']:.4f}) is no rival: it "
                     f"leaves the ball at {loose['infeasible_steps']} of {steps} steps (max "
                     f"{loose['max_norm_over_radius']:.3f}× the radius).")
    return lines


def _plot(path: Path, tuning: dict, evaluation: dict, grid, seeds, best_lr: dict) -> None:
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, (ax_tune, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(16, 4.8))
    finite = [r["tune_loss"] for r in tuning.values() if math.isfinite(r["tune_loss"])]
    ceiling = max(finite) * 1.3
    for i, label in enumerate(ARMS):
        c = COLOURS[label]
        values = [tuning[(label, lr)]["tune_loss"] for lr in grid]
        ax_tune.plot(grid, [v if math.isfinite(v) else np.nan for v in values], "o", ls=STYLES[label], color=c,
                     label=label)
        for lr, v in zip(grid, values, strict=True):
            if not math.isfinite(v):
                ax_tune.plot(lr, ceiling, "x", color=c, ms=9, mew=2)
        ax_tune.plot(best_lr[label], tuning[(label, best_lr[label])]["tune_loss"], "*", color=c, ms=15, mec="k")
        for ax, key in ((ax_loss, "test_loss"), (ax_acc, "test_accuracy")):
            values = np.array([evaluation[(label, s)][key] for s in seeds])
            if key == "test_accuracy":
                values = 1 - values  # the error rate, on a log axis like the loss
            ax.plot(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, "o", color=c,
                    alpha=0.5)
            ax.errorbar(i, values.mean(), yerr=values.std(ddof=1) if len(values) > 1 else 0, fmt="s",
                        color=c, ms=8, capsize=6, lw=2)
    if len(finite) < len(tuning):
        ax_tune.plot([], [], "x", color="k", label="diverged (drawn at the top)")
    ax_tune.set(xscale="log", yscale="log", xlabel="step size γ", ylabel="held-out loss (tuning seed)",
                title="tuning: the same grid per arm (★ = chosen)")
    ax_tune.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax_tune.legend(fontsize=7)
    for ax, title in ((ax_loss, "test loss"), (ax_acc, "test error (1 − accuracy)")):
        ax.set_xticks(range(len(ARMS)), [label.replace(" (", "\n(") for label in ARMS], fontsize=7)
        ax.set(yscale="log", title=f"{title} at the tuned γ: seeds, mean ± sd")
    for ax in (ax_tune, ax_loss, ax_acc):
        _plain_ticks(ax)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Each arm at its own tuned step size ({len(grid)}-point grid), {len(seeds)} fresh seeds: lower is "
                 "better", fontsize=11)
    save_figure(fig, path)


def _plot_feasibility(path: Path, evaluation: dict, seed: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in ARMS:
        ratios = evaluation[(label, seed)]["ratios"]
        ax.plot(np.arange(1, len(ratios) + 1), ratios, ls=STYLES[label], color=COLOURS[label], label=label)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="radius (feasible below)")
    ax.set(xlabel="step", ylabel="max_l ‖W_l‖_op / r_l", yscale="log",
           title=f"feasibility after every step (seed {seed}, each arm at its tuned γ)")
    _plain_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _plain_ticks(ax) -> None:
    """Log-axis tick labels as plain numbers (0.3, 2) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
