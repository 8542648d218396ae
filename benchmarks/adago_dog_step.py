"""Optimizer step time of Muon, AdaGO and DoG on the default char-GPT (one thread): the median of 30 steps in each
of three interleaved rounds. AdaGO adds one Frobenius norm per matrix to Muon's step; DoG an exact operator norm of
W − W₀ per matrix.

    python benchmarks/adago_dog_step.py
"""

from __future__ import annotations

import time

import torch

from specopt import registry
from specopt.tasks import get_task

NAMES = ("muon", "adago", "dog")


def main(rounds: int = 3, steps: int = 30) -> None:
    torch.set_num_threads(1)
    task = get_task("char-gpt", size="tiny")
    setups = {}
    for name in NAMES:
        model = task.build_model()
        (opt,) = registry.build(name, model, task, registry.resolve(name))
        setups[name] = (model, opt)
    medians: dict[str, list[float]] = {name: [] for name in NAMES}
    for _ in range(rounds):
        for name, (model, opt) in setups.items():
            times = []
            for step in range(steps):
                opt.zero_grad()
                task.loss(model, task.batch(step)).backward()
                tick = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - tick)
            medians[name].append(sorted(times)[steps // 2])
    for name, values in medians.items():
        print(f"{name}: median optimizer step (ms) per round: " + ", ".join(f"{1000 * v:.2f}" for v in values))


if __name__ == "__main__":
    main()
