"""The `specopt` command: train, compare, run the seeds' experiments.

    specopt train --task char-gpt --optimizer scion --steps 500 --out runs/scion
    specopt train --resume runs/scion
    specopt train --nproc 2 --task mlp --optimizer muon     # 2 processes through torchrun (DDP; --parallel fsdp)
    specopt compare                                  # the default comparison (char-GPT, 7 optimizers)
    specopt experiment muon-conditioning
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

try:
    import typer
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("the specopt command needs the experiment extras: pip install 'specopt[experiments]'")

from specopt import registry
from specopt.tasks import TASKS, DataError
from specopt.training import SCHEDULES, RunConfig, check_parallel, train

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Geometry-aware optimizers: train, compare, "
                  "reproduce the seeds' experiments.")

DEFAULT_OPTIMIZERS = "adamw,torch-muon,muon,scion,uscion,clipped-scion,gluon"
WIDTH_OPTION = {"char-gpt": "n_embd", "mlp": "width", "cnn": "width"}

Task = Annotated[str, typer.Option(help=f"task: {', '.join(TASKS)}")]
Steps = Annotated[int, typer.Option(min=1, help="training steps")]
Seed = Annotated[int, typer.Option(min=0, help="seed of data order and initialisation")]
Size = Annotated[str | None, typer.Option(help="char-gpt size: tiny, small, medium")]
Data = Annotated[Path | None, typer.Option(help="your data: a text file (char-gpt), an MNIST CSV or a CIFAR-10 "
                                            "directory (cnn, mlp, logreg)")]
Width = Annotated[int | None, typer.Option(min=1, help="model width (char-gpt n_embd, mlp/cnn width)")]
ValEvery = Annotated[int, typer.Option(min=1, help="validate every K steps")]
CkptEvery = Annotated[int, typer.Option(min=1, help="checkpoint every K steps")]
Schedule = Annotated[str, typer.Option(help=f"lr schedule: {', '.join(SCHEDULES)}")]
Lr = Annotated[float | None, typer.Option(min=0.0, help="learning rate (default: the optimizer's)")]
Momentum = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="momentum β")]
WeightDecay = Annotated[float | None, typer.Option(min=0.0, help="weight decay")]
Radius = Annotated[float | None, typer.Option(min=0.0, help="hidden-layer radius ρ (other roles "
                                              "keep their ratio)")]
ClipRadius = Annotated[float | None, typer.Option(min=0.0, help="ρ_c of clipped-scion")]
Progress = Annotated[bool, typer.Option(help="show a progress bar")]
Closure = Annotated[bool, typer.Option(help="pass a closure to step() (Gluon and STORM re-evaluate the batch with "
                                       "it); --no-closure calls step() bare, as HF Trainer does")]
Gram = Annotated[bool | None, typer.Option("--gram/--no-gram", help="msign's Gram form on wide matrices: --gram "
                                           "also in bf16 (faster, slightly less accurate), --no-gram never "
                                           "(default: only where it is as accurate)")]


def launch(nproc: int, options: dict, progress: bool) -> int:
    """Run ``specopt train`` with these options in ``nproc`` processes through torchrun; returns its exit code."""
    args = ["train"]
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # --gram / --no-gram, --closure / --no-closure
            args.append(flag if value else f"--no-{flag[2:]}")
        elif value is not None:
            args += [flag, str(value)]
    args.append("--progress" if progress else "--no-progress")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
           "specopt.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    return subprocess.run(cmd, env=env).returncode


def _init_distributed() -> None:
    """Inside a torchrun worker: a gloo process group (the tasks train on the CPU, also on a machine with a GPU),
    one thread share."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


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
        options["data"] = str(data)
    if width is not None:
        if task not in WIDTH_OPTION:
            _fail(f"--width applies to {', '.join(WIDTH_OPTION)}")
        options[WIDTH_OPTION[task]] = width
    return options


