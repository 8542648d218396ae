"""The lmo work split across ranks, on torch.distributed (DDP and FSDP2); no home-made transport.

Two layouts of a parameter (:class:`Layout`):

* **replicated** (plain tensors under DDP, or any run where every rank holds the same parameters): a bucket of
  ``n`` same-shape directions is padded to ``n_pad = ⌈n/W⌉·W``; rank ``r`` computes the lmo of items
  ``[r·k, (r+1)·k)`` (``k = n_pad/W``) and one ``all_gather`` gives every rank all ``n`` results.
  Bytes per step: ``(W−1)/W·n_pad·|S|`` received per rank, in the lmo's compute dtype (bf16 where native).
* **sharded** (FSDP2 ``fully_shard``: DTensor parameters, ``Shard(0)`` on a 1-D mesh, uneven shards allowed): item
  ``j`` of a bucket is owned by rank ``⌊j/k⌋``; one ``all_to_all`` sends every row-shard of ``d_j`` to its owner,
  which assembles the whole matrix, computes ``lmo(d_j)`` and a second ``all_to_all`` sends each rank its rows
  back. Never shard by shard: the polar factor of a row block is not the row block of the polar factor.

Scalars that depend on whole tensors (dual norms, ⟨d, W⟩) are computed from local pieces and summed over the
shards of sharded tensors only, in one ``all_reduce`` per use; replicated tensors are never summed across
ranks (that would count them W times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - torch without DTensor
    DTensor, Shard = (), None


@dataclass(frozen=True)
class Layout:
    """How one parameter lives on this rank: its global shape and, if sharded on dim 0, the rows per rank."""

    shape: tuple[int, ...]
    rows: tuple[int, ...] | None = None
    group: object = None

    @property
    def sharded(self) -> bool:
        return self.rows is not None


def is_dtensor(t) -> bool:
    return bool(DTensor) and isinstance(t, DTensor)


def local(t: torch.Tensor | None) -> torch.Tensor | None:
    """The local shard of a DTensor (sharing its storage), or the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def sharded_state(value, param):
    """A state tensor of ``param`` as what it is a piece of. Under FSDP2 (``param`` a DTensor sharded on dim 0) the
    state is each rank's local tensors; one with an entry per row of the rank's shard (its first dimension is the
    shard's rows: momentum, AdamW's moments, NorMuon's row moments) is this rank's rows of a whole tensor, returned
    as that DTensor (a view of ``value`` where it is on the mesh's device type, a copy there otherwise), so that
    torch.distributed.checkpoint saves every rank's rows and reshards them on load. Anything else (0-d counts,
    Python values, every state of a plain parameter) as it is."""
    if not (is_dtensor(param) and isinstance(value, torch.Tensor) and value.ndim
            and value.shape[0] == param.to_local().shape[0]):
        return value
    shape = torch.Size((param.shape[0], *value.shape[1:]))
    stride = param.stride() if shape == param.shape else torch.empty(shape, device="meta").stride()
    return DTensor.from_local(value, param.device_mesh, param.placements, shape=shape, stride=stride)


def layout_of(p: torch.Tensor, name: str) -> Layout:
    """The layout of a parameter; DTensors must be FSDP2's ``Shard(0)`` on a 1-D mesh."""
    if not is_dtensor(p):
        return Layout(tuple(p.shape))
    if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
        raise ValueError(f"{name}: specopt supports DTensor parameters sharded on dim 0 over a 1-D mesh (FSDP2 "
                         f"fully_shard); got placements {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh")
    world = p.device_mesh.size()
    rows = tuple(c.shape[0] for c in torch.empty(p.shape[0], device="meta").chunk(world))
    rows = rows + (0,) * (world - len(rows))
    return Layout(tuple(p.shape), rows, p.device_mesh.get_group())


def replica_group(process_group):
    """The group that splits the work on replicated parameters: ``"auto"`` → the default group when one is
    initialised with more than one rank; ``None`` → no splitting."""
    if process_group == "auto":
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None
    if process_group is not None and dist.get_rank(process_group) < 0:
        raise ValueError(f"rank {dist.get_rank()} is not a member of the process_group given to the optimizer: every "
                         "rank that steps it must belong to the group (or pass process_group=None for independent "
                         "per-rank optimizers)")
    return process_group


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool = False):
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(out, inp, group=group, async_op=async_op)


class Pending:
    """An lmo whose collective is in flight: :meth:`wait` returns the per-item results. Buckets post their
    collectives asynchronously so that one bucket's transfer overlaps the next bucket's matmuls."""

    def __init__(self, work, finish):
        self.work, self.finish = work, finish

    def wait(self) -> list[torch.Tensor]:
        if self.work is not None:
            self.work.wait()
        return self.finish()


