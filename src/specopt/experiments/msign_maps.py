"""`msign`: what each matrix-sign method does to a singular value, iteration by iteration.

An odd polynomial iteration acts on every singular value σ of ``G/‖G‖_F`` separately, so its effect is a
scalar map ``σ ↦ p_k(…p_1(σ))``. The plot shows that map after each iteration for Newton–Schulz (Muon's fixed
quintic), Polar Express (a minimax-optimal quintic per step) and the cheaper schedules of
:mod:`specopt.msign_schedules` (cubic; CANS and AOL, whose maps act on ``σ/‖σ‖_8`` and on the singular values of
``D^{-1/2}G``), against the exact ``sign`` of the SVD, on normalised σ ∈ [1e-3, 1]; the last panel overlays the
final maps with Polar Express's band and each schedule's design interval. The table gives the band
``[min, max]`` of the output after each iteration and, on a real matrix in float32 (256×1024; 32×64 with
``--quick``), the same iteration stopped there (:func:`~specopt.linalg.run_schedule`): how far its singular values
lie from the scalar map at the matrix's own singular values, and how far the iterate lies from the matrix's exact
polar factor ``UVᵀ`` (spectral norm).

The claim (Amsel et al. 2025, arXiv:2505.16932) is refuted here if, after the same 5 iterations (15 matmuls),
Polar Express's band is not narrower than Newton–Schulz's (max |σ − 1| on [1e-3, 1]), or if at any iteration a
singular value of the matrix iterate differs from the scalar map at the matrix's singular values by more than
float32's rounding (1e-3), which would mean that the scalar maps do not describe the matrix iteration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from specopt.experiments.common import pyplot, save_figure, write_report
from specopt.linalg import PolynomialSchedule, msign, msign_band, run_schedule, schedule

COLUMNS = {
    "method": "the matrix sign method", "iteration": "iterations done", "matmuls": "matrix products so far",
    "band_min": "the smallest value of the scalar map on the normalised singular values (the band's lower end)",
    "band_max": "its largest", "matrix_min": "the smallest singular value of the test matrix's iterate after this "
    "iteration (float32 iteration, SVD in float64)", "matrix_max": "its largest", "matrix_gap": "the largest "
    "|σ_i(iterate) − map(σ_i(G))| over the test matrix's singular values: the scalar map against the matrix "
    "iteration", "polar_distance": "‖iterate − UVᵀ‖₂, the distance to the test matrix's exact polar factor"}
"""What each column of ``results.csv`` holds."""

METHODS = ("newton_schulz", "polar_express", "cubic", "cans", "aol")
INPUT = {"frobenius": "σ/‖G‖_F", "gelfand": "σ/‖σ‖₈", "aol": "σ of D^-1/2 G"}
TOLERANCE = 1e-3
"""How far a float32 matrix iteration's singular values may lie from the exact scalar map."""
COLOR = {"newton_schulz": "C0", "polar_express": "C1", "cubic": "C2", "cans": "C3", "aol": "C4"}


