"""Run by tests/test_distributed.py: every preset for 5 steps on the same global batch, single-process, under DDP
and under FSDP2 (2 gloo ranks, one thread each), plus save-at-2 / resume-at-1 checkpoints."""

from __future__ import annotations

import copy
import functools
import os
import sys

import torch
import torch.distributed as dist
from helpers import torch_flow_load, torch_flow_save
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

import specopt
import specopt.linalg
from specopt import checkpoint

STEPS = 5
SAVE_AT = 3
WORLD = 2

PRESETS = {
    "muon": lambda p: specopt.Muon(p, lr=0.02, adamw_lr=1e-2),
    "muon-tensor-lr": lambda p: specopt.Muon(p, lr=torch.tensor(0.02), adamw_lr=1e-2),  # as torch.optim takes one
    "scion": lambda p: specopt.Scion(p, lr=0.05),
    "uscion": lambda p: specopt.UScion(p, lr=0.05),
    "clipped": lambda p: specopt.ClippedScion(p, lr=0.05, clip_radius=1.0),
    "clipped-constrained": lambda p: specopt.ClippedScion(p, lr=0.05, clip_radius=1.0, constrained=True),
    "gluon": lambda p: specopt.Gluon(p),
    "almond": lambda p: specopt.ALMOND(p, lr=0.05),
    "steepest": lambda p: specopt.SteepestDescent(p, lr=0.01, momentum=0.9),
    "prox": lambda p: specopt.ProxSpectral(p, lr=0.05, constraint=None),
    "prox-storm": lambda p: specopt.ProxSpectral(p, lr=0.05, estimator="storm", momentum="storm"),
    "muonbp": lambda p: specopt.MuonBP(p, lr=0.02, adamw_lr=1e-2, period=2, blocks=WORLD),  # blocks = the shards
    "gluon-mvr": lambda p: specopt.GluonMVR(p),
    "normuon": lambda p: specopt.NorMuon(p, lr=0.02, adamw_lr=1e-2),
    "adamuon": lambda p: specopt.AdaMuon(p, lr=0.02, adamw_lr=1e-2),
    "adago": lambda p: specopt.AdaGO(p, adamw_lr=1e-2),
    "drop-muon": lambda p: specopt.DropMuon(p, lr=0.02, adamw_lr=1e-2),
}
DDP_ONLY = {"dog": lambda p: specopt.DoG(p)}
"""Presets that refuse FSDP2's sharded tensors (DoG: each tensor's distance from its start in the whole tensor's norm,
which a shard does not give)."""


def presets(kind: str) -> dict:
    return PRESETS | DDP_ONLY if kind == "ddp" else PRESETS


COUNTED = ("all_to_all_single", "all_gather_into_tensor", "all_gather", "all_gather_single", "all_reduce",
           "broadcast", "reduce_scatter_tensor")
"""The collectives :func:`collectives_per_step` counts."""


def fp32_compute() -> None:
    """The comparison is in float32: no bf16 msign (its rounding would hide the order of summation)."""
    specopt.linalg.default_compute_dtype = lambda device: None


def make_model() -> nn.Module:
    """Shapes chosen for the corner cases: a (10, 10) pair, a (10, 6) and a (3, 10) alone (groups smaller than the
    world size), 3-row tensors (uneven shards 2 + 1 over 2 ranks), a (1, 3) and a (1,) (one rank holds no row)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(),
                         nn.Linear(10, 3), nn.Tanh(), nn.Linear(3, 1))


class ExpertNet(nn.Module):
    """An MoE-style stack of 4 maps (E, d_out, d_in), its only tensor: 2 whole experts per rank under FSDP2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.Parameter(torch.randn(4, 3, 6) / 6 ** 0.5)

    def forward(self, x):
        return torch.einsum("bi,eoi->beo", x, self.experts).tanh().mean((1, 2))[:, None]


EXPERT_PRESETS = ("muon", "scion", "clipped", "gluon", "normuon", "adamuon", "muonbp", "almond")


def expert_groups(model):
    return specopt.param_groups(model, layouts={"experts": "experts"}, head=False)


def global_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=g)
    return x, torch.randn(16, 1, generator=g)


def train(model, opt, x, y, steps, start=0, parts=1):
    """``parts`` > 1 (single process): the global batch's gradient as the mean of the per-rank halves' gradients,
    accumulated as DDP/FSDP2 do (``g0/2 + g1/2``, exact in floating point), so that only the optimizer differs."""

    def closure():
        opt.zero_grad()
        total = 0.0
        for xp, yp in zip(x.chunk(parts), y.chunk(parts), strict=True):
            loss = ((model(xp) - yp) ** 2).mean() / parts
            loss.backward()
            total += loss.detach()
        return total

    for _ in range(start, steps):
        opt.step(closure)


