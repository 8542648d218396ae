"""Variance-reduced Gluon (Qian et al. 2025, *Muon is Provably Faster with Momentum Variance Reduction*,
arXiv:2512.16598): Gluon's layer-wise radii on momentum variance reduction (MVR, the STORM estimator of Cutkosky &
Orabona 2019) instead of momentum, which improves the non-convex rate from O(K^{-1/4}) to O(K^{-1/3}).

Per layer i, with ``a_k = (k+1)^{-2/3}`` (k = 0, 1, …):

    d_i^k = g_i(X^k; ξ^k) + (1 − a_k)·(d_i^{k−1} − g_i(X^{k−1}; ξ^k))         (STORM; d^0 = g(X^0; ξ^0))
    X_i^{k+1} = (1 − γλ)X_i^k + γ·t_i^k·lmo_i(d_i^k),   t_i^k = t_i·(k+1)^{-2/3},
    t_i = ‖d_i^k‖_* / (L0_i + L1_i·‖d_i^k‖_*)

The step and momentum exponents are the MVR analysis's: the estimator's error has a variance part ∝ √a·σ and a
drift part ∝ L·t/√a, which balance the descent term ∝ 1/(tK) at ``a ∝ t ∝ K^{-2/3}``, the rate K^{-1/3}; the
decreasing form ``(k+1)^{-2/3}`` needs no horizon K (the momentum analysis's Gluon, ``schedule="stochastic"``, has
``t ∝ k^{-3/4}``, ``1−β ∝ k^{-1/2}``). ``L0``/``L1`` are Gluon's online estimate by default (:mod:`specopt.gluon`):
the smoothness is measured from the gradients at ``X^k`` and ``X^{k−1}`` on one batch, the same pair STORM needs,
so one extra gradient evaluation per step serves both (``step(closure)``, 2 gradients per step, as Gluon with a
closure). ``lr`` is γ, the multiplier of every ``t_i^k``.

Written on the engine's public protocol: ``estimator=Storm``, ``rule=GluonRule`` (the combination the engine
accepts), Gluon's ``schedule="mvr"`` and STORM's ``momentum="storm"``.
"""

from __future__ import annotations

from specopt.optimizers import Gluon


class GluonMVR(Gluon):
    """Gluon on the STORM estimator with the MVR schedule (Qian et al. 2025, arXiv:2512.16598): ``a_k =
    (k+1)^{-2/3}``, steps ``γ·t_l·(k+1)^{-2/3}`` (see the module docstring); needs ``step(closure)``.

    Args:
        L0, L1: per-group smoothness constants, or ``"online"`` (default).
        lr: γ, multiplying every ``t_i^k`` (4: the smallest worst regret of the defaults sweep over the two
            char-GPTs and the CNN, ``benchmarks/results/sweep_defaults-*.csv``; 8 is the char-GPTs' best by 0.06
            but 0.29 above 4 on the CNN, and from 16 on the runs diverge).
        momentum: ``"storm"`` (default: ``a_k = (k+1)^{-2/3}``) or a fixed β = 1 − a.
        schedule: ``"mvr"`` (default: ``t_i^k = t_i·(k+1)^{-2/3}``), or Gluon's ``"constant"`` or
            ``"stochastic"`` (``t_i^k = t_i·(k+1)^{-3/4}``).
        warmup_radius: the step before the first smoothness measurement.
        weight_decay: decoupled, ``(1 − γλ)``.
    """

    def __init__(self, params, L0: float | str = "online", L1: float | str = "online", lr: float = 4.0,
                 momentum: float | str = "storm", norm="auto", schedule: str = "mvr", warmup_radius: float = 1e-3,
                 weight_decay: float = 0.0, nonfinite: str = "raise", batch_lmo: bool | None = None,
                 process_group="auto"):
        super().__init__(params, L0=L0, L1=L1, lr=lr, momentum=momentum, norm=norm, schedule=schedule,
                         warmup_radius=warmup_radius, probe_every=1, weight_decay=weight_decay, nesterov=False,
                         estimator="storm", nonfinite=nonfinite, batch_lmo=batch_lmo, process_group=process_group)
