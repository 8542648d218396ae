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

A run is never resumed from files that are not its own. ``config.json`` holds a random ``run_id`` and every
checkpoint records it with the task, the optimizer's name and its class(es); resuming checks those, the model's
parameter names and shapes, the optimizers' param groups and the schedulers' base learning rates against the run
that ``config.json`` describes, before anything is loaded or written, and refuses (:class:`RunError`, naming the
file) on any difference. A new run starts by removing the run files of an earlier run in its directory
(:data:`RUN_FILES`), so a crash before its first checkpoint cannot leave an older checkpoint behind to resume;
``train(..., overwrite=False)`` (what ``specopt train`` does without ``--overwrite``) instead refuses a directory
that is not empty. ``updates={"steps": N}`` on resume extends (or shortens) the run: the lr schedule and the batch
schedule are recomputed for N steps, as if the run had been planned for N steps from its start.

Distributed (launched by ``specopt train --nproc N`` through torchrun, or by any launcher that initialises
torch.distributed): every rank trains its equal slice of each batch; ``parallel="ddp"`` wraps the model in
DistributedDataParallel, ``"fsdp"`` shards it with FSDP2's ``fully_shard``; rank 0 writes the metrics.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import shutil
import time
import uuid
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from specopt import checkpoint, registry
from specopt._checks import listing
from specopt.engine import NonFiniteGradient
from specopt.estimators import MOMENTUM_SCHEDULES
from specopt.scaling import batch_size_schedule
from specopt.tasks import DataError, get_task
from specopt.tasks.base import check_seed
from specopt.tasks.data import fingerprint

SCHEDULES = ("constant", "linear-decay")
BATCH_SCHEDULES = ("constant", "bst")
PARALLEL = ("ddp", "fsdp")
CSV_FIELDS = ("step", "loss", "lr", "elapsed_s", "throughput", "val_loss", "batch_size")
RUN_FILES = ("config.json", "config.json.tmp", "metrics.jsonl", "metrics.csv", "checkpoint.pt", "checkpoint.pt.tmp",
             "checkpoint", "checkpoint.tmp", "checkpoint.old")
"""What a run writes into its directory (a new run with ``overwrite`` removes these, and only these)."""
RESUME_UPDATES = ("steps", "val_every", "checkpoint_every")
"""The settings a resumed run may change; everything else stays as ``config.json`` records it."""


class RunError(ValueError):
    """A run directory, or a file in it, cannot be used as asked; the message names the path and the problem."""


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
        check_seed(self.seed)
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


def _step_lr(opts) -> float:
    """The lr a step runs at, as the run states it (``config.json``'s ``lr``, scheduled): that of its first
    optimizer's first group that is not AdamW's (the Muon family's AdamW tensors take ``adamw_lr``), read before the
    schedulers step."""
    groups = opts[0].param_groups
    return float(next((g for g in groups if g.get("norm") != "adamw"), groups[0])["lr"])


@dataclass
class RunResult:
    out: Path
    config: RunConfig
    rows: list[dict]
    elapsed_s: float
    diverged: bool = False
    model: torch.nn.Module | None = None
    start: int = 0
    """The step the run started from (the checkpoint's step when resumed)."""

    def val_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("val_loss") is not None]


