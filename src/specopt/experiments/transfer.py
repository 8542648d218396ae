"""`hparam-transfer`: the best learning rate against model width, Scion-family vs AdamW, on the char-GPT.

Claim (Pethick et al. 2025, via the modular norm / μP view): with norms that scale with the layer's shape
(RMS→RMS spectral, fan-in-scaled sign), the best step size stays put as the model widens, while AdamW's
moves. Each width trains the same number of steps on the same data; the learning rate is swept over the
same relative grid (×2⁻²…×2² of each optimizer's default) at every width.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from specopt.experiments.common import pyplot, save_figure, write_report
from specopt.registry import DEFAULTS
from specopt.training import RunConfig, train

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
OPTIMIZERS = ("uscion", "adamw")


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    widths = (32, 64) if quick else (32, 64, 128)
    factors = (0.5, 1.0, 2.0) if quick else FACTORS
    steps = 20 if quick else 200
    rows = []
    for name in OPTIMIZERS:
        for width in widths:
            for f in factors:
                lr = DEFAULTS[name]["lr"] * f
                cfg = RunConfig(task="char-gpt", optimizer=name, steps=steps, hparams={"lr": lr},
                                task_options={"size": "tiny", "n_embd": width}, val_every=steps, checkpoint_every=steps)
                with TemporaryDirectory() as d:
                    result = train(cfg, d, progress=progress)
                final = result.val_rows()[-1]["val_loss"]
                rows.append({"optimizer": name, "width": width, "lr": lr, "final_val": final})
    best = {}
    for name in OPTIMIZERS:
        for width in widths:
            mine = [r for r in rows if r["optimizer"] == name and r["width"] == width]
            best[(name, width)] = min(mine, key=lambda r: r["final_val"])["lr"]
    _plot(rows, widths, out / "plot.png")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", ""]
    for name in OPTIMIZERS:
        lrs = [best[(name, w)] for w in widths]
        body.append(f"- {name}: best lr by width {dict(zip(widths, [f'{x:.3g}' for x in lrs], strict=True))}; "
                    f"spread max/min = {max(lrs) / min(lrs):.1f}×.")
    body.append(f"\n{steps} steps per run, tiny char-GPT (2 layers), widths {widths}.")
    return write_report(out, "Learning-rate transfer across width", body, rows)


def _plot(rows, widths, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(11, 4.2))
    for ax, name in zip(axes, OPTIMIZERS, strict=True):
        for i, width in enumerate(widths):
            pts = sorted((r["lr"], r["final_val"]) for r in rows if r["optimizer"] == name and r["width"] == width)
            ax.semilogx(*zip(*pts, strict=True), marker="o", color=f"C{i}", label=f"width {width}")
        ax.set_title(name)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    save_figure(fig, path)
