"""specopt optimizers for the usual trainers: Hugging Face ``transformers.Trainer``, PyTorch Lightning, plain loops.

One builder, :func:`create_optimizer`, turns a model, an optimizer name and the usual hyperparameters into one
``torch.optim.Optimizer`` with the role-aware param groups of :func:`specopt.param_groups` (embeddings, hidden
matrices, head, gains each get their norm and radius); names and defaults are :mod:`specopt.registry`'s, the same
as the ``specopt`` command's. Around it:

* :func:`trainer_optimizers` — the ``(optimizer, lr_scheduler)`` pair for ``Trainer(..., optimizers=...)``, the
  scheduler from ``transformers.get_scheduler`` (so every ``lr_scheduler_type`` of HF works);
* :class:`OptimizerFactory` — for ``Trainer(..., optimizer_cls_and_kwargs=(OptimizerFactory, {...}))``, where the
  Trainer builds the optimizer itself (transformers versions that call optimizer factories);
* :func:`lightning_optimizers` — the dict ``LightningModule.configure_optimizers`` returns, with a per-step
  scheduler from :func:`warmup_schedule` (torch only: Lightning users need not install transformers).

transformers and lightning stay optional: nothing here imports them at module level. See docs/integrations.md for
what the trainers' gradient clipping does to each optimizer (in short: set ``max_grad_norm=0`` in HF's
TrainingArguments for Gluon and ClippedScion).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from specopt import registry
from specopt.estimators import get_estimator

SCHEDULES = ("constant", "linear", "cosine")


def optimizer_name(name: str) -> str:
    """The registry's name for ``name``: case and ``_``/``-`` are free (``"clipped_scion"``, ``"Muon"``)."""
    if not isinstance(name, str):
        raise ValueError(f"optimizer name must be a string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key not in registry.DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(registry.optimizer_names())}")
    return key


