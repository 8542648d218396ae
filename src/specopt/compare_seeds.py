"""`specopt compare --seeds 0,1,2`: the comparison once per seed, and the spread across seeds.

Each seed's comparison is a full :func:`specopt.compare.compare` run in ``out/seed<S>`` (its own report, plot and
CSV). Across seeds, per optimizer: the final validation loss of every seed, its mean and sample standard deviation,
the steps to AdamW's best validation loss of the same seed, and that ratio's mean and standard deviation. Written as
``report.md`` (the table), ``summary.csv`` and ``spread.png`` (each seed's final loss and the mean ± sd). A
difference between two optimizers smaller than their spreads is a tie.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from pathlib import Path

from specopt.compare import compare
from specopt.experiments.common import save_figure
from specopt.training import RunConfig


def compare_seeds(base: RunConfig, optimizers: list[str], out: str | Path, seeds: list[int], *,
                  progress: bool = True, log=print) -> list[dict]:
    """Run :func:`~specopt.compare.compare` for every seed into ``out/seed<S>``; returns one summary row per
    optimizer (see the module docstring) after writing the report."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs at least two different seeds, got {seeds}")
    out = Path(out)
    per_seed = []
    for seed in seeds:
        log(f"== seed {seed}")
        per_seed.append(compare(replace(base, seed=seed), optimizers, out / f"seed{seed}", progress=progress, log=log))
    rows = [summarise(name, [runs[name] for runs in per_seed]) for name in optimizers]
    write(rows, base, seeds, out)
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values)


def summarise(name: str, runs: list[dict]) -> dict:
    """One optimizer's row over its per-seed runs (the ratio's mean over the seeds that reached AdamW's best)."""
    finals = [r["final_val"] for r in runs]
    ratios = [r["steps_ratio"] for r in runs if r.get("steps_ratio")]
    mean, sd = _mean_sd(finals)
    ratio_mean, ratio_sd = (_mean_sd(ratios) if len(ratios) > 1 else (ratios[0], float("nan")) if ratios
                            else (float("nan"), float("nan")))
    return {"optimizer": name, "final_val_seeds": finals, "final_val_mean": mean, "final_val_sd": sd,
            "steps_to_adamw_best": [r.get("steps_to_ref") for r in runs], "ratio_mean": ratio_mean,
            "ratio_sd": ratio_sd, "reached": len(ratios)}


def table(rows: list[dict]) -> str:
    lines = ["| optimizer | final val loss, per seed | mean ± sd | steps to AdamW's best (same seed) "
             "| ÷ AdamW's steps, mean ± sd |", "|---|---|---:|---|---:|"]
    for r in rows:
        steps = " / ".join("—" if s is None else str(s) for s in r["steps_to_adamw_best"])
        ratio = "—" if r["reached"] == 0 else f"{r['ratio_mean']:.2f} ± {r['ratio_sd']:.2f}" + (
            "" if r["reached"] == len(r["final_val_seeds"]) else f" ({r['reached']} seeds reached it)")
        lines.append(f"| {r['optimizer']} | {' / '.join(f'{v:.4f}' for v in r['final_val_seeds'])} | "
                     f"{r['final_val_mean']:.4f} ± {r['final_val_sd']:.4f} | {steps} | {ratio} |")
    return "\n".join(lines)


def write(rows: list[dict], base: RunConfig, seeds: list[int], out: Path) -> None:
    seed_list = ", ".join(map(str, seeds))
    (out / "report.md").write_text("\n".join([
        f"# specopt compare: {base.task}, seeds {seed_list}", "",
        f"{base.steps} steps, schedule {base.schedule}, validation every {base.val_every} steps; each seed's own "
        f"comparison (same batches for every optimizer) is in `seed<S>/`. Mean ± sample standard deviation over "
        f"the {len(seeds)} seeds; a difference smaller than the spreads is a tie.", "", table(rows), "",
        "![spread](spread.png)", ""]))
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "final_val_seeds", "final_val_mean", "final_val_sd", "steps_to_adamw_best",
                         "ratio_mean", "ratio_sd"])
        for r in rows:
            writer.writerow([r["optimizer"], " ".join(f"{v:.4f}" for v in r["final_val_seeds"]),
                             round(r["final_val_mean"], 4), round(r["final_val_sd"], 4),
                             " ".join("" if s is None else str(s) for s in r["steps_to_adamw_best"]),
                             round(r["ratio_mean"], 3), round(r["ratio_sd"], 3)])
    _plot(rows, base, seeds, out / "spread.png")


def _plot(rows: list[dict], base: RunConfig, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.5))
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["final_val_seeds"]), r["final_val_seeds"], color="C0", alpha=0.5, s=18)
        ax.errorbar(i + 0.15, r["final_val_mean"], yerr=r["final_val_sd"], color="C3", fmt="o", capsize=4)
    ax.set_xticks(range(len(rows)), [r["optimizer"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{base.task}, {base.steps} steps: every seed (dots) and mean ± sd (red), seeds "
                 f"{', '.join(map(str, seeds))}")
    save_figure(fig, path)
