"""Median optimizer-step time of specopt's Muon, Scion and UScion on step.py's GPT-2-small parameter set, for an
A/B of two checkouts of the engine (run it under each with ``PYTHONPATH=<checkout>/src``, alternating):

    git worktree add --detach /tmp/old <commit>
    for i in 1 2 3; do PYTHONPATH=/tmp/old/src python benchmarks/engine_ab.py; python benchmarks/engine_ab.py; done

Prints which specopt it imported and the median of 5 steps per optimizer (one thread, 2 blocks by default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step import gpt2_small_params, muon_groups, roles, scion_groups  # noqa: E402

import specopt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    by_role = roles(gpt2_small_params(blocks=args.blocks))
    opts = {"Muon": specopt.Muon(muon_groups(by_role), lr=0.02), "Scion": specopt.Scion(scion_groups(by_role)),
            "UScion": specopt.UScion(scion_groups(by_role))}
    out = {}
    for name, opt in opts.items():
        opt.step()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    print(Path(specopt.__file__).parents[1], ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in out.items()))


if __name__ == "__main__":
    main()
