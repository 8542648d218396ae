"""`specopt compare`: several optimizers on one task, same seed and data order, one report.

Each run happens in a fresh process (so its peak memory is its own) and writes its own run directory
(:mod:`specopt.training`), with its result (``compare-result.json``) once it has finished: ``resume=True`` keeps a
finished run of the same configuration (``specopt compare --resume``, after an interruption). The comparison
writes ``report.md`` (table), ``loss.png`` (validation loss against steps and against wall time, training loss
faint), ``metrics.csv`` (every row of every run, with an ``optimizer`` column) and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import resource
import signal
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path
from queue import Empty

from specopt import registry
from specopt.experiments.common import pyplot, save_figure
from specopt.tasks.data import fingerprint
from specopt.training import CSV_FIELDS, RunConfig, preflight, read_config, read_metrics, train

SWEEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _reset_peak_memory() -> None:
    """Start the process's peak-RSS count afresh (Linux: ``clear_refs`` 5): a process forked from the forkserver
    starts with the server's peak, the same for every run."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory_mib() -> float:
    """Peak RSS since :func:`_reset_peak_memory` (``VmHWM``); where there is no /proc, the process's whole peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def _child(cfg_dict: dict, out: str, progress: bool, queue) -> None:
    try:
        _reset_peak_memory()
        result = train(RunConfig(**cfg_dict), out, progress=progress)
        queue.put({"ok": True, "elapsed_s": result.elapsed_s, "diverged": result.diverged,
                   "peak_MiB": _peak_memory_mib()})
    except Exception as e:  # reported by the parent with the run's name
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it, once
        pass


def run_isolated(cfg: RunConfig, out: Path, progress: bool = True) -> dict:
    """``train(cfg, out)`` in a fresh process; returns elapsed time, divergence and peak RSS (MiB). The process is
    forked from a server that has imported torch and specopt once (``forkserver``: no threads at the fork, and no
    second import per run, which took ~5 s of every short run); spawned where there is no forkserver (Windows)."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["specopt.training"])
    else:
        ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(asdict(cfg), str(out), progress, queue))
    proc.start()
    try:
        info = _result(queue, proc, cfg.optimizer)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join()
    if not info["ok"]:
        raise RuntimeError(f"run {cfg.optimizer} failed: {info['error']}")
    return info


def run_config(base: RunConfig, name: str, lr: float | None = None) -> RunConfig:
    """``base`` for optimizer ``name``: the shared hyperparameters it takes (``--gram`` is not AdamW's), and ``lr``."""
    shared = {k: v for k, v in base.hparams.items() if k in registry.TAKES[name]}
    return replace(base, optimizer=name, hparams={**shared, **({"lr": lr} if lr else {})})


