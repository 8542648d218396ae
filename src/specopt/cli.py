"""The `specopt` command: train, compare, run the papers' experiments.

    specopt train --task char-gpt --optimizer scion --steps 500 --out runs/scion
    specopt train --resume runs/scion               # continue it; --steps N extends it
    specopt train --nproc 2 --task mlp --optimizer muon     # 2 processes through torchrun (DDP; --parallel fsdp)
    specopt compare                                  # the default comparison (char-GPT, 7 optimizers)
    specopt experiment muon-conditioning
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated

try:
    import typer
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("the specopt command needs the experiment extras: pip install 'specopt[experiments]'")
from typer.core import TyperCommand

from specopt import registry
from specopt.tasks import TASKS, DataError
from specopt.tasks.base import MAX_SEED
from specopt.training import (
    OUTPUT_MARKER,
    RESUME_UPDATES,
    SCHEDULES,
    RunConfig,
    RunError,
    check_new_run_dir,
    check_parallel,
    has_checkpoint,
    held_output,
    load_config,
    output_dir,
    preflight,
    train,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,  # click's plain help
                  help="Geometry-aware optimizers: train, compare, reproduce the papers' experiments.")

DEFAULT_OPTIMIZERS = "adamw,torch-muon,muon,scion,uscion,clipped-scion,gluon"
WIDTH_OPTION = {"char-gpt": "n_embd", "mlp": "width", "cnn": "width"}
OPTIMIZER_SUMMARY = {
    "adamw": "torch.optim.AdamW (betas 0.9, 0.95): the baseline",
    "torch-muon": "torch.optim.Muon on hidden matrices, AdamW on the rest",
    "muon": "specopt's Muon: msign of Nesterov momentum; AdamW on the rest",
    "normuon": "NorMuon: Muon's update rows divided by their running RMS",
    "adamuon": "AdaMuon: msign(sign(momentum)), element-wise second moment, AdamW's RMS",
    "drop-muon": "Drop-Muon: Muon on the layers above a random cutoff each step",
    "adago": "AdaGO: Muon's direction, AdaGrad-Norm step size per matrix",
    "muonbp": "MuonBP: msign of each row block, of the whole matrix every 5th step",
    "scion": "Scion (SCG), constrained: W ← (1−γ)W + γρ·lmo(d)",
    "uscion": "unconstrained Scion (uSCG): W ← (1−γλ)W + γρ·lmo(d)",
    "clipped-scion": "the uSCG step scaled by min{1, Σ_l ρ_l‖d_l‖_*/ρ_c}",
    "gluon": "per-layer steps from layer-wise (L0, L1)-smoothness",
    "dog": "per-layer DoG: step from the distance travelled over the gradients seen, no lr",
    "gluon-mvr": "Gluon on STORM (momentum variance reduction), steps ∝ (k+1)^(-2/3)",
    "almond": "averaged lmo directions: d ← βd + (1−β)ρ·lmo(g)",
    "sgd": "torch.optim.SGD with momentum",
    "prox-spectral": "proximal spectral preconditioning; AdamW on the rest",
}
TASK_SUMMARY = {
    "char-gpt": "character GPT (--size, --width); Shakespeare or --data",
    "cnn": "CNN on 5,000 MNIST digits, or --data CSV/CIFAR-10",
    "mlp": "MLP on the same images (--width)",
    "logreg": "logistic regression on the same images (convex)",
    "matrix-factorization": "¼‖XXᵀ − M*‖², condition number κ (synthetic)",
    "icl-regression": "linear-transformer in-context regression",
    "heavy-tailed": "regression with infinite-variance label noise",
}
RESUME_FLAGS = ("task", "optimizer", "seed", "size", "data", "width", "lr", "momentum", "weight_decay", "radius",
                "clip_radius", "gram", "schedule", "batch_schedule", "parallel", "closure")
"""Flags that define a run: with --resume each must be left out or equal what config.json records."""


def _listing(title: str, names, summary: dict, width: int) -> str:
    """A help block, one line per name, each cut to ``width`` columns (``\\b``: click keeps the line breaks)."""
    pad = max(len(n) for n in names) + 2
    lines = []
    for name in names:
        text, room = summary.get(name, ""), width - 2 - pad  # the block's indent
        if len(text) > room:
            text = text[:max(room - 1, 0)].rsplit(" ", 1)[0].rstrip(",;:") + "…"
        lines.append(f"  {name:<{pad}}{text}".rstrip())
    return "\b\n" + title + ":\n" + "\n".join(lines)


def _with_listings(listings):
    """A command class whose help ends with ``listings()`` — ``[(title, names, summary), ...]`` — one line per
    entry, computed when the help is shown (so that `specopt --help` imports nothing more)."""

    class Command(TyperCommand):
        def format_help(self, ctx, formatter):
            base = self.__dict__.setdefault("_base_help", self.help or "")
            width = formatter.width
            self.help = "\n\n".join([base, *(_listing(*block, width) for block in listings())])
            return super().format_help(ctx, formatter)

    return Command


Task = Annotated[str, typer.Option(help=f"task: {', '.join(TASKS)}")]
Steps = Annotated[int, typer.Option(min=1, help="training steps")]
Seed = Annotated[int, typer.Option(min=0, max=MAX_SEED, help="seed of data order and initialisation")]
Size = Annotated[str | None, typer.Option(help="char-gpt size: tiny, small, medium")]
Data = Annotated[Path | None, typer.Option(help="your data: a text file (char-gpt), an MNIST CSV or a CIFAR-10 "
                                            "directory (cnn, mlp, logreg)")]
Width = Annotated[int | None, typer.Option(min=1, help="model width (char-gpt n_embd, mlp/cnn width)")]
ValEvery = Annotated[int, typer.Option(min=1, help="validate every K steps")]
CkptEvery = Annotated[int, typer.Option(min=1, help="checkpoint every K steps")]
Schedule = Annotated[str, typer.Option(help=f"lr schedule: {', '.join(SCHEDULES)}")]


def _positive(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a positive finite number, got {value}")
    return value


def _momentum(value: float | None) -> float | None:
    if value is not None and not 0 <= value < 1:
        raise typer.BadParameter(f"must be in [0, 1), got {value}")
    return value


Lr = Annotated[float | None, typer.Option(callback=_positive, help="learning rate, > 0 (default: the optimizer's)")]
Momentum = Annotated[float | None, typer.Option(callback=_momentum, help="momentum β, in [0, 1)")]
WeightDecay = Annotated[float | None, typer.Option(min=0.0, help="weight decay")]
Radius = Annotated[float | None, typer.Option(help="hidden-layer radius ρ (other roles "
                                              "keep their ratio)")]
ClipRadius = Annotated[float | None, typer.Option(help="ρ_c of clipped-scion (> 0)")]
Progress = Annotated[bool | None, typer.Option("--progress/--no-progress",
                                               help="show a progress bar [default: when stderr is a terminal]")]

Closure = Annotated[bool, typer.Option(help="pass a closure to step() (Gluon and STORM re-evaluate the batch with "
                                       "it); --no-closure calls step() bare, as HF Trainer does")]
Gram = Annotated[bool | None, typer.Option("--gram/--no-gram", help="msign's Gram form on wide matrices: --gram "
                                           "also in bf16 (faster, slightly less accurate), --no-gram never "
                                           "(default: only where it is as accurate)")]


def _shown(progress: bool | None) -> bool:
    """A progress bar by default only on a terminal: piped to a file, its carriage returns are hundreds of KB."""
    return sys.stderr.isatty() if progress is None else progress


def launch(nproc: int, options: dict, progress: bool) -> int:
    """Run ``specopt train`` with these options in ``nproc`` processes (torchrun's launcher, called); returns the exit
    code: 0, or a failed worker's own (2: bad input, 1: a failed run)."""
    args = ["train"]
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # --gram / --no-gram, --closure / --no-closure
            args.append(flag if value else f"--no-{flag[2:]}")
        elif value is not None:
            args += [flag, str(value)]
    args.append("--progress" if progress else "--no-progress")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun --standalone, as a call: a worker's failure comes back as an exception, not the launcher's traceback
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"specopt-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))  # the workers' share
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its report of the failed worker
    errors, os.environ[WORKER_ERRORS] = tempfile.mkstemp(prefix="specopt-errors-")
    os.close(errors)
    try:
        elastic_launch(config, sys.executable)("-m", "specopt.cli", *args)
    except ChildFailedError as e:  # each rank has printed its one-line error; 2: bad input, 1: a failed run
        return max((f.exitcode for f in e.failures.values() if f.exitcode and f.exitcode > 0), default=1)
    except SignalException:  # Ctrl-C or SIGTERM reached the launcher (it was "an unexpected failure", exit 1)
        out = options.get("out") or options.get("resume")
        typer.secho(f"interrupted: `specopt train --resume {out}` continues the run from its last checkpoint",
                    fg="yellow", err=True)
        return 130
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
        os.unlink(os.environ.pop(WORKER_ERRORS))
    return 0


def _init_distributed() -> None:
    """Inside a torchrun worker: a gloo process group (the tasks train on the CPU, also on a machine with a GPU),
    one thread share."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    # A group still alive when the interpreter exits can abort the worker ("terminate called without an active
    # exception"), which turned a refused run's exit 2 into the launcher's 1 now and then: end it first.
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)


def _kept(out: Path, earlier: bool, resumable: bool = False) -> str:
    """What a failed or interrupted `compare` or `experiment` left in ``out``: its earlier output, if there was one
    (:func:`~specopt.training.output_dir` puts it back), or (a comparison) the runs it finished."""
    if earlier:
        return f"; the earlier output in {out} is kept"
    if resumable and (Path(out) / OUTPUT_MARKER).is_file():  # written by this command, which got that far
        return f"; the runs it finished are in {out}: the same command with --resume continues it"
    return ""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler's stop, ``timeout``, ``kill``) ends the command as Ctrl-C does, so that what it does on
    an interruption is done: an experiment's or comparison's earlier output put back, the message printed."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals cannot be caught here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _written_where(e: Exception, out) -> str:
    """An error's message, naming the output it failed to write where it names no file: an ``OSError`` without a
    filename (a full disk: "[Errno 28] No space left on device"), or torch.save's full-disk ``RuntimeError``
    ("[enforce fail at inline_container.cc…] unexpected pos")."""
    if isinstance(e, OSError) and e.errno is not None:  # not one raised with a message of its own
        return f"cannot write {e.filename or f'the output in {out}'}: {e.strerror or e}"
    if isinstance(e, RuntimeError) and ("inline_container" in str(e) or "unexpected pos" in str(e)):
        return f"cannot write a checkpoint in {out}: the file was cut short (is the disk full?)"
    return str(e)


def _fail(message: str) -> None:
    if not _said_by_another_rank(message):
        typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


WORKER_ERRORS = "SPECOPT_WORKER_ERRORS"
"""The environment variable naming the file where `--nproc N`'s workers note the errors they print."""


def _said_by_another_rank(message: str) -> bool:
    """In a worker of `specopt train --nproc N`: whether another rank has printed this error already (noted in the
    launcher's file, under a lock). The ranks read the same files and settings, so most errors are every rank's and
    were printed N times; an error of one rank alone is still printed."""
    path = os.environ.get(WORKER_ERRORS)
    if not path or "LOCAL_RANK" not in os.environ:
        return False
    try:
        import fcntl

        with open(path, "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            said = message in f.read().split("\0")
            if not said:
                f.write(message + "\0")
                f.flush()
        return said
    except (ImportError, OSError):  # no fcntl (Windows), or the file is gone: print it
        return False


def _task_options(task: str, size, data, width) -> dict:
    if task not in TASKS:
        _fail(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    options = {}
    if size is not None:
        if task != "char-gpt":
            _fail("--size applies to the char-gpt task only")
        options["size"] = size
    if data is not None:
        if task not in ("char-gpt", "cnn", "mlp", "logreg"):
            _fail(f"--data does not apply to the {task} task")
        options["data"] = os.path.abspath(data)  # a resumed run reads it again, from wherever it is resumed
    if width is not None:
        if task not in WIDTH_OPTION:
            _fail(f"--width applies to {', '.join(WIDTH_OPTION)}")
        options[WIDTH_OPTION[task]] = width
    return options


@app.command("train", short_help="Train one optimizer on one task, with checkpoints.")
def train_command(
    ctx: typer.Context,
    task: Task = "char-gpt",
    optimizer: Annotated[str, typer.Option(help=f"optimizer: {', '.join(registry.optimizer_names())}")] = "scion",
    steps: Annotated[int, typer.Option(min=1, help="training steps; with --resume, the run's new total (extends "
                                       "it; the lr schedule is recomputed for it)")] = 500,
    out: Annotated[Path, typer.Option(help="run directory: new or empty (or see --overwrite)")] = Path("runs/train"),
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory, as its config.json "
                                                "records it")] = None,
    overwrite: Annotated[bool, typer.Option(help="start afresh in an --out that holds another run: its "
                                            "config, metrics and checkpoint are removed")] = False,
    lr: Lr = None, momentum: Momentum = None, weight_decay: WeightDecay = None, radius: Radius = None,
    clip_radius: ClipRadius = None, gram: Gram = None, seed: Seed = 0, size: Size = None, data: Data = None,
    width: Width = None, val_every: ValEvery = 50, checkpoint_every: CkptEvery = 100,
    schedule: Schedule = "linear-decay",
    batch_schedule: Annotated[str, typer.Option(help="constant, or bst: batch grows so that tokens per step "
                                                "∝ (tokens seen)^(2/3)")] = "constant",
    nproc: Annotated[int, typer.Option(min=1, help="processes on this machine, launched through torchrun (gloo, "
                                       "CPU threads shared out); each trains its slice of every batch")] = 1,
    parallel: Annotated[str, typer.Option(help="ddp (replicated model) or fsdp (FSDP2 fully_shard)")] = "ddp",
    closure: Closure = True, progress: Progress = None,
) -> None:
    """Train one optimizer on one task: metrics every step, validation and atomic checkpoints every K steps.

    A new run needs an --out that does not exist or is empty; --overwrite replaces the run in it.

    --resume DIR continues the run in DIR as its config.json records it; flags that would change it are refused.

    --steps N with --resume makes N the run's total: the lr schedule is recomputed as if planned for N steps.

    Exit codes: 0 done, 1 diverged (NaN/Inf), 2 bad input or a file that cannot be read or written, 130 interrupted.
    """
    progress = _shown(progress)
    given = [name for name in ctx.params if _given(ctx, name)]
    worker = "LOCAL_RANK" in os.environ  # a process started by torchrun
    updates: dict = {}
    cfg = None
    try:
        if resume is not None:
            updates = _resume_updates(resume, given, ctx.params)
        else:
            hparams = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "radius": radius,
                       "clip_radius": clip_radius, "gram": gram}
            cfg = RunConfig(task=task, optimizer=optimizer, steps=steps, seed=seed,
                            task_options=_task_options(task, size, data, width),
                            hparams={k: v for k, v in hparams.items() if v is not None}, val_every=val_every,
                            checkpoint_every=checkpoint_every, schedule=schedule, batch_schedule=batch_schedule,
                            parallel=parallel, closure=closure)
            cfg.validate()
            if nproc > 1 and not worker:  # refused once here, not by every rank
                check_parallel(optimizer, parallel)
                preflight(cfg, world=nproc)
            if not worker:  # torchrun's workers: rank 0 checks inside train(), the others must not race it
                check_new_run_dir(out, overwrite)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if nproc > 1 and not worker:  # the workers get exactly the flags given here
        options = {name: ctx.params[name] for name in given if name not in ("nproc", "progress")}
        raise typer.Exit(launch(nproc, options, progress))
    if worker:
        _init_distributed()
    try:
        with contextlib.nullcontext() if worker else _terminate_as_interrupt():  # torchrun stops its own workers
            if resume is not None:
                result = train(RunConfig(), resume, resume=True, progress=progress, updates=updates, log=typer.echo)
            else:
                result = train(cfg, out, progress=progress, overwrite=overwrite)
    except (ValueError, FileNotFoundError, OSError) as e:  # DataError and RunError are ValueErrors
        _fail(str(e))
    except KeyboardInterrupt:
        run = Path(resume if resume is not None else out)
        saved = has_checkpoint(run)
        typer.echo(f"interrupted: `specopt train --resume {run}` continues the run from its last checkpoint" if saved
                   else f"interrupted before the first checkpoint: {run} holds no run to resume", err=True)
        raise typer.Exit(130) from None
    if result.diverged:  # every rank: torchrun then reports the failure too
        if result.rows:
            typer.secho(f"error: diverged: the training loss became NaN or Inf at step {result.rows[-1]['step']}; "
                        f"metrics up to it in {result.out}", fg="red", err=True)
        raise typer.Exit(1)
    if result.rows == []:  # ranks other than 0 write and print nothing
        return
    if result.start >= result.config.steps:
        typer.echo(f"nothing to do: the run in {result.out} is complete at step {result.start} of "
                   f"{result.config.steps}; --resume {result.out} --steps N (N > {result.start}) trains it on")
        return
    val = result.val_rows()
    final = f"; final validation loss {val[-1]['val_loss']:.4f}" if val else ""
    trained = (f"steps {result.start} → {result.config.steps}" if result.start else
               f"{result.config.steps} steps")
    typer.echo(f"done: {trained} in {result.elapsed_s:.1f}s{final}; metrics and checkpoint in {result.out}")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set ``name`` (on the command line or through the environment), rather than its default.
    By the source's name: typer ships its own copy of click's ParameterSource."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _resume_updates(resume: Path, given: list[str], values: dict) -> dict:
    """With --resume: refuse flags that would change the run (they must be left out or equal what config.json
    records); return the changes a resumed run may make (--steps, --val-every, --checkpoint-every)."""
    from specopt.tasks.text import SIZES

    cfg = load_config(resume)
    config = resume / "config.json"
    if "overwrite" in given and values["overwrite"]:
        raise ValueError("--overwrite starts a new run; it cannot be combined with --resume")
    if "out" in given and os.path.realpath(values["out"]) != os.path.realpath(resume):
        raise ValueError(f"--out {values['out']} and --resume {resume} name different directories: a resumed run "
                         "stays in its own directory")
    recorded = {"task": cfg.task, "optimizer": cfg.optimizer, "seed": cfg.seed, "schedule": cfg.schedule,
                "batch_schedule": cfg.batch_schedule, "parallel": cfg.parallel, "closure": cfg.closure,
                "data": cfg.task_options.get("data")}
    for key in ("lr", "momentum", "weight_decay", "radius", "clip_radius", "gram"):
        recorded[key] = cfg.hparams.get(key)
    if cfg.task == "char-gpt":
        recorded["size"] = cfg.task_options.get("size", "tiny")
        recorded["width"] = cfg.task_options.get("n_embd") or getattr(SIZES.get(recorded["size"]), "n_embd", None)
    else:
        recorded["size"] = None
        recorded["width"] = cfg.task_options.get("width", {"mlp": 256, "cnn": 32}.get(cfg.task))
    differing = []
    for name in RESUME_FLAGS:
        if name in given and not _same(name, values[name], recorded[name]):
            flag = "--" + name.replace("_", "-")
            if isinstance(values[name], bool):
                flag, shown = (flag if values[name] else f"--no-{flag[2:]}"), ""
            else:
                shown = f" {values[name]}"
            differing.append(f"{flag}{shown} (the run's {name.replace('_', ' ')} is "
                             f"{'not set' if recorded[name] is None else recorded[name]})")
    if differing:
        raise ValueError(f"--resume continues the run in {resume} as {config} records it, and "
                         f"{'; '.join(differing)} would change it: a resumed run keeps its task, optimizer, "
                         "hyperparameters, seed, data and schedule (--steps, --val-every and --checkpoint-every may "
                         "change); to train with other settings, start a new run with another --out")
    return {key: values[key] for key in RESUME_UPDATES if key in given}


