"""What a training task is: a model built from a seed, deterministic batches, a loss and a validation loss.

Determinism is what makes runs comparable and resumable: ``batch(step)`` depends only on the task's seed
and the step, and ``build_model()`` only on the seed, so two optimizers see the same data in the same
order and a run resumed from a checkpoint at step k continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod

import torch
from torch import nn

MAX_SEED = 2**32 - 1
"""The largest seed: the batches' generators are seeded with ``(seed·1000003 + step)·8 + stream``, which must fit
torch's 64-bit seed through any run's steps."""


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}] (2³² − 1), got {seed!r}")


class Task(ABC):
    """A training problem. Subclasses set ``name``, ``unit`` ("tokens" or "samples") and ``scheme``
    (the :func:`specopt.param_groups` scheme: "text", "image" or "auto")."""

    name: str = ""
    unit: str = "samples"
    scheme: str = "auto"
    #: units (tokens or samples) per batch element; tasks whose batch size can vary set it (see
    #: :meth:`batch_of`), the others keep None.
    units_per_example: int | None = None
    #: layouts of the model's tensors that no rule reads, declared as ``param_groups(layouts=...)`` takes them
    #: (the synthetic tasks' raw matrices); None where every tensor is read from its module.
    layouts: dict | None = None

    def __init__(self, seed: int = 0):
        check_seed(seed)
        self.seed = int(seed)

    def generator(self, step: int, stream: int = 0) -> torch.Generator:
        """A generator that depends only on (seed, step, stream)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 8 + stream)

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model, initialised from the seed."""

    @abstractmethod
    def batch(self, step: int):
        """The training batch of ``step`` (deterministic)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch``."""

    @abstractmethod
    def validation_loss(self, model: nn.Module) -> float:
        """Loss on held-out data (or the population loss of a synthetic problem)."""

    def units_per_step(self) -> int:
        """Tokens or samples processed by one training step."""
        return 1

    def batch_of(self, step: int, batch_size: int):
        """The batch of ``step`` with ``batch_size`` examples (for batch-size schedules)."""
        raise ValueError(f"task {self.name!r} has a fixed batch; batch-size schedules need char-gpt, cnn, mlp "
                         "or logreg")

    def describe(self) -> str:
        return self.name


def init_model(build, seed: int) -> nn.Module:
    """Build a module with torch's global RNG seeded, restoring the caller's RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
