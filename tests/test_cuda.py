"""The family on a GPU: every preset's and member's CUDA step equals its CPU step (fp32 and bf16 msign alike on both
devices) and resumes exactly, a CPU state dict carries on on the GPU, a one-tensor user norm keeps one tensor per lmo
where the GPU stacks, and each msign schedule keeps its band in bf16 on the device. Skipped where no CUDA device is
present (CI); run on a GPU with ``benchmarks/gpu_checks.sh``."""

import copy

import pytest
import torch
from helpers import GEOMETRY_PRESETS, Frobenius, assert_resumes_exactly, classification_data, mlp, preset_ids, train

from specopt import (
    AdaGO,
    AdaMuon,
    DoG,
    DropMuon,
    GeometryOptimizer,
    GluonMVR,
    MuonBP,
    NorMuon,
    ProxSpectral,
    linalg,
    msign,
    msign_band,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MEMBERS = [(cls, kwargs, False) for cls, kwargs in GEOMETRY_PRESETS] + [
    (NorMuon, {}, False),
    (AdaMuon, {}, False),
    (AdaGO, {}, False),
    (DoG, {}, False),
    (MuonBP, {"blocks": 2, "period": 2}, False),
    (DropMuon, {}, False),
    (GluonMVR, {}, True),
    (ProxSpectral, {}, False),
]


@pytest.fixture
def fp32_msign(monkeypatch):
    """Like against like: msign in fp32 on both devices (the GPU's default is bf16)."""
    monkeypatch.setattr(linalg, "default_compute_dtype", lambda device: None)


@pytest.fixture
def bf16_msign(monkeypatch):
    """msign in bf16 on both devices, the GPU's default (bf16's rounding of a gradient's small singular directions
    moves a step by about half its size from the fp32 one: fp32 and bf16 runs are not comparable entry by entry)."""
    monkeypatch.setattr(linalg, "default_compute_dtype", lambda device: torch.bfloat16)


def assert_same_displacement(cpu_params, gpu_params, start, rel):
    """Each parameter moved from ``start`` by the same amount on both devices, entry by entry within ``rel`` of the
    largest move (and the rounding of the weights themselves); one that stayed (a layer Drop-Muon skipped) stayed
    on both."""
    moved_any = False
    for a, b, w0 in zip(cpu_params, gpu_params, start, strict=True):
        assert b.device.type == "cuda"
        moved_cpu, moved_gpu = a.detach() - w0, b.detach().cpu() - w0
        largest = float(moved_cpu.abs().max())
        moved_any |= largest > 0
        rounding = 2 * torch.finfo(w0.dtype).eps * float(w0.abs().max()) if largest > 0 else 0.0
        torch.testing.assert_close(moved_gpu, moved_cpu, atol=rel * largest + rounding, rtol=0)
    assert moved_any


@pytest.mark.parametrize("cls, kwargs, closure", MEMBERS, ids=preset_ids([m[:2] for m in MEMBERS]))
def test_member_cuda_step_matches_cpu(cls, kwargs, closure, fp32_msign):
    """Four steps on the GPU move every weight as on the CPU, up to fp32 rounding."""
    X, y = classification_data()
    cpu, gpu = mlp(3), mlp(3).cuda()
    opt_c, opt_g = cls(cpu.parameters(), **kwargs), cls(gpu.parameters(), **kwargs)
    train(cpu, opt_c, X, y, 4, closure=closure)
    train(gpu, opt_g, X.cuda(), y.cuda(), 4, closure=closure)
    assert_same_displacement(cpu.parameters(), gpu.parameters(), mlp(3).parameters(), rel=1e-3)


@pytest.mark.parametrize("cls, kwargs, closure", MEMBERS, ids=preset_ids([m[:2] for m in MEMBERS]))
def test_member_bf16_cuda_step_matches_cpu(cls, kwargs, closure, bf16_msign):
    """The GPU's default, msign in bf16, takes the CPU's bf16 step: one step, each entry within a quarter of the
    largest move (the two devices' bf16 products round differently)."""
    X, y = classification_data()
    cpu, gpu = mlp(3), mlp(3).cuda()
    opt_c, opt_g = cls(cpu.parameters(), **kwargs), cls(gpu.parameters(), **kwargs)
    train(cpu, opt_c, X, y, 1, closure=closure)
    train(gpu, opt_g, X.cuda(), y.cuda(), 1, closure=closure)
    assert_same_displacement(cpu.parameters(), gpu.parameters(), mlp(3).parameters(), rel=0.25)


@pytest.mark.parametrize("method", ["polar_express", "cubic", "cans", "aol"])
def test_schedule_band_holds_in_bf16_on_cuda(method):
    """A schedule's output singular values stay in the band ``msign_band`` states (bf16 adds its rounding)."""
    low, high = msign_band(method=method)
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(256, 256, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(512, 256, generator=g, dtype=torch.float64))
    sigma = torch.logspace(-1, 0, 256, dtype=torch.float64)  # σ/‖G‖_F in [0.0135, 0.135]: inside every schedule's
    # design interval (cubic's starts at 0.0118, the narrowest)
    G = (U * sigma) @ V.T
    out = msign(G.float().cuda(), method=method, compute_dtype=torch.bfloat16)
    s = torch.linalg.svdvals(out.double().cpu())
    assert s.min() >= low - 0.02 and s.max() <= high + 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cls, kwargs, closure", MEMBERS, ids=preset_ids([m[:2] for m in MEMBERS]))
def test_member_resumes_exactly_on_cuda(cls, kwargs, closure, dtype):
    """A CUDA run (fp32 or bf16 weights) continued from its state dict takes the same steps bit for bit, its state
    on the device."""
    X, y = classification_data()
    X, y = X.cuda().to(dtype), y.cuda()
    model = mlp(3).cuda().to(dtype)
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, X, y, 3, closure=closure)
    twin_model, twin = assert_resumes_exactly(
        model, opt, lambda m: cls(m.parameters(), **kwargs), X, y, closure=closure
    )
    for p in twin_model.parameters():
        for key, value in twin.state[p].items():
            if torch.is_tensor(value) and value.dim() > 0:
                assert value.device == p.device, key


