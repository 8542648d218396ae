"""MuonBP against Muon: the optimizer step on the GPT-2-small parameter set, and the final loss of the default
char-GPT over MuonBP's structure (period P, row blocks B, step-size ratio r = η_block/η_full).

    python benchmarks/muonbp.py step [--blocks 4] [--steps 10] [--threads 1] [--device cuda] [--period 5]
                                                  # step times, ratios
    python benchmarks/muonbp.py structure [--seeds 0] [--split rows --period 5 --blocks 2 --ratio 1]
                                                  # appends to results/muonbp.csv (the GRID points that match)
    python benchmarks/muonbp.py width [--sizes tiny,small] [--steps 400] [--seeds 0,1,2]
                                                  # appends to results/muonbp_width.csv
    python benchmarks/muonbp.py paired [--seeds 0,1,2] [--split rows --period 2 --blocks 2 --ratio 1]
                                                  # appends to results/muonbp_paired.csv; prints paired differences

``step``: step.py's parameters and gradients (``--blocks`` transformer blocks; the embeddings and gains on Muon's
AdamW), Muon and MuonBP (P = 5 or ``--period``, B = 2, 4, 8, row blocks and blocks across the shorter side) stepped in
interleaved rounds; the mean over ``--steps`` steps, a multiple of P, so that full and block steps count in their
proportion (1 in P is full), and the ≤ 0.6× target judged on each cycle of P steps (met when every cycle meets it).

``structure``: `specopt train --task char-gpt --optimizer muonbp` (600 steps, linear decay, MuonBP's default lr)
for every setting of :data:`GRID`, one thread; MuonBP's other constructor arguments are fixed with
``functools.partial`` (the registry passes lr, weight decay and AdamW's lr only). Rows are appended to
``benchmarks/results/muonbp.csv`` as runs end; settings already there are skipped.

``paired``: Muon and the :data:`GRID` settings that agree with the options, on every seed, in one run on one machine
(``structure``'s rows are from several: a seed's Muon there may come from another machine, whose rounding moves the
char-GPT by 0.01); prints each setting's paired differences to Muon, their mean and sd.

``width``: Muon and MuonBP (P = 5, r = 1, 2 and 8 row blocks) on the char-GPT of each size, the same number of steps
for all, default lr's. A size is a preset (tiny: 2 layers of width 64; small: 4 layers of width 128, twice the
context and the batch) or a preset with another width, ``tiny-w128`` (tiny's depth, context and batch at width 128:
width alone). Rows appended to ``benchmarks/results/muonbp_width.csv`` as runs end, runs already there skipped.
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msign import against, per_round, round_times  # noqa: E402
from step import gpt2_small_params, muon_groups, roles  # noqa: E402
from sweep_defaults import append_row, final_val  # noqa: E402

import specopt  # noqa: E402
from specopt import registry  # noqa: E402
from specopt.training import RunConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "muonbp.csv"
FIELDS = ("split", "period", "blocks", "block_lr_ratio", "lr", "seed", "final_val", "seconds")
GRID = [{"split": "rows", "period": p, "blocks": b, "block_lr_ratio": 1.0} for p in (2, 5, 10) for b in (2, 4, 8)] + [
    {"split": "rows", "period": 5, "blocks": b, "block_lr_ratio": r} for b in (2, 4) for r in (0.5, 2.0)] + [
    {"split": "short", "period": p, "blocks": b, "block_lr_ratio": 1.0} for p in (2, 5) for b in (2, 4, 8)]
"""Row blocks: P × B at r = 1 (P = 5 is the paper's), r = ½ and 2 at P = 5; blocks across the shorter side."""


PERIOD = 5
"""MuonBP's period in the step benchmark (the paper's): one full step in P."""
TARGET = 0.6
"""The family issue's target: MuonBP's optimizer step ≤ 0.6× Muon's."""


def step_times(blocks: int, steps: int, threads: int, device: str = "cpu", period: int = PERIOD) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device)
    groups = muon_groups(roles(gpt2_small_params(blocks=blocks, device=device)))
    opts = {"Muon": specopt.Muon(groups, lr=0.02)}
    opts.update({f"MuonBP {split} B={b}": specopt.MuonBP(groups, lr=0.02, period=period, blocks=b, split=split)
                 for split in ("rows", "short") for b in (2, 4, 8)})
    # round_times' first call of each allocates the state and takes the full step: the timed steps start at a block
    # step, and every P consecutive rounds hold one full step and P − 1 block steps, in their proportion
    times = round_times({name: opt.step for name, opt in opts.items()}, steps, device)
    cycles = {name: [sum(ts[i:i + period]) for i in range(0, len(ts) - period + 1, period)]
              for name, ts in times.items()}
    on = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"{threads} thread(s)"
    print(f"{blocks} GPT-2-small blocks, {on}, mean of {steps} steps (P = {period}); the target judged on each "
          f"cycle of P steps (both timed in the same rounds):")
    for name, ts in times.items():
        ratio = statistics.mean(ts) / statistics.mean(times["Muon"])
        verdict = "" if name == "Muon" else f"; ≤ {TARGET}× Muon: {against(per_round(cycles, name, 'Muon'), TARGET)}"
        print(f"  {name}: {statistics.mean(ts) * 1e3:.0f} ms, {ratio:.2f}x Muon{verdict}")


