"""One tensor through a step (:class:`Record`) and the lmo runner that owns the execution (:class:`LmoRunner`).

The runner computes ``rec.s·rec.factor = norm.lmo(rec.d)`` for a list of records: it buckets tensors of one norm,
shape, dtype, device and layout into one call, and runs each bucket locally, split across the ranks of a
replicated (DDP) group, or gathered from and scattered back to the ranks of an FSDP2 shard
(:mod:`specopt.distributed`): by the runner's process group and each parameter's layout (sharded or not). A sharded
tensor whose norm's lmo acts on each shard alone (:meth:`~specopt.norms.Norm.shard_local`, e.g. blocks that are the
shards, as MuonBP's block steps) is computed on each rank's shard, with no communication.
Estimators and rules see only records and the runner's calls.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from specopt import distributed
from specopt.linalg import batch_pays


class Record:
    """One parameter during a step.

    ``p``/``g``: local weights and gradient (float32 for low-precision gradients); ``param``: the ``nn.Parameter``
    (a DTensor under FSDP2); ``group``/``state``/``name``; ``norm``/``radius``/``layout``: its geometry. Set during
    the step: ``d`` (the estimator's direction), ``s``·``factor`` (its lmo), ``dual`` (``‖d‖_* = −⟨d, lmo(d)⟩``,
    when the rule needs it), ``shrink``/``scale`` (the rule's update ``W ← (1 − shrink)·W + scale·factor·s``).
    Estimators and rules keep anything else in ``state`` under keys of their own.
    """

    __slots__ = ("p", "g", "group", "state", "name", "norm", "radius", "param", "layout", "d", "s", "factor", "dual",
                 "shrink", "scale")

    def __init__(self, p, g, group, state, name, norm=None, radius=None, param=None, layout=None):
        self.p, self.g, self.group, self.state, self.name = p, g, group, state, name
        self.norm, self.radius = norm, radius
        self.param = p if param is None else param
        self.layout = layout or distributed.Layout(tuple(p.shape))
        self.d = self.s = self.dual = None
        self.shrink, self.scale, self.factor = 0.0, None, 1.0  # scale: the rule must set it

    def derived(self, direction: torch.Tensor) -> Record:
        """A record of the same tensor and geometry whose direction is ``direction`` (for an extra lmo, e.g. of a
        gradient difference); its state is a scratch dict."""
        out = Record(self.p, direction, self.group, {}, self.name, self.norm, self.radius, self.param, self.layout)
        out.d = direction
        return out


VALUE_CHECK_EVERY = 100
"""Every how many steps the replicated parameters' values are compared across ranks (one sum per tensor): the
first step's check finds replicas built apart, this one replicas that drifted apart (no DDP around the model)."""


class LmoRunner:
    """Runs the lmo's of a step's records.

    Args:
        process_group: the ranks that share the lmo work on replicated (DDP) parameters: ``"auto"`` → the
            default group when torch.distributed is initialised with more than one rank (decided on the first
            step and kept); ``None`` → every rank computes every lmo itself.
        batch_lmo: stack same-bucket tensors into one call; ``None``: on accelerators, and on the CPU for small
            tensors (:func:`~specopt.linalg.batch_pays`).
    """

    def __init__(self, process_group="auto", batch_lmo: bool | None = None):
        self.process_group, self.batch_lmo = process_group, batch_lmo
        self._steps_checked = 0
        self._all_sharded = False  # a first step with no replicated parameter (FSDP2 shards them all): no check

    def __deepcopy__(self, memo) -> LmoRunner:
        """A copy on the same process group (a group is a handle to the ranks, not data to copy)."""
        return copy.copy(self)

    @property
    def replicas(self):
        """The replica group (None: none). Read at every use, not cached: torch.compile guards on attributes, and
        a cache filled on the first call would recompile the second."""
        return distributed.replica_group(self.process_group)

    def distributed(self, records: list[Record]) -> bool:
        return self.replicas is not None or any(rec.layout.sharded for rec in records)

    def check_replicas(self, records: list[Record], device: torch.device) -> None:
        """The replicated parameters must be the same on every rank for the split lmo to be right (``device``:
        where the check's collectives run, the same kind on every rank, also one with no records): at every step
        the same number and sizes (one small all-gather; after a first step with none, a model all sharded by
        FSDP2, none), at the first and every :data:`VALUE_CHECK_EVERY`-th also the same values (DDP keeps replicas
        bit-identical; a model left unwrapped drifts apart)."""
        if self.replicas is None or self._all_sharded:
            return
        replicated = [rec.p for rec in records if not rec.layout.sharded]
        values = self._steps_checked % VALUE_CHECK_EVERY == 0
        distributed.check_replicated(replicated, self.replicas, device, values=values)
        self._all_sharded = self._steps_checked == 0 and not replicated
        self._steps_checked += 1

    def complete(self, values: list, records: list[Record]) -> list:
        """Per-tensor sums over local pieces made whole-tensor sums (all-reduced over the shards of sharded
        tensors; replicated ones are whole already)."""
        return distributed.sum_over_shards(values, [rec.layout for rec in records])

    def any_rank(self, flag: bool, shards: dict, records: list[Record]) -> bool:
        """``flag`` or'ed over the ranks that share the step's work (every rank must learn that one saw a NaN, or it
        steps while the others stop): over the replica group where ``records`` has replicated tensors (DDP; every
        rank has as many, :meth:`check_replicas`), and over each FSDP2 group, with a check that the ranks step the
        same sharded parameters. ``shards``: ``{group: (tensors, entries, device)}``, this rank's sharded
        parameters with a gradient, over every group that shards one of the optimizer's parameters, also where
        this rank has none with a gradient: every rank takes part, and a rank whose gradients are missing raises
        with the others instead of leaving them waiting in the lmo's gather."""
        replicated = [rec for rec in records if not rec.layout.sharded]
        if replicated and self.replicas is not None:
            flag = distributed.any_rank(flag, self.replicas, replicated[0].g.device)
        for group, (tensors, entries, device) in shards.items():
            flag = distributed.any_rank(flag, group, device, agree=(tensors, entries))
        return flag

    def whole(self, rec: Record, fn) -> None:
        """``rec.p ← fn(W)`` where ``W`` is the whole tensor (gathered from its shards); each rank keeps its rows."""
        whole = fn(rec.param.full_tensor())
        start = sum(rec.layout.rows[: torch.distributed.get_rank(rec.layout.group)])
        rec.p.copy_(whole[start:start + rec.p.shape[0]])

    def buckets(self, records: list[Record]) -> dict:
        """Records whose lmo is one call: same norm, shape, dtype, device and kind (a bucket per record where
        ``batch_lmo`` is off, unless the bucket is shared out across ranks). The kind (key[4]) is
        :data:`~specopt.distributed.GATHER` for a sharded tensor whose lmo needs the whole tensor,
        :data:`~specopt.distributed.OWN` for one whose norm's lmo is local to each shard
        (:meth:`~specopt.norms.Norm.shard_local`: the key then holds the local norm and the shard's shape), and
        :data:`~specopt.distributed.WHOLE` for a tensor every rank holds whole."""
        split_all = self.replicas is not None
        buckets: dict = defaultdict(list)
        for i, rec in enumerate(records):
            norm, shape, kind = rec.norm, rec.layout.shape, distributed.WHOLE
            if rec.layout.sharded:
                rank = torch.distributed.get_rank(rec.layout.group)
                local = rec.norm.shard_local(shape, rec.layout.rows, rank)
                norm, shape, kind = ((local, tuple(rec.p.shape), distributed.OWN) if local is not None else
                                     (norm, shape, distributed.GATHER))
            batch = (split_all and kind == distributed.WHOLE) or kind == distributed.GATHER or (
                self.batch_lmo if self.batch_lmo is not None else batch_pays(rec.g.device, rec.g.numel()))
            buckets[(norm, shape, rec.g.dtype, rec.g.device, kind, None if batch else i)].append(rec)
        return buckets

    def __call__(self, records: list[Record], need_dual: bool = False) -> None:
        """``rec.s·rec.factor = rec.norm.lmo(rec.d)`` for every record (and ``rec.dual = −⟨d, lmo(d)⟩`` with
        ``need_dual``): one call per bucket, stacked straight into the norm's compute dtype."""
        replicas = self.replicas
        buckets = self.buckets(records)
        if replicas is not None or any(key[4] == distributed.GATHER for key in buckets):  # finer overlap
            buckets = distributed.split_buckets(buckets, replicas)
        sharded = {key: distributed.ShardedLmo(key[0], [rec.d for rec in bucket], bucket[0].layout)
                   for key, bucket in buckets.items() if key[4] == distributed.GATHER}
        for job in sharded.values():  # every bucket's shards travel to their owners before any matmul
            job.send()
        pending = []
        for key, bucket in buckets.items():
            norm, shape, _, device = key[:4]
            if key in sharded:
                pending.append((bucket, norm.lmo_factor(shape), sharded[key].compute()))
            elif replicas is not None and key[4] == distributed.WHOLE:
                pending.append((bucket, norm.lmo_factor(shape),
                                distributed.lmo_replicated(norm, [rec.d for rec in bucket], replicas)))
            else:
                self._local(bucket, norm, shape, device)
        for bucket, factor, job in pending:
            for rec, s_i in zip(bucket, job.wait(), strict=True):
                rec.s, rec.factor = s_i, factor
        if need_dual:
            # float64 accumulation: a sum over shards then equals the whole-tensor sum to ~1e-16
            duals = self.complete([-rec.factor * torch.sum(rec.d * rec.s, dtype=torch.float64) for rec in records],
                                  records)
            for rec, dual in zip(records, duals, strict=True):
                rec.dual = dual

    @staticmethod
    def _local(bucket: list[Record], norm, shape, device) -> None:
        first = bucket[0].d
        work = norm.work_dtype(first)
        if 0 in shape:  # an empty shard: nothing to compute
            for rec in bucket:
                rec.s, rec.factor = rec.d.to(work), 1.0
            return
        if len(bucket) == 1:
            private = work != first.dtype
            D = first.to(work).unsqueeze(0)
        else:
            private = True
            D = torch.empty((len(bucket),) + shape, dtype=work, device=device)
            for i, rec in enumerate(bucket):
                D[i].copy_(rec.d)
        S, factor = norm.lmo_factored(D, batch_dims=1, private=private)
        if not isinstance(S, torch.Tensor) or S.shape != D.shape:  # broadcast, a silently wrong update
            got = f"shape {tuple(S.shape)}" if isinstance(S, torch.Tensor) else f"a {type(S).__name__}"
            raise ValueError(f"{type(norm).__name__}.lmo_factored returned {got} for a direction of shape "
                             f"{tuple(D.shape)} ({bucket[0].name}): it returns (tensor of its input's shape, factor)")
        # msign hands a tall matrix back transposed; the update adds it contiguous, as the DDP and FSDP2 paths do
        # (torch's bf16 add_ rounds a strided operand differently: bf16 weights then left one process's run)
        S = S.contiguous()
        for i, rec in enumerate(bucket):
            rec.s, rec.factor = S[i], factor


@dataclass
class StepContext:
    """What a step hands its estimator and rule besides the records: ``lmo`` (the optimizer's
    :class:`LmoRunner`: ``ctx.lmo(records, need_dual)``), ``complete`` (per-tensor sums completed over shards),
    ``aux`` (the records of the AdamW tensors), ``probed`` (``id(param) →`` gradient at the probe weights, on this
    step's batch), ``closure`` (whether the step got one), ``loss`` (what the closure returned, at the current
    weights; None without one: a Polyak-type rule reads it) and ``ok`` (under torch.compile, the 0-d flag every write
    goes through: :func:`specopt.steps.commit`; None eagerly)."""

    lmo: LmoRunner
    aux: list = field(default_factory=list)
    probed: dict = field(default_factory=dict)
    closure: bool = False
    ok: torch.Tensor | None = None
    loss: torch.Tensor | float | None = None

    def complete(self, values: list, records: list[Record]) -> list:
        return self.lmo.complete(values, records)
