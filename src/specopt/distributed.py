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
    return process_group


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp, group=group)


def lmo_replicated(norm, ds: list[torch.Tensor], group, factor: float) -> list[torch.Tensor]:
    """``lmo`` of every replicated direction in ``ds`` (one shape), each rank computing ``⌈n/W⌉`` of them."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n, shape = len(ds), tuple(ds[0].shape)
    k = math.ceil(n / world)
    work = norm.work_dtype(ds[0])
    chunk = torch.zeros((k,) + shape, dtype=work, device=ds[0].device)
    mine = ds[rank * k:min((rank + 1) * k, n)]
    if mine:
        D = torch.stack([d.to(work) for d in mine])
        chunk[: len(mine)] = norm.lmo_factored(D, batch_dims=1, private=True)[0]
    out = torch.empty((k * world,) + shape, dtype=work, device=ds[0].device)
    _all_gather(out, chunk, group)
    return list(out[:n].unbind(0))


def lmo_sharded(norm, ds: list[torch.Tensor], layout: Layout) -> list[torch.Tensor]:
    """``lmo`` of every row-sharded direction (local shards ``ds``, one global shape): all_to_all to whole
    matrices on their owners → lmo → all_to_all back; returns this rank's rows of each result."""
    group, rows = layout.group, layout.rows
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n, shape = len(ds), layout.shape
    rest = math.prod(shape[1:])
    k = math.ceil(n / world)
    owner = [j // k for j in range(n)]
    mine = [j for j in range(n) if owner[j] == rank]
    device, dtype = ds[0].device, ds[0].dtype
    # 1. every shard to its owner (items in order, so each destination's block is contiguous)
    send = torch.cat([d.reshape(-1) for d in ds]) if n else torch.empty(0, dtype=dtype, device=device)
    in_splits = [sum(rows[rank] * rest for j in range(n) if owner[j] == q) for q in range(world)]
    out_splits = [len(mine) * rows[q] * rest for q in range(world)]
    recv = torch.empty(sum(out_splits), dtype=dtype, device=device)
    dist.all_to_all_single(recv, send, out_splits, in_splits, group=group)
    # 2. whole matrices on their owner, lmo
    work = norm.work_dtype(ds[0])
    results = []
    if mine:
        blocks = recv.split(out_splits)
        whole = [torch.cat([blocks[q][i * rows[q] * rest:(i + 1) * rows[q] * rest].reshape((rows[q],) + shape[1:])
                            for q in range(world)]) for i in range(len(mine))]
        S = norm.lmo_factored(torch.stack([w.to(work) for w in whole]), batch_dims=1, private=True)[0]
        offsets = [sum(rows[:q]) for q in range(world)]
        results = [[S[i, offsets[q]:offsets[q] + rows[q]].reshape(-1) for i in range(len(mine))]
                   for q in range(world)]
    # 3. every rank's rows back
    back = torch.cat([piece for q in range(world) for piece in results[q]]) if mine else \
        torch.empty(0, dtype=work, device=device)
    got = torch.empty(n * rows[rank] * rest, dtype=work, device=device)
    dist.all_to_all_single(got, back, in_splits, out_splits, group=group)
    return [x.reshape((rows[rank],) + shape[1:]) for x in got.split(rows[rank] * rest)] if rows[rank] else \
        [torch.empty((0,) + shape[1:], dtype=work, device=device) for _ in range(n)]


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


def any_rank(flag: bool, group, device) -> bool:
    """True if ``flag`` is true on any rank of ``group`` (one small all_reduce)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item() > 0)


def check_replicated(tensors: list[torch.Tensor], group) -> None:
    """Raise if the replicated parameters differ across ranks (the split lmo assumes they are equal)."""
    if not tensors:
        return
    sums = torch.stack([t.detach().double().sum() for t in tensors]).to(torch.float64)
    out = torch.empty(dist.get_world_size(group) * sums.numel(), dtype=torch.float64, device=sums.device)
    _all_gather(out, sums, group)
    if not torch.equal(out.reshape(-1, sums.numel()).amin(0), out.reshape(-1, sums.numel()).amax(0)):
        raise ValueError("parameters differ across ranks: specopt splits the orthogonalisation of replicated "
                         "parameters (DDP) across ranks, which needs identical replicas; wrap the model in "
                         "DistributedDataParallel, or pass process_group=None for independent per-rank optimizers")
