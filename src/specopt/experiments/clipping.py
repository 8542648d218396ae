"""`clipping`: Clipped Scion against UScion on two tasks.

Claim (Pethick et al. 2025, *Generalized Gradient Norm Clipping & Non-Euclidean (L0, L1)-Smoothness*,
arXiv:2506.01913): clipping speeds Scion up by 10–15 % (15 % on DeiT-base, 10 % over uScion on a 1B NanoGPT).

The two arms differ only in the clip factor. UScion steps ``W_l ← W_l + γ_k ρ_l·lmo(d_l)``; Clipped Scion multiplies
every step by ``c_k = min{1, D_k/ρ_c}`` with ``D_k = Σ_l ρ_l‖d_l‖_*``, the global dual norm of the *momentum*
``d_k = β d_{k−1} + (1−β) g_k`` (β = 0.9) — the number the rule itself computes, recorded at every step. While
``D_k ≥ ρ_c`` the clip binds (``c_k = 1``, the full uSCG step γρ); below it the step is ``γρ·D_k/ρ_c``,
steepest descent with momentum, which shrinks as the momentum does. Same model, init, data order, radii
(:func:`specopt.param_groups`: hidden 30, head 100, embedding and vectors 10) and momentum.

ρ_c by rule, from the measured momentum: ``ρ_c = ½·median(D_1 … D_W)`` over UScion's first W = T/10 steps at the
same γ and seed (identical for both schedules; a W-step probe where no such UScion run exists). The momentum's D_k
rises over its first steps (it starts at (1−β)g_1) and peaks, so the clip binds around the peak and releases once
D_k has fallen below half its early level. Fractions ¼ and 1 are run at the clipped winner (tuning seed 0) to show
the sensitivity, beside both arms' seed-0 runs; they are not used to pick it.

Equal tuning budgets: each arm gets the same half-octave grid of step sizes γ, tuned on seed 0 by the validation
loss at the horizon T, separately for a constant lr and for the trapezoid (constant, then linear decay to 0 over the
last 30 %); each arm's winner then runs fresh seeds 1, 2, 3 (the tuning seed is not reused). *Speed-up* S (per seed,
the two arms paired): if the clipped run ends lower, S = T / T_c with T_c the horizon at which it first reaches
UScion's loss at T; otherwise S = T_u / T with T_u the horizon at which UScion reaches the clipped run's loss at T.
With a constant lr the loss at horizon h is the run's validation curve (a shorter run is a prefix); with the
decaying lr each winner also runs at T/2 and the loss is interpolated linearly between the horizons T/2 and T. A
crossing before the first measured horizon is censored (S a bound, marked).

Tasks: ``teacher-student`` — a 32→64→8 tanh MLP fitting a fixed random 32→16→8 tanh teacher from
noisy labels (σ = 0.1, batch 32), validation = noiseless MSE on 1,024 held-out inputs: the gradient goes to the
noise floor, so ``D_k`` decays; ``char-gpt`` — the tiny char-GPT (2 layers, width 64) on Shakespeare.

What would refute the claim: a speed-up below the claimed 10 % at equal budgets — the 95 % t-interval of the
mean S over the seeds below 1.10; "reproduced" needs that interval above 1.10, with a clip that binds at some
steps and not at others (else the runs compare step sizes, not clipping); an interval above 1 that contains 1.10 is
"a speed-up, consistent with the claim" (resolved as a speed-up, not as one of 10 %). Anything else is not resolved.
(Until an outside review, an interval above 1 was called "reproduced", weaker than the claim it tested. The first
full run used mean ± one sd and evaluated on the tuning seed among its three: it read
S = 1.24 ± 0.11 with a constant lr on the teacher–student task as reproduced, an interval [0.97, 1.52] at 95 %.)
Limits: with the decaying lr the loss between T/2 and T is interpolated linearly, which understates S where the
curve is convex; the char-GPT runs 200 steps, early in its training.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from specopt import param_groups
from specopt.engine import GeometryOptimizer, NonFiniteGradient
from specopt.experiments.common import progress_bar, pyplot, save_figure, t_interval, write_csv, write_report
from specopt.steps import USCG, Clipped
from specopt.tasks import get_task
from specopt.tasks.base import Task, init_model
from specopt.training import RunConfig, lr_factor, task_closure

ARMS = ("uscion", "clipped")
SCHEDULES = ("constant", "linear-decay")
MOMENTUM = 0.9
CLIP_FRACTION = 0.5
"""ρ_c = CLIP_FRACTION · median of UScion's D_k over its first T/10 steps (same γ and seed)."""
SENSITIVITY = (0.25, 1.0)
"""Other fractions, run at the clipped winner (tuning seed) to show what ρ_c does; not used to pick the winner."""
CLAIMED = (1.10, 1.15)
TUNE_SEED = 0
SEEDS = (1, 2, 3)
"""The seeds the winners are compared on: fresh, not the tuning seed."""
COLORS = {"uscion": "C0", "clipped": "C3", "constant": "C2", "linear-decay": "C4"}
COLUMNS = {
    "task": "teacher-student or char-gpt", "schedule": "constant or linear-decay (the trapezoid) learning rate",
    "steps": "the horizon T", "lr_uscion": "UScion's tuned step size γ (tuning seed)",
    "lr_clipped": "Clipped Scion's tuned step size γ (tuning seed)",
    "edge": "the arms whose tuned γ is an end of the grid (the optimum may lie beyond)",
    "clip_radius": "ρ_c of the clipped winner, mean over the seeds", "best_uscion": "UScion's best validation loss "
    "within T, mean over the seeds", "sd_uscion": "its standard deviation", "best_clipped": "Clipped Scion's, mean",
    "sd_clipped": "its standard deviation", "speedup_mean": "mean of the per-seed speed-ups S",
    "speedup_sd": "their standard deviation", "speedup_low": "lower end of the 95 % t-interval of the mean S",
    "speedup_high": "upper end of that interval", "speedups": "S per seed; = measured, ≥ or ≤ a bound (the crossing "
    "lies before the first measured horizon)", "censored": "how many seeds' S are bounds",
    "binding_fraction": "share of the clipped winner's steps at which the clip binds (c_k = 1), mean over the seeds",
    "best_uscion_tuning_seed": "UScion's best loss on the tuning seed (the sensitivity runs' reference)",
    "best_clipped_f0.25": "Clipped Scion's best loss on the tuning seed with ρ_c at ¼ of the median",
    "best_clipped_f1": "the same at 1× the median", "best_clipped_f0.5": "the same at ½ (the rule's own)",
    "verdict": "the stated rule applied to this cell"}
