"""Step rules (Pethick et al. 2025, *Training Deep Learning Models with Norm-Constrained LMOs*; Riabinin et al.
2025, Gluon). Every rule is one update per tensor,

    W ← (1 − shrink)·W + scale·s,

where ``s`` is the unit-ball lmo of the estimator's direction ``d`` (or, for ALMOND, the averaged lmo
itself) and ``shrink``/``scale`` are scalars the rule computes from the group's hyperparameters
(γ = lr, ρ = radius, λ = weight_decay) and, for some rules, from the dual norms ``‖d_l‖_* = −⟨d_l, s_l⟩``:

| rule | shrink | scale | source |
|---|---|---|---|
| ``uscg`` (UScion, Muon) | γλ | γρ | uSCG; Muon adds decoupled weight decay λ |
| ``scg`` (Scion) | γ | γρ | SCG: convex combination, stays in the ρ-ball |
| ``clipped`` | γλ | γρ·min{1, D/ρ_c},  D = Σ_l ρ_l‖d_l‖_* | Clipped Scion (unconstrained) |
| ``clipped_constrained`` | γη | γηρ,  η = min{1, Ψ/ρ_c},  Ψ = Σ_l ⟨d_l, W_l − ρ_l s_l⟩ | Clipped Scion (constrained) |
| ``steepest`` | γλ | γ‖d_l‖_* | steepest descent in the norm |
| ``gluon`` | γλ | γ·t_l,  t_l = ‖d_l‖_*/(L0_l + L1_l‖d_l‖_*) (× (k+1)^{-3/4} if stochastic) | Gluon |
| ``almond`` | γλ | γ  (s = averaged ρ·lmo) | ALMOND |
"""

from __future__ import annotations

import torch

RULES = ("uscg", "scg", "clipped", "clipped_constrained", "steepest", "gluon", "almond")
NEEDS_DUAL = {"clipped", "clipped_constrained", "steepest", "gluon"}
PER_TENSOR_RULES = {"uscg", "scg", "steepest", "almond"}
"""Rules whose shrink and scale depend on the tensor alone (no sum over tensors, no probe)."""


def shrink_and_scale(rule: str, items: list, clip_radius: float | None, complete=None) -> None:
    """Set ``item.shrink`` and ``item.scale`` on every item (see the table above). ``complete`` turns per-item
    partial sums over local shards into whole-tensor sums (distributed runs; identity by default)."""
    if rule in ("uscg", "almond", "steepest", "gluon", "clipped"):
        for it in items:
            it.shrink = it.group["lr"] * it.group["weight_decay"]
    if rule == "uscg":
        for it in items:
            it.scale = it.group["lr"] * it.radius
    elif rule == "scg":
        for it in items:
            it.shrink, it.scale = it.group["lr"], it.group["lr"] * it.radius
    elif rule == "almond":
        for it in items:
            it.scale = it.group["lr"]
    elif rule == "steepest":
        for it in items:
            it.scale = it.group["lr"] * it.dual
    elif rule == "gluon":
        for it in items:
            it.scale = it.group["lr"] * it.gluon_radius
    elif rule == "clipped":
        total = _global_sum([it.radius * it.dual for it in items])
        factor = torch.clamp(total / clip_radius, max=1.0)
        for it in items:
            it.scale = it.group["lr"] * it.radius * factor
    elif rule == "clipped_constrained":
        dots = [torch.sum(it.d * it.p, dtype=torch.float64) for it in items]
        dots = complete(dots) if complete is not None else dots
        gap = _global_sum([dot + it.radius * it.dual for dot, it in zip(dots, items, strict=True)])
        eta = torch.clamp(gap / clip_radius, min=0.0, max=1.0)
        for it in items:
            it.shrink, it.scale = it.group["lr"] * eta, it.group["lr"] * it.radius * eta
    elif rule not in RULES:
        raise ValueError(f"unknown step rule {rule!r}; valid rules: {', '.join(RULES)}")


def _global_sum(values: list) -> torch.Tensor:
    if not values:
        return torch.zeros(())
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]).sum().float()


def commit(dst: torch.Tensor, new: torch.Tensor, ok: torch.Tensor | None) -> torch.Tensor:
    """Write ``new`` into ``dst`` and return ``new``; with a 0-d boolean ``ok`` (the step under torch.compile)
    ``dst ← where(ok, new, dst)``, so that a step whose gradients are not finite writes back the old values,
    bit for bit, with no branch on tensor data (a branch would need a host sync and break the graph)."""
    dst.copy_(new if ok is None else torch.where(ok, new, dst))
    return new


def apply_update(p: torch.Tensor, s: torch.Tensor, shrink, scale, ok: torch.Tensor | None = None) -> None:
    """``p ← (1 − shrink)·p + scale·s`` in place; scalars may be floats or 0-d tensors. With ``ok`` (see
    :func:`commit`) the new value is formed out of place and written where ``ok`` holds (torch.compile fuses
    the product, the sum and the select into one pass over ``p``)."""
    if ok is not None:  # in the wider of the two dtypes, as the in-place ops below compute
        work = torch.promote_types(p.dtype, s.dtype)
        keep = (1 - shrink).to(p.dtype).to(work) if isinstance(shrink, torch.Tensor) else 1 - shrink
        step = scale.to(s.dtype).to(work) if isinstance(scale, torch.Tensor) else scale
        commit(p, (p.to(work) * keep + s.to(work) * step).to(p.dtype), ok)
        return
    if isinstance(shrink, torch.Tensor):
        p.mul_((1 - shrink).to(p.dtype))
    elif shrink != 0:
        p.mul_(1 - shrink)
    if isinstance(scale, torch.Tensor):
        p.addcmul_(s, scale.to(s.dtype))
    else:
        p.add_(s, alpha=scale)
