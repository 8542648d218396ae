"""msign schedules side by side: the 5-step Polar Express against the cheaper cubic, CANS and AOL schedules —
iterations, matmuls, flops, time at 768×3072 relative to Polar Express (plain and Gram form), their band, and the
singular values and distance to the exact polar factor they reach on five kinds of input.

    python benchmarks/msign_schedules.py            # writes the msign-schedules section of BENCHMARKS.md
    python benchmarks/msign_schedules.py --quick    # a small shape, prints only
    python benchmarks/msign_schedules.py --device cuda   # on a GPU (bf16): writes msign-schedules-cuda
    (on a CPU the section is msign-schedules-bf16 where the compute dtype is bf16, msign-schedules in fp32)

The compute dtype is msign's default for the device: bf16 where matmuls are native in bf16 (CUDA, AVX512-BF16/AMX
CPUs), fp32 elsewhere; ``--dtype`` overrides it. The "trade-off" rows are schedules designed for fewer steps
(``cheaper_schedule(method, k, design_steps=k)``): Polar Express's band on a narrower interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from specopt.linalg import (
    PolynomialSchedule,
    _gram_polynomial_sign,
    _polynomial_sign,
    default_compute_dtype,
    msign,
    schedule,
    use_gram,
)
from specopt.msign_schedules import DESIGNS, cheaper_schedule, target_band

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msign import (  # noqa: E402
    DRIFT_NOTE,
    against,
    command,
    parse_machine_args,
    per_round,
    round_times,
    section,
    test_matrix,
    where,
    write_section,
)

ROOT = Path(__file__).resolve().parent.parent
SHAPE, QUICK_SHAPE = (768, 3072), (128, 512)
BF16_SHAPE = (256, 1024)
"""Shape of the bf16 accuracy table on a CPU without native bf16 (a 768×3072 bf16 msign takes ~30 s there)."""

ROWS = [  # (label, method, steps, design_steps): design_steps None = the method's own schedule
    ("polar_express", "polar_express", 5, None),
    ("cubic", "cubic", 5, None),
    ("cans", "cans", 4, None),
    ("aol", "aol", 4, None),
    ("cubic (trade-off)", "cubic", 4, 4),
    ("cans (trade-off)", "cans", 3, 3),
    ("aol (trade-off)", "aol", 3, 3),
]
TARGET = 0.75
"""The issue's target: msign time ≤ 0.75× the 5-step Polar Express at 768×3072 (in bf16)."""


def row_schedule(method: str, steps: int, design_steps: int | None) -> PolynomialSchedule:
    if design_steps is None:
        return schedule(method, steps)
    return cheaper_schedule(method, steps, design_steps=design_steps)


def run(G: torch.Tensor, sched: PolynomialSchedule, dtype: torch.dtype, gram: bool) -> torch.Tensor:
    """msign's own path for a wide matrix with a given schedule: a private copy in ``dtype``, the plain or the Gram
    iteration, back to ``G``'s dtype."""
    X = G.to(dtype, copy=True)
    iterate = _gram_polynomial_sign if use_gram(gram, dtype, X.shape) else _polynomial_sign
    return iterate(X, sched).to(G.dtype)


def inputs(m: int, n: int, device) -> dict[str, torch.Tensor]:
    """Five kinds of input: the msign table's σ/‖G‖_F spanning [1e-3, 0.98] (Polar Express's design case); a Gaussian
    matrix; a power-law spectrum σ_i ∝ i^(-1/2); rank 8 plus noise; Gaussian rows scaled from 0.1 to 1."""
    g = torch.Generator().manual_seed(1)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
    power = (U * torch.arange(1, k + 1, dtype=torch.float32).rsqrt()) @ V.T
    low = torch.randn(m, 8, generator=g) @ torch.randn(8, n, generator=g) + torch.randn(m, n, generator=g)
    rows = torch.randn(m, n, generator=g) * torch.logspace(-1, 0, m)[:, None]
    out = {"log-spread": test_matrix(m, n), "gaussian": torch.randn(m, n, generator=g), "power-law": power,
           "rank-8 + noise": low, "rows scaled": rows}
    return {name: G.to(device) for name, G in out.items()}


def _singular_values(M: torch.Tensor) -> torch.Tensor:
    """Singular values of a wide matrix in float64 from the eigenvalues of its m×m Gram matrix (a full SVD of a
    768×3072 matrix costs seconds on this CPU; the Gram route is exact enough for σ ≥ 1e-5·σ_max)."""
    M = M.double()
    return torch.linalg.eigvalsh(M @ M.T).clamp(min=0).sqrt()


