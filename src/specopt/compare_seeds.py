"""`specopt compare --seeds 0,1,2`: the comparison once per seed, and the spread across seeds.

Each seed's comparison is a full :func:`specopt.compare.compare` run in ``out/seed<S>`` (its own report, plot and
CSV). Across seeds, per optimizer: the final validation loss of every seed, their mean and sample standard deviation
(over the seeds that did not diverge), the steps to AdamW's best validation loss of the same seed, and that ratio's
mean and standard deviation over the seeds that reached it. Written as ``report.md`` (the table), ``summary.csv`` and
``spread.png`` (each seed's final loss and the mean ± sd). A difference between two optimizers smaller than their
spreads is a tie.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from specopt.compare import compare
from specopt.experiments.common import mean_sd, pyplot, save_figure, write_csv
from specopt.tasks.base import check_seed
from specopt.training import RunConfig

SINGLE_SEED_OUTPUTS = ("summary.json", "metrics.csv", "loss.png")
"""What a one-seed comparison writes at the top of its directory."""


def check_seeds(seeds: list[int]) -> None:
    """At least two seeds, each listed once, each a valid seed (:func:`specopt.tasks.base.check_seed`)."""
    for seed in seeds:
        check_seed(seed)
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"seed(s) {', '.join(map(str, twice))} listed more than once: each seed is one comparison")
    if len(seeds) < 2:
        raise ValueError(f"a comparison over seeds needs at least two seeds, got {seeds}")


def compare_seeds(base: RunConfig, optimizers: list[str], out: str | Path, seeds: list[int], *,
                  progress: bool = True, log=print, resume: bool = False) -> list[dict]:
    """Run :func:`~specopt.compare.compare` for every seed into ``out/seed<S>``; returns one summary row per
    optimizer (see the module docstring) after writing the report."""
    check_seeds(seeds)
    out = Path(out)
    stale = [name for name in SINGLE_SEED_OUTPUTS if (out / name).exists()]
    if stale:
        raise ValueError(f"{out} holds a one-seed comparison ({', '.join(stale)}); choose another --out")
    per_seed = []
    for seed in seeds:
        log(f"== seed {seed}")
        per_seed.append(compare(replace(base, seed=seed), optimizers, out / f"seed{seed}", progress=progress, log=log,
                                resume=resume))
    rows = [summarise(name, [runs[name] for runs in per_seed]) for name in optimizers]
    write(rows, base, seeds, out)
    return rows


def summarise(name: str, runs: list[dict]) -> dict:
    """One optimizer's row over its per-seed runs (``runs[i]``: :func:`specopt.compare.compare`'s entry)."""
    finals = [r["final_val"] for r in runs]
    ratios = [r["steps_ratio"] for r in runs if r.get("steps_ratio")]
    mean, sd = mean_sd(finals)
    ratio_mean, ratio_sd = mean_sd(ratios)
    return {"optimizer": name, "final_val_seeds": finals, "final_val_mean": mean, "final_val_sd": sd,
            "diverged": sum(not math.isfinite(v) for v in finals),
            "steps_to_adamw_best": [r.get("steps_to_ref") for r in runs], "ratio_mean": ratio_mean,
            "ratio_sd": ratio_sd, "reached": len(ratios)}


def _spread(mean: float, sd: float) -> str:
    return f"{mean:.4f}" if math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"


def table(rows: list[dict]) -> str:
    lines = ["| optimizer | final val loss, per seed | mean ± sd | steps to AdamW's best (same seed) "
             "| ÷ AdamW's steps, mean ± sd |", "|---|---|---:|---|---:|"]
    for r in rows:
        n = len(r["final_val_seeds"])
        steps = " / ".join("—" if s is None else str(s) for s in r["steps_to_adamw_best"])
        if r["reached"] == 0:
            ratio = "—"
        elif r["reached"] == 1:
            ratio = f"{r['ratio_mean']:.2f} (1 of {n} seeds)"
        else:
            ratio = f"{r['ratio_mean']:.2f} ± {r['ratio_sd']:.2f}" + (
                "" if r["reached"] == n else f" ({r['reached']} of {n} seeds)")
        finals = " / ".join(f"{v:.4f}" if math.isfinite(v) else "diverged" for v in r["final_val_seeds"])
        spread = "—" if r["diverged"] == n else _spread(r["final_val_mean"], r["final_val_sd"]) + (
            f" ({n - r['diverged']} of {n} seeds)" if r["diverged"] else "")
        lines.append(f"| {r['optimizer']} | {finals} | {spread} | {steps} | {ratio} |")
    return "\n".join(lines)


def write(rows: list[dict], base: RunConfig, seeds: list[int], out: Path) -> None:
    seed_list = ", ".join(map(str, seeds))
    options = f" {json.dumps(base.task_options)}" if base.task_options else ""
    settings = "".join(f", {k} {v}" for k, v in (("gram", base.hparams.get("gram")), ("closure", base.closure))
                       if v is not None)
    (out / "report.md").write_text("\n".join([
        f"# specopt compare: {base.task}, seeds {seed_list}", "",
        f"Task `{base.task}`{options}, {base.steps} steps, schedule {base.schedule}, validation every "
        f"{base.val_every} steps{settings}; each seed's own comparison (same batches for every optimizer) is in "
        f"`seed<S>/`. Mean ± sample standard deviation over the {len(seeds)} seeds (a diverged seed is left out and "
        "counted); a difference smaller than the spreads is a tie.", "", table(rows), "",
        "![spread](spread.png)", ""]))
    write_csv(out / "summary.csv", [
        {"optimizer": r["optimizer"], "final_val_seeds": " ".join(f"{v:.4f}" for v in r["final_val_seeds"]),
         "final_val_mean": round(r["final_val_mean"], 4), "final_val_sd": round(r["final_val_sd"], 4),
         "diverged": r["diverged"],
         "steps_to_adamw_best": " ".join("NA" if s is None else str(s) for s in r["steps_to_adamw_best"]),
         "reached": r["reached"], "ratio_mean": round(r["ratio_mean"], 3), "ratio_sd": round(r["ratio_sd"], 3)}
        for r in rows])
    _plot(rows, base, seeds, out / "spread.png")


def _plot(rows: list[dict], base: RunConfig, seeds: list[int], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.5))
    for i, r in enumerate(rows):
        finite = [v for v in r["final_val_seeds"] if math.isfinite(v)]
        ax.scatter([i] * len(finite), finite, color="C0", alpha=0.5, s=18)
        if finite:
            ax.errorbar(i + 0.15, r["final_val_mean"], yerr=0.0 if math.isnan(r["final_val_sd"]) else
                        r["final_val_sd"], color="C3", fmt="o", capsize=4)
    ax.set_xticks(range(len(rows)), [r["optimizer"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{base.task}, {base.steps} steps: every seed (dots) and mean ± sd (red), seeds "
                 f"{', '.join(map(str, seeds))}")
    save_figure(fig, path)
