"""One training run: deterministic data, metrics every step, validation and atomic checkpoints every K steps,
exact resume.

Files in the run directory:
* ``config.json`` — what was run (task, options, optimizer, hyperparameters, steps, seed, schedule);
* ``metrics.jsonl`` and ``metrics.csv`` — one row per step (``step, loss, lr, elapsed_s, throughput``) and
  ``val_loss`` on validation steps;
* ``checkpoint.pt`` — model, optimizer(s), scheduler(s), step and elapsed time, replaced atomically
  (written to a temporary file, flushed, then renamed), so an interrupted run keeps its last checkpoint;
* ``checkpoint/`` instead, for distributed runs (and runs resumed from one): a torch.distributed.checkpoint
  directory (:mod:`specopt.checkpoint`), which resumes at any world size.

Resuming loads the checkpoint, drops metric rows after it, and continues; because batches depend only on
(seed, step) the result equals the uninterrupted run bit for bit.

Distributed (launched by ``specopt train --nproc N`` through torchrun, or by any launcher that initialises
torch.distributed): every rank trains its equal slice of each batch; ``parallel="ddp"`` wraps the model in
DistributedDataParallel, ``"fsdp"`` shards it with FSDP2's ``fully_shard``; rank 0 writes the metrics.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from specopt import checkpoint, registry
from specopt.scaling import batch_size_schedule
from specopt.tasks import get_task

SCHEDULES = ("constant", "linear-decay")
BATCH_SCHEDULES = ("constant", "bst")
PARALLEL = ("ddp", "fsdp")
CSV_FIELDS = ("step", "loss", "lr", "elapsed_s", "throughput", "val_loss", "batch_size")


@dataclass
class RunConfig:
    task: str = "char-gpt"
    optimizer: str = "adamw"
    steps: int = 500
    seed: int = 0
    task_options: dict = field(default_factory=dict)
    hparams: dict = field(default_factory=dict)
    val_every: int = 50
    checkpoint_every: int = 100
    schedule: str = "linear-decay"
    decay_fraction: float = 0.3
    batch_schedule: str = "constant"
    parallel: str = "ddp"
    closure: bool = True
    """Pass a closure to ``step()`` (Gluon re-evaluates the batch at its anchored weights, STORM at the previous
    iterate); False calls ``step()`` bare, as HF Trainer and most loops do."""

    def validate(self) -> None:
        for key in ("steps", "val_every", "checkpoint_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
        if self.batch_schedule not in BATCH_SCHEDULES:
            raise ValueError(f"unknown batch schedule {self.batch_schedule!r}; valid: {', '.join(BATCH_SCHEDULES)}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"unknown parallel mode {self.parallel!r}; valid: {', '.join(PARALLEL)}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction!r}")
        registry.resolve(self.optimizer, self.hparams)


class Diverged(RuntimeError):
    """The training loss became NaN or Inf."""


def lr_factor(step: int, cfg: RunConfig) -> float:
    """Multiplier of every group's initial lr at ``step``: constant, or linear decay to 0 over the last
    ``decay_fraction`` of the run (the trapezoidal schedule of the Muon/Scion speed runs)."""
    if cfg.schedule == "constant":
        return 1.0
    start = cfg.steps * (1 - cfg.decay_fraction)
    return 1.0 if step < start else max(0.0, (cfg.steps - step) / max(cfg.steps - start, 1))


@dataclass
class RunResult:
    out: Path
    config: RunConfig
    rows: list[dict]
    elapsed_s: float
    diverged: bool = False
    model: torch.nn.Module | None = None

    def val_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("val_loss") is not None]


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          callback=None) -> RunResult:
    """Run ``cfg`` into directory ``out`` (created); ``resume=True`` continues from ``out/checkpoint.pt``.

    ``callback(step, model, optimizers)``, if given, runs after every update (experiments measure with it)."""
    out = Path(out)
    rank, world = _rank_world()
    if resume:
        cfg = load_config(out)
    cfg.validate()
    task = get_task(cfg.task, seed=cfg.seed, **cfg.task_options)
    model = task.build_model()
    inner = model
    if world > 1:
        check_parallel(cfg.optimizer, cfg.parallel)
        model = _parallelize(model, cfg.parallel)
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    hp = registry.resolve(cfg.optimizer, cfg.hparams)
    opts = registry.build(cfg.optimizer, inner, task, hp)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, cfg)) for o in opts]
    start, elapsed, rows = 0, 0.0, []
    if resume:
        start, elapsed = _resume(out, inner, opts, scheds, world, cfg.parallel)
        rows = [r for r in read_metrics(out) if r["step"] <= start]
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**asdict(cfg), "hparams": hp, "unit": task.unit,
                                                     "units_per_step": task.units_per_step()}, indent=2))
    if world > 1:
        dist.barrier()
    distributed_checkpoint = world > 1 or (out / "checkpoint" / ".metadata").exists()
    writer = _MetricsWriter(out, rows) if rank == 0 else None
    bar = _progress(cfg, start, progress and rank == 0)
    diverged = False
    sizes = _batch_sizes(cfg, task)
    for step in range(start, cfg.steps):
        tick = time.perf_counter()
        batch = task.batch(step) if sizes is None else task.batch_of(step, sizes[step])
        batch = _shard_batch(batch, rank, world)
        units = task.units_per_step() if sizes is None else sizes[step] * task.units_per_example

        def closure(batch=batch):
            for o in opts:
                o.zero_grad(set_to_none=True)
            value = task.loss(model, batch)
            value.backward()
            return value

        if len(opts) == 1 and cfg.closure:  # a closure lets Gluon's online L compare gradients of one batch
            loss = opts[0].step(closure)
        else:
            loss = closure()
            for o in opts:
                o.step()
        for s in scheds:
            s.step()
        dt = time.perf_counter() - tick
        if callback is not None:
            callback(step + 1, model, opts)
        elapsed += dt
        value = _mean_over_ranks(loss.detach(), world)
        row = {"step": step + 1, "loss": value, "lr": opts[0].param_groups[0]["lr"], "elapsed_s": elapsed,
               "throughput": units / dt if dt > 0 else float("nan")}
        if sizes is not None:
            row["batch_size"] = sizes[step]
        last = step + 1 == cfg.steps
        if not math.isfinite(value):
            diverged = True
            row["val_loss"] = float("nan")
            if writer is not None:
                writer.write(row)
            break
        if (step + 1) % cfg.val_every == 0 or last:
            row["val_loss"] = task.validation_loss(inner)
        if writer is not None:
            writer.write(row)
        if bar is not None:
            bar.update(1)
            rate = {f"{task.unit}/s": f"{row['throughput']:.0f}"}
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{row['lr']:.2e}", **rate)
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            if distributed_checkpoint:
                checkpoint.save(out / "checkpoint", inner, opts, extra={
                    "step": step + 1, "elapsed_s": elapsed, "schedulers": [s.state_dict() for s in scheds]})
            else:
                save_checkpoint(out, model, opts, scheds, step + 1, elapsed)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return RunResult(out, cfg, writer.rows if writer is not None else [], elapsed, diverged, inner)


def check_parallel(optimizer: str, parallel: str) -> None:
    """Refuse combinations that cannot run distributed (before any process is started, where possible)."""
    if parallel not in PARALLEL:
        raise ValueError(f"unknown parallel mode {parallel!r}; valid: {', '.join(PARALLEL)}")
    if parallel == "fsdp" and optimizer == "torch-muon":
        raise ValueError("torch.optim.Muon cannot step FSDP2-sharded (DTensor) parameters; use --optimizer muon, "
                         "or --parallel ddp")


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _parallelize(model: torch.nn.Module, parallel: str) -> torch.nn.Module:
    if parallel == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # the tasks train on the CPU: an explicit CPU mesh, or FSDP2 would move the shards to a GPU where one exists
    return fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))


def _shard_batch(batch, rank: int, world: int):
    """This rank's equal slice of every batch tensor (dim 0)."""
    if world == 1:
        return batch
    parts = batch if isinstance(batch, (tuple, list)) else (batch,)
    n = parts[0].shape[0]
    if n % world:
        raise ValueError(f"the batch of {n} examples does not split evenly over {world} ranks; pick a batch size "
                         "that is a multiple of --nproc")
    sliced = tuple(t.chunk(world)[rank] for t in parts)
    return sliced if isinstance(batch, (tuple, list)) else sliced[0]