def _polar(G: torch.Tensor) -> torch.Tensor:
    """The exact polar factor ``UVᵀ = (GGᵀ)^{-1/2} G`` of a full-rank wide matrix, in float64."""
    G = G.double()
    lam, W = torch.linalg.eigh(G @ G.T)
    return (W * lam.rsqrt()) @ W.T @ G


def starting_values(G: torch.Tensor) -> dict[str, float]:
    """The smallest normalised singular value each normalisation starts from (before its safety factor)."""
    G = G.double()
    s = _singular_values(G)
    d = (G @ G.T).abs().sum(dim=1)
    return {"frobenius": float(s.min() / s.norm()), "gelfand": float(s.min() / (s**8).sum() ** 0.125),
            "aol": float(_singular_values(G / d.sqrt()[:, None]).min())}


def accuracy(out: torch.Tensor, polar: torch.Tensor) -> tuple[float, float]:
    """``max |σ − 1|`` of the result O and its spectral distance ``‖O − UVᵀ‖₂`` to the exact polar factor."""
    out = out.double()
    return (float((_singular_values(out) - 1).abs().max()), float(_singular_values(out - polar).max()))


def flops(G: torch.Tensor, sched: PolynomialSchedule, dtype: torch.dtype, gram: bool) -> float:
    with FlopCounterMode(display=False) as counter:
        run(G, sched, dtype, gram)
    return counter.get_total_flops()


def band_worst(sched: PolynomialSchedule, l: float) -> float:  # noqa: E741
    y = sched.scalar_map(np.geomspace(l, 1.0, 100_001))
    return max(1 - float(y.min()), float(y.max()) - 1)


def timing_rows(shape, dtype, repeats: int, device, stack: int = 0) -> list[dict]:
    """Each schedule's time on one matrix (plain and Gram form) and, with ``stack`` > 0, on ``stack`` copies of it in
    one batched call: the shape a step hands msign when it stacks a model's same-shape matrices."""
    G = test_matrix(*shape, device=device)
    stacked = G.expand(stack, *shape).clone() if stack else None
    scheds = {label: row_schedule(method, steps, design) for label, method, steps, design in ROWS}
    for label, method, steps, design in ROWS:  # the helper is msign's own path
        if design is None:
            assert torch.equal(run(G, scheds[label], dtype, False), msign(G, method=method, steps=steps,
                                                                          compute_dtype=dtype, gram=False))
    fns = {(label, gram): (lambda s=sched, gram=gram: run(G, s, dtype, gram))
           for label, sched in scheds.items() for gram in (False, True)}
    if stack:
        fns.update({(label, "stack"): (lambda s=sched: run(stacked, s, dtype, False))
                    for label, sched in scheds.items()})
    rounds = round_times(fns, repeats, device)
    t = {name: min(ts) for name, ts in rounds.items()}
    out = []
    for label, _, steps, _ in ROWS:
        sched = scheds[label]
        out.append({"method": label, "steps": steps, "matmuls": sched.matmuls, "interval_l": sched.l,
                    "band_max_abs_sigma_minus_1": band_worst(sched, sched.l),
                    "band_on_pe_interval": band_worst(sched, 1e-3),
                    **{f"{form}_ms": 1e3 * t[(label, gram)] for form, gram in (("plain", False), ("gram", True))},
                    **{f"{form}_vs_pe": t[(label, gram)] / t[("polar_express", gram)]
                       for form, gram in (("plain", False), ("gram", True))},
                    "plain_vs_pe_rounds": per_round(rounds, (label, False), ("polar_express", False)),
                    **{f"{form}_flops_vs_pe": flops(G, sched, dtype, gram) / flops(G, scheds["polar_express"], dtype,
                                                                                     gram)
                       for form, gram in (("plain", False), ("gram", True))},
                    **({"stack": stack, "stack_ms": 1e3 * t[(label, "stack")],
                        "stack_vs_pe": t[(label, "stack")] / t[("polar_express", "stack")]} if stack else {})})
    return out


def accuracy_rows(shape, dtype, device) -> tuple[list[dict], dict]:
    mats = inputs(*shape, device)
    exact = {name: _polar(G) for name, G in mats.items()}
    out = []
    for label, method, steps, design in ROWS:
        sched = row_schedule(method, steps, design)
        row = {"method": label, "steps": steps}
        for name, G in mats.items():
            row[name] = accuracy(run(G, sched, dtype, False), exact[name])
        out.append(row)
    return out, {name: starting_values(G) for name, G in mats.items()}


def _name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}[dtype]


