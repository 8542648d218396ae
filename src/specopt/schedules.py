"""Step-size schedules of the stochastic analyses, as ``torch.optim.lr_scheduler.LambdaLR`` objects.

``γ_k = γ_0·(k+1)^{-power}``: ``power=3/4`` is the heavy-tailed momentum method's schedule and Gluon's
stochastic one, ``power=2/3`` STORM's (*Constrained Stochastic Spectral Preconditioning Converges for Nonconvex
Objectives* (2026)). The momentum schedules that go with them
are ``momentum="theory"`` (``1 − β_k = (k+1)^{-1/2}``) and ``momentum="storm"`` (``a_k = (k+1)^{-2/3}``).
"""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR

from specopt._checks import check_number

POWERS = {"heavy-tails": 0.75, "storm": 2.0 / 3.0}


class _Power:
    """``k ↦ (k+1)^{-power}`` (a class, not a lambda, so that the scheduler can be pickled)."""

    def __init__(self, power: float):
        self.power = power

    def __call__(self, k: int) -> float:
        return (k + 1) ** -self.power


def power_decay(optimizer, power: float | str = "heavy-tails") -> LambdaLR:
    """A scheduler with ``lr_k = lr_0·(k+1)^{-power}``; ``power`` a number ≥ 0 or a name of :data:`POWERS`."""
    if isinstance(power, str):
        if power not in POWERS:
            raise ValueError(f"unknown schedule {power!r}; named powers: {POWERS}")
        power = POWERS[power]
    return LambdaLR(optimizer, _Power(check_number(power, "power")))
