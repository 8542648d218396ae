"""Checks every third-party architecture must pass (tests/test_models*.py).

The geometry is checked by its defining property, with the test's own reading of each module (independent of
specopt.layouts): one uSCG step with zero momentum and an exact (SVD) msign moves every block of every hidden or
expert matrix, read in the orientation the module computes with, by exactly γρ in the RMS→RMS operator norm
``√(d_in/d_out)·σ_max`` (conv kernels: per group, in SpectralConv's unit).
"""

from __future__ import annotations

import io
import math
import re

import torch
from torch import nn

import specopt
from specopt.views import Flattened

GAMMA, RHO = 0.01, 3.0
PRESETS = ("Muon", "Scion", "UScion", "ClippedScion", "Gluon", "ALMOND", "SteepestDescent")


def roles(model, **kwargs) -> dict[str, str]:
    return {name: g["role"] for g in specopt.param_groups(model, **kwargs) for name, _ in g["params"]}


def assert_roles(model, expected: dict[str, str], **kwargs) -> None:
    """``expected``: ``{regex: role}``; the regexes every trainable tensor matches agree on one role, and it is
    the tensor's role."""
    groups = specopt.param_groups(model, **kwargs)
    got = {name: g["role"] for g in groups for name, _ in g["params"]}
    einsum = {name for g in groups if isinstance(g["norm"], Flattened) for name, _ in g["params"]}
    assert set(got) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, role in got.items():
        matches = [r for pattern, r in expected.items() if re.search(pattern, name)]
        assert len(set(matches)) == 1, f"{name}: patterns give roles {matches}"
        assert role == matches[0], f"{name}: role {role}, expected {matches[0]}"
        p = dict(model.named_parameters())[name]
        if sum(size > 1 for size in p.shape) >= 2 and p.ndim >= 3 and name not in einsum:  # einsum: by its rule
            assert role in ("expert", "conv", "token", "vector"), f"{name} ({p.ndim}-D) flattened into a {role} matrix"