def read_rows() -> list[dict]:
    if not RESULTS.is_file():
        return []
    with open(RESULTS) as f:
        return list(csv.DictReader(f))


def structure(seeds: list[int], only: dict) -> None:
    """Every setting of :data:`GRID` that agrees with ``only`` (e.g. ``{"blocks": 2}``), for every seed."""
    torch.set_num_threads(1)
    lr = registry.DEFAULTS["muonbp"]["lr"]
    done = {(r["split"], float(r["period"]), float(r["blocks"]), float(r["block_lr_ratio"]), float(r["lr"]),
             int(r["seed"])) for r in read_rows()}
    for seed in seeds:
        for setting in (g for g in GRID if all(g[k] == v for k, v in only.items())):
            key = (setting["split"], setting["period"], setting["blocks"], setting["block_lr_ratio"], lr, seed)
            if key in done:
                continue
            cfg = RunConfig(task="char-gpt", optimizer="muonbp", steps=600, seed=seed, task_options={"size": "tiny"},
                            val_every=100, checkpoint_every=600)
            final, seconds = final_val(cfg, {"MuonBP": functools.partial(specopt.MuonBP, **setting)})
            row = {**setting, "lr": lr, "seed": seed, "final_val": final, "seconds": seconds}
            append_row(RESULTS, FIELDS, row)
            print(f"{setting['split']}, P {setting['period']}, B {setting['blocks']}, r {setting['block_lr_ratio']}, "
                  f"lr {lr}, seed {seed}: {final:.4f} ({row['seconds']} s)", flush=True)


PAIRED_FIELDS = ("optimizer", "split", "period", "blocks", "block_lr_ratio", "seed", "final_val", "seconds")


def paired(seeds: list[int], only: dict) -> None:
    """Muon, then every :data:`GRID` setting that agrees with ``only``, on each seed (one thread, 600 steps)."""
    torch.set_num_threads(1)
    path = RESULTS.with_name("muonbp_paired.csv")
    settings = [g for g in GRID if all(g[k] == v for k, v in only.items())]
    finals: dict = {}
    for seed in seeds:
        for setting in [None] + settings:
            cfg = RunConfig(task="char-gpt", optimizer="muon" if setting is None else "muonbp", steps=600, seed=seed,
                            task_options={"size": "tiny"}, val_every=100, checkpoint_every=600)
            final, seconds = final_val(cfg, None if setting is None else
                                       {"MuonBP": functools.partial(specopt.MuonBP, **setting)})
            key = "Muon" if setting is None else "MuonBP {split}, P {period}, B {blocks}, r {block_lr_ratio}".format(
                **setting)
            finals.setdefault(key, []).append(final)
            append_row(path, PAIRED_FIELDS, {"optimizer": key.split()[0], **(setting or {}), "seed": seed,
                                             "final_val": final, "seconds": seconds})
            print(f"{key}, seed {seed}: {final:.4f} ({seconds} s)", flush=True)
    muon = finals.pop("Muon")
    for key, values in finals.items():
        diffs = [v - m for v, m in zip(values, muon, strict=True)]
        spread = f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else ""
        print(f"{key} − Muon, paired by seed: {', '.join(f'{d:+.4f}' for d in diffs)}; mean "
              f"{statistics.mean(diffs):+.4f}{spread}")