"""What each column of ``results.csv`` holds."""


# --- the two rules, recording what they compute ----------------------------------------------------------------


def _global_dual(records) -> float:
    """``D = Σ_l ρ_l‖d_l‖_*`` of the momentum, from the dual norms the lmo computed (float64 sum)."""
    return math.fsum(float(rec.radius) * float(rec.dual) for rec in records)


class TracedUSCG(USCG):
    """UScion's rule (uSCG) that records ``D_k`` at every step; its steps are UScion's, bit for bit."""

    needs_dual = True
    per_tensor = False

    def __init__(self):
        self.duals: list[float] = []

    def scale(self, records, ctx) -> None:
        self.duals.append(_global_dual(records))
        super().scale(records, ctx)


class TracedClipped(Clipped):
    """Clipped Scion's rule (:class:`specopt.ClippedScion`'s steps, bit for bit) that records ``D_k`` and
    ``c_k = min{1, D_k/ρ_c}`` at every step."""

    def __init__(self, clip_radius: float):
        super().__init__(clip_radius)
        self.duals: list[float] = []
        self.factors: list[float] = []

    def scale(self, records, ctx) -> None:
        self.duals.append(_global_dual(records))
        self.factors.append(min(1.0, self.duals[-1] / self.clip_radius))
        super().scale(records, ctx)


# --- the tasks --------------------------------------------------------------------------------------------------


