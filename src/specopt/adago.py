"""AdaGO (Zhang, Liu & Schaeffer 2025, *AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates*,
arXiv:2509.02981): Muon's orthogonalized direction with an AdaGrad-Norm step size, one scalar of state per matrix.

Per matrix, with the stochastic gradient ``G_k`` and the momentum ``M_k = μM_{k−1} + (1−μ)G_k``:

    v_k² = v_{k−1}² + min(‖G_k‖_F, γ)²                 (v_0 > 0 given)
    α_k  = max(ε, η_k·min(‖G_k‖_F, γ)/v_k)
    W_k  = (1 − η_kλ)·W_{k−1} − α_k·scale·msign(M_k)

``η_k`` is the group's ``lr`` (so an LR schedule scales it; at ``η_k = 0`` there is no step, the floor ε included),
``γ`` clips the influence of one large gradient on the accumulator, ``ε`` floors the step, and ``scale`` is Muon's
per-shape factor (``"original"``: ``max(1, d_out/d_in)^½``; the paper's matrices have none, which is
``scale="spectral"`` on square ones). The step size is the ratio of the current clipped gradient norm to the root
of their running sum: ``η`` on the first step when ``v_0`` is small, decaying as ``1/√k`` while the gradient norms
hold steady, and shrinking with them. ``‖G_k‖_F`` is of the raw gradient, not of the momentum (as the paper and
optax's ``contrib.adago`` write it); under FSDP2 it is summed over the shards. ``λ`` is Muon's decoupled weight
decay (not in the paper). The accumulator is kept in float32 under the state key ``adago_v2``.
"""

from __future__ import annotations

import torch

from specopt._checks import check_number
from specopt.optimizers import Muon, refuse_own
from specopt.steps import StepRule, weight_decay


class AdaGradNormStep(StepRule):
    """AdaGO's step: ``W ← (1−γλ)W + α_k·ρ·lmo(d)`` with ``α_k = max(ε, η·min(‖G_k‖_F, γ)/v_k)``,
    ``v_k² = v_{k−1}² + min(‖G_k‖_F, γ)²`` (see the module docstring; ρ is the group's radius, Muon's scale).

    Args:
        gamma: γ, the clip of the gradient norm (> 0).
        v0: v_0, the accumulator's initial root (> 0).
        eps: ε, the floor of the step size (≥ 0).
    """

    name = "adago"
    per_tensor = True

    def __init__(self, gamma: float = 1.0, v0: float = 1.0, eps: float = 1e-6):
        self.gamma = check_number(gamma, "gamma", low_open=True)
        self.v0 = check_number(v0, "v0", low_open=True)
        self.eps = check_number(eps, "eps")

    def scale(self, records, ctx) -> None:
        squares = ctx.complete([rec.g.float().square().sum() for rec in records], records)
        for rec, square in zip(records, squares, strict=True):
            clipped = torch.as_tensor(square, device=rec.g.device).float().sqrt().clamp(max=self.gamma)
            v2 = rec.state.get("adago_v2")
            if v2 is None:
                v2 = rec.state["adago_v2"] = torch.full((), self.v0**2, dtype=torch.float32, device=rec.g.device)
            v2.add_(clipped.square())  # a skipped step (ctx.ok false) has zeroed gradients: it adds 0
            lr = rec.group["lr"]
            alpha = (lr * clipped / v2.sqrt()).clamp(min=self.eps)
            if isinstance(lr, torch.Tensor):  # a tensor lr (torch.compile): no branch on its value
                alpha = torch.where(lr.to(alpha.device) > 0, alpha, 0.0)
            elif not lr > 0:
                alpha = torch.zeros_like(clipped)
            rec.shrink = weight_decay(rec)
            rec.scale = alpha * rec.radius


class AdaGO(Muon):
    """AdaGO (Zhang, Liu & Schaeffer 2025, arXiv:2509.02981): Muon with an AdaGrad-Norm step size per matrix,
    ``W ← (1−ηλ)W − α_k·scale·msign(M_k)``, ``α_k = max(ε, η·min(‖G_k‖, γ)/v_k)``, ``v_k² = v_{k−1}² +
    min(‖G_k‖, γ)²`` (see the module docstring). ``lr`` is η, the step
    size before the AdaGrad ratio ``min(‖G_k‖, γ)/v_k`` (≤ 1) scales it; the momentum is the paper's EMA (no
    Nesterov) unless ``nesterov=True``. Takes every :class:`~specopt.Muon` argument but ``rule``, plus ``gamma``,
    ``v0`` and ``eps`` of :class:`AdaGradNormStep`."""

    def __init__(self, params, lr: float = 0.2, gamma: float = 1.0, v0: float = 1.0, eps: float = 1e-6,
                 nesterov: bool = False, **muon):
        refuse_own("AdaGO", muon, "rule")
        super().__init__(params, lr=lr, nesterov=nesterov, rule=AdaGradNormStep(gamma, v0, eps), **muon)