def lmo_replicated(norm, ds: list[torch.Tensor], group) -> Pending:
    """``lmo`` of every replicated direction in ``ds`` (one shape), each rank computing ``⌈n/W⌉`` of them and one
    asynchronous all_gather sharing the results."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n, shape = len(ds), tuple(ds[0].shape)
    k = math.ceil(n / world)
    work = norm.work_dtype(ds[0])
    chunk = torch.empty((k,) + shape, dtype=work, device=ds[0].device)
    mine = ds[rank * k:min((rank + 1) * k, n)]
    chunk[len(mine):].zero_()  # padding
    if mine:
        for i, d in enumerate(mine):  # convert while copying: one pass
            chunk[i].copy_(d)
        chunk[: len(mine)] = norm.lmo_factored(chunk[: len(mine)], batch_dims=1, private=True)[0]
    out = torch.empty((k * world,) + shape, dtype=work, device=ds[0].device)
    handle = _all_gather(out, chunk, group, async_op=True)
    return Pending(handle, lambda: list(out[:n].unbind(0)))


ITEMS_PER_RANK = 2
"""Distributed buckets are cut into pieces of ``ITEMS_PER_RANK × W`` tensors, one collective each, so that each
piece's transfer overlaps the next piece's matmuls and only the last small piece's transfer is left exposed."""


GATHER, OWN, WHOLE = "gather", "own", "whole"
"""The kinds of an lmo bucket (:meth:`specopt.lmo.LmoRunner.buckets`): sharded tensors gathered to their owner,
sharded tensors whose lmo is local to each shard, and tensors every rank holds whole (split over the replicas)."""


def split_buckets(buckets: dict, replicas) -> dict:
    """Cut every distributed bucket (key ``(norm, shape, dtype, device, kind, index)``) into pieces of at most
    ``ITEMS_PER_RANK·W`` items; local buckets are kept as they are. Keys gain the piece number."""
    out = {}
    for key, bucket in buckets.items():
        group = {GATHER: bucket[0].layout.group, OWN: None, WHOLE: replicas}[key[4]]
        if group is None:
            out[key + (0,)] = bucket
            continue
        size = ITEMS_PER_RANK * dist.get_world_size(group)
        for piece, start in enumerate(range(0, len(bucket), size)):
            out[key + (piece,)] = bucket[start:start + size]
    return out