def task_closure(task, model: torch.nn.Module, optimizers: list, batch):
    """The closure of one step on ``batch``: zero every optimizer's gradients, evaluate the task's loss, backward;
    returns the loss (what ``Optimizer.step(closure)`` calls)."""

    def closure():
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        value = task.loss(model, batch)
        value.backward()
        return value

    return closure


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          callback=None, overwrite: bool = True, updates: dict | None = None, log=None) -> RunResult:
    """Run ``cfg`` into directory ``out`` (created); ``resume=True`` continues the run recorded in ``out``.

    A new run into a directory that holds an earlier run removes that run's files first (:data:`RUN_FILES`);
    ``overwrite=False`` refuses any non-empty directory instead. On resume ``cfg`` is ignored: the run is
    ``out/config.json``, with ``updates`` (keys of :data:`RESUME_UPDATES`) applied; its checkpoint must be its own
    (see the module docstring), or :class:`RunError` is raised and nothing in ``out`` is changed. ``log(message)``
    receives notices (how a changed ``steps`` reshapes the lr schedule).

    ``callback(step, model, optimizers)``, if given, runs after every update (experiments measure with it)."""
    out = Path(out)
    rank, world = _rank_world()
    if resume:
        cfg, recorded = _resume_config(out, updates)
        run_id = recorded.get("run_id")
    else:
        if updates:
            raise ValueError("updates apply to a resumed run (resume=True) only")
        cfg.validate()
        _on_rank0(lambda: check_new_run_dir(out, overwrite))
        run_id = _from_rank0(uuid.uuid4().hex)  # one id for all ranks: each writes it into its checkpoint shard
    try:
        task = get_task(cfg.task, seed=cfg.seed, **cfg.task_options)
        model = task.build_model()
        inner = model
        if world > 1:
            check_parallel(cfg.optimizer, cfg.parallel)
            model = _parallelize(model, cfg.parallel)
            inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        hp, opts, sizes = _optimizers(cfg, task, inner)
        check_split(task, sizes, world)
    except (TypeError, ValueError) as e:
        if not resume or isinstance(e, DataError):  # a data file's error names that file
            raise
        raise RunError(f"{out / 'config.json'}: {e}") from None
    data = cfg.task_options.get("data")
    if resume:
        fixed = _fixed(recorded)
        if recorded.get("data_sha256") and fingerprint(data) != recorded["data_sha256"]:
            raise RunError(f"{data} is not the data this run started on (its SHA-256 differs from the one "
                           f"{out / 'config.json'} records): resuming would train on other data; restore it, or "
                           "start a new run with another --out")
    else:
        config = {**asdict(cfg), "hparams": hp, "unit": task.unit, "units_per_step": task.units_per_step(),
                  "run_id": run_id}
        if data is not None:
            config["data_sha256"] = fingerprint(data)
        fixed = _fixed(config)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, cfg)) for o in opts]
    start, elapsed, rows = 0, 0.0, []
    if resume:
        if log is not None and rank == 0 and checkpoint.saved_at(out / "checkpoint") == out / "checkpoint.old":
            log(f"{out / 'checkpoint'} is missing and {out / 'checkpoint.old'} holds the checkpoint before it (a save "
                "was interrupted): resuming from that")
        start, elapsed = _resume(out, cfg, run_id, fixed, inner, opts, scheds, world)
        rows = [r for r in read_metrics(out) if r["step"] <= start]
        missing = sorted(set(range(1, start + 1)) - {r["step"] for r in rows})
        if missing and log is not None and rank == 0:
            log(f"{out / 'metrics.jsonl'} lacks the rows of {len(missing)} of steps 1–{start} (first: {missing[0]}; "
                "the file was deleted or cut): training resumes from the checkpoint, and the record goes on without "
                "them")
        if start >= cfg.steps:  # nothing to train: leave every file as it is
            return RunResult(out, cfg, rows if rank == 0 else [], elapsed, model=inner, start=start)
        if rank == 0:
            _check_writable(out, ("config.json", "metrics.jsonl", "metrics.csv"))
        old_steps = recorded["steps"]
        if log is not None and rank == 0 and cfg.steps != old_steps:
            log(_schedule_notice(cfg, old_steps, start))
        if cfg.steps != old_steps or run_id is None or any(recorded.get(k) != getattr(cfg, k) for k in RESUME_UPDATES):
            run_id = run_id or _from_rank0(uuid.uuid4().hex)  # a run written before run ids gets one from now on
            changes = list(recorded.get("changes", []))
            if cfg.steps != old_steps:
                changes.append({"at_step": start, "steps": [old_steps, cfg.steps]})
            updated = {**recorded, **{k: getattr(cfg, k) for k in RESUME_UPDATES}, "run_id": run_id}
            if changes:
                updated["changes"] = changes
            _on_rank0(lambda: _write_config(out, updated))
    else:
        _on_rank0(lambda: _start_run_dir(out, config, overwrite))
    if world > 1:
        dist.barrier()
    identity = _identity(cfg, run_id, opts, fixed)
    distributed_checkpoint = world > 1 or checkpoint.saved_at(out / "checkpoint") is not None
    writer = _MetricsWriter(out, rows) if rank == 0 else None
    bar = _progress(cfg, start, progress and rank == 0)
    diverged = False
    for step in range(start, cfg.steps):
        tick = time.perf_counter()
        batch = task.batch(step) if sizes is None else task.batch_of(step, sizes[step])
        batch = _shard_batch(batch, rank, world)
        units = task.units_per_step() if sizes is None else sizes[step] * task.units_per_example

        closure = task_closure(task, model, opts, batch)
        lr = _step_lr(opts)
        try:
            if len(opts) == 1 and cfg.closure:  # a closure lets Gluon's online L compare gradients of one batch
                loss = opts[0].step(closure)
            else:
                loss = closure()
                for o in opts:
                    o.step()
        except NonFiniteGradient:  # the run has diverged (a NaN or Inf gradient): reported as such, not bad input
            loss = torch.tensor(float("nan"))
        for s in scheds:
            s.step()
        dt = time.perf_counter() - tick
        if callback is not None:
            callback(step + 1, model, opts)
        elapsed += dt
        value = _mean_over_ranks(loss.detach(), world)
        row = {"step": step + 1, "loss": value, "lr": lr, "elapsed_s": elapsed,
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
            try:
                if distributed_checkpoint:
                    checkpoint.save(out / "checkpoint", inner, opts, extra={
                        "step": step + 1, "elapsed_s": elapsed, "schedulers": [s.state_dict() for s in scheds],
                        "run": identity})
                else:
                    save_checkpoint(out, model, opts, scheds, step + 1, elapsed, run=identity)
            except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
                path = out / ("checkpoint" if distributed_checkpoint else "checkpoint.pt")
                kept = (f"; its last checkpoint is kept: --resume {out} continues from it once there is room"
                        if path.exists() else "")
                raise RunError(_cannot_write(path, e) + kept) from None
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return RunResult(out, cfg, writer.rows if writer is not None else [], elapsed, diverged, inner, start)


def check_parallel(optimizer: str, parallel: str) -> None:
    """Refuse combinations that cannot run distributed (before any process is started, where possible)."""
    if parallel not in PARALLEL:
        raise ValueError(f"unknown parallel mode {parallel!r}; valid: {', '.join(PARALLEL)}")
    if parallel == "fsdp" and optimizer == "torch-muon":
        raise ValueError("torch.optim.Muon cannot step FSDP2-sharded (DTensor) parameters; use --optimizer muon, "
                         "or --parallel ddp")
    if parallel == "fsdp" and optimizer == "dog":
        raise ValueError("DoG measures ‖W − W_0‖ in the whole tensor's norm, which an FSDP2 shard does not give; "
                         "use --parallel ddp")


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
    _check_splits(parts[0].shape[0], world)
    sliced = tuple(t.chunk(world)[rank] for t in parts)
    return sliced if isinstance(batch, (tuple, list)) else sliced[0]


def check_split(task, sizes: list[int] | None, world: int) -> None:
    """Every batch of the run splits evenly over ``world`` ranks (checked before anything is written)."""
    if world == 1:
        return
    batch = task.batch(0)
    first = (batch if isinstance(batch, (tuple, list)) else (batch,))[0].shape[0]
    batches = sorted({first, *(sizes or [])})
    for n in batches:
        _check_splits(n, world, batches)


def _check_splits(n: int, world: int, batches: list[int] | None = None) -> None:
    """``n`` examples split evenly over ``world`` ranks, or a ``ValueError`` naming the ``--nproc`` values that split
    every batch of the run (``batches``; the task fixes its batch size, so the rank count is what can change)."""
    if n % world:
        fits = [k for k in range(1, 17) if all(b % k == 0 for b in batches or [n])]
        raise ValueError(f"the batch of {n} examples does not split evenly over {world} ranks; this run's batches "
                         f"split over --nproc {', '.join(map(str, fits))}")


def _mean_over_ranks(loss: torch.Tensor, world: int) -> float:
    if world > 1:
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world
    return float(loss)


def preflight(cfg: RunConfig, world: int = 1) -> None:
    """Raise the ``ValueError`` that :func:`train` would raise for ``cfg`` on ``world`` ranks before its first step
    (the task, the optimizer and its hyperparameters, the batch schedule and its split over the ranks, the closure),
    without writing anything: a comparison checks every run before it starts the first, the command a distributed
    run before it launches the ranks."""
    cfg.validate()
    task = get_task(cfg.task, seed=cfg.seed, **cfg.task_options)
    _, _, sizes = _optimizers(cfg, task, task.build_model())
    check_split(task, sizes, world)


def _optimizers(cfg: RunConfig, task, model: torch.nn.Module) -> tuple[dict, list, list[int] | None]:
    """The run's hyperparameters, its optimizers of ``model`` and its batch sizes (None: the task's), with the
    closure an estimator needs checked: everything :func:`train` refuses before it writes anything."""
    hp = registry.resolve(cfg.optimizer, cfg.hparams)
    opts = registry.build(cfg.optimizer, model, task, hp)
    sizes = _batch_sizes(cfg, task)
    _check_closure(cfg, opts)
    return hp, opts, sizes


def _check_closure(cfg: RunConfig, opts: list) -> None:
    """An estimator that re-evaluates the batch (STORM) needs ``step(closure)``: refuse a run that gives it none
    before the run directory is written."""
    if len(opts) == 1 and cfg.closure:
        return
    for opt in opts:
        estimator = getattr(opt, "estimator", None)
        if getattr(estimator, "needs_closure", False):
            raise ValueError(f"{cfg.optimizer} needs step(closure): its estimator {estimator.name!r} re-evaluates the "
                             "batch at the previous weights; run it without --no-closure")


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


# --- run directories -------------------------------------------------------------------------------------------


def check_new_run_dir(out: str | Path, overwrite: bool, what: str = "run directory", *,
                      output: bool = False) -> None:
    """Refuse a place a new run cannot be written into, before anything is built or written: ``out`` is a file,
    lies under a file or in a directory that cannot be written, holds the output of `specopt compare` or
    `specopt experiment` (unless ``output``: the check of :func:`output_dir`), or (without ``overwrite``)
    is a directory that is not empty. ``what`` names the directory in the messages."""
    out = Path(out)
    if out.is_dir():
        if not output and (out / OUTPUT_MARKER).exists():
            raise RunError(f"{what} {out} holds the output of `specopt {_marker(out)}`, not a run; choose "
                           "another --out")
        if not overwrite:
            try:
                names = sorted(p.name for p in out.iterdir())
            except OSError as e:
                raise RunError(f"cannot read the {what} {out}: {_reason(e)}") from None
            if names:
                saved = has_checkpoint(out)
                resume = (f"continue the run in it with --resume {out}, " if saved else
                          "its run stopped before its first checkpoint (nothing to resume); " if
                          _holds_run_config(out) else "")
                raise RunError(f"{what} {out} is not empty (it holds {listing(names)}); {resume}choose another "
                               "--out, or pass --overwrite to replace its run")
        if overwrite and not output and not _holds_run_config(out):
            mine = sorted(name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink())
            if mine:
                why = ("is not a specopt run's config.json" if "config.json" in mine else
                       f"holds {listing(mine)} but no specopt run (no config.json of one)")
                raise RunError(f"{out / 'config.json' if 'config.json' in mine else out} {why}: --overwrite replaces "
                               "a run's files, not files of one's own; choose another --out")
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunError(f"cannot write in the {what} {out}: permission denied")
        return
    if out.exists() or out.is_symlink():
        raise RunError(f"{what} {out} exists and is not a directory; choose another --out")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"cannot create the {what} {out}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise RunError(f"cannot create the {what} {out}: no permission to write in {parent}")
            return
        if parent.is_symlink():
            raise RunError(f"cannot create the {what} {out}: {parent} is a broken link")


OUTPUT_MARKER = ".specopt-output"
"""The file that marks a directory as the output of `specopt compare` or `specopt experiment NAME` (it holds the
command), so that the same command may replace it and nothing else is written into it."""


def _marker_lines(out: Path) -> list[str]:
    """The marker's lines: the command, then (once it finished) every entry it wrote; ``["?"]`` if unreadable."""
    try:
        return (out / OUTPUT_MARKER).read_text(encoding="utf-8").strip().split("\n")
    except (OSError, UnicodeDecodeError):
        return ["?"]


def _marker(out: Path) -> str:
    """The command the marker names (its first line)."""
    return _marker_lines(out)[0]


def _written(out: Path) -> set[str] | None:
    """The entries of ``out`` the command wrote, as its marker lists them once it has finished (None where the
    marker lists none: a command still running or stopped, or one written before the list was kept)."""
    lines = _marker_lines(out)
    return set(lines[1:]) if len(lines) > 1 else None


def _mark_finished(out: Path, command: str) -> None:
    """The marker of a finished output: the command, then every entry it wrote, so that a later run of the command
    replaces those and refuses a directory where files of one's own were added since."""
    names = sorted(p.name for p in out.iterdir() if p.name != OUTPUT_MARKER)
    (out / OUTPUT_MARKER).write_text("\n".join([command, *names]) + "\n", encoding="utf-8")


def held_output(out: str | Path, command: str) -> str | None:
    """The command whose output ``out`` holds (its marker, or one written before markers, :func:`_unmarked_output`,
    recognised as ``command``'s); None for a directory that is new, empty or holds no such output."""
    out = Path(out)
    if (out / OUTPUT_MARKER).is_file():
        return _marker(out)
    return _unmarked_output(out, command) if out.is_dir() else None


def _unmarked_output(out: Path, command: str) -> str | None:
    """The command of an output written before the marker existed: a comparison (``runs/compare`` of an earlier
    version) by its report's title and its summary; an experiment in its default place, ``…/NAME``, by its report
    and its table (full or quick: either may replace it)."""
    if (command.removesuffix(" --quick") == f"experiment {out.name}" and (out / "report.md").is_file()
            and (out / "results.csv").is_file()):
        return command
    try:
        title = (out / "report.md").read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return None
    if not title.startswith("# specopt compare: "):
        return None
    if ", seeds " in title and (out / "summary.csv").is_file():
        return "compare --seeds"
    return "compare" if (out / "summary.json").is_file() else None


@contextlib.contextmanager
def output_dir(out: str | Path, command: str, what: str = "output directory", *, resume: bool = False,
               replaces: tuple[str, ...] = ()):
    """``out`` for the output of ``specopt COMMAND`` (``compare``, ``compare --seeds``, ``experiment NAME``), as a
    context: new, empty, or the output of the same command (or of one in ``replaces``), which is replaced — moved
    aside while the command runs, removed when it succeeds, put back when it fails or is interrupted. A directory
    that holds anything else (a run, another command's output, files of one's own) is refused, so that nothing is
    overwritten or mixed. ``resume``: ``out`` must hold the output of the same command, continued in place."""
    out = Path(out)
    if out.is_symlink() and out.is_dir():  # write in the directory it points to (replacing the link itself left a
        out = out.resolve()  # directory in its place, the old output behind it and a hidden link aside)
    check_new_run_dir(out, overwrite=True, what=what, output=True)
    _check_no_replaced_left(out, what)
    held = held_output(out, command)
    if resume:
        if held != command:
            raise RunError(f"--resume continues the output of `specopt {command}` in --out, and {out} "
                           + (f"holds that of `specopt {held}`" if held else "holds none") + "; leave out --resume "
                           "to start one")
        yield out
        _mark_finished(out, command)
        return
    aside = None
    try:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if names:
            if held not in (command, *replaces):
                holds = (f"the output of `specopt {held}`" if held else
                         f"files that `specopt {command}` did not write ({listing(names)})")
                quick = " (a --quick run does not replace a full one)" if command == f"{held} --quick" else ""
                raise RunError(f"{what} {out} holds {holds}{quick}; choose another --out, or empty it first")
            written = _written(out)
            added = [n for n in names if n != OUTPUT_MARKER and written is not None and n not in written]
            if added:
                raise RunError(f"{what} {out} holds the output of `specopt {held}` and files it did not write "
                               f"({listing(added)}), which replacing it would delete; move them, or choose another "
                               "--out")
            aside = out.with_name(f".{out.name}.replaced-{uuid.uuid4().hex[:8]}")
            os.replace(out, aside)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        (out / OUTPUT_MARKER).write_text(command + "\n", encoding="utf-8")
    except OSError as e:
        raise RunError(f"cannot prepare the {what} {out}: {_reason(e, out)}") from None
    try:
        yield out
    except BaseException:
        if aside is not None:
            shutil.rmtree(out, ignore_errors=True)
            os.replace(aside, out)
        elif sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER]:  # failed before writing anything
            (out / OUTPUT_MARKER).unlink()
            if created:
                out.rmdir()
        raise
    _mark_finished(out, command)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _check_no_replaced_left(out: Path, what: str) -> None:
    """An earlier output moved aside by a replacement that was killed (SIGKILL, a power cut: no handler ran) is
    removed where the replacement had finished (the step it did not reach), and otherwise refused: which of the two
    to keep is the user's choice, and it is not deleted behind their back."""
    left = sorted(out.parent.glob(f".{glob.escape(out.name)}.replaced-*")) if out.parent.is_dir() else []
    if not left:
        return
    if out.is_dir() and _written(out) is not None:
        for aside in left:
            shutil.rmtree(aside, ignore_errors=True)
        return
    raise RunError(f"{what} {out} was being replaced when the command was killed: the earlier output is in "
                   f"{listing([str(p) for p in left])}. To keep the earlier one: `rm -rf {out} && mv {left[0]} {out}`; "
                   f"to keep the new one (`--resume` continues it): `rm -rf {left[0]}`")