def full_params(model) -> dict[str, torch.Tensor]:
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in module.named_parameters()}


def single(out_dir: str) -> None:
    """The reference (run by the test process itself)."""
    fp32_compute()
    x, y = global_batch()
    results = {}
    for name, make in presets("ddp").items():
        model = make_model()
        opt = make(model.parameters())
        train(model, opt, x, y, STEPS, parts=WORLD)
        results[name] = full_params(model)
    for name in EXPERT_PRESETS:
        model = ExpertNet()
        train(model, PRESETS[name](expert_groups(model)), x, y, STEPS, parts=WORLD)
        results[f"experts/{name}"] = full_params(model)
    torch.save(results, os.path.join(out_dir, "single.pt"))


def resume_single(out_dir: str) -> None:
    """Load each checkpoint written at world size 2 (after SAVE_AT steps) and finish the run in one process."""
    fp32_compute()
    x, y = global_batch()
    results = {}
    for kind in ("ddp", "fsdp"):
        for name, make in presets(kind).items():
            model = make_model()
            opt = make(model.parameters())
            extra = checkpoint.load(os.path.join(out_dir, f"ckpt-{kind}-{name}"), model, opt)
            train(model, opt, x, y, STEPS, start=extra["step"], parts=WORLD)
            results[f"{kind}/{name}"] = full_params(model)
    for name, make in PRESETS.items():  # torch's own flow, saved sharded at world size 2
        model = make_model()
        opt = make(model.parameters())
        torch_flow_load(os.path.join(out_dir, f"torch-flow-{name}"), model, opt)
        train(model, opt, x, y, STEPS, start=SAVE_AT, parts=WORLD)
        results[f"torch-flow/{name}"] = full_params(model)
    torch.save(results, os.path.join(out_dir, "resumed.pt"))


def collectives_per_step(model, opt, x, y, steps: int) -> list[dict[str, int]]:
    """The torch.distributed collectives each ``opt.step()`` calls (the backward pass's, FSDP2's own, not counted)."""
    counts = []
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        calls: dict[str, int] = {}
        originals = {name: getattr(dist, name) for name in COUNTED if hasattr(dist, name)}

        def counting(name, fn, calls=calls):
            def call(*args, **kwargs):
                calls[name] = calls.get(name, 0) + 1
                return fn(*args, **kwargs)
            return call

        for name, fn in originals.items():
            setattr(dist, name, counting(name, fn))
        try:
            opt.step()
        finally:
            for name, fn in originals.items():
                setattr(dist, name, fn)
        counts.append(calls)
    return counts


def full_state_dicts(model, opt) -> dict:
    """torch's full (unsharded) state dicts, every rank holding them, as Accelerate's FULL_STATE_DICT saves; a deep
    copy, as if read back from a file (non-tensor values are the live state's)."""
    model_sd, optim_sd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    return copy.deepcopy({"model": model_sd, "optim": optim_sd})