def _same(name: str, value, recorded) -> bool:
    if value is None or recorded is None:
        return value is None and recorded is None
    if name == "data":
        return os.path.realpath(value) == os.path.realpath(recorded)
    if isinstance(value, float) or isinstance(recorded, float):
        return not isinstance(recorded, bool) and float(value) == float(recorded)
    return value == recorded


@app.command("compare", short_help="Compare optimizers on one task: report, plot, CSV.", cls=_with_listings(lambda: [
    ("Optimizers (--optimizers a,b,c)", registry.optimizer_names(), OPTIMIZER_SUMMARY),
    ("Tasks (--task)", list(TASKS), TASK_SUMMARY)]))
def compare_command(
    ctx: typer.Context,
    task: Task = "char-gpt",
    optimizers: Annotated[str, typer.Option(help="comma-separated optimizer names")] = DEFAULT_OPTIMIZERS,
    steps: Steps = 600, out: Annotated[Path, typer.Option(help="report directory")] = Path("runs/compare"),
    sweep: Annotated[bool, typer.Option(help="sweep each optimizer's lr over ×1/4…×4 its default")] = False,
    seed: Seed = 0, size: Size = None, data: Data = None, width: Width = None, val_every: ValEvery = 50,
    schedule: Schedule = "linear-decay", gram: Gram = None, closure: Closure = True, progress: Progress = None,
    seeds: Annotated[str | None, typer.Option(
        help="comma-separated seeds (e.g. 0,1,2): the comparison once per seed in OUT/seed<S>, and the mean ± sd "
             "of each optimizer's final loss and step ratio in OUT/report.md, summary.csv, spread.png")] = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted comparison in --out (the same command): "
                                         "the runs it finished are kept, the others run")] = False,
) -> None:
    """Compare optimizers on one task (same seed, same data order): report.md, loss.png, metrics.csv; with --seeds,
    once per seed and the spread: report.md, summary.csv, spread.png."""
    from specopt.compare import compare, run_config, summary_table
    from specopt.compare_seeds import check_seeds, compare_seeds, table

    progress = _shown(progress)
    names = [n.strip() for n in optimizers.split(",")]
    unknown = [n for n in names if n and n not in registry.optimizer_names()]
    if unknown or not all(names):
        problem = (f"unknown optimizer(s) {', '.join(unknown)}" if unknown else
                   f"--optimizers {optimizers!r} has an empty name")
        _fail(f"{problem}; valid optimizers: {', '.join(registry.optimizer_names())}")
    base = RunConfig(task=task, steps=steps, seed=seed, task_options=_task_options(task, size, data, width),
                     hparams={} if gram is None else {"gram": gram}, val_every=min(val_every, steps),
                     checkpoint_every=steps, schedule=schedule, closure=closure)
    seed_list = None
    if seeds is not None:
        if sweep or _given(ctx, "seed"):
            _fail(f"--seeds does not go with {'--sweep (a sweep picks each lr on one seed)' if sweep else '--seed'}; "
                  "run them apart")
        try:
            seed_list = [int(s) for s in seeds.split(",")]
        except ValueError:
            _fail(f"--seeds takes comma-separated integers in [0, {MAX_SEED}], got {seeds!r}")
        try:
            check_seeds(seed_list)
        except ValueError as e:
            _fail(f"--seeds {seeds}: {e}")
    command = "compare --seeds" if seed_list is not None else "compare"
    earlier = held_output(out, command) is not None and not resume
    try:
        base.validate()
        for name in names:  # every run checked before the directory's earlier report is replaced
            preflight(run_config(base, name))
        with _terminate_as_interrupt(), output_dir(out, command, what="report directory", resume=resume):
            if seed_list is not None:
                rows = compare_seeds(base, names, out, seed_list, progress=progress, log=typer.echo, resume=resume)
            else:
                runs = compare(base, names, out, sweep=sweep, progress=progress, log=typer.echo, resume=resume)
    except (ValueError, FileNotFoundError, DataError, RuntimeError, OSError) as e:
        _fail(f"{_written_where(e, out)}{_kept(out, earlier, resumable=True)}")
    except KeyboardInterrupt:
        typer.echo(f"interrupted: no report written{_kept(out, earlier, resumable=True)}", err=True)
        raise typer.Exit(130) from None
    if seed_list is not None:
        typer.echo("\n" + table(rows))
        typer.echo(f"\nreport: {out / 'report.md'}\nplot:   {out / 'spread.png'}\ndata:   {out / 'summary.csv'}")
        return
    typer.echo("\n" + summary_table(runs))
    typer.echo(f"\nreport: {out / 'report.md'}\nplot:   {out / 'loss.png'}\ndata:   {out / 'metrics.csv'}")