class TeacherStudent(Task):
    """A 32→64→8 tanh MLP fitting a fixed random 32→16→8 tanh teacher, ``y = f*(x) + σξ`` (ξ Gaussian), batch 32;
    validation: the noiseless MSE on 1,024 held-out inputs. The seed sets the student's init and the data stream;
    the teacher and the held-out set are the same for every seed."""

    name = "teacher-student"
    scheme = "auto"

    def __init__(self, seed: int = 0, noise: float = 0.1, batch_size: int = 32):
        super().__init__(seed)
        self.noise, self.batch_size = noise, batch_size
        self.teacher = init_model(lambda: nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 8)), 10_000)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.teacher[2].weight.mul_(4.0)  # outputs of order 1
        self.x_val = torch.randn(1024, 32, generator=torch.Generator().manual_seed(20_000))
        self.y_val = self.teacher(self.x_val)

    def build_model(self) -> nn.Module:
        return init_model(lambda: nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 8)), self.seed)

    def batch(self, step: int):
        g = self.generator(step)
        x = torch.randn(self.batch_size, 32, generator=g)
        return x, self.teacher(x) + self.noise * torch.randn(self.batch_size, 8, generator=g)

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return ((model(x) - y) ** 2).sum(1).mean()

    @torch.no_grad()
    def validation_loss(self, model) -> float:
        return float(((model(self.x_val) - self.y_val) ** 2).sum(1).mean())


@dataclass
class Setting:
    """One task's budget: horizon T, the lr grid (the same number of points for both arms), validation points."""

    steps: int
    lrs: tuple[float, ...]
    evals: int
    options: dict = field(default_factory=dict)

    def make(self, name: str, seed: int) -> Task:
        return TeacherStudent(seed, **self.options) if name == "teacher-student" else get_task(name, seed=seed,
                                                                                                **self.options)


def _grid(low: int, count: int) -> tuple[float, ...]:
    """``count`` step sizes ``2^{(low + i)/2}``: a half-octave grid."""
    return tuple(2.0 ** ((low + i) / 2) for i in range(count))


def settings(quick: bool) -> dict[str, Setting]:
    if quick:
        return {"teacher-student": Setting(80, _grid(-22, 2), 8),
                "char-gpt": Setting(12, _grid(-17, 2), 4, {"size": "tiny", "n_layer": 1, "n_embd": 32,
                                                           "batch_size": 8, "block_size": 32})}
    return {"teacher-student": Setting(400, _grid(-26, 8), 40),
            "char-gpt": Setting(200, _grid(-22, 7), 20, {"size": "tiny"})}


# --- one run ----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    curve: list[tuple[int, float]]
    """(step, validation loss); a diverged run ends with (step, inf)."""
    duals: list[float]
    factors: list[float]
    clip_radius: float | None
    diverged: bool

    @property
    def final(self) -> float:
        return self.curve[-1][1]

    @property
    def best(self) -> float:
        """The lowest validation loss of the run (what a checkpoint chosen on validation would give)."""
        return min(v for _, v in self.curve)


