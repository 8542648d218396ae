"""torch.compile against eager: steady-state optimizer step time on the GPT-2-small parameter set.

    python benchmarks/compile.py               # 2 of the 12 blocks, rewrites the compile section of BENCHMARKS.md
    python benchmarks/compile.py --blocks 12   # all of GPT-2 small (about 12 minutes on 2 CPU threads)
    python benchmarks/compile.py --quick       # 1 block, vocab 4096, prints only
    python benchmarks/compile.py --device cuda # on a GPU: writes the compile-cuda section

Parameter set and param groups: those of ``benchmarks/step.py`` (:func:`step.gpt2_small_params`, the "specopt
Muon" and "specopt Scion" optimizers of :func:`step.optimizers`), with GPT-2 small's shapes and embeddings and by
default 2 of its 12 blocks: the trace unrolls the step's loop over the matrices, so the first compiled call grows
with their number (inductor generates and compiles code for every msign) while the step time of both sides grows
alike, block by block. Measured with ``--blocks 12`` on the machine of the BENCHMARKS.md table (2 threads): first
compiled calls 280 s (Muon) and 250 s (Scion), steps 9.32 s against 8.56 s eager (1.09×) and 9.17 s against
8.05 s (1.14×), 12.5 minutes in all; the default run takes about 4.

Each optimizer runs twice on its own copy of the parameters (same seed, same fixed random gradients): once eagerly,
once as ``torch.compile(opt.step)``, with the same threads and dtypes. The first compiled call (tracing, code
generation, state creation) is timed apart; then both are stepped in interleaved rounds (median). After the rounds
both copies have taken the same steps, so their largest parameter difference checks that the compiled step
computes the same update.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo

from specopt import linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msign import (  # noqa: E402
    DRIFT_NOTE,
    against,
    command,
    parse_machine_args,
    per_round,
    publish,
    synchronizer,
    where,
)
from step import gpt2_small_params, optimizers  # noqa: E402

NAMES = {"Muon": "specopt Muon", "Scion": "specopt Scion"}


def build(name: str, size: dict, device: torch.device):
    """A fresh parameter copy and the benchmark's optimizer of ``name`` over it."""
    params = gpt2_small_params(**size, device=device)
    return params, optimizers(params)[NAMES[name]][0]


def measure(name: str, size: dict, repeats: int, device: torch.device) -> dict:
    sync = synchronizer(device)
    params_e, eager = build(name, size, device)
    params_c, compiled = build(name, size, device)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    step = torch.compile(compiled.step)
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    eager.step()  # warm-up: creates the state
    sync()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(repeats):
        for key, fn in (("eager", eager.step), ("compiled", step)):
            start = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - start)
        print(f"{name} round {r + 1}/{repeats}: eager {times['eager'][-1]:.3f}s, compiled "
              f"{times['compiled'][-1]:.3f}s", flush=True)
    stats = torch._dynamo.utils.counters["stats"]
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    delta = max(float((a.detach() - b.detach()).abs().max()) for (_, a), (_, b) in zip(params_e, params_c,
                                                                                        strict=True))
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"optimizer": f"specopt {name}", "eager_s": eager_s, "compiled_s": compiled_s,
            "ratio": compiled_s / eager_s, "ratio_rounds": per_round(times, "compiled", "eager"),
            "first_call_s": first, "graphs": stats["unique_graphs"], "graph_breaks": breaks,
            "max_abs_param_diff": delta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 block, vocab 4096; print only")
    parser.add_argument("--blocks", type=int, default=2, help="transformer blocks of GPT-2 small (of 12)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_machine_args(parser)
    if not 1 <= args.blocks <= 12:
        parser.error(f"--blocks must be in 1..12 (GPT-2 small has 12), got {args.blocks}")
    size = {"blocks": 1, "vocab": 4096} if args.quick else {"blocks": args.blocks}
    rows = [measure(name, size, args.repeats, args.device) for name in NAMES]
    probe = gpt2_small_params(blocks=1, vocab=8, ctx=8, device=args.device)[-1][1]
    work = linalg.resolve_compute_dtype(probe, None, "polar_express")
    shapes = gpt2_small_params(**size, device="meta")
    n_params, n_matrices = sum(p.numel() for _, p in shapes), sum(".attn." in n or ".mlp." in n for n, _ in shapes)
    run = command("compile.py", args)
    if size.get("blocks", 12) != 2:
        run = run[:-1] + f" --blocks {size['blocks']}`"
    lines = [
        f"## torch.compile: optimizer step (GPT-2-small parameter set, {args.device.type})", "",
        f"Measured by {run} on {where(args)}: GPT-2 small's embeddings, final LayerNorm and {size['blocks']} of its "
        f"12 blocks ({n_matrices} hidden matrices, {n_params / 1e6:.1f}M parameters; the first compiled call grows "
        "with the number of matrices, the step time of both sides alike), the optimizers and param groups of the "
        "step table (Muon: hidden matrices + AdamW on embeddings and gains; Scion: Spectral, Sign, BiasRMS). "
        "Eager `opt.step()` against `torch.compile(opt.step)` (inductor, default "
        f"mode) on two copies of the parameters: fp32 parameters and gradients, msign in bf16 for Muon (as in the "
        f"step table) and in {work} for Scion (the default on this machine), the same {args.threads} threads for "
        f"both. Median of {args.repeats} "
        "interleaved steps after the first call; the first compiled call (tracing, code generation, state) is "
        "listed apart. Graphs and graph breaks as dynamo counts them; the last column is the largest parameter "
        "difference between the two copies after the same steps.", "",
        "| optimizer | eager step (s) | compiled step (s) | compiled ÷ eager | first compiled call (s) | graphs "
        "| graph breaks | max \\|Δ param\\| |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['eager_s']:.3f} | {r['compiled_s']:.3f} | {r['ratio']:.2f} | "
                     f"{r['first_call_s']:.0f} | {r['graphs']} | {r['graph_breaks']} | "
                     f"{r['max_abs_param_diff']:.1e} |")
    lines.append("")
    for r in rows:
        lines.append(f"- {r['optimizer']}: compiled ≤ eager: {r['ratio']:.2f}× — {against(r['ratio_rounds'], 1.0)} "
                     "(round by round)")
    lines.append("- under compile msign forms its symmetric products (X Xᵀ, A²) as plain products: the eager CPU "
                 "path's row blocks save flops but were most of the graph (5× the compile time) and their "
                 "transposing copies ran slower compiled (see `linalg.symmetric_product`)")
    lines.append(DRIFT_NOTE[args.device.type])
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        publish("compile", args, table,
                {"device": where(args), "threads": args.threads, "compute_dtype": str(work), "rows": rows})


if __name__ == "__main__":
    main()
