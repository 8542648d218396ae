"""The sweep behind the `specopt` defaults: final validation loss of each optimizer on the default
char-GPT over a grid of learning rates (and radii), same seed and data order for all.

    python benchmarks/sweep_defaults.py [--steps 600] [--size tiny]

Writes benchmarks/results/sweep_defaults.csv and the "defaults" section of EXPERIMENTS.md.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msign import write_section  # noqa: E402

from specopt.training import RunConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

GRID = {
    "adamw": {"lr": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]},
    "muon": {"lr": [0.01, 0.02, 0.04, 0.08], "adamw_lr": [3e-3, 1e-2]},
    "scion": {"lr": [2**-10, 2**-9, 2**-8, 2**-7, 2**-6, 2**-5], "radius": [3.0, 10.0, 30.0, 100.0]},
    "uscion": {"lr": [2**-7, 2**-6, 2**-5, 2**-4, 2**-3], "radius": [0.5, 1.0, 3.0]},
    "clipped-scion": {"lr": [2**-5, 2**-4, 2**-3], "radius": [1.0, 3.0], "clip_radius": [10.0, 60.0, 600.0]},
    "gluon": {"lr": [1.0]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--only", default=None, help="comma-separated optimizers")
    args = parser.parse_args()
    rows = []
    names = args.only.split(",") if args.only else list(GRID)
    for name in names:
        keys = list(GRID[name])
        for values in itertools.product(*(GRID[name][k] for k in keys)):
            hp = dict(zip(keys, values, strict=True))
            cfg = RunConfig(task="char-gpt", optimizer=name, steps=args.steps, task_options={"size": args.size},
                            hparams=hp, val_every=args.steps // 6, checkpoint_every=args.steps)
            start = time.time()
            with TemporaryDirectory() as d:
                result = train(cfg, d, progress=False)
            val = result.val_rows()
            final = val[-1]["val_loss"] if val else float("nan")
            rows.append({"optimizer": name, **{k: hp.get(k, "") for k in ("lr", "radius", "clip_radius", "adamw_lr")},
                         "final_val": final, "seconds": time.time() - start})
            print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    if args.only and (out / "sweep_defaults.csv").is_file():  # keep the other optimizers' rows
        with open(out / "sweep_defaults.csv") as f:
            kept = [_parse(r) for r in csv.DictReader(f) if r["optimizer"] not in names]
        rows = kept + rows
        names = list(dict.fromkeys(r["optimizer"] for r in rows))
    with open(out / "sweep_defaults.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["## Defaults sweep (char-GPT)", "",
             f"`python benchmarks/sweep_defaults.py --steps {args.steps} --size {args.size}`: final validation loss "
             "after a linear-decay schedule, seed 0; best per optimizer in bold. Full grid in "
             "`benchmarks/results/sweep_defaults.csv`.", "",
             "| optimizer | lr | radius | clip ρ_c | adamw lr | final val loss |", "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        mine = [r for r in rows if r["optimizer"] == name]
        best = min(mine, key=lambda r: r["final_val"])
        for r in sorted(mine, key=lambda r: r["final_val"])[:3]:
            b = "**" if r is best else ""
            lines.append(f"| {name} | {r['lr']:.4g} | {r['radius']} | {r['clip_radius']} | {r['adamw_lr']} | "
                         f"{b}{r['final_val']:.4f}{b} |")
    write_section(ROOT / "EXPERIMENTS.md", "defaults", "\n".join(lines) + "\n", title="# Experiments")


def _parse(row: dict) -> dict:
    out = {"optimizer": row["optimizer"]}
    for key, value in row.items():
        if key != "optimizer":
            out[key] = float(value) if value not in ("", None) else ""
    return out


if __name__ == "__main__":
    main()
