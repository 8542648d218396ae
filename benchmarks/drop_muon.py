"""Drop-Muon's optimizer step against Muon's on the GPT-2-small parameter set of step.py (same parameters and
gradients, interleaved steps, mean over steps: the cutoff changes every step).

    python benchmarks/drop_muon.py [--blocks 4] [--steps 12] [--threads 1] [--device cuda]

Prints the mean step times and their ratio (target of the family issue: Drop-Muon ≤ 0.6× Muon).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msign import median_times  # noqa: E402
from step import gpt2_small_params, muon_groups, roles  # noqa: E402

import specopt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = gpt2_small_params(blocks=args.blocks, device=device)
    groups = muon_groups(roles(params))
    opts = {"Muon": specopt.Muon(groups, lr=0.02),
            "Drop-Muon": specopt.DropMuon(groups, lr=0.02, order=[p for _, p in params])}
    mean = median_times({name: opt.step for name, opt in opts.items()}, args.steps, device, stat=statistics.mean)
    on = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} thread(s)"
    print(f"{args.blocks} blocks, {on}, mean of {args.steps} steps: "
          f"Muon {mean['Muon'] * 1e3:.0f} ms, Drop-Muon {mean['Drop-Muon'] * 1e3:.0f} ms, "
          f"ratio {mean['Drop-Muon'] / mean['Muon']:.2f}")


if __name__ == "__main__":
    main()