def train_run(task: Task, lr: float, schedule: str, steps: int, evals: int, clip_radius: float | None = None) -> Run:
    """Train ``task``'s model ``steps`` steps with UScion's rule (``clip_radius`` None) or Clipped Scion's;
    validation loss at ``evals`` even points."""
    model = task.build_model()
    rule = TracedUSCG() if clip_radius is None else TracedClipped(clip_radius)
    opt = GeometryOptimizer(param_groups(model, scheme=task.scheme),
                            {"lr": lr, "momentum": MOMENTUM, "weight_decay": 0.0}, rule=rule)
    plan = RunConfig(steps=steps, schedule=schedule)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, plan))
    every = max(steps // evals, 1)
    curve, diverged = [], False
    for step in range(steps):
        try:
            opt.step(task_closure(task, model, [opt], task.batch(step)))
        except NonFiniteGradient:  # diverged
            diverged = True
        sched.step()
        if diverged or (step + 1) % every == 0 or step + 1 == steps:
            value = math.inf if diverged else task.validation_loss(model)
            diverged = not math.isfinite(value)
            curve.append((step + 1, value))
            if diverged:
                break
    factors = getattr(rule, "factors", [1.0] * len(rule.duals))
    return Run(curve, rule.duals, factors, clip_radius, diverged)


# --- speed-up ---------------------------------------------------------------------------------------------------


def crossing(points: list[tuple[float, float]], target: float) -> tuple[float, bool]:
    """The first horizon at which the loss (linear between the points) reaches ``target``: ``(h, censored)``, with
    ``censored`` when the first point is already at or below it (h = that point's horizon, an upper bound);
    ``(inf, True)`` when it is never reached."""
    for i, (h, loss) in enumerate(points):
        if loss <= target:
            if i == 0:
                return h, True
            h0, l0 = points[i - 1]
            return h0 + (h - h0) * (l0 - target) / (l0 - loss), False
    return math.inf, True


def speedup(unclipped: list, clipped: list, horizon: int) -> tuple[float, str]:
    """S and how it is bounded: ``"="`` measured, ``"≥"``/``"≤"`` censored at the first measured horizon."""
    lu, lc = unclipped[-1][1], clipped[-1][1]
    if lc <= lu:
        h, censored = crossing(clipped, lu)
        return horizon / h, "≥" if censored else "="
    h, censored = crossing(unclipped, lc)
    return (h / horizon, "≤" if censored else "=") if math.isfinite(h) else (0.0, "≤")


def horizon_points(runs: dict[int, Run]) -> list[tuple[float, float]]:
    """The best validation loss reached within horizon h, against h: the running minimum of the validation curve
    for a constant lr (``runs = {T: run}``: a shorter run is a prefix), the best loss of the run with horizon h
    for a decaying one."""
    if len(runs) == 1:
        (r,) = runs.values()
        return [(h, min(v for _, v in r.curve[:i + 1])) for i, (h, _) in enumerate(r.curve)]
    return sorted((h, r.best) for h, r in runs.items())


# --- the experiment ---------------------------------------------------------------------------------------------


class Sweep:
    """The runs of one task, keyed ``(schedule, arm, lr, seed, horizon, fraction)``, each trained once, and ρ_c by
    the rule: ``fraction·median(D_1 … D_W)`` of UScion at the same lr and seed (its first W = T/10 steps, which
    every schedule and horizon shares; read from a UScion run already made, or from a W-step probe)."""

    def __init__(self, name: str, setting: Setting, bar):
        self.name, self.s, self.bar = name, setting, bar
        self.window = max(setting.steps // 10, 1)
        self.runs: dict[tuple, Run] = {}
        self.early: dict[tuple, list[float]] = {}
        self.best: dict[str, dict[str, float]] = {}
        self.tasks: dict[int, Task] = {}

    def task(self, seed: int) -> Task:
        """The task of ``seed``, built once (its batches depend on (seed, step) only; every run builds its model)."""
        if seed not in self.tasks:
            self.tasks[seed] = self.s.make(self.name, seed)
        return self.tasks[seed]

    def clip_radius(self, lr: float, seed: int, fraction: float) -> float:
        if (lr, seed) not in self.early:
            probe = train_run(self.task(seed), lr, "constant", self.window, 1)
            self.early[(lr, seed)] = probe.duals
        return fraction * statistics.median(self.early[(lr, seed)])

    def get(self, schedule: str, arm: str, lr: float, seed: int, horizon: int, fraction: float = CLIP_FRACTION) -> Run:
        key = (schedule, arm, lr, seed, horizon, fraction if arm == "clipped" else None)
        if key not in self.runs:
            rho = self.clip_radius(lr, seed, fraction) if arm == "clipped" else None
            evals = self.s.evals if schedule == "constant" else max(self.s.evals // 4, 2)
            result = self.runs[key] = train_run(self.task(seed), lr, schedule, horizon, evals, rho)
            if arm == "uscion":
                self.early.setdefault((lr, seed), result.duals[:self.window])
            self.bar.update(1)
        return self.runs[key]

    def tune(self, schedule: str) -> dict[str, float]:
        """Each arm's best lr on the tuning seed: the lowest validation loss within T (a diverged run: its loss
        before)."""
        best = {}
        for arm in ARMS:
            finals = {lr: self.get(schedule, arm, lr, TUNE_SEED, self.s.steps).best for lr in self.s.lrs}
            best[arm] = min(finals, key=finals.get)
        self.best[schedule] = best
        return best


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tasks = settings(quick)
    per_schedule = {s: len(ARMS) * len(SEEDS) + len(SENSITIVITY) for s in SCHEDULES}
    per_schedule["linear-decay"] += len(ARMS) * len(SEEDS)  # the runs with horizon T/2
    total = sum(len(SCHEDULES) * len(ARMS) * len(s.lrs) + sum(per_schedule.values()) for s in tasks.values())
    sweeps, summary = {}, []
    with progress_bar(total, "clipping", progress) as bar:
        for name, s in tasks.items():
            sweep = sweeps[name] = Sweep(name, s, bar)
            for schedule in SCHEDULES:
                best = sweep.tune(schedule)
                horizons = (s.steps,) if schedule == "constant" else (s.steps // 2, s.steps)
                for arm in ARMS:
                    for seed in SEEDS:
                        for h in horizons:
                            sweep.get(schedule, arm, best[arm], seed, h)
                for fraction in SENSITIVITY:
                    sweep.get(schedule, "clipped", best["clipped"], TUNE_SEED, s.steps, fraction)
                summary.append(_summarise(sweep, schedule, horizons))
    write_csv(out / "runs.csv", [_row(sw, key, r) for sw in sweeps.values() for key, r in sw.runs.items()])
    traces = [{"task": sw.name, "schedule": schedule, "seed": seed, "step": k + 1, "dual_norm": d,
               "clip_radius": r.clip_radius, "clip_factor": c}
              for sw in sweeps.values() for schedule in SCHEDULES for seed in SEEDS
              for r in [sw.get(schedule, "clipped", sw.best[schedule]["clipped"], seed, sw.s.steps)]
              for k, (d, c) in enumerate(zip(r.duals, r.factors, strict=True))]
    write_csv(out / "traces.csv", traces)
    _plot_speedup(summary, out / "plot.png")
    _plot_factor(traces, sweeps, out / "clip_factor.png")
    _plot_curves(sweeps, out / "curves.png")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "", *_findings(summary, sweeps), "",
            "![clip factor of the clipped winners](clip_factor.png)", "",
            "![validation loss of the winners](curves.png)", "",
            "Every run: `runs.csv`; the clipped winners' D_k and c_k at every step: `traces.csv`."]
    columns = ["task", "schedule", "lr_uscion", "lr_clipped", "clip_radius", "best_uscion", "sd_uscion",
               "best_clipped", "sd_clipped", "speedup_mean", "speedup_sd", "speedup_low", "speedup_high", "speedups",
               "binding_fraction", "verdict"]
    return write_report(out, "Clipped Scion against UScion", body, summary, columns=columns, glossary=COLUMNS)


def _row(sweep: Sweep, key: tuple, r: Run) -> dict:
    schedule, arm, lr, seed, horizon, fraction = key
    return {"task": sweep.name, "schedule": schedule, "arm": arm, "lr": lr, "seed": seed, "horizon": horizon,
            "clip_fraction": "" if fraction is None else fraction,
            "clip_radius": "" if r.clip_radius is None else r.clip_radius,
            "winner": lr == sweep.best[schedule][arm], "final_val": r.final, "best_val": min(v for _, v in r.curve),
            "diverged": r.diverged, "binding_fraction": _binding(r) if arm == "clipped" else "",
            "dual_first": r.duals[0], "dual_max": max(r.duals), "dual_last": r.duals[-1]}


def _summarise(sweep: Sweep, schedule: str, horizons: tuple) -> dict:
    T, best = sweep.s.steps, sweep.best[schedule]
    speed, marks = [], []
    for seed in SEEDS:
        pts = {arm: horizon_points({h: sweep.get(schedule, arm, best[arm], seed, h) for h in horizons})
               for arm in ARMS}
        value, mark = speedup(pts["uscion"], pts["clipped"], T)
        speed.append(value)
        marks.append(mark)
    finals = {arm: [sweep.get(schedule, arm, best[arm], seed, T).best for seed in SEEDS] for arm in ARMS}
    clipped = [sweep.get(schedule, "clipped", best["clipped"], seed, T) for seed in SEEDS]
    sensitivity = {f: sweep.get(schedule, "clipped", best["clipped"], TUNE_SEED, T, f).best
                   for f in (*SENSITIVITY, CLIP_FRACTION)}
    low, high = t_interval(speed)
    row = {"task": sweep.name, "schedule": schedule, "steps": T,
           "lr_uscion": best["uscion"], "lr_clipped": best["clipped"],
           "edge": ", ".join(arm for arm in ARMS if best[arm] in (sweep.s.lrs[0], sweep.s.lrs[-1])),
           "clip_radius": statistics.fmean(r.clip_radius for r in clipped),
           "best_uscion": statistics.fmean(finals["uscion"]), "sd_uscion": _sd(finals["uscion"]),
           "best_clipped": statistics.fmean(finals["clipped"]), "sd_clipped": _sd(finals["clipped"]),
           "speedup_mean": statistics.fmean(speed), "speedup_sd": _sd(speed), "speedup_low": low,
           "speedup_high": high,
           "speedups": " ".join(f"{m}{v:.3f}" for v, m in zip(speed, marks, strict=True)),
           "censored": sum(m != "=" for m in marks),
           "binding_fraction": statistics.fmean(_binding(r) for r in clipped),
           "best_uscion_tuning_seed": sweep.get(schedule, "uscion", best["uscion"], TUNE_SEED, T).best,
           **{f"best_clipped_f{f:g}": v for f, v in sensitivity.items()}}
    row["verdict"] = _verdict(row)
    return row


def _binding(r: Run) -> float:
    """The fraction of the steps at which the clip binds (``c_k = 1``: ``D_k ≥ ρ_c``, a full step)."""
    return sum(c >= 1.0 for c in r.factors) / len(r.factors)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _verdict(row: dict) -> str:
    """From the 95 % interval of the mean S: "reproduced" above the claimed 1.10; "a speed-up" above 1 and
    containing 1.10 (consistent with the claim, which the seeds do not establish); "refuted" below 1.10."""
    if not 0 < row["binding_fraction"] < 1:
        return "no test (the clip never switches)"
    if row["speedup_high"] < CLAIMED[0]:
        return "not reproduced (refuted here: the 95 % interval of S below 1.10)"
    if row["speedup_low"] >= CLAIMED[0]:
        return "reproduced (the 95 % interval of S above 1.10)"
    if row["speedup_low"] > 1:
        return "a speed-up, consistent with the claim (the 95 % interval of S above 1, containing 1.10)"
    return "not resolved (the 95 % interval of S contains 1)"


def _findings(summary: list[dict], sweeps: dict) -> list[str]:
    verdicts = [row["verdict"].split(" (")[0] for row in summary]
    lines = [f"Of {len(summary)} cells (task × schedule): the claimed 10 % speed-up reproduced (95 % interval of S "
             f"above 1.10) in {verdicts.count('reproduced')}; a speed-up consistent with it (interval above 1, "
             f"containing 1.10) in {verdicts.count('a speed-up, consistent with the claim')}; refuted (interval below "
             f"1.10) in {verdicts.count('not reproduced')}; not resolved in {verdicts.count('not resolved')}; no test "
             f"(the clip never switches) in {verdicts.count('no test')}.", ""]
    for row in summary:
        s = sweeps[row["task"]].s
        ref = row["best_uscion_tuning_seed"]
        sens = ", ".join(f"ρ_c at {f:g}× the median: {row[f'best_clipped_f{f:g}']:.4g}"
                         f" ({'below' if row[f'best_clipped_f{f:g}'] < ref else 'not below'} UScion's)"
                         for f in (*SENSITIVITY, CLIP_FRACTION))
        lines.append(
            f"- **{row['task']}, {row['schedule']} lr** ({row['steps']} steps; γ on {len(s.lrs)} half-octave points "
            f"{s.lrs[0]:.3g}…{s.lrs[-1]:.3g} for each arm): UScion's winner γ = {row['lr_uscion']:.3g} reaches "
            f"{row['best_uscion']:.4g} ± {row['sd_uscion']:.2g}, Clipped Scion's γ = {row['lr_clipped']:.3g} "
            f"(ρ_c ≈ {row['clip_radius']:.3g}) reaches {row['best_clipped']:.4g} ± {row['sd_clipped']:.2g} (best "
            f"validation loss within T, mean ± sd over seeds {', '.join(map(str, SEEDS))}). "
            f"Speed-up S = {row['speedup_mean']:.3f} ± {row['speedup_sd']:.3f}, 95 % interval "
            f"[{row['speedup_low']:.3f}, {row['speedup_high']:.3f}] (per seed: {row['speedups']}). The clip binds "
            f"(c_k = 1) at {100 * row['binding_fraction']:.0f} % of "
            f"the clipped winner's steps. Sensitivity (tuning seed {TUNE_SEED}, same γ; best loss, UScion's "
            f"{ref:.4g}: {sens}). **{row['verdict']}**"
            + (f" (winner at the grid's edge: {row['edge']})" if row["edge"] else "") + ".")
    for name, sweep in sweeps.items():
        T = sweep.s.steps
        duals = sweep.get("constant", "uscion", sweep.best["constant"]["uscion"], TUNE_SEED, T).duals
        peak = max(range(T), key=duals.__getitem__)
        low = min(range(peak, T), key=duals.__getitem__)
        lines.append(f"- {name}: UScion's momentum norm D_k (winner, constant lr, seed {TUNE_SEED}) starts at "
                     f"{duals[0]:.3g}, "
                     f"peaks at {duals[peak]:.3g} (step {peak + 1}), falls to {duals[low]:.3g} (step {low + 1}) and "
                     f"ends at {duals[-1]:.3g} (step {T}).")
    return lines


# --- figures ----------------------------------------------------------------------------------------------------


def _plot_speedup(summary: list[dict], path: Path) -> None:
    """S per task and schedule: one dot per seed (triangles: censored bounds), the mean ± sd, the claimed band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.axhspan(*CLAIMED, color="0.85", label="claimed: 10–15 % faster")
    ax.axhline(1.0, color="0.3", lw=1, ls="--", label="no speed-up")
    labels = []
    for i, row in enumerate(summary):
        color = COLORS[row["schedule"]]
        for j, item in enumerate(row["speedups"].split()):
            mark, value = item[0], float(item[1:])
            ax.plot(i + 0.08 * (j - 1), value, {"=": "o", "≥": "^", "≤": "v"}[mark], color=color, ms=6, alpha=0.7)
        ax.errorbar(i + 0.3, row["speedup_mean"], yerr=row["speedup_sd"], fmt="s", color=color, capsize=4)
        labels.append(f"{row['task']}\n{row['schedule']} lr")
    ax.plot([], [], "o", color="0.4", label="one seed (▲ ▼: censored bound)")
    ax.errorbar([], [], yerr=[], fmt="s", color="0.4", capsize=4, label="mean ± sd over seeds")
    ax.set_xticks(range(len(summary)), labels)
    ax.set_xlim(-0.5, len(summary) - 0.3)
    ax.set_ylabel("speed-up S (horizon ratio at equal loss)")
    ax.set_title("Clipped Scion against UScion, each tuned on the same lr budget", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _plot_factor(traces: list[dict], sweeps: dict, path: Path) -> None:
    """c_k of the clipped winners at every step: 1 while the clip binds, below 1 once the momentum has shrunk."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4), squeeze=False)
    for ax, name in zip(axes[0], sweeps, strict=True):
        for schedule in SCHEDULES:
            for seed in SEEDS:
                pts = [(t["step"], t["clip_factor"]) for t in traces
                       if t["task"] == name and t["schedule"] == schedule and t["seed"] == seed]
                ax.plot(*zip(*pts, strict=True), color=COLORS[schedule], lw=1, alpha=0.7,
                        label=f"{schedule} lr (seeds {', '.join(map(str, SEEDS))})" if seed == SEEDS[0] else None)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name}: c_k = min(1, D_k/ρ_c) of the clipped winners", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("clip factor c_k (1: the clip binds, full step)")
    axes[0][0].legend(fontsize=8, loc="lower left")
    save_figure(fig, path)


def _plot_curves(sweeps: dict, path: Path) -> None:
    """Validation loss of each arm's winner (mean over seeds), constant and decaying lr; × the runs with horizon
    T/2 (decaying lr)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(SCHEDULES), len(sweeps), figsize=(5.5 * len(sweeps), 3.6 * len(SCHEDULES)),
                             squeeze=False)
    for j, sweep in enumerate(sweeps.values()):
        T = sweep.s.steps
        for i, schedule in enumerate(SCHEDULES):
            ax = axes[i][j]
            for arm in ARMS:
                lr = sweep.best[schedule][arm]
                curves = [sweep.get(schedule, arm, lr, seed, T).curve for seed in SEEDS]
                n = min(len(c) for c in curves)
                mean = [statistics.fmean(c[k][1] for c in curves) for k in range(n)]
                ax.plot([p[0] for p in curves[0][:n]], mean, color=COLORS[arm], label=f"{arm} (γ = {lr:.3g})")
                if schedule != "constant":
                    half = [sweep.get(schedule, arm, lr, seed, T // 2).best for seed in SEEDS]
                    ax.plot([T // 2] * len(half), half, "x", color=COLORS[arm], label=f"{arm}, horizon T/2")
            lows, highs = ax.get_ylim()
            if highs > 10 * lows:
                ax.set_yscale("log")
            ax.set_title(f"{sweep.name}, {schedule} lr (mean over seeds)", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("validation loss")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    save_figure(fig, path)
