"""MuonBP (Khaled et al. 2025, *MuonBP: Faster Muon via Block-Periodic Orthogonalization*, arXiv:2510.16981): Muon
that orthogonalizes each block of a matrix on its own on most steps and the whole matrix every P steps.

With ``M`` the (Nesterov) momentum of a matrix ``W`` whose rows are cut into blocks ``W = [W_1; …; W_B]``, the k-th
update (k = 0, 1, …) is

    k mod P = 0 (full step):    W ← (1−γλ)W − γ·scale(W)·msign(M)
    otherwise (block step):     W_b ← (1−γλ)W_b − r·γ·scale(W_b)·msign(M_b)     for every block b

with Muon's ``scale`` taken of each block's own shape on block steps (the paper's RMS matching: with the "original"
scale, ``max(1, d_out/d_in)^½``, a block step's update has the Frobenius norm of a full step's) and ``r`` the ratio
of the two step sizes the paper's analysis calls for, ``η_block = r·η_full``. A block step is the lmo of the
block-diagonal geometry ``‖W‖ = max_b ‖W_b‖`` (:class:`~specopt.norms.Blocked`): the block is a linear map of its
own, and its msign needs no other rows.

The blocks are the rows of dim 0 of the stored tensor. Under FSDP2 (``fully_shard``, ``Shard(0)``) they are the
shards: each rank orthogonalizes its own rows, and the block steps post no collective for the lmo (the paper's
point: Muon's full step gathers every matrix to one rank and scatters the result back). Elsewhere (one process, DDP)
a matrix is cut into ``blocks`` row blocks the way FSDP2 would shard it over ``blocks`` ranks (``torch.chunk``), so
one process with ``blocks=W`` computes the update W FSDP2 ranks compute. Blocks of a norm that is already blocked (a
fused q/k/v) are cut at both sets of boundaries. An expert stack (:class:`~specopt.views.Stacked`) is cut along its
expert axis, as FSDP2 shards it: its blocks are whole experts, each its own matrix, so its block step is the full
lmo times ``r``. One process saves flops too: a row block of a wide or square matrix is a smaller msign (B blocks of
a square matrix cost 1/B of its msign), while row blocks of a tall matrix cost as much as the matrix until they are
shorter than wide; ``split="short"`` cuts a tall matrix across its columns instead (on one process only: under FSDP2
the shards decide).

Written on the engine's public protocol: the rule :class:`BlockPeriodic` swaps a record's norm for its row-blocked
form in :meth:`~specopt.steps.StepRule.active` on block steps; the blocked norm's
:meth:`~specopt.norms.Norm.shard_local` tells the lmo runner that a shard's blocks need no other rows.
"""

from __future__ import annotations

import itertools

import torch

from specopt._checks import check_number
from specopt.norms import Blocked, Norm, _SpectralBase
from specopt.optimizers import Muon, refuse_own
from specopt.steps import USCG
from specopt.views import LAYOUT_VIEWS, MUON_SCALES, MuonScaled, Transposed


def chunk_rows(rows: int, blocks: int) -> tuple[int, ...]:
    """The row counts of ``torch.chunk(rows, blocks)``: FSDP2's shards of ``rows`` rows over ``blocks`` ranks."""
    return tuple(c.shape[0] for c in torch.empty(rows, device="meta").chunk(blocks))


def row_blocks(norm: Norm, sizes: tuple[int, ...]) -> Norm:
    """``norm`` on every block of rows of ``sizes`` (dim 0): :class:`~specopt.norms.Blocked`, with a contiguously
    blocked ``norm`` cut at both its boundaries and ``sizes``' (the common refinement). One block is the whole
    tensor's lmo, still as a :class:`~specopt.norms.Blocked` (whose lmo is local to a shard of one block)."""
    if isinstance(norm, Blocked) and not norm.interleaved:
        cuts = set(itertools.accumulate(sizes, initial=0)) | set(itertools.accumulate(norm.sizes(sum(sizes)),
                                                                                        initial=0))
        cuts = sorted(cuts)
        return Blocked(norm.inner, tuple(b - a for a, b in itertools.pairwise(cuts)))
    return Blocked(norm, sizes)


def column_blocks(norm: Norm, sizes: tuple[int, ...]) -> Norm:
    """``norm`` on every block of columns of ``sizes`` (dim 1 of a matrix): the row blocks of its transpose."""
    return Transposed(row_blocks(Transposed(norm), sizes))


def scaled_leaves(norm: Norm, scale: str) -> Norm:
    """``norm`` with Muon's ``scale`` inside every spectral leaf (:class:`~specopt.views.MuonScaled`), so that each
    block, whatever its shape, gets the scale of its own shape at radius 1."""
    if isinstance(norm, _SpectralBase):
        return MuonScaled(norm, scale)
    if isinstance(norm, (Blocked, *LAYOUT_VIEWS)):
        return norm.with_inner(scaled_leaves(norm.inner, scale))
    raise ValueError(f"a Muon scale ({scale!r}) needs a spectral norm, got {norm!r}")


