"""The BENCHMARKS.md "Training" section from a `specopt compare` output: final loss, steps to AdamW's best, wall time,
throughput and memory of every optimizer on the default char-GPT, and the command-line issue's two targets judged
from those numbers.

    OMP_NUM_THREADS=2 specopt compare --out experiments/compare-char-gpt    # alone on the machine: it is timed
    python benchmarks/compare_table.py                                      # writes the section

Steps to AdamW's best are counted at validation steps (every 50), so the ratios are upper bounds within one interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msign import cpu_model, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS_TARGET = 0.75
"""Scion or Muon reaches AdamW's best validation loss in at most this fraction of AdamW's steps."""
GLUON_TARGET = 0.02
"""Gluon (online L, no learning rate) ends within this fraction of the best of Scion, UScion and Clipped Scion."""
NOISE_NATS = 0.02
"""The char-GPT's run-to-run noise (0.01–0.02 nats): a one-seed margin to a target smaller than this is no verdict."""


def markdown(summary: dict, out: Path, threads: str) -> str:
    lines = ["## Training: `specopt compare` on the default char-GPT", "",
             f"`specopt compare --out {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}` (2-layer width-64 "
             f"char-GPT, shipped Shakespeare, 600 steps, seed 0, every optimizer at its defaults) on {cpu_model()}, "
             f"OMP_NUM_THREADS={threads}; the table written by `python benchmarks/compare_table.py`. Steps are "
             "validation steps (every 50), so the ratios are upper bounds within one interval; three seeds of every "
             "member are in [EXPERIMENTS.md](EXPERIMENTS.md).", "",
             "| optimizer | final val loss | steps to AdamW's best | ÷ AdamW | wall (s) | tokens/s | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary.items():
        reached = "never" if r["steps_to_ref"] is None else str(r["steps_to_ref"])
        ratio = "—" if r["steps_ratio"] is None else f"{r['steps_ratio']:.2f}"
        lines.append(f"| {name} | {r['final_val']:.4f} | {reached} | {ratio} | {r['wall_s']:.1f} | "
                     f"{r['throughput']:.0f} | {r['peak_MiB']:.0f} |")
    best = min((n for n in ("scion", "muon") if n in summary and summary[n]["steps_ratio"] is not None),
               key=lambda n: summary[n]["steps_ratio"], default=None)
    lines += ["", "Targets:"]
    if best is None:
        lines.append(f"- Scion or Muon at AdamW's best in ≤ {STEPS_TARGET}× its steps: **not measured** (neither ran "
                     "or reached it).")
    else:
        ratio = summary[best]["steps_ratio"]
        lines.append(f"- Scion or Muon at AdamW's best in ≤ {STEPS_TARGET}× its steps: "
                     f"**{'met' if ratio <= STEPS_TARGET else 'not met'}** ({best} {ratio:.2f}×).")
    rivals = [summary[n]["final_val"] for n in ("scion", "uscion", "clipped-scion") if n in summary]
    if "gluon" in summary and rivals:
        gap = summary["gluon"]["final_val"] / min(rivals) - 1
        margin = (GLUON_TARGET - gap) * min(rivals)  # nats to spare (negative: over the limit)
        verdict = ("inconclusive on one seed" if abs(margin) < NOISE_NATS else "met" if margin > 0 else "not met")
        lines.append(f"- Gluon (online L, no learning rate) within {GLUON_TARGET:.0%} of the best of Scion, UScion and "
                     f"Clipped Scion: **{verdict}** ({gap:+.1%}, {margin:+.3f} nats to the limit against a "
                     f"run-to-run noise of up to {NOISE_NATS}; three seeds in EXPERIMENTS.md; per step: Gluon "
                     "evaluates two gradients per step, the others one).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "compare-char-gpt",
                        help="the output of `specopt compare` to read")
    parser.add_argument("--threads", default="2", help="the OMP_NUM_THREADS it ran with (for the header)")
    args = parser.parse_args()
    summary = json.loads((args.out / "summary.json").read_text())
    table = markdown(summary, args.out.resolve(), args.threads)
    print(table)
    write_section(ROOT / "BENCHMARKS.md", "compare", table)


if __name__ == "__main__":
    main()