def _result(queue, proc, name: str) -> dict:
    """The child's report, or an error once it has ended without one (killed: by the out-of-memory killer, a
    signal, a crash in native code)."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except Empty:
            if proc.is_alive():
                continue
            try:  # it may have reported just before it ended
                return queue.get(timeout=1.0)
            except Empty:
                code = proc.exitcode
                how = (f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else
                       f"exited with code {code}")
                raise RuntimeError(f"run {name} {how} without a result (out of memory? a crash in native code?); "
                                   "its run directory holds what it wrote") from None


def compare(base: RunConfig, optimizers: list[str], out: str | Path, *, sweep: bool = False,
            progress: bool = True, log=print, resume: bool = False) -> dict:
    """Run every optimizer (with a learning-rate sweep if asked) and write the report into ``out``. Every run is
    checked (:func:`~specopt.training.preflight`) before the first starts. ``resume``: a run that ``out`` already
    holds, finished and with exactly this configuration (an interrupted comparison), is kept, not run again."""
    twice = sorted({name for name in optimizers if optimizers.count(name) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed more than once: each optimizer is one row of the report")
    for name in optimizers:
        preflight(run_config(base, name))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name in optimizers:
        lrs = [None] if not sweep else [registry.resolve(name)["lr"] * f for f in SWEEP_FACTORS]
        candidates = []
        for lr in lrs:
            tag = name if lr is None else f"{name}_lr{lr:.3g}"
            cfg = run_config(base, name, lr)
            info = finished_run(out / tag, cfg) if resume else None
            log(f"[{name}] {'lr ' + format(lr, '.3g') if lr else 'defaults'} → {out / tag}"
                + (" (finished before: kept)" if info else ""))
            if info is None:
                info = run_isolated(cfg, out / tag, progress)
                (out / tag / RUN_RESULT).write_text(json.dumps(info))
            candidates.append(_summarise(name, tag, out / tag, info))
        best = min(candidates, key=lambda c: c["final_val"] if c["final_val"] == c["final_val"] else float("inf"))
        best["sweep"] = [{"lr": c["lr"], "final_val": c["final_val"]} for c in candidates] if sweep else None
        runs[name] = best
    _steps_to_reference(runs)
    write_report(runs, base, out, sweep)
    return runs


RUN_RESULT = "compare-result.json"
"""What a comparison records in each run directory once the run has finished (its time, divergence and peak
memory), so that ``--resume`` can keep the run."""


def finished_run(run_dir: Path, cfg: RunConfig) -> dict | None:
    """The recorded result of the run in ``run_dir`` if it is ``cfg`` (its config.json records every setting of
    ``cfg``, with the same data) and it finished (its result recorded, its metrics at ``cfg.steps`` or where it
    diverged); None otherwise, and the run is trained again."""
    try:
        recorded = read_config(run_dir)
        info = json.loads((run_dir / RUN_RESULT).read_text())
        rows = read_metrics(run_dir)
        expected = {**asdict(cfg), "hparams": registry.resolve(cfg.optimizer, cfg.hparams)}
        data = cfg.task_options.get("data")
        if data is not None and recorded.get("data_sha256") != fingerprint(data):
            return None
    except (OSError, ValueError):  # RunError and DataError are ValueErrors; JSON's error too
        return None
    if any(json.loads(json.dumps(v)) != recorded.get(k) for k, v in expected.items()) or not rows:
        return None
    complete = rows[-1]["step"] == cfg.steps or info.get("diverged")
    return info if complete and set(info) >= {"elapsed_s", "diverged", "peak_MiB"} else None


def _summarise(name: str, tag: str, run_dir: Path, info: dict) -> dict:
    rows = read_metrics(run_dir)
    val = [r for r in rows if r.get("val_loss") is not None]
    config = json.loads((run_dir / "config.json").read_text())
    tail = [r["loss"] for r in rows[-10:]]
    return {
        "optimizer": name, "tag": tag, "dir": str(run_dir), "lr": config["hparams"]["lr"],
        "final_train": sum(tail) / len(tail) if tail else float("nan"),
        "final_val": val[-1]["val_loss"] if val else float("nan"),
        "best_val": min(r["val_loss"] for r in val) if val else float("nan"),
        "val": [(r["step"], r["elapsed_s"], r["val_loss"]) for r in val],
        "train": [(r["step"], r["elapsed_s"], r["loss"]) for r in rows],
        "wall_s": info["elapsed_s"], "diverged": info["diverged"], "peak_MiB": info["peak_MiB"],
        "throughput": config["units_per_step"] * len(rows) / info["elapsed_s"] if info["elapsed_s"] > 0 else 0.0,
        "unit": config["unit"], "steps": len(rows),
    }


def _steps_to_reference(runs: dict, reference: str = "adamw") -> None:
    """``steps_to_ref``: first validation step at which each run reaches the reference's best val loss."""
    ref = runs.get(reference)
    target = ref["best_val"] if ref else None
    ref_steps = _first_step_below(ref["val"], target) if ref else None
    for run in runs.values():
        run["steps_to_ref"] = _first_step_below(run["val"], target) if target is not None else None
        run["steps_ratio"] = (run["steps_to_ref"] / ref_steps) if run["steps_to_ref"] and ref_steps else None


def _first_step_below(val: list, target: float | None):
    if target is None:
        return None
    for step, _, loss in val:
        if loss <= target + 1e-12:
            return step
    return None


