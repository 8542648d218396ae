"""GluonMVR's estimator and schedule apart: final validation loss of the default char-GPT (600 steps, linear decay,
one thread) for GluonMVR with Gluon's constant schedule instead of the MVR one, and for Muon on the same STORM
estimator.

    python benchmarks/gluon_mvr.py [--seeds 0]        # appends to benchmarks/results/gluon_mvr.csv

Each point is `specopt train --task char-gpt --optimizer NAME [--lr γ]` with the optimizer class's other arguments
fixed by ``functools.partial`` (the registry passes lr, momentum and weight decay only). GluonMVR with
``schedule="constant"`` is Gluon on STORM: it separates what the estimator does from what the ``(k+1)^{-2/3}`` step
decay does; Muon on STORM shows the estimator on a step that does not adapt. A run whose gradient turns non-finite
is recorded with a NaN loss. Rows are appended as runs end; points already there are skipped.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
from pathlib import Path

import torch
from sweep_defaults import append_row, final_val

import specopt
from specopt.training import RunConfig

RESULTS = Path(__file__).resolve().parent / "results" / "gluon_mvr.csv"
FIELDS = ("optimizer", "options", "lr", "seed", "final_val", "seconds")
GRID = [("gluon-mvr", "GluonMVR", {"schedule": "constant"}, lr) for lr in (0.5, 1.0, 2.0)] + [
    ("gluon-mvr", "GluonMVR", {"schedule": "constant", "momentum": 0.9}, 1.0),
    ("muon", "Muon", {"estimator": "storm", "momentum": 0.9}, 0.02),
    ("muon", "Muon", {"estimator": "storm", "momentum": "storm"}, 0.02)]
"""(registry name, class, fixed constructor arguments, γ): Gluon on STORM around Gluon's γ = 1, with STORM's
schedule ``a_k = (k+1)^{-2/3}`` and with a fixed a = 0.1; Muon (γ 0.02, its default) on STORM with both."""


def final_loss(name: str, cls: str, options: dict, lr: float, seed: int) -> tuple[float, float]:
    cfg = RunConfig(task="char-gpt", optimizer=name, steps=600, seed=seed, task_options={"size": "tiny"},
                    hparams={"lr": lr}, val_every=100, checkpoint_every=600)
    return final_val(cfg, {cls: functools.partial(getattr(specopt, cls), **options)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    done = set()
    if RESULTS.is_file():
        with open(RESULTS) as f:
            done = {(r["optimizer"], r["options"], float(r["lr"]), int(r["seed"])) for r in csv.DictReader(f)}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, cls, options, lr in GRID:
            label = json.dumps(options, sort_keys=True)
            if (name, label, lr, seed) in done:
                continue
            final, seconds = final_loss(name, cls, options, lr, seed)
            row = {"optimizer": name, "options": label, "lr": lr, "seed": seed, "final_val": final,
                   "seconds": seconds}
            append_row(RESULTS, FIELDS, row)
            print(f"{name} {label} lr {lr} seed {seed}: {final:.4f} ({row['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