@app.command("train")
def train_command(
    task: Task = "char-gpt",
    optimizer: Annotated[str, typer.Option(help=f"optimizer: {', '.join(registry.optimizer_names())}")] = "scion",
    steps: Steps = 500, out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/train"),
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory")] = None,
    lr: Lr = None, momentum: Momentum = None, weight_decay: WeightDecay = None, radius: Radius = None,
    clip_radius: ClipRadius = None, gram: Gram = None, seed: Seed = 0, size: Size = None, data: Data = None,
    width: Width = None, val_every: ValEvery = 50, checkpoint_every: CkptEvery = 100,
    schedule: Schedule = "linear-decay",
    batch_schedule: Annotated[str, typer.Option(help="constant, or bst: batch grows so that tokens per step "
                                                "∝ (tokens seen)^(2/3)")] = "constant",
    nproc: Annotated[int, typer.Option(min=1, help="processes on this machine, launched through torchrun (gloo, "
                                       "CPU threads shared out); each trains its slice of every batch")] = 1,
    parallel: Annotated[str, typer.Option(help="ddp (replicated model) or fsdp (FSDP2 fully_shard)")] = "ddp",
    closure: Closure = True, progress: Progress = True,
) -> None:
    """Train one optimizer on one task: metrics every step, validation and atomic checkpoints every K steps."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        try:
            if resume is None:
                check_parallel(optimizer, parallel)
                registry.resolve(optimizer, {})
                _task_options(task, size, data, width)
        except ValueError as e:
            _fail(str(e))
        options = {"task": task, "optimizer": optimizer, "steps": steps, "out": out, "resume": resume, "lr": lr,
                   "momentum": momentum, "weight_decay": weight_decay, "radius": radius, "clip_radius": clip_radius,
                   "gram": gram, "seed": seed, "size": size, "data": data, "width": width, "val_every": val_every,
                   "checkpoint_every": checkpoint_every, "schedule": schedule, "batch_schedule": batch_schedule,
                   "parallel": parallel, "closure": closure}
        raise typer.Exit(launch(nproc, options, progress))
    if "LOCAL_RANK" in os.environ:
        _init_distributed()
    try:
        if resume is not None:
            result = train(RunConfig(), resume, resume=True, progress=progress)
        else:
            hparams = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "radius": radius,
                       "clip_radius": clip_radius, "gram": gram}
            cfg = RunConfig(task=task, optimizer=optimizer, steps=steps, seed=seed,
                            task_options=_task_options(task, size, data, width),
                            hparams={k: v for k, v in hparams.items() if v is not None}, val_every=val_every,
                            checkpoint_every=checkpoint_every, schedule=schedule, batch_schedule=batch_schedule,
                            parallel=parallel, closure=closure)
            result = train(cfg, out, progress=progress)
    except (ValueError, FileNotFoundError, DataError) as e:
        _fail(str(e))
    if result.rows == []:  # ranks other than 0 write and print nothing
        return
    val = result.val_rows()
    status = "diverged (loss became NaN/Inf)" if result.diverged else "done"
    typer.echo(f"{status}: {len(result.rows)} steps in {result.elapsed_s:.1f}s; final validation loss "
               f"{val[-1]['val_loss']:.4f}; metrics and checkpoint in {result.out}")


@app.command("compare")
def compare_command(
    task: Task = "char-gpt",
    optimizers: Annotated[str, typer.Option(help="comma-separated optimizer names")] = DEFAULT_OPTIMIZERS,
    steps: Steps = 600, out: Annotated[Path, typer.Option(help="report directory")] = Path("runs/compare"),
    sweep: Annotated[bool, typer.Option(help="sweep each optimizer's lr over ×1/4…×4 its default")] = False,
    seed: Seed = 0, size: Size = None, data: Data = None, width: Width = None, val_every: ValEvery = 50,
    schedule: Schedule = "linear-decay", gram: Gram = None, closure: Closure = True, progress: Progress = True,
) -> None:
    """Compare optimizers on one task (same seed, same data order): report.md, loss.png, metrics.csv."""
    from specopt.compare import compare, summary_table

    names = [n.strip() for n in optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry.optimizer_names()]
    if not names or unknown:
        _fail(f"unknown optimizer(s) {unknown}; valid optimizers: {', '.join(registry.optimizer_names())}")
    base = RunConfig(task=task, steps=steps, seed=seed, task_options=_task_options(task, size, data, width),
                     hparams={} if gram is None else {"gram": gram}, val_every=min(val_every, steps),
                     checkpoint_every=steps, schedule=schedule, closure=closure)
    try:
        base.validate()
        runs = compare(base, names, out, sweep=sweep, progress=progress, log=typer.echo)
    except (ValueError, FileNotFoundError, DataError, RuntimeError) as e:
        _fail(str(e))
    typer.echo("\n" + summary_table(runs))
    typer.echo(f"\nreport: {out / 'report.md'}\nplot:   {out / 'loss.png'}\ndata:   {out / 'metrics.csv'}")


@app.command("experiment")
def experiment_command(
    name: Annotated[str, typer.Argument(help="experiment name (see `specopt experiment --help`)")],
    out: Annotated[Path | None, typer.Option(help="output directory (default runs/experiments/NAME)")] = None,
    quick: Annotated[bool, typer.Option(help="a small, fast version (for tests and a first look)")] = False,
    progress: Progress = True,
) -> None:
    """Reproduce a claim of the seed documents: writes a plot, a table and a short report."""
    from specopt.experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        _fail(f"unknown experiment {name!r}; valid experiments: {', '.join(EXPERIMENTS)}")
    out = out or Path("runs/experiments") / name
    report = EXPERIMENTS[name](Path(out), quick=quick, progress=progress)
    typer.echo(f"report: {report}")


@app.command("scale")
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
        _fail(str(e))
    typer.echo(format_transfer(result, batch, seq, lr))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