WIDTH_FIELDS = ("size", "steps", "optimizer", "blocks", "seed", "final_val", "seconds")


def size_options(size: str) -> dict:
    """``"tiny"`` → ``{"size": "tiny"}``; ``"tiny-w128"`` → ``{"size": "tiny", "n_embd": 128}``."""
    preset, _, width = size.partition("-w")
    return {"size": preset, **({"n_embd": int(width)} if width else {})}


def width(sizes: list[str], steps: int, seeds: list[int]) -> None:
    """Muon against MuonBP (P = 5, r = 1; 2 and 8 row blocks) at each char-GPT size, ``steps`` steps each."""
    torch.set_num_threads(1)
    path = RESULTS.with_name("muonbp_width.csv")
    done = set()
    if path.is_file():
        with open(path) as f:
            done = {(r["size"], int(r["steps"]), r["optimizer"], r["blocks"], int(r["seed"]))
                    for r in csv.DictReader(f)}
    for seed in seeds:
        for size in sizes:
            for name, blocks in (("muon", ""), ("muonbp", "2"), ("muonbp", "8")):
                if (size, steps, name, blocks, seed) in done:
                    continue
                cfg = RunConfig(task="char-gpt", optimizer=name, steps=steps, seed=seed,
                                task_options=size_options(size), val_every=steps // 4, checkpoint_every=steps)
                setting = {"period": 5, "blocks": int(blocks), "block_lr_ratio": 1.0, "split": "rows"} if blocks else {}
                final, seconds = final_val(cfg, {"MuonBP": functools.partial(specopt.MuonBP, **setting)})
                row = {"size": size, "steps": steps, "optimizer": name, "blocks": blocks, "seed": seed,
                       "final_val": final, "seconds": seconds}
                append_row(path, WIDTH_FIELDS, row)
                print(f"{size}, {steps} steps, {name} {blocks}, seed {seed}: {final:.4f} ({row['seconds']} s)",
                      flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step")
    s.add_argument("--blocks", type=int, default=4)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    s.add_argument("--period", type=int, default=PERIOD)
    for name, seeds in (("structure", "0"), ("paired", "0,1,2")):  # the GRID settings to run
        t = sub.add_parser(name)
        t.add_argument("--seeds", default=seeds)
        t.add_argument("--split", choices=("rows", "short"))
        t.add_argument("--period", type=int)
        t.add_argument("--blocks", type=int)
        t.add_argument("--ratio", type=float, dest="block_lr_ratio")
    w = sub.add_parser("width")
    w.add_argument("--sizes", default="tiny,small")
    w.add_argument("--steps", type=int, default=400)
    w.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    if args.what == "step" and args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.what == "step":
        step_times(args.blocks, args.steps, args.threads, args.device, args.period)
    elif args.what == "width":
        width(args.sizes.split(","), args.steps, [int(x) for x in args.seeds.split(",")])
    else:
        only = {k: getattr(args, k) for k in ("split", "period", "blocks", "block_lr_ratio")
                if getattr(args, k) is not None}
        (paired if args.what == "paired" else structure)([int(x) for x in args.seeds.split(",")], only)


if __name__ == "__main__":
    main()