def create_optimizer(model: torch.nn.Module, name: str = "muon", *, lr: float | None = None,
                     weight_decay: float | None = None, momentum: float | str | None = None,
                     radius: float | None = None, clip_radius: float | None = None, adamw_lr: float | None = None,
                     gram: bool | None = None, scheme: str = "auto", layouts: dict | None = None,
                     num_heads: int | bool | None = None, head=None, split_sizes: dict | None = None,
                     overrides: dict | None = None, embedding_norm: str | None = None, msign: dict | None = None,
                     **options) -> torch.optim.Optimizer:
    """One optimizer named ``name`` for ``model``'s trainable parameters.

    The hyperparameters left at ``None`` take :data:`specopt.registry.DEFAULTS`, the optimizer classes' defaults
    (swept on two char-GPTs and an MNIST CNN; sweep ``lr`` for a new model). ``radius`` is the hidden-layer radius
    (the other roles keep their ratio to it), ``scheme`` the :func:`specopt.param_groups` scheme ("text", "image" or
    "auto"); ``layouts``, ``num_heads``, ``head``, ``split_sizes``, ``overrides``, ``embedding_norm`` and ``msign``
    (e.g. ``{"compute_dtype": torch.float32}``) go to :func:`specopt.param_groups` as they are, e.g. the declaration
    its error asks for. Any other keyword goes to the optimizer's constructor as it is, e.g. ``estimator="storm"``,
    ``nonfinite="skip"``, Gluon's ``L0``/``L1``.

    Raises ValueError for an unknown name or a bad hyperparameter value, and for ``torch-muon``, which is two
    optimizers (torch's Muon and AdamW) where a trainer takes one (use ``"muon"``); TypeError for a model that is not
    an ``nn.Module`` and (the constructor's own) for a keyword the optimizer does not take.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"create_optimizer reads the model (an nn.Module), got {type(model).__name__}: "
                        "create_optimizer(model, …), not create_optimizer(model.parameters(), …)")
    key = optimizer_name(name)
    hp = registry.resolve(key, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "radius": radius,
                                "clip_radius": clip_radius, "adamw_lr": adamw_lr, "gram": gram})
    if key == "torch-muon":
        raise ValueError("'torch-muon' is two optimizers (torch.optim.Muon on the hidden matrices, AdamW on the "
                         "rest) and a trainer takes one; use 'muon', specopt's Muon with its built-in AdamW")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    given = {"layouts": layouts, "num_heads": num_heads, "head": head, "split_sizes": split_sizes,
             "overrides": overrides, "embedding_norm": embedding_norm, "msign": msign}
    groups = {k: v for k, v in given.items() if v is not None}
    (optimizer,) = registry.build(key, model, SimpleNamespace(scheme=scheme), hp, groups=groups, **options)
    return optimizer


def trainer_optimizers(model: torch.nn.Module, name: str = "muon", *, num_training_steps: int,
                       num_warmup_steps: int = 0, lr_scheduler_type: str = "linear",
                       scheduler_kwargs: dict | None = None, **optimizer_kwargs):
    """``(optimizer, lr_scheduler)`` for ``transformers.Trainer(..., optimizers=...)``.

    The optimizer is :func:`create_optimizer`'s (``optimizer_kwargs`` are its keywords); the scheduler is
    ``transformers.get_scheduler(lr_scheduler_type, …)`` stepped once per optimizer step by the Trainer. The
    Trainer calls ``optimizer.step()`` without a closure, so ``estimator="storm"`` (which needs one) is refused
    here, and so is Gluon with its online L0/L1 (give numbers, e.g. ``L0=0.0, L1=50.0``): without a closure it
    compares gradients of two different minibatches, whose noise inflates L after a warm-up: on a tiny GPT-2 the
    loss ends at 2.49 after 60 steps with transformers' linear warm-up, where a closure takes it to 0.67
    (docs/integrations.md, "Closures, dropout and warm-up: measured").
    """
    get_scheduler = _require("transformers", "trainer_optimizers").get_scheduler
    _check_steps(num_training_steps, num_warmup_steps)
    optimizer = _hf_optimizer(model, name, optimizer_kwargs)
    scheduler = get_scheduler(lr_scheduler_type, optimizer, num_warmup_steps=num_warmup_steps,
                              num_training_steps=num_training_steps, scheduler_specific_kwargs=scheduler_kwargs)
    return optimizer, scheduler


class OptimizerFactory:
    """For ``Trainer(..., optimizer_cls_and_kwargs=(OptimizerFactory, {"name": "muon", "lr": 0.01}))``.

    transformers' Trainer treats a first element that is not an Optimizer class as a factory: it calls
    ``OptimizerFactory()(model, **kwargs)``, which is :func:`create_optimizer` (role-aware groups; the Trainer's
    own weight-decay groups are not used, pass ``weight_decay`` here). The Trainer then builds its scheduler from
    ``TrainingArguments`` (``lr_scheduler_type``, ``warmup_steps``). Versions without factories call
    ``cls(param_groups, **kwargs)``; there pass a specopt class, e.g. ``(specopt.Muon, {"lr": 0.02})``.
    """

    def __call__(self, model: torch.nn.Module, name: str = "muon", **kwargs) -> torch.optim.Optimizer:
        return _hf_optimizer(model, name, kwargs)


def _hf_optimizer(model: torch.nn.Module, name: str, kwargs: dict) -> torch.optim.Optimizer:
    """:func:`create_optimizer` for HF's Trainer, which calls ``optimizer.step()`` without a closure: refuse the
    configurations that need one (STORM; Gluon's online smoothness estimate) instead of training badly."""
    key = optimizer_name(name)
    if "estimator" in kwargs and get_estimator(kwargs["estimator"]).needs_closure:
        raise ValueError(f"estimator={kwargs['estimator']!r} needs optimizer.step(closure) and transformers.Trainer "
                         "steps without one; use Lightning (which passes a closure) or a plain loop")
    if key == "gluon" and kwargs.get("L0", "online") == "online":
        raise ValueError("gluon's online L0/L1 estimate needs optimizer.step(closure) to compare two gradients of "
                         "one batch, and transformers.Trainer steps without one; pass numbers, e.g. L0=0.0, "
                         "L1=50.0, or train with Lightning")
    optimizer = create_optimizer(model, key, **kwargs)
    estimator = getattr(optimizer, "estimator", None)
    if estimator is not None and estimator.needs_closure:  # a preset built on STORM (gluon-mvr)
        raise ValueError(f"{key} steps with estimator {estimator.name!r}, which needs optimizer.step(closure), and "
                         "transformers.Trainer steps without one; use Lightning (which passes a closure) or a plain "
                         "loop")
    return optimizer


def lightning_optimizers(model: torch.nn.Module, name: str = "muon", *, num_training_steps: int,
                         num_warmup_steps: int = 0, schedule: str = "linear", **optimizer_kwargs) -> dict:
    """What ``LightningModule.configure_optimizers`` returns: ``{"optimizer": …, "lr_scheduler": {"scheduler": …,
    "interval": "step"}}`` with :func:`create_optimizer`'s optimizer and :func:`warmup_schedule`'s scheduler.

    Lightning calls ``optimizer.step(closure)``, so every preset works, STORM included; the closure (forward,
    backward, and any gradient clipping) then runs more than once per step for STORM and online Gluon, which
    re-evaluate the batch at other weights (see docs/integrations.md for what Lightning logs then).
    """
    _check_steps(num_training_steps, num_warmup_steps)
    optimizer = create_optimizer(model, name, **optimizer_kwargs)
    scheduler = warmup_schedule(optimizer, num_training_steps, num_warmup_steps, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


class _WarmupDecay:
    """``k ↦`` the lr multiplier of step k (a class, not a lambda, so that the scheduler pickles)."""

    def __init__(self, num_training_steps: int, num_warmup_steps: int, schedule: str):
        self.total, self.warmup, self.schedule = num_training_steps, num_warmup_steps, schedule

    def __call__(self, k: int) -> float:
        if k < self.warmup:
            return (k + 1) / (self.warmup + 1)
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (k - self.warmup) / max(1, self.total - self.warmup))
        if self.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_schedule(optimizer: torch.optim.Optimizer, num_training_steps: int, num_warmup_steps: int = 0,
                    schedule: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``num_warmup_steps``, then ``schedule``: "constant", "linear" (to 0 at
    ``num_training_steps``) or "cosine" (half a cosine to 0) — after the warm-up, transformers'
    ``get_*_schedule_with_warmup`` formulas, in torch alone. The warm-up multiplier is ``(k+1)/(W+1)``, not HF's
    ``k/W``: no step is taken at lr 0 (a wasted step, and one that gives Gluon's online estimate a zero-length
    step to divide by). It scales every param group's own lr (Muon's AdamW groups included)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    _check_steps(num_training_steps, num_warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupDecay(num_training_steps, num_warmup_steps, schedule))


def _check_steps(num_training_steps, num_warmup_steps) -> None:
    for key, value, low in (("num_training_steps", num_training_steps, 1), ("num_warmup_steps", num_warmup_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
    if num_warmup_steps > num_training_steps:
        raise ValueError(f"num_warmup_steps ({num_warmup_steps}) exceeds num_training_steps ({num_training_steps})")


def _require(package: str, caller: str):
    """Import the optional ``package`` or raise an ImportError naming it and the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(f"{caller} needs the optional package {package!r}, which is not installed: "
                          f"pip install {package} (or specopt[models])") from error
