"""The adaptive members of the Muon family, written on the engine's public protocol (an estimator and a rule; no
engine edit): a second moment of the orthogonalized update divides it, row by row (NorMuon) or entry by entry
(AdaMuon), and the result is rescaled to the Frobenius norm of the update it replaces, so that Muon's learning
rates and scales carry over.

* **NorMuon** (Li et al. 2025, *NorMuon: Making Muon more efficient and scalable*, arXiv:2510.05491):
  ``O = msign(d̃)``, ``v ← β₂v + (1−β₂)·mean_j O_ij²`` (one number per row, i.e. per output neuron),
  ``Ô = O/√(v + ε)``, ``W ← (1−γλ)W − γ·scale·(‖O‖_F/‖Ô‖_F)·Ô``.
* **AdaMuon** (Si et al. 2025, *AdaMuon: Adaptive Muon Optimizer*, arXiv:2507.11005): the momentum is
  sign-transformed before the orthogonalization, ``O = msign(sign(M))`` (:class:`SignedMomentum`), the second
  moment is element-wise, ``V ← β₂V + (1−β₂)·O⊙O``, ``Ô = O ⊘ (√V + ε)``, rescaled to AdamW's RMS:
  ``0.2·√(mn)/‖Ô‖_F`` (here: the ``match_rms_adamw`` scale, ``0.2·√max(m, n)``, times ``‖O‖_F = √min(m, n)``).

Both keep their second moment under the state key ``second_moment`` (float32, float64 for float64 weights); Muon's
AdamW part is unchanged.
"""

from __future__ import annotations

import math

import torch

from specopt._checks import check_number
from specopt.estimators import Momentum
from specopt.optimizers import Muon, refuse_own
from specopt.steps import USCG


class SecondMomentNormalized(USCG):
    """uSCG on the lmo's output divided by the root of its running second moment (per row or per entry), rescaled
    to the output's Frobenius norm: ``Ô = O/√(v + ε)·‖O‖_F/‖O/√(v + ε)‖_F``, ``W ← (1−γλ)W + γρ·Ô``.

    Args:
        per: ``"row"`` (NorMuon: one moment per output row; a conv kernel's rows are its output channels) or
            ``"entry"`` (AdaMuon).
        beta2: the second moment's EMA factor.
        eps: added to the second moment (``"row"``) or to its root (``"entry"``, as AdaMuon writes it).
    """

    per_tensor = True  # each tensor's update is its own

    def __init__(self, per: str = "row", beta2: float = 0.95, eps: float = 1e-8):
        if per not in ("row", "entry"):
            raise ValueError(f"per must be 'row' or 'entry', got {per!r}")
        check_number(beta2, "beta2", 0.0, 1.0, high_open=True)
        check_number(eps, "eps", low_open=True)
        self.per, self.beta2, self.eps = per, float(beta2), float(eps)
        self.name = "normuon" if per == "row" else "adamuon"

    def init_state(self, rec) -> None:
        """The second moment, zero: one entry per row of the (local) tensor, or per entry, in the engine's working
        dtype ``promote_types(p.dtype, float32)``."""
        if "second_moment" not in rec.state:
            rows, rest = rec.p.shape[0], math.prod(rec.p.shape[1:])
            rec.state["second_moment"] = torch.zeros(rows, 1 if self.per == "row" else rest, device=rec.p.device,
                                                     dtype=torch.promote_types(rec.p.dtype, torch.float32))

    def scale(self, records, ctx) -> None:
        pieces = []  # ‖O‖_F and ‖Ô‖_F of each record's rows (all of them but under FSDP2)
        for rec in records:
            v = rec.state["second_moment"]
            out = (rec.s.to(v.dtype) * rec.factor).reshape(rec.s.shape[0], math.prod(rec.s.shape[1:]))
            moment = out.square().mean(dim=1, keepdim=True) if self.per == "row" else out.square()
            v.lerp_(moment, 1 - self.beta2)
            normed = out / (v + self.eps).sqrt() if self.per == "row" else out / (v.sqrt() + self.eps)
            pieces += [out.norm(), normed.norm()]
            rec.s, rec.factor = normed.reshape(rec.s.shape), 1.0
        # under FSDP2 a rank holds some of a tensor's rows: the whole tensor's norms from the sums of their squares
        both = [rec for rec in records for _ in range(2)]
        wholes = ctx.complete([n.square() for n in pieces], both)
        norms = [w.sqrt() if rec.layout.sharded else n for rec, n, w in zip(both, pieces, wholes, strict=True)]
        for rec, out_norm, normed_norm in zip(records, norms[::2], norms[1::2], strict=True):
            rec.s.mul_(out_norm / normed_norm.clamp_min(torch.finfo(torch.float32).tiny))
        super().scale(records, ctx)

    def config(self) -> dict:
        return {"name": self.name, "per": self.per, "beta2": self.beta2, "eps": self.eps}


class SignedMomentum(Momentum):
    """AdaMuon's sign-stabilized direction: the (Nesterov) momentum's sign, ``d = sign(M)``, fed to msign."""

    per_tensor = True  # each tensor's update is its own

    name = "signed_momentum"

    def direction(self, rec, ctx) -> torch.Tensor:
        return torch.sign(super().direction(rec, ctx))


class NorMuon(Muon):
    """NorMuon: Muon with its update's rows normalized by their running second moment (see the module docstring).
    Takes every :class:`~specopt.Muon` argument but ``rule``, plus ``beta2`` and ``eps`` of the second moment."""

    def __init__(self, params, lr: float = 0.02, beta2: float = 0.95, eps: float = 1e-8, **muon):
        refuse_own("NorMuon", muon, "rule")
        super().__init__(params, lr=lr, rule=SecondMomentNormalized("row", beta2, eps), **muon)


class AdaMuon(Muon):
    """AdaMuon: Muon on the sign of the momentum, with an element-wise second moment and AdamW's RMS (see the
    module docstring). ``lr`` is on AdamW's scale (the update's RMS is 0.2·lr, as Moonlight's ``match_rms_adamw``).
    Takes every :class:`~specopt.Muon` argument but ``estimator``, ``scale`` and ``rule``, plus ``beta2`` and
    ``eps``."""

    def __init__(self, params, lr: float = 0.016, beta2: float = 0.95, eps: float = 1e-8, **muon):
        refuse_own("AdaMuon", muon, "estimator", "scale", "rule")
        super().__init__(params, lr=lr, scale="match_rms_adamw", estimator=SignedMomentum(),
                         rule=SecondMomentNormalized("entry", beta2, eps), **muon)
