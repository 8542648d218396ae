"""Which of specopt's files and functions one optimizer step runs through (the open-engine issue's "following one
step" count), for Muon, Scion and Gluon and for torch.optim.Muon beside them.

    python benchmarks/step_trace.py          # prints the table and writes the step-trace section of BENCHMARKS.md

One eager, single-process step of a 3-layer MLP (biases included: Muon's AdamW, Scion's BiasRMS, Gluon with a
closure), after a first step that created the state; ``sys.setprofile`` records every Python function called from a
file of the package (torch.optim.Muon: from ``torch/optim/``: its ``_muon.py`` and the base class's step wrapper).
Each file is listed with the functions the step ran in it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import classification_data, loss_fn, mlp  # noqa: E402
from msign import write_section  # noqa: E402

import specopt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def torch_muon(params):
    """torch.optim.Muon on the matrices (it takes 2-D parameters only); the vectors are left out."""
    return torch.optim.Muon([p for p in params if p.ndim == 2], lr=0.02)


SPECOPT = str(Path(specopt.__file__).parent) + os.sep
TORCH_OPTIM = str(Path(torch.optim.__file__).parent) + os.sep
OPTIMIZERS = {"specopt Muon": (specopt.Muon, False, SPECOPT),
              "specopt Scion": (specopt.Scion, False, SPECOPT),
              "specopt Gluon": (specopt.Gluon, True, SPECOPT),
              "torch.optim.Muon": (torch_muon, False, TORCH_OPTIM)}


def trace(make, closure: bool, package: str) -> dict[str, set[str]]:
    """``file → functions`` that one step of ``make``'s optimizer calls, for the files under ``package``."""
    X, y = classification_data()
    model = mlp()
    opt = make(model.parameters())

    def evaluate():
        opt.zero_grad()
        loss = loss_fn(model, X, y)
        loss.backward()
        return loss

    def step():
        if closure:
            opt.step(evaluate)
        else:
            evaluate()
            opt.step()

    step()
    calls: dict[str, set[str]] = {}

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(package):
            name = frame.f_code.co_filename.removeprefix(package)
            calls.setdefault(name, set()).add(frame.f_code.co_name)

    if not closure:
        evaluate()
    sys.setprofile(profile)
    try:
        opt.step(evaluate) if closure else opt.step()
    finally:
        sys.setprofile(None)
    return calls


def markdown(traces: dict[str, dict[str, set[str]]]) -> str:
    lines = ["## Following one step: files and functions", "",
             "Measured by `python benchmarks/step_trace.py`: one eager single-process step of a 3-layer MLP, every "
             "Python function it calls in the package's files (`sys.setprofile`); torch.optim.Muon counted in "
             "`torch/optim/`. Target of the open-engine issue: ≤ 4 files for Muon, Scion and Gluon.", "",
             "| optimizer | files | functions | files, with the functions the step runs in each |",
             "|---|---:|---:|---|"]
    for name, calls in traces.items():
        detail = "; ".join(f"`{f}` ({len(fs)})" for f, fs in calls.items())
        lines.append(f"| {name} | {len(calls)} | {sum(len(fs) for fs in calls.values())} | {detail} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    traces = {name: trace(*spec) for name, spec in OPTIMIZERS.items()}
    for name, calls in traces.items():
        print(f"{name}: {len(calls)} files, {sum(len(fs) for fs in calls.values())} functions")
        for f, fs in calls.items():
            print(f"    {f}: {', '.join(sorted(fs))}")
    write_section(ROOT / "BENCHMARKS.md", "step-trace", markdown(traces))


if __name__ == "__main__":
    main()