def markdown(timing, acc, acc_bf16, starts, args, dtype, shape, bf16_shape) -> str:
    m, n = shape
    on = args.device.type + (f", {_name(dtype)}" if args.device.type == "cpu" else "")
    lines = [f"## msign schedules ({on})", "",
             f"Measured by {command('msign_schedules.py', args)} on {where(args)}, compute dtype {_name(dtype)}. "
             f"One {m}×{n} matrix (σ/‖G‖_F spanning [1e-3, 0.98], as the msign table), the fastest of "
             f"{args.repeats} interleaved calls of each schedule through msign's own code path (the machine is "
             "shared: the fastest call is the least disturbed); the time verdicts take the ratio round by round: "
             "met when every round meets the target, not met when none does, inconclusive otherwise. Band: the "
             "exact-arithmetic range of the output singular values (`msign_band`) on the schedule's interval "
             "[l, 1] of normalised singular values, and on Polar Express's [1e-3, 1]. Flops as executed "
             "(FlopCounterMode; " + ("symmetric products in row blocks" if args.device.type == "cpu" else
                                     "plain products: msign forms no row blocks on a GPU") + "). Trade-off rows: "
             "designed for one step fewer than the method's own, i.e. Polar Express's band on a narrower interval.",
             "",
             "| method | iterations | matmuls | interval l | band max\\|σ−1\\| on [l, 1] | on [1e-3, 1] "
             "| plain: ms | ÷ PE | flops ÷ PE | Gram form: ms | ÷ PE | flops ÷ PE |"
             + (f" stack of {stack}, plain: ms | ÷ PE |" if (stack := timing[0].get("stack")) else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if stack else "")]
    for r in timing:
        lines.append(f"| {r['method']} | {r['steps']} | {r['matmuls']} | {r['interval_l']:.4f} | "
                     f"{r['band_max_abs_sigma_minus_1']:.3f} | {r['band_on_pe_interval']:.3f} | {r['plain_ms']:.1f} | "
                     f"{r['plain_vs_pe']:.2f} | {r['plain_flops_vs_pe']:.2f} | {r['gram_ms']:.1f} | "
                     f"{r['gram_vs_pe']:.2f} | {r['gram_flops_vs_pe']:.2f} |"
                     + (f" {r['stack_ms']:.1f} | {r['stack_vs_pe']:.2f} |" if stack else ""))
    names = list(starts)
    lines += ["", f"Measured on five {m}×{n} inputs, plain iteration in {_name(dtype)}: max |σ − 1| of the result and, "
              "in brackets, its distance ‖O − UVᵀ‖₂ to the exact polar factor (equal to max |σ − 1| when the "
              "singular vectors are exact; larger for AOL, whose target is the polar factor of the row-rescaled "
              "D^{-1/2}G). Under each input, the smallest normalised singular value it starts from: "
              "σ_min/‖G‖_F (polar_express, cubic), σ_min/‖σ‖_8 (cans), σ_min(D^{-1/2}G) (aol).", "",
              "| method | iterations | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names),
              "| *start: Frobenius / Gelfand / AOL* | | " + " | ".join(
                  f"*{starts[k]['frobenius']:.4f} / {starts[k]['gelfand']:.4f} / {starts[k]['aol']:.4f}*"
                  for k in names) + " |"]
    for r in acc:
        lines.append(f"| {r['method']} | {r['steps']} | " + " | ".join(f"{r[k][0]:.3f} ({r[k][1]:.3f})"
                                                                       for k in names) + " |")
    if acc_bf16 is not None:
        bm, bn = bf16_shape
        lines += ["", f"The same in bf16 on {bm}×{bn} inputs of the same five kinds (max |σ − 1|; bf16 rounding "
                  "widens the exact band by ≈ 0.01–0.03):", "",
                  "| method | iterations | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for r in acc_bf16:
            lines.append(f"| {r['method']} | {r['steps']} | " + " | ".join(f"{r[k][0]:.3f}" for k in names) + " |")
    lines += ["", verdicts(timing, dtype), accuracy_verdicts(acc, _name(dtype)), DRIFT_NOTE[args.device.type]]
    return "\n".join(lines) + "\n"


def verdicts(timing: list[dict], dtype: torch.dtype) -> str:
    """Each schedule against the target: its time ÷ Polar Express's, and the interval on which it keeps Polar
    Express's band (a narrower one than Polar Express's: the accuracy lines say on which inputs that matters)."""
    delta = target_band()
    native = default_compute_dtype(torch.device("cpu")) == torch.bfloat16
    where_dtype = "" if dtype == torch.bfloat16 else (
        f" (measured here in {_name(dtype)}; the bf16 figures: the msign schedules (cpu, bf16) section)" if native
        else f" (measured in {_name(dtype)}: the bf16 figure needs a GPU or a CPU with native bf16)")
    lines = [f"- target: time ≤ {TARGET}× the 5-step Polar Express at 768×3072 in bf16{where_dtype}, with Polar "
             f"Express's band (max |σ − 1| ≤ {delta:.3f}):"]
    for r in timing[1:]:
        lines.append(f"  - {r['method']}, {r['steps']} iterations, {r['matmuls']} matmuls, on [{r['interval_l']:.4f}, "
                     f"1]: {r['plain_vs_pe']:.2f}× in the plain form (bf16's default) — {_verdict(r, delta)}; "
                     f"Gram form {r['gram_vs_pe']:.2f}× "
                     "Polar Express's Gram form"
                     + (f"; a stack of {r['stack']} in one call {r['stack_vs_pe']:.2f}×" if "stack" in r else ""))
    lines.append("- matmuls against flops (plain form): " + "; ".join(
        f"{r['method']} {r['matmuls']} of {timing[0]['matmuls']} matmuls, {r['plain_flops_vs_pe']:.2f} of the flops"
        for r in timing[1:] if "trade-off" not in r["method"]) + " — a quintic step's third product, A², is m×m×m, "
                 "a quarter of each of the other two at aspect 4: a cubic step, which drops it, saves less than its "
                 "matmul count says, a whole quintic step fewer saves what its count says")
    return "\n".join(lines)


def _verdict(row: dict, delta: float) -> str:
    """The time against the target, and where the schedule holds Polar Express's band: on [l, 1], an interval that
    starts above Polar Express's 1e-3 (each method's own normalisation; the inputs below say which it reaches)."""
    time = f"time {against(row['plain_vs_pe_rounds'], TARGET)}"
    return f"{time}, band {delta:.3f} from l = {row['interval_l']:.4f} up (Polar Express's from 0.0010)"


def accuracy_verdicts(acc: list[dict], dtype: str) -> str:
    """Where each schedule matches Polar Express's measured max |σ − 1| (within 0.01), and how far it lands from
    the exact polar factor."""
    pe = next(r for r in acc if r["method"] == "polar_express")
    names = [k for k in pe if k not in ("method", "steps")]
    lines = []
    for r in acc[1:]:
        same = [k for k in names if r[k][0] <= pe[k][0] + 0.01]
        far = f"; there ‖O − UVᵀ‖₂ ≤ {max(r[k][1] for k in same):.3f}" if same else ""
        lines.append(f"  - {r['method']} ({r['steps']} iterations): {len(same)}/{len(names)} "
                     f"({', '.join(same) or 'none'}){far}")
    worst_pe = max(pe[k][1] for k in names)
    return "\n".join([f"- Polar Express's measured max |σ − 1| ({dtype}, within 0.01) reached on the five inputs "
                      f"(Polar Express's own ‖O − UVᵀ‖₂ ≤ {worst_pe:.3f}):", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small shape; print only, write nothing")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--stack", type=int, default=None,
                        help="also time a stack of N copies in one call (default: 24 on cuda, GPT-2 small's 768×3072 "
                             "MLP matrices, which a step batches; 0 on cpu)")
    args = parse_machine_args(parser)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype) or (
        default_compute_dtype(args.device) or torch.float32)
    shape = QUICK_SHAPE if args.quick else SHAPE
    print(f"timing {shape} in {_name(dtype)} …", flush=True)
    stack = args.stack if args.stack is not None else (24 if args.device.type == "cuda" else 0)
    timing = timing_rows(shape, dtype, 2 if args.quick else args.repeats, args.device, stack)
    print("accuracy …", flush=True)
    acc, starts = accuracy_rows(shape, dtype, args.device)
    acc_bf16, bf16_shape = None, shape
    if dtype != torch.bfloat16:
        bf16_shape = QUICK_SHAPE if args.quick else BF16_SHAPE
        print(f"bf16 accuracy {bf16_shape} …", flush=True)
        acc_bf16, _ = accuracy_rows(bf16_shape, torch.bfloat16, args.device)
    table = markdown(timing, acc, acc_bf16, starts, args, dtype, shape, bf16_shape)
    print(table)
    if not args.quick:
        cpu_bf16 = "-bf16" if args.device.type == "cpu" and dtype == torch.bfloat16 else ""
        name = section("msign-schedules", args) + cpu_bf16
        write_section(ROOT / "BENCHMARKS.md", name, table)
        (ROOT / "benchmarks" / "results" / f"{name.replace('-', '_', 1)}.json").write_text(json.dumps(
            {"threads": args.threads, "torch": torch.__version__, "dtype": _name(dtype), "timing": timing,
             "accuracy": acc, "accuracy_bf16": acc_bf16, "starting_values": starts,
             "designs": {k: vars(v) for k, v in DESIGNS.items()}}, indent=2))


if __name__ == "__main__":
    main()