def has_checkpoint(out: Path) -> bool:
    """Whether the run directory ``out`` holds a checkpoint to resume from: ``checkpoint.pt``, or the DCP directory
    ``checkpoint`` (or the ``checkpoint.old`` an interrupted save left, :func:`specopt.checkpoint.saved_at`)."""
    return (out / "checkpoint.pt").exists() or checkpoint.saved_at(out / "checkpoint") is not None


def _holds_run_config(out: Path) -> bool:
    """Whether ``out/config.json`` is one :func:`train` wrote (a file of one's own by that name is not a run)."""
    try:
        read_config(out)
    except (OSError, ValueError):  # RunError is a ValueError
        return False
    return True


def _start_run_dir(out: Path, config: dict, overwrite: bool) -> None:
    """Create ``out``, remove an earlier run's files from it, write ``config.json``."""
    check_new_run_dir(out, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        _write_json(out / "config.json", config)
    except OSError as e:
        raise RunError(f"cannot create or write the run directory {out}: {_reason(e, out)}") from None


def _write_config(out: Path, config: dict) -> None:
    try:
        _write_json(out / "config.json", config)
    except OSError as e:
        raise RunError(f"cannot write {out / 'config.json'}: {_reason(e, out / 'config.json')}") from None


def _write_json(path: Path, data: dict) -> None:
    """Atomic: a temporary file, flushed, renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _on_rank0(fn) -> None:
    """``fn()`` on rank 0 only; its error is raised on every rank (so that no rank waits for the others)."""
    rank, world = _rank_world()
    error = None
    if rank == 0:
        try:
            fn()
        except Exception as e:
            if world == 1:
                raise
            error = e
    if world > 1:
        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0] is not None:
            raise RunError(box[0])


def _from_rank0(value):
    """Rank 0's ``value`` on every rank."""
    if _rank_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _reason(e: OSError, path: Path | None = None) -> str:
    """``e``'s reason, and the file it happened to where that is not ``path`` (already named)."""
    reason = e.strerror or str(e)
    if e.filename and (path is None or Path(e.filename) != Path(path)):
        return f"{reason} ({e.filename})"
    return reason


def _cannot_write(path: Path, e: BaseException) -> str:
    """Why ``path`` could not be written, with the free space where its disk is (nearly) full."""
    text = f"cannot write {path}: {_reason(e) if isinstance(e, OSError) else _first_line(e)}"
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return text
    return text + (f" (only {free / 2**20:.1f} MiB free on its disk)" if free < 2**30 else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


# --- the run's record: config.json ------------------------------------------------------------------------------

_REQUIRED = {"task": str, "optimizer": str, "steps": int, "seed": int, "task_options": dict, "hparams": dict}
_OPTIONAL = {"val_every": int, "checkpoint_every": int, "schedule": str, "decay_fraction": float,
             "batch_schedule": str, "parallel": str, "closure": bool, "run_id": str, "changes": list,
             "data_sha256": str}


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "true or false"
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def _has_type(value, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def read_config(out: str | Path) -> dict:
    """``out/config.json`` as written by :func:`train`, checked: a JSON object with the run's settings."""
    out = Path(out)
    path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} is a file, not a run directory; --resume takes the directory a run was written into")
    if not path.exists():
        raise FileNotFoundError(f"no run to resume in {out}: {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RunError(f"cannot read {path}: {_reason(e, path)}") from None
    except UnicodeDecodeError:
        raise RunError(f"{path} is not a text file, so not a run's config.json") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} holds {_json_kind(data)}, not the JSON object of a run's settings")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise RunError(f"{path} lacks the run's {', '.join(missing)}: it is not a config.json written by specopt")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in data and not _has_type(data[key], kind):
            raise RunError(f"{path}: {key} must be {_json_kind(kind())}, got {json.dumps(data[key])}")
    for key, value in data["hparams"].items():
        if not (_has_type(value, float) or (key == "gram" and (value is None or isinstance(value, bool)))
                or (key == "momentum" and value in MOMENTUM_SCHEDULES)):  # gluon-mvr's default is "storm"
            raise RunError(f"{path}: hyperparameter {key} must be a number, got {json.dumps(value)}")
    return data


def load_config(out: str | Path) -> RunConfig:
    """The run recorded in ``out/config.json``, validated; :class:`RunError` names the file otherwise."""
    return _resume_config(Path(out), None)[0]


def _resume_config(out: Path, updates: dict | None) -> tuple[RunConfig, dict]:
    recorded = read_config(out)
    cfg = RunConfig(**{k: v for k, v in recorded.items() if k in RunConfig.__dataclass_fields__})
    cfg.task_options, cfg.hparams = dict(cfg.task_options), dict(cfg.hparams)
    updates = dict(updates or {})
    unknown = sorted(set(updates) - set(RESUME_UPDATES))
    if unknown:
        raise ValueError(f"a resumed run can change only {', '.join(RESUME_UPDATES)}, not {', '.join(unknown)}")
    try:
        cfg.validate()
    except ValueError as e:
        raise RunError(f"{out / 'config.json'}: {e}") from None
    for key, value in updates.items():
        setattr(cfg, key, value)
    cfg.validate()  # the updates' own errors
    return cfg, recorded


def _schedule_notice(cfg: RunConfig, old_steps: int, start: int) -> str:
    """What a changed ``steps`` does to the lr (and batch) schedule of a resumed run."""
    old = RunConfig(**{**asdict(cfg), "steps": old_steps})
    text = f"steps {old_steps} → {cfg.steps}, continuing from step {start}: "
    if cfg.schedule == "constant":
        text += "the lr stays constant"
    else:
        decay = cfg.steps * (1 - cfg.decay_fraction)
        text += f"the {cfg.schedule} lr schedule is recomputed for {cfg.steps} steps (decay from step {decay:g}); "
        if all(lr_factor(i, old) == lr_factor(i, cfg) for i in range(start + 1)):
            text += f"the steps so far are those of a {cfg.steps}-step run"
        else:
            text += (f"step {start + 1} runs at {lr_factor(start, cfg):.3g}× the base lr "
                     f"(the {old_steps}-step schedule had reached {lr_factor(start, old):.3g}×)")
    if cfg.batch_schedule != "constant":
        text += f"; the {cfg.batch_schedule} batch schedule is recomputed for {cfg.steps} steps too"
    return text


# --- checkpoints ------------------------------------------------------------------------------------------------

_CHECKPOINT_KEYS = ("model", "optimizers", "schedulers", "step", "elapsed_s")


def _class_name(optimizer) -> str:
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def _identity(cfg: RunConfig, run_id: str, opts, fixed: dict) -> dict:
    """What a checkpoint records of its run: the run id of config.json, the task, the optimizer's name and
    class(es), and the settings a resumed run keeps (:func:`_fixed`)."""
    return {"id": run_id, "task": cfg.task, "optimizer": cfg.optimizer,
            "optimizer_classes": [_class_name(o) for o in opts], "config": fixed}


def _fixed(config: dict) -> dict:
    """The settings of ``config.json`` that a resumed run keeps (all but :data:`RESUME_UPDATES`), as recorded."""
    keys = [k for k in RunConfig.__dataclass_fields__ if k not in RESUME_UPDATES] + ["data_sha256"]
    return {k: config[k] for k in keys if k in config}


def _check_config(path: Path, record, fixed: dict) -> None:
    """config.json's settings against those the checkpoint was saved under (checkpoints that record them)."""
    saved = record.get("config") if isinstance(record, dict) else None
    if not isinstance(saved, dict):
        return
    changed = [f"{k} {json.dumps(fixed.get(k))} (saved with {json.dumps(saved.get(k))})"
               for k in sorted(set(saved) | set(fixed)) if saved.get(k) != fixed.get(k)]
    if changed:
        raise RunError(f"{path.parent / 'config.json'} was edited after {path} was saved: its {'; '.join(changed)}; "
                       "resuming would continue the run under settings it did not train with. Restore them, or "
                       "start a new run with another --out")


def save_checkpoint(out: Path, model, opts, scheds, step: int, elapsed: float, run: dict | None = None) -> None:
    """Atomic: write ``checkpoint.pt.tmp``, flush to disk, rename over ``checkpoint.pt``. ``run`` is the run's
    record (:func:`_identity`), checked on resume."""
    path, tmp = out / "checkpoint.pt", out / "checkpoint.pt.tmp"
    payload = {"model": model.state_dict(), "optimizers": [o.state_dict() for o in opts],
               "schedulers": [s.state_dict() for s in scheds], "step": step, "elapsed_s": elapsed}
    if run is not None:
        payload["run"] = run
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_checkpoint(out: Path) -> dict:
    """``out/checkpoint.pt``, checked to be a checkpoint :func:`save_checkpoint` wrote."""
    path = out / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist (the run stopped before its "
                                "first checkpoint; start it again with --overwrite)")
    if not path.is_file():
        raise RunError(f"{path} is not a file, so not a checkpoint")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise RunError(f"cannot read {path}: {_reason(e)}") from None
    if size == 0:
        raise RunError(f"{path} is empty (0 bytes), not a checkpoint")
    if head[:2] != b"PK":
        what = "a plain pickle" if head[:1] == b"\x80" else "not a checkpoint (unrecognised bytes)"
        raise RunError(f"{path} is {what}: specopt's checkpoints are torch.save zip archives")
    if not zipfile.is_zipfile(path):
        raise RunError(f"{path} is truncated or corrupt: its zip archive cannot be read ({size} bytes)")
    try:  # torch.load reads the records without their checksums: a flipped byte would load as a changed weight
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise RunError(f"{path} is truncated or corrupt: its zip archive cannot be read ({_reason(e)})") from None
    if bad is not None:
        raise RunError(f"{path} is corrupt: the record {bad} fails its CRC check (the weights or state it holds are "
                       "not the ones saved)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch.load raises many kinds; every one means this file cannot be resumed from
        raise RunError(f"{path} cannot be read as a checkpoint: {_first_line(e)}") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise RunError(f"{path} is not a specopt run checkpoint (it lacks {', '.join(missing)})")
    kinds = {"model": dict, "optimizers": list, "schedulers": list, "step": int, "elapsed_s": float}
    for key, kind in kinds.items():
        if not _has_type(ckpt[key], kind):
            raise RunError(f"{path} is not a specopt run checkpoint ({key} is a {type(ckpt[key]).__name__})")
    if not all(isinstance(s, dict) for s in ckpt["optimizers"] + ckpt["schedulers"]):
        raise RunError(f"{path} is not a specopt run checkpoint (its optimizer or scheduler states are not dicts)")
    return ckpt


_ADVICE = ("; start a new run with another --out (or --overwrite), or resume that run from the directory of its "
           "own config.json")


def _check_identity(path: Path, record, cfg: RunConfig, run_id: str | None, opts) -> None:
    """The checkpoint's record of its run against config.json's run (see :func:`_identity`)."""
    config = path.parent / "config.json"
    if record is None:
        if run_id is not None:
            raise RunError(f"{path} records no run, but {config} is run {run_id[:8]}: the checkpoint was left in "
                           f"this directory by an earlier run{_ADVICE}")
        return  # both written before run ids: the checks of the model, optimizers and schedulers remain
    if not isinstance(record, dict):
        raise RunError(f"{path} is not a specopt run checkpoint (its run record is a {type(record).__name__})")
    if record.get("task") != cfg.task:
        raise RunError(f"{path} is a checkpoint of a {record.get('task')!r} run, but {config} is a {cfg.task!r} "
                       f"run{_ADVICE}")
    if record.get("optimizer") != cfg.optimizer:
        raise RunError(f"{path} holds the state of optimizer {record.get('optimizer')!r}, but {config} trains with "
                       f"{cfg.optimizer!r}: resuming would train on as {record.get('optimizer')!r} under the name "
                       f"{cfg.optimizer!r}{_ADVICE}")
    theirs = [str(c).rsplit(".", 1)[-1] for c in record.get("optimizer_classes") or []]
    mine = [type(o).__qualname__ for o in opts]
    if theirs != mine:  # by class name, so that a class moved to another module still resumes
        raise RunError(f"{path} holds the state of {', '.join(theirs) or 'no optimizer class'}, but this run "
                       f"builds {', '.join(mine)}: an optimizer's state cannot be loaded into another class{_ADVICE}")
    if record.get("id") != run_id:
        raise RunError(f"{path} belongs to run {str(record.get('id'))[:8]}, not to {config}'s run "
                       f"{str(run_id)[:8]}: the checkpoint was left in this directory by another run{_ADVICE}")


def _check_model(path: Path, saved: dict, model: torch.nn.Module, cfg: RunConfig) -> None:
    expected = model.state_dict()
    problems = [f"it lacks {k!r}" for k in expected if k not in saved]
    problems += [f"it holds {k!r}, which this model does not have" for k in saved if k not in expected]
    for k, v in saved.items():
        if k in expected:
            if not isinstance(v, torch.Tensor):
                problems.append(f"{k!r} is not a tensor")
            elif tuple(v.shape) != tuple(expected[k].shape):
                problems.append(f"{k!r} is {tuple(v.shape)} there and {tuple(expected[k].shape)} here")
    if problems:
        more = f", and {len(problems) - 1} more difference(s)" if len(problems) > 1 else ""
        raise RunError(f"{path} holds a model that does not fit this run's {cfg.task} model ({problems[0]}{more}): "
                       f"it was written for another task or model size{_ADVICE}")


def _check_optimizers(path: Path, saved: list, opts) -> None:
    if len(saved) != len(opts):
        raise RunError(f"{path} holds {len(saved)} optimizer state(s), this run builds {len(opts)} "
                       f"({', '.join(type(o).__name__ for o in opts)}): it was written with another optimizer{_ADVICE}")
    for i, (state, o) in enumerate(zip(saved, opts, strict=True)):
        groups = state.get("param_groups")
        if not isinstance(groups, list) or not isinstance(state.get("state"), dict) or \
                not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
            raise RunError(f"{path} is not a specopt run checkpoint (optimizer {i}'s state has no param groups)")
        theirs = [len(g["params"]) for g in groups]
        mine = [len(g["params"]) for g in o.param_groups]
        if theirs != mine:
            raise RunError(f"{path}: optimizer {i}'s param groups hold {theirs} parameters, this run's {mine}: it "
                           f"was written with another optimizer or model{_ADVICE}")


def _check_schedulers(path: Path, saved, scheds, cfg: RunConfig) -> None:
    if not isinstance(saved, list) or len(saved) != len(scheds) or not all(isinstance(s, dict) for s in saved):
        raise RunError(f"{path} does not hold one lr scheduler state per optimizer of this run{_ADVICE}")
    for state, s in zip(saved, scheds, strict=True):
        theirs = state.get("base_lrs")
        if theirs != s.base_lrs:
            shown = sorted(set(theirs)) if isinstance(theirs, list) else theirs
            raise RunError(f"{path} was saved with base learning rates {shown}, but {path.parent / 'config.json'} "
                           f"gives {sorted(set(s.base_lrs))} ({cfg.optimizer}): it was written by another run "
                           f"(another optimizer or --lr){_ADVICE}")


def _check_step(path: Path, step, cfg: RunConfig) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise RunError(f"{path} is not a specopt run checkpoint (its step is {step!r})")
    if step > cfg.steps:
        raise RunError(f"{path} is at step {step}, past the run's {cfg.steps} steps; pass --steps N with N ≥ {step} "
                       "to continue it")


def _resume(out: Path, cfg: RunConfig, run_id: str | None, fixed: dict, model, opts, scheds,
            world: int) -> tuple[int, float]:
    """Check the run's checkpoint (DCP directory, or checkpoint.pt of a single-process run) against the run,
    then load it; nothing is written."""
    directory = checkpoint.saved_at(out / "checkpoint") or out / "checkpoint"
    if (directory / ".metadata").exists():
        try:
            extra = checkpoint.read_extra(directory)
        except checkpoint.UnreadableCheckpoint as e:
            raise RunError(str(e)) from None
        except Exception as e:  # DCP raises many kinds; every one means this directory cannot be resumed from
            raise RunError(f"{directory} cannot be read as a checkpoint: {_first_line(e)}") from None
        if not isinstance(extra, dict) or not all(k in extra for k in ("step", "elapsed_s", "schedulers")):
            raise RunError(f"{directory} is not a specopt run checkpoint (it lacks the step and schedulers)")
        _check_identity(directory, extra.get("run"), cfg, run_id, opts)
        _check_schedulers(directory, extra["schedulers"], scheds, cfg)
        _check_step(directory, extra["step"], cfg)
        _check_config(directory, extra.get("run"), fixed)
        try:
            checkpoint.load(directory, model, opts)
            for s, state in zip(scheds, extra["schedulers"], strict=True):
                s.load_state_dict(state)
        except checkpoint.UnreadableCheckpoint as e:
            raise RunError(str(e)) from None
        except Exception as e:
            raise RunError(f"{directory} does not fit this run's model and optimizer: {_first_line(e)}") from None
        start, elapsed = extra["step"], extra["elapsed_s"]
    else:
        if directory.is_dir() and any(directory.iterdir()):
            raise RunError(f"{directory} holds no .metadata: this distributed checkpoint is incomplete or damaged "
                           "and cannot be resumed from")
        if world > 1 and cfg.parallel == "fsdp":
            raise ValueError("this run was saved by a single process (checkpoint.pt); resume it with --parallel ddp "
                             "or on one process")
        path = out / "checkpoint.pt"
        ckpt = _load_checkpoint(out)
        _check_identity(path, ckpt.get("run"), cfg, run_id, opts)
        _check_model(path, ckpt["model"], model, cfg)
        _check_optimizers(path, ckpt["optimizers"], opts)
        _check_schedulers(path, ckpt["schedulers"], scheds, cfg)
        _check_step(path, ckpt["step"], cfg)
        _check_config(path, ckpt.get("run"), fixed)
        try:
            model.load_state_dict(ckpt["model"])
            for o, s, so, ss in zip(opts, scheds, ckpt["optimizers"], ckpt["schedulers"], strict=True):
                o.load_state_dict(so)
                s.load_state_dict(ss)
        except Exception as e:
            raise RunError(f"{path} does not fit this run's model and optimizer: {_first_line(e)}") from None
        start, elapsed = ckpt["step"], ckpt["elapsed_s"]
    # The lr of the next step from the schedule for config.json's steps, changed or not: a resume with --steps N that
    # was interrupted before its first checkpoint left config.json at N and the checkpoint's lr at the old schedule's
    # (0 at its end), so that a plain --resume ran on at lr 0. Unchanged steps give the checkpoint's lr exactly.
    for o, s in zip(opts, scheds, strict=True):
        for group, base in zip(o.param_groups, s.base_lrs, strict=True):
            value = base * lr_factor(start, cfg)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value
    return start, float(elapsed)


def read_metrics(out: str | Path) -> list[dict]:
    """The rows of ``out/metrics.jsonl`` (none if it does not exist), a null metric read as NaN. A last line cut
    short (a process stopped while writing it) is dropped; any other line that is not a row is a
    :class:`RunError`."""
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"cannot read {path}: {_reason(e) if isinstance(e, OSError) else 'not UTF-8 text'}") from None
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and _has_type(row.get("step"), int)):
            if i == len(lines) - 1:
                break
            raise RunError(f"{path}, line {i + 1}: not a metrics row (a JSON object with a step)")
        rows.append({k: math.nan if v is None and k in _FLOAT_METRICS else v for k, v in row.items()})
    return rows


_FLOAT_METRICS = ("loss", "lr", "elapsed_s", "throughput", "val_loss")
"""The metrics written as null where they are not finite (a diverged step), read back as NaN."""


def _check_writable(out: Path, names: tuple[str, ...]) -> None:
    """Before a resumed run writes anything: each of ``names`` in ``out`` a regular file it may write (or absent in a
    directory it may write), so that a file it cannot write fails the resume before any other file was changed (a
    read-only metrics.csv used to fail it after metrics.jsonl had been emptied and config.json rewritten)."""
    for name in names:
        path = out / name
        if path.exists() and not path.is_file():
            raise RunError(f"{path} is not a regular file, so the resumed run cannot write it; nothing was changed")
        if not os.access(path if path.exists() else out, os.W_OK):
            raise RunError(f"{path if path.exists() else out} is not writable (permission denied), so the resumed "
                           "run cannot write it; nothing was changed")


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
        # JSON has no NaN or Infinity: a diverged step's values are written as null (read back as NaN)
        self.jsonl.write(json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                                     for k, v in row.items()}, allow_nan=False) + "\n")
        self.csv.writerow({k: row.get(k, "") for k in CSV_FIELDS})

    def write(self, row: dict) -> None:
        self.rows.append(row)
        try:
            self._emit(row)
            self.jsonl.flush()
            self.csv_file.flush()
        except OSError as e:
            raise RunError(_cannot_write(Path(self.jsonl.name), e)) from None

    def close(self) -> None:
        self.jsonl.close()
        self.csv_file.close()
