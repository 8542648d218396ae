"""Experiments that reproduce the claims of the papers specopt implements (each module cites its paper). Each is a
function
``run(out: Path, quick: bool, progress: bool) -> Path`` writing a plot (PNG), a table (CSV) and a short
report (Markdown) into ``out`` and returning the report's path."""

from __future__ import annotations

import functools
from pathlib import Path

from specopt.experiments import (
    batch_size,
    broximal,
    clipping,
    conditioning,
    constraints,
    heavy_tails,
    msign_maps,
    nonlinear_preconditioner,
    norm_control,
    stationarity,
    transfer,
)

QUICK_NOTE = ("> **Quick mode** (`--quick`): fewer steps, sizes, seeds or settings than the setup described below, "
              "which is the full run's; the result, the table and the plot are this small run's, not the committed "
              "ones.")


def _noting_quick_mode(run):
    """``run``, whose report says at its top when it comes from the quick mode."""

    @functools.wraps(run)
    def wrapped(out: Path, quick: bool = False, progress: bool = True) -> Path:
        report = run(out, quick=quick, progress=progress)
        if quick:
            title, rest = report.read_text(encoding="utf-8").split("\n", 1)
            report.write_text(f"{title}\n\n{QUICK_NOTE}\n{rest}", encoding="utf-8")
        return report

    return wrapped


EXPERIMENTS: dict = {name: _noting_quick_mode(run) for name, run in {
    "muon-conditioning": conditioning.run,
    "norm-control": norm_control.run,
    "msign": msign_maps.run,
    "clipping": clipping.run,
    "hparam-transfer": transfer.run,
    "bpm": broximal.run,
    "batch-size": batch_size.run,
    "nonlinear-preconditioner": nonlinear_preconditioner.run,
    "heavy-tails": heavy_tails.run,
    "constraints": constraints.run,
    "stationarity": stationarity.run,
}.items()}