def _experiment_summaries() -> list[tuple]:
    """Each experiment's name and the first sentence of its module's docstring."""
    from specopt.experiments import EXPERIMENTS

    summary = {}
    for name, run in EXPERIMENTS.items():
        doc = " ".join((sys.modules[run.__module__].__doc__ or "").split("\n\n")[0].split())
        doc = doc.removeprefix(f"`{name}`:").strip().replace("``", "")
        end = doc.find(". ")
        summary[name] = doc if end < 0 else doc[:end + 1]
    return [("Experiments", list(EXPERIMENTS), summary)]


@app.command("experiment", short_help="Reproduce a claim of the papers: plot, table, report.",
             cls=_with_listings(_experiment_summaries))
def experiment_command(
    name: Annotated[str, typer.Argument(help="the experiment: one of those listed above")],
    out: Annotated[Path | None, typer.Option(help="output directory (default runs/experiments/NAME)")] = None,
    quick: Annotated[bool, typer.Option(help="a small, fast version (for tests and a first look)")] = False,
    progress: Progress = None,
) -> None:
    """Reproduce a claim of the papers specopt implements: writes a plot, a table and a short report."""
    from specopt.experiments import EXPERIMENTS

    progress = _shown(progress)
    if name not in EXPERIMENTS:
        _fail(f"unknown experiment {name!r}; valid experiments: {', '.join(EXPERIMENTS)}")
    out = out or Path("runs/experiments") / name
    command = f"experiment {name}" + (" --quick" if quick else "")
    earlier = held_output(out, f"experiment {name}") is not None
    try:  # a full run replaces a quick one; a quick run replaces only a quick one
        with _terminate_as_interrupt(), output_dir(out, command, replaces=() if quick else (f"{command} --quick",)):
            report = EXPERIMENTS[name](Path(out), quick=quick, progress=progress)
    except (RunError, DataError, OSError) as e:  # RunError: --out cannot hold the results
        _fail(f"{_written_where(e, out)}{_kept(out, earlier)}")
    except KeyboardInterrupt:
        typer.echo(f"interrupted: no report written{_kept(out, earlier)}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"report: {report}")


@app.command("scale", short_help="Transfer batch and step size to a new token budget.")
def scale_command(
    tokens: Annotated[float, typer.Option(help="token budget T0 of the tuned base run")],
    batch: Annotated[int, typer.Option(help="base batch size B0")],
    seq: Annotated[int, typer.Option(help="base sequence length S0")],
    lr: Annotated[float, typer.Option(help="base step size β0")],
    target_tokens: Annotated[float, typer.Option(help="new token budget T1")],
    allow_smaller: Annotated[bool, typer.Option(help="allow T1 < T0")] = False,
) -> None:
    """Transfer batch size and step size to a new token budget: B·S ∝ T^(2/3), β ∝ T^(-1/3)."""
    from specopt.scaling import format_transfer, transfer

    try:
        result = transfer(tokens, batch, seq, lr, target_tokens, allow_smaller=allow_smaller)
    except ValueError as e:
        message = re.sub(r"^(tokens|target_tokens|batch|seq|lr)\b", lambda m: "--" + m[1].replace("_", "-"), str(e))
        _fail(message.replace("pass allow_smaller=True", "pass --allow-smaller"))
    typer.echo(format_transfer(result, batch, seq, lr))


def main() -> None:
    """The console script (and ``python -m specopt``): an error in the options (click's parsing) is one line like
    the command's own, not a boxed panel, and a failure nobody foresaw is one line too, not a traceback
    (``SPECOPT_TRACEBACK=1`` shows it)."""
    try:
        try:
            code = app(standalone_mode=False)
        except _CLICK_ERROR as e:  # the options' own parsing and checks: one line, as the command's own errors
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `specopt`: the help, as standalone mode shows it
                e.show()
            else:
                where = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
                typer.secho(f"error: {e.format_message()}{where}", fg="red", err=True)
            code = e.exit_code
        except typer.Abort:
            code = 130
        sys.exit(code or 0)  # as click's standalone mode: a torchrun worker then ends in _exit_worker below
    except SystemExit as e:
        if "LOCAL_RANK" in os.environ:  # a torchrun worker
            _exit_worker(e.code)
        raise
    except Exception as e:
        if os.environ.get("SPECOPT_TRACEBACK"):
            raise
        if _out_of_memory(e):
            typer.secho(f"error: out of memory ({_first_line(e)}); a smaller model (--size, --width), batch or "
                        "--nproc fits", fg="red", err=True)
        else:
            typer.secho(f"error: {type(e).__name__}: {_first_line(e)} (an unexpected failure; SPECOPT_TRACEBACK=1 "
                        "shows where)", fg="red", err=True)
        if "LOCAL_RANK" in os.environ:
            _exit_worker(1)
        sys.exit(1)


_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""click's ClickException (or the copy of click that typer ≥ 0.20 vendors): every error of the options' parsing."""


def _exit_worker(code) -> None:
    """End a torchrun worker with its exit code and nothing after: its process group ended, its output flushed,
    then ``os._exit``. An interpreter exit could abort in native teardown ("terminate called without an active
    exception", now and then, after the run had finished) and turn the worker's code into the launcher's failure."""
    import torch.distributed as dist

    if isinstance(code, str):
        print(code, file=sys.stderr)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's CPU allocator failing, or CUDA out of memory."""
    text = str(e)
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or \
        "can't allocate memory" in text or "out of memory" in text.lower()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


if __name__ == "__main__":
    main()
