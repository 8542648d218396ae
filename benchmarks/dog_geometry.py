"""Why specopt.DoG takes the gradient itself and the Euclidean norm outside Muon's roles: DoG's rule
(:class:`specopt.dog.DistanceOverGradients`) in five settings on the default char-GPT (600 steps, linear decay over
the last 30 %, the `specopt compare` schedule), final validation loss.

    python benchmarks/dog_geometry.py [--seed 0] [--steps 600]

Rows: DoG's default (spectral hidden matrices, Euclidean elsewhere, momentum 0); the same with momentum 0.5 and 0.9;
``param_groups``' own norms (ℓ∞ ``Sign`` on the embeddings and the head); the Euclidean norm everywhere (the paper's
layer-wise DoG on SGD). A diverged run (a non-finite loss) is reported as such. One thread; results are appended to
``benchmarks/results/dog_geometry.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

import specopt
from specopt.dog import DistanceOverGradients
from specopt.tasks import get_task
from specopt.training import RunConfig, lr_factor, task_closure

RESULTS = Path(__file__).resolve().parent / "results" / "dog_geometry.csv"


RULE = DistanceOverGradients()
VARIANTS = {  # name → optimizer for the groups of specopt.param_groups(model)
    "DoG default (spectral hidden, Euclidean rest, momentum 0)": lambda groups: specopt.DoG(groups),
    "momentum 0.5": lambda groups: specopt.DoG(groups, momentum=0.5),
    "momentum 0.9": lambda groups: specopt.DoG(groups, momentum=0.9),
    "param_groups' norms (Sign embeddings and head), momentum 0": lambda groups: specopt.GeometryOptimizer(
        groups, {"lr": 1.0, "momentum": 0.0}, rule=RULE),
    "Euclidean everywhere (L-DoG), momentum 0": lambda groups: specopt.GeometryOptimizer(
        [{**g, "norm": "euclidean"} for g in groups], {"lr": 1.0, "momentum": 0.0}, rule=RULE),
}


def run(name: str, seed: int, steps: int) -> float:
    """Final validation loss (NaN if the training loss became non-finite)."""
    cfg = RunConfig(task="char-gpt", optimizer="dog", steps=steps, seed=seed)
    task = get_task("char-gpt", seed=seed, size="tiny")
    model = task.build_model()
    opt = VARIANTS[name](specopt.param_groups(model))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    for step in range(steps):
        try:
            loss = opt.step(task_closure(task, model, [opt], task.batch(step)))
        except ValueError:  # a non-finite gradient: the engine refuses the step
            return math.nan
        sched.step()
        if not math.isfinite(float(loss.detach())):
            return math.nan
    return task.validation_loss(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    new = not RESULTS.is_file()
    with open(RESULTS, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["variant", "seed", "steps", "final_val", "seconds"])
        for name in VARIANTS:
            tick = time.time()
            val = run(name, args.seed, args.steps)
            seconds = time.time() - tick
            writer.writerow([name, args.seed, args.steps, f"{val:.4f}", f"{seconds:.0f}"])
            f.flush()
            print(f"| {name} | {'diverged' if math.isnan(val) else f'{val:.4f}'} |", flush=True)


if __name__ == "__main__":
    main()
