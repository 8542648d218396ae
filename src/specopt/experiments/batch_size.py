"""`batch-size`: final loss against batch size for several token budgets on the char-GPT (Silveti-Falls et al.,
*Spectral optimizers for deep learning: Muon, Scion and so on*, lectures 2026: B·S ∝ T^{2/3}).

For momentum SCG the seed predicts three regimes at a fixed token budget T — batches too small (noise
dominates), a best batch, batches too large (too few steps) — and a best tokens-per-step that grows as
``B·S ∝ T^{2/3}`` (with step size ``β ∝ T^{-1/3}``). Each run trains UScion on the tiny char-GPT for
``T/(B·S)`` steps (S = 64), with the step size transferred from the smallest budget by ``β ∝ T^{-1/3}``;
the best batch of each budget is fitted against T in log-log and its exponent compared with 2/3.
"""

from __future__ import annotations

import math
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from specopt.experiments.common import pyplot, save_figure, write_report
from specopt.registry import DEFAULTS
from specopt.training import RunConfig, train

SEQ = 64


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    base_tokens = 20_000 if quick else 200_000
    budgets = [base_tokens * f for f in ((1, 4) if quick else (1, 2, 4, 8))]
    batches = (4, 16, 64) if quick else (4, 8, 16, 32, 64, 128)
    lr0 = DEFAULTS["uscion"]["lr"]
    rows = []
    for tokens in budgets:
        lr = lr0 * (tokens / budgets[0]) ** (-1 / 3)
        for batch in batches:
            steps = max(1, round(tokens / (batch * SEQ)))
            cfg = RunConfig(task="char-gpt", optimizer="uscion", steps=steps, hparams={"lr": lr},
                            task_options={"size": "tiny", "batch_size": batch, "block_size": SEQ},
                            val_every=steps, checkpoint_every=steps)
            with TemporaryDirectory() as d:
                result = train(cfg, d, progress=progress)
            rows.append({"tokens": tokens, "batch": batch, "steps": steps, "lr": lr,
                         "final_val": result.val_rows()[-1]["val_loss"]})
    best = {T: min((r for r in rows if r["tokens"] == T), key=lambda r: r["final_val"]) for T in budgets}
    slope = float(np.polyfit(np.log([float(T) for T in budgets]),
                             np.log([best[T]["batch"] * SEQ for T in budgets]), 1)[0])
    resolution = math.log(2) / math.log(budgets[-1] / budgets[0])
    _plot(rows, budgets, out / "plot.png")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "",
            "Best batch per budget: " + ", ".join(f"T = {T:,}: B = {best[T]['batch']}" for T in budgets) + ".",
            f"Fitted exponent of the best B·S against T: {slope:.2f} (theory 2/3 ≈ 0.67); with a grid of powers of "
            f"two and {len(budgets)} budgets the fit resolves the exponent only to about ±{resolution:.2f}."]
    return write_report(out, "Batch size against token budget", body, rows)


def _plot(rows, budgets, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, T in enumerate(budgets):
        pts = sorted((r["batch"], r["final_val"]) for r in rows if r["tokens"] == T)
        ax.semilogx(*zip(*pts, strict=True), marker="o", color=f"C{i}", label=f"T = {T:,} tokens", base=2)
    ax.set_xlabel("batch size B (sequences of 64 characters)")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)