def _mean_over_ranks(loss: torch.Tensor, world: int) -> float:
    if world > 1:
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world
    return float(loss)


def _resume(out: Path, model, opts, scheds, world: int, parallel: str) -> tuple[int, float]:
    """Load the run's checkpoint (DCP directory, or checkpoint.pt of a single-process run)."""
    if (out / "checkpoint" / ".metadata").exists():
        extra = checkpoint.load(out / "checkpoint", model, opts)
        for s, state in zip(scheds, extra["schedulers"], strict=True):
            s.load_state_dict(state)
        return extra["step"], extra["elapsed_s"]
    if world > 1 and parallel == "fsdp":
        raise ValueError("this run was saved by a single process (checkpoint.pt); resume it with --parallel ddp or "
                         "on one process")
    ckpt = _load_checkpoint(out)
    model.load_state_dict(ckpt["model"])
    for o, s, so, ss in zip(opts, scheds, ckpt["optimizers"], ckpt["schedulers"], strict=True):
        o.load_state_dict(so)
        s.load_state_dict(ss)
    return ckpt["step"], ckpt["elapsed_s"]


def _batch_sizes(cfg: RunConfig, task) -> list[int] | None:
    """``--batch-schedule bst``: the task's batch size grows so that tokens per step ∝ (tokens seen)^{2/3}
    (:func:`specopt.scaling.batch_size_schedule`), from the first tenth of the run on."""
    if cfg.batch_schedule == "constant":
        return None
    if task.units_per_example is None:
        task.batch_of(0, 1)  # raises the task's own error
    base = task.units_per_step() // task.units_per_example
    return batch_size_schedule(cfg.steps, base, task.units_per_example, max(1, cfg.steps // 10))


def _progress(cfg: RunConfig, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=f"{cfg.optimizer} on {cfg.task}", unit="step",
                dynamic_ncols=True)


def save_checkpoint(out: Path, model, opts, scheds, step: int, elapsed: float) -> None:
    """Atomic: write ``checkpoint.pt.tmp``, flush to disk, rename over ``checkpoint.pt``."""
    path, tmp = out / "checkpoint.pt", out / "checkpoint.pt.tmp"
    payload = {"model": model.state_dict(), "optimizers": [o.state_dict() for o in opts],
               "schedulers": [s.state_dict() for s in scheds], "step": step, "elapsed_s": elapsed}
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(out: Path) -> dict:
    path = out / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    return torch.load(path, weights_only=True)


def load_config(out: Path) -> RunConfig:
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no run to resume in {out}: {path} does not exist")
    data = json.loads(path.read_text())
    return RunConfig(**{k: v for k, v in data.items() if k in RunConfig.__dataclass_fields__})


def read_metrics(out: Path) -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _MetricsWriter:
    """Appends rows to metrics.jsonl and metrics.csv (rewritten from ``rows`` first, for resume)."""

    def __init__(self, out: Path, rows: list[dict]):
        self.rows = list(rows)
        self.jsonl = open(out / "metrics.jsonl", "w")  # noqa: SIM115 - closed in close()
        self.csv_file = open(out / "metrics.csv", "w", newline="")  # noqa: SIM115
        self.csv = csv.DictWriter(self.csv_file, fieldnames=CSV_FIELDS)
        self.csv.writeheader()
        for row in self.rows:
            self._emit(row)

    def _emit(self, row: dict) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.csv.writerow({k: row.get(k, "") for k in CSV_FIELDS})

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self._emit(row)
        self.jsonl.flush()
        self.csv_file.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.csv_file.close()
