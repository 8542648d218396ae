"""Gradient estimators ``d_k`` (Pethick et al. 2025; Cutkosky & Orabona 2019): the "dual feedback" fed to the geometry.

* EMA momentum ``d_k = β d_{k−1} + (1−β) g_k`` (the papers write α = 1 − β);
* Nesterov ``d̃_k = β d_k + (1−β) g_k`` (as torch.optim.Muon: ``g.lerp(d_k, β)``);
* averaged lmo (ALMOND) ``d_k = β d_{k−1} + (1−β)·ρ·lmo(g_k)``: the geometry is applied before averaging;
* STORM ``d_k = g(x_k; ξ_k) + (1 − a_k)(d_{k−1} − g(x_{k−1}; ξ_k))`` with β = 1 − a_k (Cutkosky & Orabona 2019;
  the STORM variant of *Constrained Stochastic Spectral Preconditioning Converges for Nonconvex Objectives* (2026)):
  needs the gradient at the previous iterate on the *same* batch, so ``step(closure)`` runs
  the closure twice per step (2× the gradient cost); ``d_1 = g_1``.

``momentum`` may be a number β ∈ [0, 1), ``"theory"``: ``β_k = 1 − (k+1)^{-1/2}`` (k = 0, 1, …), the
schedule of the stochastic SCG/Gluon analyses and of the heavy-tailed momentum analysis, or ``"storm"``:
``a_k = 1 − β_k = (k+1)^{-2/3}``, STORM's schedule. The step-size schedules that go with them
(``γ_k ∝ k^{-3/4}``, ``k^{-2/3}``) are LR schedulers: :func:`specopt.schedules.power_decay`.

The step counts are 0-d tensors (see the engine), so a schedule's β is a 0-d tensor on the parameter's device
(no host sync to read the count, and no recompilation under torch.compile as it grows). ``ok`` (a 0-d boolean,
given under torch.compile) makes the buffer writes conditional: :func:`specopt.steps.commit`.
"""

from __future__ import annotations

import torch

from specopt.steps import commit

ESTIMATORS = ("momentum", "almond", "storm")
MOMENTUM_SCHEDULES = {"theory": 0.5, "storm": 2.0 / 3.0}
"""Named schedules: ``β_k = 1 − (k+1)^{-power}``."""


def momentum_at(momentum: float | str, step):
    """β for the ``step``-th update (0-based): a float for a number, for a schedule a float or a 0-d tensor
    as ``step`` is an int or a 0-d tensor."""
    if isinstance(momentum, str):
        return 1.0 - (step + 1) ** -MOMENTUM_SCHEDULES[momentum]
    return float(momentum)


def validate_momentum(momentum) -> None:
    if isinstance(momentum, str) and momentum in MOMENTUM_SCHEDULES:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be a number in [0, 1) or one of {tuple(MOMENTUM_SCHEDULES)}, "
                         f"got {momentum!r}")


def momentum_buffer(state: dict, like: torch.Tensor) -> torch.Tensor:
    """The EMA buffer of one parameter, created at zero in float32 or wider (bf16 params keep fp32 state)."""
    if "momentum_buffer" not in state:
        dtype = torch.promote_types(like.dtype, torch.float32)
        state["momentum_buffer"] = torch.zeros_like(like, dtype=dtype, memory_format=torch.preserve_format)
    return state["momentum_buffer"]


def _weight(w, like: torch.Tensor):
    """A lerp weight for ``like``: tensor weights (from scheduled β) in ``like``'s dtype, as lerp requires."""
    return w.to(like.dtype) if isinstance(w, torch.Tensor) else w


def ema_direction(state: dict, g: torch.Tensor, beta, nesterov: bool, ok: torch.Tensor | None = None) -> torch.Tensor:
    """Update the EMA buffer with ``g`` and return the direction to feed the lmo."""
    buf = momentum_buffer(state, g)
    if ok is None:
        buf.lerp_(g, _weight(1.0 - beta, buf))
    else:
        buf = commit(buf, buf.lerp(g, _weight(1.0 - beta, buf)), ok)
    if nesterov:
        return g.lerp(buf, _weight(beta, g))
    return buf


def almond_average(state: dict, direction: torch.Tensor, beta, ok: torch.Tensor | None = None) -> torch.Tensor:
    """``d_k = β d_{k−1} + (1−β)·direction`` where direction = ρ·lmo(g_k); returns d_k."""
    buf = momentum_buffer(state, direction)
    if ok is None:
        return buf.lerp_(direction, _weight(1.0 - beta, buf))
    return commit(buf, buf.lerp(direction, _weight(1.0 - beta, buf)), ok)


def storm_direction(state: dict, g: torch.Tensor, g_previous: torch.Tensor | None, beta: float) -> torch.Tensor:
    """STORM: ``d_k = g_k + β(d_{k−1} − g_prev)`` with ``g_prev = g(x_{k−1}; ξ_k)`` (β = 1 − a_k); the first
    step of a tensor (no ``d_{k−1}`` or no previous iterate yet) gives ``d = g``."""
    buf = state.get("momentum_buffer")
    if buf is None or g_previous is None:
        buf = momentum_buffer(state, g)
        return buf.copy_(g)
    return buf.sub_(g_previous).mul_(beta).add_(g)
