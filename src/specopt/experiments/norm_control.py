"""`norm-control`: where the norm bounds of SCG (Scion) and uSCG (UScion) bind, and AdamW's norms drift.

Claims (Pethick et al., *Training Deep Learning Models with Norm-Constrained LMOs*, 2025, arXiv:2502.07529),
for an lmo with ``‖lmo(d)‖ ≤ 1``:

* SCG, ``W ← (1−γ)W + γρ·lmo(d)`` with γ ∈ [0, 1], from a start inside the ball: ``‖W_k‖ ≤ ρ`` at every step;
* uSCG, ``W ← W + γρ·lmo(d)``: ``‖W_k − W_0‖ ≤ ρ·Σ_{j<k} γ_j``;
* AdamW (no weight decay) has no such bound: its norms go where the loss and the noise take them.

Both bounds follow from ``‖lmo‖ ≤ 1`` by the triangle inequality, so a run tests them only where it reaches
them: SCG's iterates must reach the sphere ``‖W‖ = ρ`` and uSCG's steps must stay aligned, so that
``‖Σ_j γ_j lmo_j‖ ≈ Σ_j γ_j``. Both happen when the gradient keeps one direction: a net that can separate its
training set, trained full-batch with cross-entropy, whose loss decreases only as the weights grow. The fixed
point of SCG with a persistent direction d is ``W* = ρ·lmo(d)``, on the sphere: with the exact (SVD) lmo the
ratio ``‖W‖/ρ`` must tend to 1 itself, so a wrong radius or a wrong lmo scale shows, in either direction.

Setup. The MNIST MLP (784 → 64 → 64 → 10, ReLU, biases; the shipped digits), the geometry of
:func:`specopt.param_groups` (Spectral, i.e. the RMS → RMS operator norm ``√(d_in/d_out)·‖W‖_op``, for the
weights, BiasRMS for the biases) with every role's radius a tenth of the library's default (hidden ρ = 3,
output layer 10, biases 1; at the default radii SCG at this γ does not train), so that the start is inside
every ball. Two settings:

* **full batch** (the bounds' worst case): the first 1000 training digits, every step on all of them, in
  float64 (in float32 the loss underflows to exactly 0 and the gradient vanishes); SCG and uSCG with the exact
  (SVD) lmo and with Polar Express (5 steps, float32);
* **minibatch** (AdamW's drift): the shipped task as it is (4,500 digits, batches of 128, float32), SCG, uSCG
  with Polar Express and AdamW, long enough to see the norms' trend.

Step sizes: SCG γ = 0.05, so that γk ≫ 1 within the horizon (at the default γ = 2⁻¹⁰ the weights reach only a
fraction of ρ in hundreds of steps); uSCG γ = 2⁻¹¹·10, i.e. the library's default step γρ at these radii;
AdamW the library's lr 4·10⁻³, β = (0.9, 0.95), no weight decay; momentum 0.9 for SCG and uSCG.

Measured at every step, independently of the optimizer's code: ``√(d_in/d_out)·σ_max(W)`` by
``torch.linalg.matrix_norm(·, ord=2)`` in float64 for the weights, ``‖b‖₂/√n`` for the biases. Tolerance: the
lmo's largest singular value, the msign band's upper end (:func:`specopt.msign_band`: 1 for SVD, 1.141 for
Polar Express after 5 steps), plus 10⁻⁴ for rounding; BiasRMS's lmo is exact (tolerance 1 + 10⁻⁴).

What would refute the claims: any tensor at any step with SCG's ``‖W_k‖/ρ`` or uSCG's
``‖W_k − W_0‖/(ρΣγ)`` above its tolerance; what would make the test vacuous (reported as such): neither
bound reached in the full-batch setting (SVD arm's largest ratio < 0.99 for SCG, final ratio < 0.9 for uSCG);
what would refute the AdamW claim: its norms levelling off in the minibatch setting — the growth exponent α
of ``‖W_k‖ ∝ k^α`` over the second half of the run below 0.05 for every weight matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import specopt
from specopt import msign_band
from specopt.experiments.common import progress_bar, pyplot, save_figure, write_csv, write_report
from specopt.norms import BiasRMS, Spectral
from specopt.registry import DEFAULTS
from specopt.roles import DEFAULT_RADII, param_groups
from specopt.tasks import get_task

RADII = {role: r / 10 for role, r in DEFAULT_RADII.items()}
SCG_LR = 0.05
USCG_LR = 2**-11 * 10
ADAMW_LR = DEFAULTS["adamw"]["lr"]
ROUNDING = 1e-4
BINDS_SCG, BINDS_USCG, DRIFT_EXPONENT = 0.99, 0.9, 0.05
COLUMNS = {
    "setting": "full batch (float64) or minibatch (float32)", "optimizer": "scion (SCG), uscion (uSCG) or adamw",
    "lmo": "the lmo of the weight matrices (svd or polar_express; — for AdamW)", "tensor": "the parameter's name",
    "role": "its role in the geometry", "radius": "ρ of its role (a tenth of the library's default)",
    "tolerance": "the lmo's band top plus 1e-4: the largest ratio the bound allows", "init_norm_over_radius":
    "‖W_0‖/ρ", "max_norm_over_radius": "the largest ‖W_k‖/ρ over the run", "final_norm_over_radius": "‖W_K‖/ρ at "
    "the end", "max_distance_over_bound": "uSCG: the largest ‖W_k − W_0‖/(ρΣγ)", "final_distance_over_bound":
    "uSCG: that ratio at the end", "growth_exponent": "α of ‖W_k‖ ∝ k^α fitted over the run's second half",
    "final_loss": "training loss, mean of the last 10 steps"}
"""What each column of ``results.csv`` holds."""


@dataclass(frozen=True)
class Setting:
    name: str
    steps: int
    digits: int | None  # full batch on the first `digits` training digits; None: the task's minibatches
    dtype: torch.dtype
    arms: tuple[tuple[str, str], ...]  # (optimizer, lmo)


def settings(quick: bool) -> list[Setting]:
    return [Setting("full batch", 100 if quick else 600, 1000, torch.float64,
                    (("scion", "svd"), ("scion", "polar_express"), ("uscion", "svd"), ("uscion", "polar_express"),
                     ("adamw", "—"))),
            Setting("minibatch", 300 if quick else 3200, None, torch.float32,
                    (("scion", "polar_express"), ("uscion", "polar_express"), ("adamw", "—")))]


def exact_norm(norm, w: torch.Tensor) -> float:
    """``‖w‖`` in the geometry ``norm`` names, computed here (not by the library's norm): float64, exact SVD."""
    w = w.detach().double()
    if isinstance(norm, Spectral) and w.ndim == 2:
        tall = w.mT if w.shape[0] < w.shape[1] else w  # the same σ_max; LAPACK's SVD is faster on tall matrices
        return math.sqrt(w.shape[1] / w.shape[0]) * float(torch.linalg.matrix_norm(tall, ord=2))
    if isinstance(norm, BiasRMS) and w.ndim == 1:
        return float(torch.linalg.vector_norm(w)) / math.sqrt(w.numel())
    raise ValueError(f"norm-control measures Spectral matrices and BiasRMS vectors, got {norm!r} on a tensor of "
                     f"shape {tuple(w.shape)}")


def tolerance(norm) -> float:
    """The largest ``‖lmo(d)‖`` the norm's lmo can return (its msign band's top), plus rounding."""
    return (msign_band(norm.method)[1] if isinstance(norm, Spectral) else 1.0) + ROUNDING


def _optimizer(name: str, model, groups):
    if name == "scion":
        return specopt.Scion(groups, lr=SCG_LR, momentum=0.9)
    if name == "uscion":
        return specopt.UScion(groups, lr=USCG_LR, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=ADAMW_LR, betas=(0.9, 0.95), weight_decay=0.0)


def run_arm(task, setting: Setting, name: str, lmo: str, bar) -> dict:
    """Train one arm; per tensor and step: ``‖W_k‖/ρ`` and, for uSCG, ``‖W_k − W_0‖/(ρ Σ_{j≤k} γ_j)``."""
    model = task.build_model().to(setting.dtype)
    groups = param_groups(model, scheme="image", radii=RADII,
                          msign={"method": "svd" if lmo == "—" else lmo, "compute_dtype": torch.float32})
    tensors = [(n, p, g["norm"], g["radius"], g["role"]) for g in groups for n, p in g["params"]]
    start = {n: p.detach().clone() for n, p, *_ in tensors}
    opt = _optimizer(name, model, groups)
    group_of = {p: group for group in opt.param_groups for p in group["params"]}
    if setting.digits is not None:
        data = (task.x[:setting.digits].to(setting.dtype), task.y[:setting.digits])
    lr_sum = {n: 0.0 for n, *_ in tensors}
    norms = {n: [] for n, *_ in tensors}
    distances = {n: [] for n, *_ in tensors}
    losses = []
    for step in range(1, setting.steps + 1):
        x, y = data if setting.digits is not None else task.batch(step)
        opt.zero_grad()
        loss = F.cross_entropy(model(x.to(setting.dtype)), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        for n, p, norm, radius, _ in tensors:
            lr_sum[n] += group_of[p]["lr"]  # γ_k of this step
            norms[n].append(exact_norm(norm, p) / radius)
            if name == "uscion":
                distances[n].append(exact_norm(norm, p - start[n]) / (radius * lr_sum[n]))
        bar.update(1)
    return {"tensors": tensors, "init": {n: exact_norm(norm, start[n]) / r for n, _, norm, r, _ in tensors},
            "norms": norms, "distances": distances, "losses": losses}


def growth_exponent(values: list[float]) -> float:
    """α of ``v_k ∝ k^α`` fitted (least squares in log–log) over the second half of the run."""
    k = np.arange(1, len(values) + 1)
    half = slice(len(values) // 2, None)
    return float(np.polyfit(np.log(k[half]), np.log(np.asarray(values)[half]), 1)[0])


def verdicts(rows: list[dict]) -> dict:
    """The claims' outcomes from the table (also read by the tests): each bound holds / binds, AdamW drifts."""
    def pick(setting=None, optimizer=None, lmo=None, role=None):
        return [r for r in rows if (setting is None or r["setting"] == setting)
                and (optimizer is None or r["optimizer"] == optimizer) and (lmo is None or r["lmo"] == lmo)
                and (role is None or r["role"] == role)]

    scg, uscg = pick(optimizer="scion"), pick(optimizer="uscion")
    adamw_matrices = [r for r in pick("minibatch", "adamw") if r["role"] != "vector"]
    adamw_full = [r for r in pick("full batch", "adamw") if r["role"] != "vector"]
    fastest = max(adamw_matrices, key=lambda r: r["growth_exponent"])
    largest = max(adamw_matrices, key=lambda r: r["max_norm_over_radius"])
    return {
        "scg_starts_inside": all(r["init_norm_over_radius"] <= 1 for r in scg),
        "scg_holds": all(r["max_norm_over_radius"] <= r["tolerance"] for r in scg),
        "scg_worst": max(r["max_norm_over_radius"] for r in scg),
        "scg_reached": max(r["max_norm_over_radius"] for r in pick("full batch", "scion", "svd")),
        "uscg_holds": all(r["max_distance_over_bound"] <= r["tolerance"] for r in uscg),
        "uscg_worst": max(r["max_distance_over_bound"] for r in uscg),
        "uscg_reached": min(r["final_distance_over_bound"]
                            for r in pick("full batch", "uscion", "svd") if r["role"] != "vector"),
        "adamw_exponent": fastest["growth_exponent"],
        "adamw_fastest": (fastest["tensor"], fastest["growth_exponent"], fastest["max_norm_over_radius"]),
        "adamw_largest": (largest["tensor"], largest["max_norm_over_radius"], largest["growth_exponent"]),
        "adamw_full_exponents": (min(r["growth_exponent"] for r in adamw_full),
                                 max(r["growth_exponent"] for r in adamw_full)),
        "adamw_full_loss": adamw_full[0]["final_loss"],
        "scg_polar_express": max(r["max_norm_over_radius"] for r in pick("full batch", "scion", "polar_express")),
        "uscg_polar_express": max(r["max_distance_over_bound"] for r in pick("full batch", "uscion", "polar_express")),
    }


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    task = get_task("mlp", seed=0, width=64)
    plan = settings(quick)
    results = {}
    with progress_bar(sum(s.steps * len(s.arms) for s in plan), "norm-control", progress) as bar:
        for setting in plan:
            for name, lmo in setting.arms:
                results[(setting.name, name, lmo)] = run_arm(task, setting, name, lmo, bar)
    rows = []
    for (setting, name, lmo), r in results.items():
        for n, _, norm, radius, role in r["tensors"]:
            uscg = name == "uscion"
            rows.append({"setting": setting, "optimizer": name, "lmo": lmo, "tensor": n, "role": role,
                         "radius": radius, "tolerance": tolerance(norm) if name != "adamw" else float("nan"),
                         "init_norm_over_radius": r["init"][n], "max_norm_over_radius": max(r["norms"][n]),
                         "final_norm_over_radius": r["norms"][n][-1],
                         "max_distance_over_bound": max(r["distances"][n]) if uscg else float("nan"),
                         "final_distance_over_bound": r["distances"][n][-1] if uscg else float("nan"),
                         "growth_exponent": growth_exponent(r["norms"][n]),
                         "final_loss": float(np.mean(r["losses"][-10:]))})
    write_csv(out / "trace.csv", _trace(results))
    _plot(results, out / "plot.png")
    v = verdicts(rows)
    return write_report(out, "Norm control: where SCG's and uSCG's bounds bind, and AdamW's norms drift",
                        _body(plan, v), rows, glossary=COLUMNS,
                        columns=["setting", "optimizer", "lmo", "tensor", "radius", "tolerance",
                                 "init_norm_over_radius", "max_norm_over_radius", "final_norm_over_radius",
                                 "max_distance_over_bound", "final_distance_over_bound", "growth_exponent",
                                 "final_loss"])


def _trace(results: dict) -> list[dict]:
    """Per arm and step: the largest ratio over the tensors (every step full batch, every 8th minibatch)."""
    rows = []
    for (setting, name, lmo), r in results.items():
        every = 1 if setting == "full batch" else 8
        for k in range(0, len(r["losses"]), every):
            rows.append({"setting": setting, "optimizer": name, "lmo": lmo, "step": k + 1, "loss": r["losses"][k],
                         "max_norm_over_radius": max(v[k] for v in r["norms"].values()),
                         "max_distance_over_bound": max(v[k] for v in r["distances"].values())
                         if name == "uscion" else ""})
    return rows


def _against(value: float, band: float) -> str:
    """Where a ratio lies against the bound 1 and the lmo's band top."""
    if value <= 1:
        return "at most 1"
    return "above 1, inside the band" if value <= band + ROUNDING else "above the band"


def _bound(holds: bool, what: str, worst: float) -> str:
    if holds:
        return f"holds — no {what} above its tolerance at any step (largest {worst:.4f})"
    return f"**REFUTED** — a {what} above its tolerance (largest {worst:.4f})"


def _body(plan: list[Setting], v: dict) -> list[str]:
    band = msign_band("polar_express")[1]
    steps = ", ".join(f"{s.name}: {s.steps} steps" for s in plan)
    fast_name, fast_alpha, fast_ratio = v["adamw_fastest"]
    big_name, big_ratio, big_alpha = v["adamw_largest"]
    largest = ("" if big_name == fast_name else
               f"; the largest, `{big_name}`, reaches {big_ratio:.2f}× (α = {big_alpha:.2f})")
    low, high = v["adamw_full_exponents"]
    drift = "drift: not controlled" if v["adamw_exponent"] >= DRIFT_EXPONENT else "levelled off: REFUTED"
    pace = ("more slowly" if high < v["adamw_exponent"] else
            "as fast or faster" if low >= v["adamw_exponent"] else "some faster, some more slowly")
    return [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "",
            f"Seed 0; {steps}; the table gives every tensor of every arm.", "",
            f"- SCG: {_bound(v['scg_holds'], '‖W_k‖/ρ', v['scg_worst'])} (every start inside its ball: "
            f"{v['scg_starts_inside']}). With the SVD lmo the largest ‖W‖/ρ is {v['scg_reached']:.5f} "
            f"({'the bound binds' if v['scg_reached'] >= BINDS_SCG else 'NOT reached: vacuous'}); with Polar "
            f"Express it reaches {v['scg_polar_express']:.3f}: {_against(v['scg_polar_express'], band)} (the "
            f"band's top, {band:.3f}).",
            f"- uSCG: {_bound(v['uscg_holds'], '‖W_k − W_0‖/(ρΣγ)', v['uscg_worst'])}. With the SVD lmo every "
            f"weight matrix ends at ≥ {v['uscg_reached']:.3f} of ρΣγ in the full-batch setting "
            f"({'the bound binds' if v['uscg_reached'] >= BINDS_USCG else 'NOT reached: vacuous'}); with Polar "
            f"Express the ratio reaches {v['uscg_polar_express']:.3f}: {_against(v['uscg_polar_express'], band)}.",
            f"- AdamW (minibatch): the fastest-growing weight matrix, `{fast_name}`, grows as k^α with "
            f"α = {fast_alpha:.2f} over the run's second half and reaches {fast_ratio:.2f}× the radius SCG keeps"
            f"{largest} ({drift}). In the full-batch setting the weight matrices grow {pace} (α from {low:.2f} to "
            f"{high:.2f}) while the loss falls to {v['adamw_full_loss']:.0e}."]


def _plot(results: dict, path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    band = msign_band("polar_express")[1]
    colour = {("scion", "svd"): "C0", ("scion", "polar_express"): "C1", ("uscion", "svd"): "C0",
              ("uscion", "polar_express"): "C1", ("adamw", "—"): "C2"}
    style = {"full batch": "-", "minibatch": ":"}
    for (setting, name, lmo), r in results.items():
        what = r["distances"] if name == "uscion" else r["norms"]
        worst = np.max(np.array(list(what.values())), axis=0)
        steps = np.arange(1, len(worst) + 1)
        label = f"{name if name == 'adamw' else lmo}, {setting}"
        axes[{"scion": 0, "uscion": 1, "adamw": 2}[name]].plot(steps, worst, style[setting],
                                                                 color=colour[(name, lmo)], lw=1.4, label=label)
        if name == "scion" and setting == "minibatch":  # AdamW's panel: the capped SCG for contrast
            axes[2].plot(steps, worst, style[setting], color="0.6", lw=1.2, label="SCG (Polar Express), minibatch")
    for ax in axes[:2]:
        ax.axhspan(1, band, color="0.85", label=f"Polar Express band (≤ {band:.3f})")
        ax.axhline(1, color="k", lw=1, label="bound")
        ax.set_ylim(0, band + 0.15)
        ax.legend(fontsize=7, loc="lower left")
    axes[2].axhline(1, color="k", lw=1, label="radius ρ of SCG")
    axes[2].set(yscale="log", ylabel="‖W_k‖/ρ")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes[2].yaxis.set_major_formatter(plain)
    axes[2].yaxis.set_minor_formatter(plain)
    axes[2].legend(fontsize=7, loc="upper left")
    axes[0].set(title="SCG (Scion): max over tensors of ‖W_k‖/ρ", ylabel="fraction of the bound")
    axes[1].set(title="uSCG (UScion): max over tensors of ‖W_k − W_0‖/(ρΣγ)")
    axes[2].set(title="AdamW (no weight decay): max over tensors of ‖W_k‖/ρ")
    for ax in axes:
        ax.set(xscale="log", xlabel="step")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("SCG's and uSCG's iterates reach their bounds and stay under them (up to the lmo's band); "
                 "AdamW's norms keep growing", fontsize=11)
    save_figure(fig, path)
