"""Training problems for the `specopt` command and the experiments (see each module)."""

from __future__ import annotations

import inspect
from pathlib import Path

from specopt.tasks.base import Task
from specopt.tasks.data import DataError, load_cifar10, load_mnist, read_text
from specopt.tasks.images import CNN, MLP, LogisticRegression
from specopt.tasks.synthetic import HeavyTailedRegression, InContextRegression, MatrixFactorization
from specopt.tasks.text import CharGPT

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    CharGPT, CNN, MLP, LogisticRegression, MatrixFactorization, InContextRegression, HeavyTailedRegression)}


def get_task(name: str, seed: int = 0, **options) -> Task:
    """Build a task by name; unknown names and options get a ValueError listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    cls = TASKS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "seed"}
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {sorted(unknown)}; its options: {sorted(accepted)}")
    data = options.get("data")
    if data is not None and Path(data).exists() and not (Path(data).is_file() or Path(data).is_dir()):
        raise DataError(f"{data} is not a regular file or a directory (a FIFO or a device: reading it would wait, or "
                        "never end); pass the data file itself")
    return cls(seed=seed, **options)


__all__ = ["TASKS", "DataError", "Task", "get_task", "load_cifar10", "load_mnist", "read_text"]