def write_report(runs: dict, base: RunConfig, out: Path, sweep: bool) -> None:
    _write_csv(runs, out)
    _plot(runs, base, out / "loss.png")
    table = summary_table(runs)
    options = f" {json.dumps(base.task_options)}" if base.task_options else ""
    lines = [f"# specopt compare: {base.task}", "",
             f"Task `{base.task}`{options}, {base.steps} steps, "
             f"seed {base.seed}, schedule {base.schedule}, validation every {base.val_every} steps; every "
             f"optimizer sees the same batches in the same order. "
             + ("Each optimizer's learning rate was swept over ×" + ", ×".join(f"{f:g}" for f in SWEEP_FACTORS)
                + " its default; the table shows the best." if sweep else "Each optimizer runs its defaults."),
             "", table, "", "![loss](loss.png)", "",
             "Train, last 10 steps = the mean training loss of the last 10 steps (one step's loss is one batch's); "
             "final val = the validation loss at the last validation step, best val = the lowest. "
             "Steps to AdamW best = first validation step at which the run's validation loss is at or below the "
             "best AdamW reached; ratio = that ÷ AdamW's own step. Peak memory is the run process's peak RSS.",
             ""]
    if sweep:
        lines += ["## Sweeps", "", "| optimizer | lr | final val loss |", "|---|---:|---:|"]
        for run in runs.values():
            for s in run["sweep"] or []:
                lines.append(f"| {run['optimizer']} | {s['lr']:.3g} | {s['final_val']:.4f} |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk not in ("val", "train")} for k, v in runs.items()}, indent=2))


def summary_table(runs: dict) -> str:
    unit = next(iter(runs.values()))["unit"] if runs else "samples"
    head = ("| optimizer | lr | train, last 10 steps | final val | best val | steps to AdamW best | ratio | wall (s) "
            f"| {unit}/s | peak MiB |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs.values():
        steps = "—" if not r.get("steps_to_ref") else str(r["steps_to_ref"])
        ratio = "—" if not r.get("steps_ratio") else f"{r['steps_ratio']:.2f}"
        flag = " (diverged)" if r["diverged"] else ""
        lines.append(f"| {r['optimizer']}{flag} | {r['lr']:.3g} | {r['final_train']:.4f} | {r['final_val']:.4f} | "
                     f"{r['best_val']:.4f} | {steps} | {ratio} | {r['wall_s']:.3g} | {r['throughput']:.0f} | "
                     f"{r['peak_MiB']:.0f} |")
    return "\n".join(lines)


def _write_csv(runs: dict, out: Path) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("optimizer",) + CSV_FIELDS)
        writer.writeheader()
        for run in runs.values():
            for row in read_metrics(Path(run["dir"])):
                writer.writerow({"optimizer": run["optimizer"], **{k: row.get(k, "") for k in CSV_FIELDS}})


def _plot(runs: dict, base: RunConfig, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, run in enumerate(runs.values()):
        color = f"C{i % 10}"
        steps, times, losses = zip(*run["train"], strict=True) if run["train"] else ((), (), ())
        axes[0].plot(steps, smooth(losses), color=color, alpha=0.25, lw=0.8)
        axes[1].plot(times, smooth(losses), color=color, alpha=0.25, lw=0.8)
        if run["val"]:
            vs, vt, vl = zip(*run["val"], strict=True)
            axes[0].plot(vs, vl, color=color, marker="o", ms=3, label=run["optimizer"])
            axes[1].plot(vt, vl, color=color, marker="o", ms=3, label=run["optimizer"])
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall time (s)")
    axes[0].set_ylabel("loss (validation: markers; training: faint)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{base.task}: validation loss")
    save_figure(fig, path)


def smooth(values: list[float], k: int = 11) -> list[float]:
    """The centred mean of ``k`` neighbouring values (fewer at the ends): the training loss's trend, without the lag
    a trailing mean has while the loss falls fast."""
    half = k // 2
    return [statistics.fmean(values[max(0, i - half):i + half + 1]) for i in range(len(values))]
