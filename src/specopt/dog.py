"""A parameter-free radius rule: DoG ("distance over gradients", Ivgi, Hinder & Carmon 2023, *DoG is SGD's Best
Friend: A Parameter-Free Dynamic Step Size Schedule*, arXiv:2302.12022) on the steepest-descent step of each
layer's norm, per layer (their layer-wise L-DoG).

Per tensor l, in its norm ``‖·‖_l`` (the lmo's) with dual ``‖·‖_{l*}``:

    r̄_k = max(r_ε, max_{i≤k} ‖W_i − W_0‖_l),   r_ε = r_rel·(1 + ‖W_0‖_l)
    G_k = Σ_{i≤k} ‖d_i‖_{l*}²
    W_{k+1} = (1 − cλ)·W_k + c·(r̄_k/√G_k)·‖d_k‖_{l*}·lmo_l(d_k)

``d`` is the estimator's direction (the gradient at ``momentum=0``). ``‖d‖_*·lmo(d)`` is the steepest-descent
step in the norm (``−d`` itself in the Euclidean norm, where this is L-DoG exactly), so the step has length
``c·r̄_k·‖d_k‖_*/√G_k ≤ c·r̄_k`` in the layer's norm: each layer's trust radius is the distance its trajectory has
explored, and it grows as the layer moves away from its initialisation (by at most a factor ``1 + c`` a step:
``‖W_{k+1} − W_0‖ ≤ ‖W_k − W_0‖ + c·r̄_k``) and shrinks, relative to it, as gradients accumulate. No step size: the step is invariant to
the scale of the loss and of the norm (the radius ρ is unused), and ``c`` (the group's ``lr``) is a multiplier,
1 by default, through which LR schedules act. ``λ`` is a decay per step (times ``c``), decoupled from the step.

This is the trajectory-based rule the brief of the family names beside Demidovich et al. 2026, *Distance-Aware
Muon: Adaptive Step Scaling for Normalized Optimization* (arXiv:2605.18999), whose Distance-Adaptive Muon also sets
its trust-region radius from the radius the trajectory explored; that paper's exact update was not available to us,
so this module implements DoG's, whose form is published, in the lmo's geometry, and makes no claim to be the
paper's algorithm.

State per tensor (keys ``dog_``): the initial weights ``W_0`` (one copy of the weights), ``r̄`` and ``G`` (0-d
float32). The distance is measured with the norm's ``norm`` (an exact operator norm for the spectral norms, one
SVD per matrix per step); FSDP2-sharded tensors are refused (a shard's norm is not the tensor's).
"""

from __future__ import annotations

import torch

from specopt._checks import check_number
from specopt.engine import GeometryOptimizer
from specopt.steps import StepRule, weight_decay


class DistanceOverGradients(StepRule):
    """DoG's step on each tensor's steepest-descent direction: ``W ← (1−cλ)W + c·r̄/√G·‖d‖_*·lmo(d)`` with ``r̄``
    the largest distance from ``W_0`` in the tensor's norm and ``G`` the sum of squared dual norms (see the module
    docstring).

    Args:
        r_rel: the initial distance ``r_ε = r_rel·(1 + ‖W_0‖)`` relative to the initial weights (DoG's default
            1e-6; it only sets how many steps the radius takes to grow to the trajectory's scale).
    """

    name = "dog"
    needs_dual = True

    def __init__(self, r_rel: float = 1e-6):
        self.r_rel = check_number(r_rel, "r_rel", low_open=True)

    def scale(self, records, ctx) -> None:
        for rec in records:
            if rec.layout.sharded:
                raise ValueError(f"{rec.name}: DoG measures ‖W − W_0‖ in the whole tensor's norm, which a FSDP2 "
                                 "shard does not give; run it replicated (DDP) or on one device")
            state = rec.state
            if "dog_w0" not in state:
                state["dog_w0"] = rec.p.detach().clone()
                start = self.r_rel * (1 + rec.norm.norm(rec.p.float()).float())
                state["dog_rbar"] = start.reshape(()).to(rec.p.device)
                state["dog_g2"] = torch.zeros((), dtype=torch.float32, device=rec.p.device)
            distance = rec.norm.norm((rec.p - state["dog_w0"]).float()).float().reshape(())
            rbar = state["dog_rbar"].copy_(torch.maximum(state["dog_rbar"], distance))
            dual = torch.as_tensor(rec.dual, dtype=torch.float32, device=rbar.device).reshape(())
            g2 = state["dog_g2"].add_(dual.square())
            eta = torch.where(g2 > 0, rbar / g2.sqrt().clamp_min(torch.finfo(torch.float32).tiny), 0.0)
            rec.shrink = weight_decay(rec)
            rec.scale = rec.group["lr"] * eta * dual

    def config(self) -> dict:
        return {"name": self.name, "r_rel": self.r_rel}


class DoG(GeometryOptimizer):
    """DoG on every tensor's lmo: per-layer step sizes from the distance travelled and the gradients seen, no step
    size to choose (see :mod:`specopt.dog`). ``lr`` is a multiplier c of every step (1, the rule as published;
    LR schedules act through it); ``radius`` does not exist here (the step is invariant to it). ``norm``,
    ``momentum`` (β of the EMA whose lmo is taken; 0: the gradient), ``nesterov``, ``weight_decay`` (λ, decay per
    step), ``estimator`` and the engine's options as the other presets; ``r_rel`` of
    :class:`DistanceOverGradients`."""

    def __init__(self, params, lr: float = 1.0, momentum: float | str = 0.9, norm="auto", r_rel: float = 1e-6,
                 weight_decay: float = 0.0, nesterov: bool = False, estimator: str = "momentum",
                 nonfinite: str = "raise", batch_lmo: bool | None = None, process_group="auto"):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "norm": norm, "radius": 1.0,
                                  "weight_decay": weight_decay},
                         rule=DistanceOverGradients(r_rel), estimator=estimator, nonfinite=nonfinite,
                         batch_lmo=batch_lmo, process_group=process_group)