def distributed(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    fp32_compute()
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard as shard

    mesh = init_device_mesh("cpu", (world,))  # the shards stay on the CPU also where a GPU exists

    def fully_shard(module):
        return shard(module, mesh=mesh)

    def sharded_model():
        model = make_model()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        return model

    x, y = global_batch()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]  # each rank its half of the global batch
    results = {}
    for kind in ("ddp", "fsdp"):
        for name, make in presets(kind).items():
            model = nn.parallel.DistributedDataParallel(make_model()) if kind == "ddp" else sharded_model()
            opt = make(model.parameters())
            train(model, opt, xs, ys, SAVE_AT)
            checkpoint.save(os.path.join(out_dir, f"ckpt-{kind}-{name}"), model, opt, extra={"step": SAVE_AT})
            if kind == "fsdp":
                torch_flow_save(os.path.join(out_dir, f"torch-flow-{name}"), model, opt)
                full = full_state_dicts(model, opt)
            train(model, opt, xs, ys, STEPS, start=SAVE_AT)
            results[f"{kind}/{name}"] = full_params(model)
            if kind == "fsdp":  # resumed by torch's own flows into a new sharded model and optimizer
                for flow in ("torch-flow", "full-state-dict"):
                    model = sharded_model()
                    opt = make(model.parameters())
                    if flow == "torch-flow":
                        torch_flow_load(os.path.join(out_dir, f"torch-flow-{name}"), model, opt)
                    else:
                        set_state_dict(model, opt, model_state_dict=full["model"], optim_state_dict=full["optim"],
                                       options=StateDictOptions(full_state_dict=True))
                    train(model, opt, xs, ys, STEPS, start=SAVE_AT)
                    results[f"{flow}/{name}"] = full_params(model)
            if kind == "ddp":  # the replicas themselves, not a gathered copy
                results[f"replica/{name}"] = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    model = make_model()  # FSDP2: MuonBP's block steps post no collective for the lmo (each rank its own rows)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    results["muonbp_collectives"] = collectives_per_step(model, specopt.MuonBP(model.parameters(), period=3), xs, ys, 6)
    for name in EXPERT_PRESETS:  # FSDP2 shards an expert stack by experts: each rank orthogonalises its own
        model = ExpertNet()
        fully_shard(model)
        opt = PRESETS[name](expert_groups(model))
        if name == "muon":
            results["experts_collectives"] = collectives_per_step(model, opt, xs, ys, 2)
        train(model, opt, xs, ys, STEPS, start=2 if name == "muon" else 0)
        results[f"fsdp/experts/{name}"] = full_params(model)
    for name in ("gluon", "prox-storm", "gluon-mvr"):  # a root-only shard, evaluated after every step: the probe
        model = make_model()                           # must not reuse the weights the evaluation left unsharded
        fully_shard(model)
        opt = PRESETS[name](model.parameters())
        for step in range(STEPS):
            train(model, opt, xs, ys, step + 1, start=step)
            with torch.no_grad():
                model(xs)
        model.reshard()
        results[f"root-eval/{name}"] = full_params(model)
    torch.manual_seed(rank)  # replicas that differ (no DDP): the split lmo must refuse them
    model = nn.Linear(6, 10)
    opt = specopt.Scion(model.parameters())
    model(xs).sum().backward()
    try:
        opt.step()
        results["replica_error"] = ""
    except ValueError as e:
        results["replica_error"] = str(e)
    model = sharded_model()  # DoG refuses sharded tensors, on every rank (also one whose shard is empty)
    ((model(xs) - ys) ** 2).mean().backward()
    try:
        specopt.DoG(model.parameters()).step()
        results["dog_fsdp_error"] = ""
    except ValueError as e:
        results["dog_fsdp_error"] = str(e)
    from torch.distributed.optim import ZeroRedundancyOptimizer  # each rank's optimizer steps other parameters
    for key, scion in (("zero_error", specopt.Scion), ("zero", functools.partial(specopt.Scion, process_group=None))):
        model = nn.parallel.DistributedDataParallel(make_model())
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=scion, lr=0.05)
        try:
            train(model, opt, xs, ys, STEPS)
            results[key] = full_params(model)
        except ValueError as e:
            results[key] = str(e)
    model = make_model()  # FSDP2: a NaN in one rank's gradient shard must stop the step on every rank
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = specopt.Scion(model.parameters(), nonfinite="skip")
    ((model(xs) - ys) ** 2).mean().backward()
    before = full_params(model)
    if rank == 1:
        next(model.parameters()).grad.to_local()[0, 0] = float("nan")
    opt.step()
    results["nan_skipped"] = opt.skipped_steps
    results["nan_unchanged"] = all(torch.equal(before[k], v) for k, v in full_params(model).items())
    ddp = nn.parallel.DistributedDataParallel(make_model())  # DDP: a NaN in one rank's gradient only (an edit after
    opt = specopt.Muon(ddp.module.parameters(), nonfinite="skip")  # the all-reduce) must stop every rank's step
    ((ddp(xs) - ys) ** 2).mean().backward()
    before = {k: v.detach().clone() for k, v in ddp.module.state_dict().items()}
    if rank == 1:
        next(ddp.module.parameters()).grad[0, 0] = float("nan")
    opt.step()
    results["ddp_nan_skipped"] = opt.skipped_steps
    results["ddp_nan_unchanged"] = all(torch.equal(before[k], v) for k, v in ddp.module.state_dict().items())
    opt = specopt.Muon(model.parameters())  # FSDP2: a rank whose gradients are None must not leave the others
    opt.zero_grad()                         # waiting in the lmo's gather (they hung)
    ((model(xs) - ys) ** 2).mean().backward()
    if rank == 1:
        for p in model.parameters():
            p.grad = None
    try:
        opt.step()
        results["missing_grads_error"] = ""
    except ValueError as e:
        results["missing_grads_error"] = str(e)

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    replicated = nn.Parameter(distribute_tensor(torch.randn(4, 4), init_device_mesh("cpu", (world,)), [Replicate()]))
    replicated.grad = torch.ones_like(replicated)
    try:
        specopt.Scion([replicated]).step()
        results["placement_error"] = ""
    except ValueError as e:
        results["placement_error"] = str(e)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "single":
        single(out)
    elif mode == "resume":
        resume_single(out)
    else:
        torch.multiprocessing.spawn(distributed, args=(WORLD, out), nprocs=WORLD)
