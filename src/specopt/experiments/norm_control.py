"""`norm-control`: per-layer norms through training for Scion (SCG), UScion (uSCG) and AdamW on the char-GPT.

The norm of each tensor is measured in its own geometry (the norm :func:`specopt.param_groups` assigns it;
exact: SVD for the spectral norms). Claims (Pethick et al. 2025):

* SCG, ``W ← (1−γ)W + γρ·lmo(d)``, from a start inside the ball: ``‖W_k‖ ≤ ρ`` at every step — the plot
  draws ρ and Scion's norms under it (up to the msign band: Polar Express's lmo has norm ≤ 1.141);
* uSCG, ``W ← W + γρ·lmo(d)``: ``‖W_k − W_0‖ ≤ ρ·Σ_{j<k} γ_j`` — the plot draws that bound and UScion's
  distance from its start;
* AdamW has no such control: its norms are shown for reference, in the geometry and against the radii
  that Scion would use.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

from specopt import msign_band
from specopt.experiments.common import pyplot, save_figure, write_report
from specopt.norms import Spectral
from specopt.registry import DEFAULTS, role_groups
from specopt.tasks import get_task
from specopt.training import RunConfig, lr_factor, train


def _exact(norm):
    """The same geometry with an exact (SVD) spectral norm, for measuring."""
    return Spectral(method="svd") if isinstance(norm, Spectral) else norm


def _geometry(model, opt, task):
    """(exact norm, radius, [(name, param)]) per group: the optimizer's own groups for the specopt optimizers,
    and for AdamW the groups Scion would use, so that its norms are measured in the same geometry."""
    if hasattr(opt, "rule"):
        names = {p: n for n, p in model.named_parameters()}
        return [(_exact(g["norm"]), g["radius"], [(names[p], p) for p in g["params"]]) for g in opt.param_groups]
    return [(_exact(g["norm"]), g["radius"], g["params"])
            for g in role_groups(model, task, DEFAULTS["scion"]["radius"])]


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    steps = 30 if quick else 400
    every = 3 if quick else 10
    traces: dict = {}
    rows = []
    hi = msign_band("polar_express")[1]
    for name in ("scion", "uscion", "adamw"):
        cfg = RunConfig(task="char-gpt", optimizer=name, steps=steps, task_options={"size": "tiny"},
                        val_every=steps, checkpoint_every=steps)
        task = get_task(cfg.task, seed=cfg.seed, **cfg.task_options)
        start = dict(task.build_model().named_parameters())  # the run's W_0 (the model is built from the seed)
        state = {"w0": {n: p.detach().clone() for n, p in start.items()}, "radius": {}, "lr_sum": 0.0}

        def measure(step, model, opts, state=state, name=name, cfg=cfg, task=task):
            state["lr_sum"] += opts[0].param_groups[0]["initial_lr"] * lr_factor(step - 1, cfg)  # γ of this step
            if step == 1 or step % every == 0 or step == steps:
                for norm, radius, named in _geometry(model, opts[0], task):
                    for n, p in named:
                        state["radius"][n] = radius
                        w = p.detach()
                        traces.setdefault((name, n), []).append(
                            (step, float(norm.norm(w)), float(norm.norm(w - state["w0"][n])), state["lr_sum"]))

        with TemporaryDirectory() as d:
            train(cfg, d, progress=progress, callback=measure)
        radii = state["radius"]
        for (opt_name, n), trace in traces.items():
            if opt_name != name:
                continue
            _, norms, dists, lr_sums = zip(*trace, strict=True)
            bound = [radii[n] * s for s in lr_sums]
            rows.append({"optimizer": name, "tensor": n, "radius": radii[n], "max_norm": max(norms),
                         "max_norm_over_radius": max(norms) / radii[n],
                         "max_distance_over_bound": max(d / b for d, b in zip(dists, bound, strict=True) if b > 0)
                         if any(b > 0 for b in bound) else 0.0})
    _plot(traces, rows, out / "plot.png")
    scg = [r for r in rows if r["optimizer"] == "scion"]
    uscg = [r for r in rows if r["optimizer"] == "uscion"]
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "",
            f"Scion: largest ‖W‖/ρ over all tensors and steps = {max(r['max_norm_over_radius'] for r in scg):.3f} "
            f"(≤ 1 up to the Polar Express band {hi:.3f}).",
            f"UScion: largest ‖W_k − W_0‖ / (ρΣγ) = {max(r['max_distance_over_bound'] for r in uscg):.3f} (≤ 1 up "
            "to the band).",
            f"AdamW: largest ‖W‖ in the same norms / the radius Scion would use = "
            f"{max(r['max_norm_over_radius'] for r in rows if r['optimizer'] == 'adamw'):.3f}.",
            "", f"{steps} steps of the tiny char-GPT, each optimizer with the `specopt` defaults "
            f"(Scion lr {DEFAULTS['scion']['lr']:g}, UScion lr {DEFAULTS['uscion']['lr']:g})."]
    return write_report(out, "Norm control: Scion stays in its ball, UScion within ρΣγ", body, rows)


def _plot(traces, rows, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    show = [n for n in dict.fromkeys(n for (_, n) in traces) if n.startswith("blocks.0") or "wte" in n][:4]
    radii = {r["tensor"]: r["radius"] for r in rows}
    for i, n in enumerate(show):
        c = f"C{i}"
        for ax, name, what in ((axes[0], "scion", 1), (axes[1], "uscion", 2), (axes[2], "adamw", 1)):
            trace = traces.get((name, n))
            if not trace:
                continue
            steps = [t[0] for t in trace]
            ax.plot(steps, [t[what] for t in trace], color=c, label=n)
            if name == "scion":
                ax.axhline(radii[n], color=c, ls="--", lw=1)
            if name == "uscion":
                ax.plot(steps, [radii[n] * t[3] for t in trace], color=c, ls="--", lw=1)
    axes[0].set_title("Scion (SCG): ‖W_k‖ and the radius ρ (dashed)")
    axes[1].set_title("UScion (uSCG): ‖W_k − W_0‖ and ρΣγ (dashed)")
    axes[2].set_title("AdamW: ‖W_k‖ (same norms)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