class ShardedLmo:
    """``lmo`` of row-sharded directions (local shards ``ds``, one global shape) in three phases, so that the
    engine can post every bucket's first transfer before computing any: :meth:`send` (all_to_all of every
    shard to the item's owner), :meth:`compute` (whole matrices → lmo → all_to_all of every rank's rows back),
    then ``wait()`` on the returned :class:`Pending`."""

    def __init__(self, norm, ds: list[torch.Tensor], layout: Layout):
        self.norm, self.ds, self.layout = norm, ds, layout
        group = layout.group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.n, self.rest = len(ds), math.prod(layout.shape[1:])
        k = math.ceil(self.n / self.world)
        self.owner = [j // k for j in range(self.n)]
        self.mine = [j for j in range(self.n) if self.owner[j] == self.rank]
        rows = layout.rows
        self.in_splits = [sum(rows[self.rank] * self.rest for j in range(self.n) if self.owner[j] == q)
                          for q in range(self.world)]
        self.out_splits = [len(self.mine) * rows[q] * self.rest for q in range(self.world)]

    def send(self) -> None:
        d0 = self.ds[0]
        work = self.norm.work_dtype(d0)  # converted before it travels: the lmo converts first anyway (bf16: half)
        send = torch.empty(sum(d.numel() for d in self.ds), dtype=work, device=d0.device)
        for d, piece in zip(self.ds, send.split([d.numel() for d in self.ds]), strict=True):
            piece.copy_(d.reshape(-1))  # convert while copying: one pass
        self.recv = torch.empty(sum(self.out_splits), dtype=work, device=d0.device)
        self.handle = dist.all_to_all_single(self.recv, send, self.out_splits, self.in_splits,
                                             group=self.layout.group, async_op=True)

    def compute(self) -> Pending:
        self.handle.wait()
        rows, shape, rest, world = self.layout.rows, self.layout.shape, self.rest, self.world
        work = self.norm.work_dtype(self.ds[0])
        device = self.ds[0].device
        back = torch.empty(0, dtype=work, device=device)
        if self.mine:
            m, offsets = len(self.mine), [sum(rows[:q]) for q in range(world)]
            whole = torch.empty((m, shape[0], rest), dtype=work, device=device)  # rank q's rows at offsets[q]
            for q, block in enumerate(self.recv.split(self.out_splits)):
                whole[:, offsets[q]:offsets[q] + rows[q]].copy_(block.view(m, rows[q], rest))
            S = self.norm.lmo_factored(whole.view((m,) + shape), batch_dims=1, private=True)[0]
            S = S.reshape(m, shape[0], rest)
            back = torch.cat([S[:, offsets[q]:offsets[q] + rows[q]].reshape(-1) for q in range(world)])
        mine_rows = rows[self.rank]
        got = torch.empty(self.n * mine_rows * rest, dtype=work, device=device)
        handle = dist.all_to_all_single(got, back, self.in_splits, self.out_splits, group=self.layout.group,
                                        async_op=True)

        def finish() -> list[torch.Tensor]:
            if mine_rows == 0:
                return [torch.empty((0,) + shape[1:], dtype=work, device=device) for _ in range(self.n)]
            return [x.reshape((mine_rows,) + shape[1:]) for x in got.split(mine_rows * rest)]

        return Pending(handle, finish)


def sum_over_shards(values: list[torch.Tensor], layouts: list[Layout]) -> list[torch.Tensor]:
    """Complete per-tensor sums: the partial sums of sharded tensors are all-reduced (one collective for all of
    them); replicated tensors' values are already whole and are returned as they are."""
    idx = [i for i, lay in enumerate(layouts) if lay.sharded]
    if not idx:
        return values
    groups = {id(layouts[i].group) for i in idx}
    if len(groups) > 1:
        raise ValueError("all sharded parameters of one optimizer must live on the same device mesh")
    vec = torch.stack([torch.as_tensor(values[i], dtype=torch.float64).reshape(()) for i in idx])
    dist.all_reduce(vec, group=layouts[idx[0]].group)
    out = list(values)
    for j, i in enumerate(idx):
        out[i] = vec[j]
    return out


def any_rank(flag: bool, group, device, agree: tuple[int, int] | None = None) -> bool:
    """True if ``flag`` is true on any rank of ``group`` (one small all_reduce). With ``agree`` (this rank's count
    of sharded tensors a step updates and their entries), the same reduction checks that every rank counts the
    same, and raises on every rank if not."""
    counts = [] if agree is None else [float(agree[0]), -float(agree[0]), float(agree[1]), -float(agree[1])]
    t = torch.tensor([1.0 if flag else 0.0, *counts], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    if agree is not None and (t[1] != -t[2] or t[3] != -t[4]):
        raise ValueError(f"the sharded (FSDP2) parameters this step updates differ across ranks: between "
                         f"{int(-t[2])} and {int(t[1])} tensors with a gradient per rank (this rank: {agree[0]}). "
                         "Every rank must step the same parameters: a gradient set to None on one rank only, or "
                         "parameters this rank's backward did not reach, leave the others waiting for its shards; "
                         "zero such gradients instead (optimizer.zero_grad(set_to_none=False) before the backward)")
    return bool(t[0].item() > 0)


def check_replicated(tensors: list[torch.Tensor], group, device: torch.device, *, values: bool = True) -> None:
    """Raise if the replicated parameters a step updates differ across ranks (the split lmo assumes they are equal):
    first their number and sizes (every rank takes part, also one with none, so that no rank waits on a collective
    the others skip: e.g. ZeroRedundancyOptimizer gives each rank's optimizer other parameters, or a gradient set to
    None on one rank only), then, with ``values``, each one's sum (the weights: replicas that drifted apart, or
    listed in different orders)."""
    world = dist.get_world_size(group)
    counts = torch.empty(2 * world, dtype=torch.float64, device=device)
    mine = [float(len(tensors)), float(sum(t.numel() for t in tensors))]
    _all_gather(counts, torch.tensor(mine, dtype=torch.float64, device=device), group)
    pairs = counts.reshape(world, 2)
    if not bool((pairs == pairs[0]).all()):
        shown = ", ".join(f"{int(n)} ({int(size)} entries)" for n, size in pairs.tolist())
        raise ValueError(f"the replicated parameters this step updates differ across ranks: {shown} per rank. Every "
                         "rank must step the same parameters: a parameter with a gradient on one rank and none on "
                         "another (a gradient set to None on one rank only) breaks the split orthogonalisation; zero "
                         "such gradients instead "
                         "(optimizer.zero_grad(set_to_none=False) before the backward), or pass process_group=None "
                         "for independent per-rank optimizers (ZeroRedundancyOptimizer gives each rank other "
                         "parameters: optimizer_class=functools.partial(specopt.Scion, process_group=None))")
    same = True
    if values and tensors:
        sizes = torch.tensor([float(t.numel()) for t in tensors], dtype=torch.float64, device=device)
        mine = torch.cat([sizes, torch.stack([t.detach().double().sum() for t in tensors]).to(device)])
        out = torch.empty(world * mine.numel(), dtype=torch.float64, device=device)
        _all_gather(out, mine, group)
        same = torch.equal(out.reshape(world, -1).amin(0), out.reshape(world, -1).amax(0))
    if not same:
        raise ValueError("parameters differ across ranks: specopt splits the orthogonalisation of replicated "
                         "parameters (DDP) across ranks, which needs identical replicas, listed in the same order on "
                         "every rank; wrap the model in DistributedDataParallel, build the optimizer from the same "
                         "model code on every rank (the same parameter order), or pass process_group=None for "
                         "independent per-rank optimizers "
                         "(ZeroRedundancyOptimizer gives each rank other parameters: pass it e.g. "
                         "optimizer_class=functools.partial(specopt.Scion, process_group=None))")