def _matrix_with_spectrum(sigma: np.ndarray, m: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(m, len(sigma), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, len(sigma), generator=g, dtype=torch.float64))
    return (U * torch.as_tensor(sigma)) @ V.T


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sigma = np.geomspace(1e-3, 1.0, 2000 if not quick else 200)
    m, n = (256, 1024) if not quick else (32, 64)
    rest = np.geomspace(1.0001e-3, 0.5 / np.sqrt(m), m - 1)
    spectrum = np.concatenate([[np.sqrt(1 / 1.02**2 - np.sum(rest**2))], rest])
    G = _matrix_with_spectrum(spectrum, m, n).float()
    polar = msign(G.double(), method="svd")
    rows = []
    plt = pyplot()
    fig, panels = plt.subplots(2, 3, figsize=(15, 8.5), sharey=True)
    axes, overlay = panels.flat[:5], panels.flat[5]
    for ax, method in zip(axes, METHODS, strict=True):
        full = schedule(method)
        steps = len(full.coefficients)
        for k in range(1, steps + 1):
            y = full.truncated(k).scalar_map(sigma)
            iterate = run_schedule(G, full.truncated(k)).double()
            out_sigma = torch.linalg.svdvals(iterate)
            rows.append({"method": method, "iteration": k, "matmuls": full.truncated(k).matmuls,
                         "band_min": float(y.min()), "band_max": float(y.max()),
                         "matrix_min": float(out_sigma.min()), "matrix_max": float(out_sigma.max()),
                         "matrix_gap": _gap(out_sigma, G.double(), full.truncated(k)),
                         "polar_distance": float(torch.linalg.matrix_norm(iterate - polar, ord=2))})
            ax.semilogx(sigma, y, color=COLOR[method], label=f"iteration {k}" if k in (1, steps) else None,
                        alpha=0.25 + 0.75 * k / steps)
        ax.semilogx(sigma, np.ones_like(sigma), "k--", lw=1, label="SVD: sign(σ) = 1")
        ax.set_title(f"{method.replace('_', ' ')}: {steps} iterations, {full.matmuls} matmuls")
        ax.set_xlabel(f"input singular value ({INPUT[full.normalization]})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
        overlay.semilogx(sigma, full.scalar_map(sigma), color=COLOR[method], ls="--" if method == "aol" else "-",
                         label=f"{method.replace('_', ' ')} ({full.matmuls} matmuls)"
                         + (", = cans's map" if method == "aol" else ""))
        if full.l > 1e-3:
            overlay.axvline(full.l, color=COLOR[method], ls=":", lw=1)
    lo, hi = msign_band("polar_express")
    overlay.axhspan(lo, hi, color="grey", alpha=0.15, label="Polar Express's band")
    overlay.set_title("last iteration; dotted: where each interval starts")
    overlay.set_xlabel("normalised input singular value")
    overlay.grid(alpha=0.3, which="both")
    overlay.legend(fontsize=8, loc="lower right")
    for ax in panels[:, 0]:
        ax.set_ylabel("output singular value")
    save_figure(fig, out / "plot.png")
    _plot_band(rows, out / "band.png")
    svd_sigma = torch.linalg.svdvals(msign(G, method="svd").double())
    rows.append({"method": "svd", "iteration": 1, "band_min": 1.0, "band_max": 1.0,
                 "matrix_min": float(svd_sigma.min()), "matrix_max": float(svd_sigma.max()),
                 "matrix_gap": float((svd_sigma - 1).abs().max()),
                 "polar_distance": float(torch.linalg.matrix_norm(msign(G, method="svd").double() - polar, ord=2))})
    final = {}
    for r in rows:  # each method's last iteration
        if r["method"] not in final or r["iteration"] > final[r["method"]]["iteration"]:
            final[r["method"]] = r
    outside = [r for r in rows if r["method"] != "svd" and not r["matrix_gap"] <= TOLERANCE]
    narrower = _worst(final["polar_express"]) < _worst(final["newton_schulz"])
    where = ", ".join(f"{r['method']} iteration {r['iteration']}" for r in outside)
    verdict = ("**Confirmed**" if narrower and not outside else "**Refuted**") + (
        f": Polar Express's band is {'narrower' if narrower else 'not narrower'} than Newton–Schulz's after 15 "
        f"matmuls, and the {m}×{n} matrix iterate's singular values agree with the scalar map at the matrix's "
        f"singular values (within {TOLERANCE:g}) at {len(rows) - 1 - len(outside)} of {len(rows) - 1} iterations "
        f"(largest gap {max(r['matrix_gap'] for r in rows if r['method'] != 'svd'):.1e})"
        + (f"; apart at {where}" if outside else "") + ".")
    cheaper = ", ".join(f"{m} {final[m]['matmuls']} matmuls from l = {schedule(m).l:.4f} (on [1e-3, 1]: "
                        f"[{final[m]['band_min']:.3f}, {final[m]['band_max']:.3f}])" for m in METHODS[2:])
    body = ["\n\n".join(__doc__.split("\n\n")[1:]).strip(), "", "## Result", "", verdict, "",
            f"After 5 iterations Newton–Schulz leaves singular values in [{final['newton_schulz']['band_min']:.3f}, "
            f"{final['newton_schulz']['band_max']:.3f}] and Polar Express in "
            f"[{final['polar_express']['band_min']:.3f}, {final['polar_express']['band_max']:.3f}] "
            f"(max |σ − 1| {_worst(final['newton_schulz']):.2f} against {_worst(final['polar_express']):.2f}) for "
            "the same 15 matmuls. The cheaper "
            f"schedules reach Polar Express's band with fewer matmuls on a narrower interval: {cheaper}.", "",
            "Newton–Schulz, Polar Express, the cubic and CANS keep G's singular vectors, so an iterate's distance to "
            "G's polar factor UVᵀ (`polar_distance`, ‖·‖₂) is its max |σ − 1|: on the test matrix "
            + ", ".join(f"{k} {final[k]['polar_distance']:.3f}" for k in METHODS[:4]) + ". AOL's output is the "
            "polar factor of D^-1/2 G, whose singular vectors are not G's: its last iterate lies "
            f"{final['aol']['polar_distance']:.3f} from G's polar factor against its own max |σ − 1| of "
            f"{_deviation(final['aol']):.3f}. Its band says how orthogonal its output is, not how close to msign(G).",
            "",
            "The band per iteration, against the matmuls spent (`band.png`):", "",
            "![max |σ − 1| per iteration against matmuls](band.png)", "",
            "Each map per iteration (`plot.png`):"]
    return write_report(out, "Singular-value maps of the matrix sign methods", body, rows, glossary=COLUMNS)


def _plot_band(rows: list[dict], path: Path) -> None:
    """The band per iteration: max |σ − 1| of each method's map on [1e-3, 1] against the matmuls spent."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for method in METHODS:
        pts = [(r["matmuls"], _worst(r)) for r in rows if r["method"] == method]
        ax.semilogy(*zip(*pts, strict=True), marker="o", color=COLOR[method], ls="--" if method == "aol" else "-",
                    label=method.replace("_", " "))
    ax.set_xlabel("matmuls spent (one point per iteration)")
    ax.set_ylabel("band: max |σ − 1| over σ/‖G‖ ∈ [1e-3, 1]")
    ax.set_title("How close to the polar factor each iteration gets, for its cost")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)


def _gap(out_sigma: torch.Tensor, G: torch.Tensor, sched: PolynomialSchedule) -> float:
    """``max_i |σ_i(iterate) − map(σ_i)|``, the map at ``G``'s own normalised singular values: ``σ/‖G‖_F``,
    ``σ/‖σ‖₈`` (gelfand) or the singular values of ``D^{-1/2}G``, ``D_ii = Σ_j |GGᵀ|_ij`` (aol); both sorted (the
    map need not be monotone: sorting pairs the two multisets)."""
    if sched.normalization == "aol":
        d = (G @ G.mT).abs().sum(dim=-1, keepdim=True)
        x, scale = torch.linalg.svdvals(G / d.sqrt()), 1.0
    else:
        x = torch.linalg.svdvals(G)
        scale = float(torch.linalg.vector_norm(x, ord=8 if sched.normalization == "gelfand" else 2))
    mapped = np.sort(sched.scalar_map(x.numpy(), scale))
    return float(np.abs(np.sort(out_sigma.numpy()) - mapped).max())


def _deviation(row: dict) -> float:
    """max |σ − 1| of the test matrix's iterate."""
    return max(1 - row["matrix_min"], row["matrix_max"] - 1)


def _worst(row: dict) -> float:
    return max(1 - row["band_min"], row["band_max"] - 1)
