"""Gradient estimators ``d_k`` (ALGORITHMS.md §3): the "dual feedback" fed to the geometry.

* EMA momentum ``d_k = β d_{k−1} + (1−β) g_k`` (the seeds write α = 1 − β);
* Nesterov ``d̃_k = β d_k + (1−β) g_k`` (as torch.optim.Muon: ``g.lerp(d_k, β)``);
* averaged lmo (ALMOND) ``d_k = β d_{k−1} + (1−β)·ρ·lmo(g_k)``: the geometry is applied before averaging.

``momentum`` may be a number β ∈ [0, 1) or ``"theory"``: ``β_k = 1 − (k+1)^{-1/2}`` (k = 0, 1, …), the
schedule of the stochastic SCG/Gluon analyses.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("momentum", "almond")


def momentum_at(momentum: float | str, step: int) -> float:
    """β for the ``step``-th update (0-based)."""
    if momentum == "theory":
        return 1.0 - (step + 1) ** -0.5
    return float(momentum)


def validate_momentum(momentum) -> None:
    if momentum == "theory":
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be a number in [0, 1) or 'theory', got {momentum!r}")


def momentum_buffer(state: dict, like: torch.Tensor) -> torch.Tensor:
    """The EMA buffer of one parameter, created at zero in float32 or wider (bf16 params keep fp32 state)."""
    if "momentum_buffer" not in state:
        dtype = torch.promote_types(like.dtype, torch.float32)
        state["momentum_buffer"] = torch.zeros_like(like, dtype=dtype, memory_format=torch.preserve_format)
    return state["momentum_buffer"]


def ema_direction(state: dict, g: torch.Tensor, beta: float, nesterov: bool) -> torch.Tensor:
    """Update the EMA buffer with ``g`` and return the direction to feed the lmo."""
    buf = momentum_buffer(state, g)
    buf.lerp_(g, 1.0 - beta)
    if nesterov:
        return g.lerp(buf, beta)
    return buf


def almond_average(state: dict, direction: torch.Tensor, beta: float) -> torch.Tensor:
    """``d_k = β d_{k−1} + (1−β)·direction`` where direction = ρ·lmo(g_k); returns d_k."""
    buf = momentum_buffer(state, direction)
    buf.lerp_(direction, 1.0 - beta)
    return buf