SPLITS = ("rows", "short")


class BlockPeriodic(USCG):
    """uSCG whose tensors take the lmo of their row blocks on all but every ``period``-th update (see the module
    docstring): ``W ← (1−γλ)W + γρ·lmo(d)`` on full steps, ``W_b ← (1−γλ)W_b + r·γρ_b·lmo_b(d_b)`` on block steps.

    Args:
        period: P; a tensor's k-th update (k = 0, 1, …, its own count) is full where ``k mod P = 0``. 1 is Muon.
        blocks: blocks of a tensor that is not sharded (``torch.chunk`` of its rows, or columns); a sharded
            tensor's blocks are its shards.
        block_lr_ratio: r = η_block/η_full.
        split: how a tensor that is not sharded is cut: ``"rows"`` (FSDP2's shards) or ``"short"`` (a matrix across
            its shorter side: its columns where it is taller than wide, the cheaper msign on one device).
    """

    per_tensor = True  # each tensor's update is its own
    accepts = ("direction", "preconditioned")  # not ALMOND's averaged lmo: r rides on the block radius, which it
    # would average into later steps

    name = "block_periodic"
    traceable = False  # the full/block choice reads the step counts on the host

    def __init__(self, period: int = 5, blocks: int = 8, block_lr_ratio: float = 1.0, split: str = "rows"):
        for key, value in (("period", period), ("blocks", blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        check_number(block_lr_ratio, "block_lr_ratio", low_open=True)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.period, self.blocks, self.block_lr_ratio, self.split = period, blocks, float(block_lr_ratio), split
        self._geometry: dict = {}  # (norm, radius spec, radius, blocks) → the block step's (norm, radius)

    def is_full(self, count: int) -> bool:
        """Whether a tensor's update with 1-based count ``count`` (``state["step"]`` after it advanced) is full."""
        return (count - 1) % self.period == 0

    def active(self, records: list, ctx) -> list:
        """Every record, the block-step ones with their norm and radius replaced by the row-blocked geometry, the
        radius times r (uSCG's step γρ: r·γρ_b). Nothing is kept about this step's records: a compiled step whose
        guards read a set of their ids recompiled at every step."""
        if not records:
            return records
        device = records[0].state["step"].device
        counts = torch.stack([rec.state["step"].to(device) for rec in records]).tolist()  # one host sync
        for rec, count in zip(records, counts, strict=True):
            if self.is_full(int(count)) or not (rec.norm.item_ndim or 0) >= 2:  # vectors: no blocks
                continue
            shape = rec.layout.shape
            columns = not rec.layout.sharded and self.split == "short" and len(shape) == 2 and shape[1] < shape[0]
            sizes = (tuple(r for r in rec.layout.rows if r) if rec.layout.sharded else
                     chunk_rows(shape[1] if columns else shape[0], self.blocks))
            key = (rec.norm, rec.group["radius"], rec.radius, sizes, columns)
            if key not in self._geometry:
                self._geometry[key] = self.block_geometry(*key)
            norm, radius = self._geometry[key]
            rec.norm, rec.radius = norm, radius * self.block_lr_ratio
        return records

    @staticmethod
    def block_geometry(norm: Norm, radius_spec, radius: float, sizes: tuple[int, ...],
                       columns: bool = False) -> tuple[Norm, float]:
        """(norm, radius) of a block step: the row (or column) blocks of ``sizes``; a Muon scale (``radius_spec``
        one of :data:`~specopt.views.MUON_SCALES`) moves inside every block at radius 1, a number stays the radius."""
        cut = column_blocks if columns else row_blocks
        if isinstance(radius_spec, str) and radius_spec in MUON_SCALES:
            return cut(scaled_leaves(norm, radius_spec), sizes), 1.0
        return cut(norm, sizes), radius


class MuonBP(Muon):
    """MuonBP (Khaled et al. 2025, arXiv:2510.16981): Muon with block-periodic orthogonalization — each block's
    own msign, the whole matrix's every P-th update (see the module docstring). Takes every
    :class:`~specopt.Muon` argument but ``rule``, plus ``period`` (P: a full step every P updates), ``blocks``
    (blocks of a tensor that is not sharded; under FSDP2 the shards are the blocks), ``block_lr_ratio``
    (η_block/η_full) and ``split`` (``"rows"`` or ``"short"``, see :class:`BlockPeriodic`)."""

    def __init__(self, params, lr: float = 0.02, period: int = 5, blocks: int = 8, block_lr_ratio: float = 1.0,
                 split: str = "rows", **muon):
        refuse_own("MuonBP", muon, "rule")
        super().__init__(params, lr=lr, rule=BlockPeriodic(period, blocks, block_lr_ratio, split), **muon)