@pytest.mark.parametrize("cls, kwargs, closure", MEMBERS[:3], ids=preset_ids([m[:2] for m in MEMBERS[:3]]))
def test_a_cpu_state_dict_loads_into_a_cuda_optimizer(cls, kwargs, closure, fp32_msign):
    """torch's convention: loaded state follows its parameter's device; the run then goes on as on the CPU."""
    X, y = classification_data()
    cpu = mlp(3)
    opt_c = cls(cpu.parameters(), **kwargs)
    train(cpu, opt_c, X, y, 3, closure=closure)
    gpu = copy.deepcopy(cpu).cuda()
    opt_g = cls(gpu.parameters(), **kwargs)
    opt_g.load_state_dict(copy.deepcopy(opt_c.state_dict()))
    for p in gpu.parameters():
        assert all(v.device == p.device for v in opt_g.state[p].values() if torch.is_tensor(v) and v.dim() > 0)
    w0 = [p.detach().clone() for p in cpu.parameters()]
    train(cpu, opt_c, X, y, 2, closure=closure)
    train(gpu, opt_g, X.cuda(), y.cuda(), 2, closure=closure)
    assert_same_displacement(cpu.parameters(), gpu.parameters(), w0, rel=1e-3)


def test_a_user_norm_gets_one_tensor_at_a_time_on_cuda():
    """On a GPU the lmo runner stacks every same-shape group; a norm that does not take stacks still sees one
    tensor per call, so each weight moves by exactly its own lmo."""
    ws = [torch.nn.Parameter(torch.zeros(64, 32, device="cuda")) for _ in range(3)]
    grads = [torch.randn(64, 32, device="cuda") * scale for scale in (1.0, 100.0, 0.01)]
    opt = GeometryOptimizer(
        [{"params": ws, "norm": Frobenius(), "radius": 1.0}], {"lr": 1.0, "momentum": 0.0}, rule="uscg"
    )
    for w, g in zip(ws, grads, strict=True):
        w.grad = g
    opt.step()
    for w, g in zip(ws, grads, strict=True):
        torch.testing.assert_close(w.detach(), -g / g.norm(), rtol=1e-5, atol=1e-6)
