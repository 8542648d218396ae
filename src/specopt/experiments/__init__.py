"""Experiments that reproduce the claims of the papers specopt implements (each module cites its paper). Each is a
function
``run(out: Path, quick: bool, progress: bool) -> Path`` writing a plot (PNG), a table (CSV) and a short
report (Markdown) into ``out`` and returning the report's path."""

from __future__ import annotations

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
    transfer,
)

EXPERIMENTS: dict = {
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
}
