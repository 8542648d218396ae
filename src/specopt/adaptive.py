"""The adaptive members of the Muon family, written on the engine's public protocol (an estimator and a rule; no
engine edit): a second moment of the orthogonalized update divides it, row by row (NorMuon) or entry by entry
(AdaMuon), and the result is rescaled to the Frobenius norm of the update it replaces, so that Muon's learning
rates and scales carry over.

* **NorMuon** (Li et al. 2025, *NorMuon: Making Muon more efficient and scalable*, arXiv:2510.05491):
  ``O = msign(d̃)``, ``v ← β₂v + (1−β₂)·mean_j O_ij²`` (one number per output neuron i of each map: the rows
  of ``(d_out, d_in)``, read through the tensor's layout — a ``Conv1D`` weight's columns, each expert's own rows),
  ``Ô = O/√(v + ε)``, ``W ← (1−γλ)W − γ·scale·(‖O‖_F/‖Ô‖_F)·Ô``. (In the code O is the norm's lmo of d̃, msign
  up to the norm's shape factor: the rescale makes the factor cancel, except in ε, which is in O's units.)
* **AdaMuon** (Si et al. 2025, *AdaMuon: Adaptive Muon Optimizer*, arXiv:2507.11005): the momentum is
  sign-transformed before the orthogonalization, ``O = msign(sign(M))`` (:class:`SignedMomentum`), the second
  moment is element-wise, ``V ← β₂V + (1−β₂)·O⊙O``, ``Ô = O ⊘ (√V + ε)``, rescaled to AdamW's RMS:
  ``0.2·√(mn)/‖Ô‖_F`` (here: the ``match_rms_adamw`` scale, ``0.2·√max(m, n)``, times ``√min(m, n)``, the
  ``‖msign‖_F`` of a full-rank matrix, whatever the rank of ``sign(M)``).

The rescale is per map, as Muon's scale is: each expert of a stack (and, for AdaMuon, each block of a fused
projection of equal blocks) is its own matrix.

Both keep their second moment under the state key ``second_moment`` (float32, float64 for float64 weights); Muon's
AdamW part is unchanged and keeps no second moment of theirs.
"""

from __future__ import annotations

import math

import torch

from specopt._checks import check_number
from specopt.estimators import Momentum, ema
from specopt.layouts import spectral_inside
from specopt.norms import Blocked
from specopt.optimizers import Muon, refuse_own
from specopt.steps import USCG
from specopt.views import as_maps, from_maps, unwrap


def _rows_split_by_shards(norm, shape) -> bool:
    """Whether sharding the stored tensor's first axis (FSDP2) cuts through the output rows' entries: the first axis
    is an input axis of the view (a ``Conv1D`` weight stored ``(d_in, d_out)``)."""
    probe = torch.empty(shape, device="meta")
    view, maps = as_maps(norm, probe)
    first = max(range(view.ndim), key=lambda a: (view.stride(a), view.shape[a]))  # the stored first axis
    return first > maps