def compute_matrices(module: nn.Module, local: str, delta: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """The (d_out, d_in·taps) matrices the module multiplies with, and their kernel taps, by the test's own
    reading of each module type (a grouped conv is one matrix per group)."""
    if type(module).__name__ == "Conv1D":  # transformers: y = x @ W, W is (d_in, d_out)
        return [(delta.T, 1)]
    if type(module).__name__ == "Llama4TextExperts":  # torch.bmm(x, W): each expert (d_in, d_out)
        return [(d.T, 1) for d in delta]
    if type(module).__name__ == "JetMoeParallelExperts":  # F.linear(x, W[e]): each expert (d_out, d_in)
        return [(d, 1) for d in delta]
    if hasattr(module, "is_transposed") and delta.ndim == 3:  # transformers experts
        return [(d.T if module.is_transposed else d, 1) for d in delta]
    if type(module).__name__ in ("XLNetRelativeAttention", "FunnelRelMultiheadAttention") and delta.ndim == 3:
        matrix = delta.reshape(delta.shape[0], -1)  # einsum over (d_model, heads·d_head)
        return [(matrix if local == "o" else matrix.T, 1)]  # o: heads → d_model; q, k, v, r, r_kernel: d_model → heads
    if type(module).__name__ == "CondConv2d":  # timm: E kernels, each one row (weight_shape), groups as a conv's
        taps = math.prod(module.kernel_size)
        return [(b, taps) for d in delta for b in d.view(module.weight_shape).flatten(1).chunk(module.groups)]
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        taps = math.prod(module.kernel_size)
        return [(b, taps) for b in delta.reshape(delta.shape[0], -1).chunk(module.groups, dim=0)]
    return [(delta, 1)]


def one_step_moves(model, loss_fn, blocks: dict[str, int | tuple] | None = None, **kwargs) -> dict[str, list[float]]:
    """Operator norm of the step of every block of every hidden/expert matrix and conv kernel, in the unit the
    geometry uses (RMS→RMS, ``√(d_in/d_out)·σ_max``; a kernel with k taps: ``k·√(c_in/d_out)·σ_max`` of its
    ``d_out × c_in·k`` matrix), divided by γρ."""
    groups = specopt.param_groups(model, msign={"method": "svd"}, **kwargs)
    matrices = {name for g in groups if g["role"] in ("hidden", "expert", "conv") for name, _ in g["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = specopt.UScion(groups, lr=GAMMA, momentum=0.0, radius=RHO)
    for g in opt.param_groups:
        g["radius"] = RHO
    opt.zero_grad()
    loss_fn(model).backward()
    opt.step()
    modules = dict(model.named_modules())
    out = {}
    for name in matrices:
        mod_name, _, local = name.rpartition(".")
        if ".parametrizations." in name:  # a parametrized weight's stored tensor: read as its owner's weight
            mod_name, local = mod_name.split(".parametrizations.")
        delta = dict(model.named_parameters())[name].detach() - before[name]
        ratios = []
        for m, taps in compute_matrices(modules[mod_name], local, delta):
            for b in _split(m, name, blocks or {}):
                op = float(torch.linalg.matrix_norm(b.double(), ord=2))
                ratios.append(taps * math.sqrt(b.shape[1] / taps / b.shape[0]) * op / (GAMMA * RHO))
        out[name] = ratios
    return out


def _split(m: torch.Tensor, name: str, blocks: dict) -> list[torch.Tensor]:
    """The row blocks of ``m`` the test expects: ``{regex: k}`` k equal blocks, ``(sizes…)``, or ``"interleaved k"``
    (row r in block r mod k: gate₀, up₀, gate₁, … as GPT-OSS stores its experts' gate/up)."""
    for pattern, sizes in blocks.items():
        if re.search(pattern, name) and isinstance(sizes, str):
            k = int(sizes.split()[1])
            return [m[j::k] for j in range(k)]
    return list(torch.split(m, _blocks(name, m.shape[0], blocks), dim=0))


def _blocks(name: str, rows: int, blocks: dict) -> list[int]:
    for pattern, sizes in blocks.items():
        if re.search(pattern, name):
            return [rows // sizes] * sizes if isinstance(sizes, int) else list(sizes)
    return [rows]


def assert_one_step_geometry(model, loss_fn, blocks=None, **kwargs) -> None:
    moves = one_step_moves(model, loss_fn, blocks, **kwargs)
    assert moves
    for name, ratios in moves.items():
        for r in ratios:
            assert abs(r - 1) < 1e-4, f"{name}: a block moved {r:.4f}·γρ"


def build_preset(name: str, model):
    groups = specopt.param_groups(model)
    kwargs = {"lr": 1e-2} if name in ("Muon", "SteepestDescent") else {}
    if name == "ClippedScion":
        kwargs["clip_radius"] = 1.0
    return getattr(specopt, name)(groups, **kwargs)


def assert_presets_train(make_model, loss_fn, steps: int = 30, presets=PRESETS, lr_scale=None) -> None:
    """``steps`` steps of every preset on one fixed batch (no closure) lower the loss; ``lr_scale``: ``{preset:
    factor}`` on a preset's default step where a model needs a smaller one."""
    for preset in presets:
        model = make_model()
        opt = build_preset(preset, model)
        for group in opt.param_groups:
            group["lr"] *= (lr_scale or {}).get(preset, 1.0)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        assert all(math.isfinite(v) for v in losses), preset
        assert min(losses[-5:]) < losses[0] - 0.05 * abs(losses[0]), f"{preset}: {losses[0]:.4f} → {losses[-5:]}"


def assert_state_dict_round_trip(make_model, loss_fn, preset: str = "Muon") -> None:
    """Two steps, save through torch.save, load into a fresh optimizer on a copy, step both: identical weights."""
    model = make_model()
    opt = build_preset(preset, model)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    twin = make_model()
    twin.load_state_dict(model.state_dict())
    twin_opt = build_preset(preset, twin)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # as a checkpoint: a live state_dict shares the optimizer's tensors
    buffer.seek(0)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=False))
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        loss_fn(m).backward()
        o.step()
    for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(a, b), n
