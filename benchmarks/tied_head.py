"""The default char-GPT with its output head tied to the token embedding (``lm_head.weight = wte.weight``, as GPT-2
and nanoGPT do), against the same model untied: final validation loss of AdamW, UScion, Muon and Clipped Scion at
their defaults, and of Clipped Scion at smaller step sizes and a larger ρ_c.

    OMP_NUM_THREADS=1 python benchmarks/tied_head.py                        # 600 steps, linear decay, ~3 min
    OMP_NUM_THREADS=1 python benchmarks/tied_head.py --schedule constant    # a constant lr

A new user found Clipped Scion's defaults far behind on a tied nanoGPT; this measures it on the shipped task. The
tied matrix gets ``param_groups``' ``embedding`` role (Sign, ρ 10), and its gradient holds the head's, dense over
the vocabulary.
"""

from __future__ import annotations

import argparse
import functools

import torch

import specopt
from specopt.tasks import get_task
from specopt.training import RunConfig, lr_factor

RUNS = {
    "adamw": lambda groups, params: torch.optim.AdamW(params, lr=4e-3, betas=(0.9, 0.95), weight_decay=0.0),
    "uscion": lambda groups, params: specopt.UScion(groups),
    "muon": lambda groups, params: specopt.Muon(groups),
    "clipped-scion": lambda groups, params: specopt.ClippedScion(groups),
    "clipped-scion lr 2^-9": lambda groups, params: specopt.ClippedScion(groups, lr=2**-9),
    "clipped-scion lr 2^-11": lambda groups, params: specopt.ClippedScion(groups, lr=2**-11),
    "clipped-scion ρ_c 2000": lambda groups, params: specopt.ClippedScion(groups, clip_radius=2000.0),
}


def final_loss(make, tied: bool, steps: int, seed: int, schedule: str) -> float:
    task = get_task("char-gpt", seed=seed)
    model = task.build_model()
    if tied:
        model.lm_head.weight = model.wte.weight
    opt = make(specopt.param_groups(model), list(model.parameters()))
    plan = RunConfig(steps=steps, schedule=schedule)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, cfg=plan))
    for step in range(steps):
        opt.zero_grad()
        task.loss(model, task.batch(step)).backward()
        opt.step()
        schedule.step()
    return task.validation_loss(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", default="linear-decay", choices=("linear-decay", "constant"))
    parser.add_argument("--only", default=None, help="comma-separated names of RUNS")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"char-GPT tiny, {args.steps} steps, {args.schedule} lr, seed {args.seed}: final validation loss, untied / "
          "tied head")
    for name, make in RUNS.items():
        if args.only and name not in args.only.split(","):
            continue
        untied, tied = (final_loss(make, t, args.steps, args.seed, args.schedule) for t in (False, True))
        print(f"  {name:<24} {untied:.4f} / {tied:.4f}", flush=True)


if __name__ == "__main__":
    main()