class SecondMomentNormalized(USCG):
    """uSCG on the lmo's output divided by the root of its running second moment (per row or per entry), rescaled
    to the output's Frobenius norm, map by map (each expert of a stack): ``Ô = O/√(v + ε)·‖O‖_F/‖O/√(v + ε)‖_F``
    (``per="entry"``: ``‖O‖_F`` of a full-rank O), ``W ← (1−γλ)W + γρ·Ô``.

    Args:
        per: ``"row"`` (NorMuon: one moment per output row of each map, read through the layout; a conv kernel's
            rows are its output channels) or
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
        """The second moment, zero: one entry per output row of each map of the (local) tensor, or per entry, in the
        engine's working dtype ``promote_types(p.dtype, float32)``. None for Muon's AdamW tensors."""
        if "second_moment" in rec.state or rec.group["norm"] == "adamw":
            return
        dtype = torch.promote_types(rec.p.dtype, torch.float32)
        if self.per == "row":
            view, maps = as_maps(rec.group["norm"], torch.empty(rec.p.shape, device="meta"))
            shape = (*view.shape[:maps + 1], 1)
        else:
            shape = (rec.p.shape[0], math.prod(rec.p.shape[1:]))
        rec.state["second_moment"] = torch.zeros(shape, device=rec.p.device, dtype=dtype)

    def scale(self, records, ctx) -> None:
        targets, normeds, partial = [], [], []  # per record: ‖O‖_F and ‖Ô‖_F of each of its maps
        for rec in records:
            v = rec.state["second_moment"]
            out = rec.s.to(v.dtype) * rec.factor
            view, maps = as_maps(rec.norm, out)
            if self.per == "row":
                if rec.layout.sharded and _rows_split_by_shards(rec.norm, rec.param.shape):
                    raise ValueError(f"{rec.name}: NorMuon's moment is per output row, and this tensor is stored "
                                     f"{tuple(rec.param.shape)} with its output rows across its FSDP2 shards (a "
                                     "Conv1D weight stored (d_in, d_out)); train it with Muon, or shard it by rows")
                rows = view.reshape(*view.shape[:maps + 1], math.prod(view.shape[maps + 1:]))
                v = ema(v, rows.square().mean(dim=-1, keepdim=True), self.beta2, ctx.ok)
                normed = from_maps(rec.norm, (rows / (v + self.eps).sqrt()).reshape(view.shape))
            else:
                flat = out.reshape(v.shape)
                v = ema(v, flat.square(), self.beta2, ctx.ok)
                normed = (flat / (v.sqrt() + self.eps)).reshape(out.shape)
            dims = tuple(range(maps, view.ndim))
            full_rank = _full_rank_square(rec) if self.per == "entry" else None
            targets.append(torch.linalg.vector_norm(view, dim=dims) if full_rank is None else
                           math.sqrt(full_rank) * abs(rec.factor))
            normeds.append(torch.linalg.vector_norm(as_maps(rec.norm, normed)[0], dim=dims))
            sharded = rec.layout.sharded and maps == 0  # this rank's rows of one matrix
            partial.append((sharded and full_rank is None, sharded))
            rec.s, rec.factor = normed.contiguous(), 1.0
        # under FSDP2 a rank holds some rows of a matrix: its norms from the whole matrix's sums of squares (an
        # expert stack's shards hold whole experts; a full-rank target depends on the shape alone)
        values = [x.square() for x, (t, n) in zip(targets, partial, strict=True) if t] + \
                 [x.square() for x, (t, n) in zip(normeds, partial, strict=True) if n]
        owners = [rec for rec, (t, n) in zip(records, partial, strict=True) if t] + \
                 [rec for rec, (t, n) in zip(records, partial, strict=True) if n]
        completed = iter(ctx.complete(values, owners))
        targets = [next(completed).sqrt() if t else x for x, (t, n) in zip(targets, partial, strict=True)]
        normeds = [next(completed).sqrt() if n else x for x, (t, n) in zip(normeds, partial, strict=True)]
        for rec, target, got in zip(records, targets, normeds, strict=True):
            target = torch.as_tensor(target, dtype=got.dtype, device=got.device)
            ratio = torch.where(got > 0, target / torch.where(got > 0, got, 1), 0)  # a zero map stays zero
            view, maps = as_maps(rec.norm, rec.s)
            view.mul_(ratio.reshape(*ratio.shape, *(1,) * (view.ndim - maps)))
        super().scale(records, ctx)


def _full_rank_square(rec) -> float | None:
    """``‖msign(X)‖_F²`` of one map of ``rec``'s tensor where X has full rank: Σ over its blocks of
    ``min(rows, columns)`` (AdaMuon's rescale to ``0.2·√(mn)/‖Ô‖_F`` is Muon's scale times this, whatever the rank
    of ``sign(M)``). None where the lmo's output holds scales of its own (blocks of unequal heights, each with its
    Muon scale): the rescale then takes ‖O‖_F as it is."""
    inner, item = unwrap(rec.norm, rec.param.shape)
    rows, cols = item[0], math.prod(item[1:])
    if isinstance(inner, Blocked):
        sizes = inner.sizes(rows)
        if len(set(sizes)) > 1:
            return None
        return float(sum(min(b, cols) for b in sizes))
    return float(min(rows, cols)) if spectral_inside(inner) else None


class SignedMomentum(Momentum):
    """AdaMuon's sign-stabilized direction: the (Nesterov) momentum's sign, ``d = sign(M)``, fed to msign."""

    per_tensor = True  # each tensor's update is its own

    name = "signed_momentum"
    produces = "preconditioned"  # a sign, not in the gradient's units: for the rules that read the lmo alone

    def direction(self, rec, ctx) -> torch.Tensor:
        return torch.sign(super().direction(rec, ctx))


class NorMuon(Muon):
    """NorMuon (Li et al. 2025, arXiv:2510.05491): Muon with its update's rows normalized by their running second
    moment, ``Ô = O/√(v + ε)`` with ``v`` the rows' mean square of ``O = msign(d̃)`` (see the module docstring).
    Takes every :class:`~specopt.Muon` argument but ``rule``, plus ``beta2`` and ``eps`` of the second moment."""

    def __init__(self, params, lr: float = 0.02, beta2: float = 0.95, eps: float = 1e-8, **muon):
        refuse_own("NorMuon", muon, "rule")
        super().__init__(params, lr=lr, rule=SecondMomentNormalized("row", beta2, eps), **muon)


class AdaMuon(Muon):
    """AdaMuon (Si et al. 2025, arXiv:2507.11005): Muon on the sign of the momentum, with an element-wise second
    moment and AdamW's RMS (see the
    module docstring). ``lr`` is on AdamW's scale (the update's RMS is 0.2·lr, as Moonlight's ``match_rms_adamw``).
    Takes every :class:`~specopt.Muon` argument but ``estimator``, ``scale`` and ``rule``, plus ``beta2`` and
    ``eps``."""

    def __init__(self, params, lr: float = 0.016, beta2: float = 0.95, eps: float = 1e-8, **muon):
        refuse_own("AdaMuon", muon, "estimator", "scale", "rule")
        super().__init__(params, lr=lr, scale="match_rms_adamw", estimator=SignedMomentum(),
                         rule=SecondMomentNormalized("entry", beta2, eps), **muon)
