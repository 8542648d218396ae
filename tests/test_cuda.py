"""The family on a GPU: every preset's and member's CUDA step equals its CPU step, and each msign schedule keeps its
band in bf16 on the device. Skipped where no CUDA device is present (CI); run on a GPU with
``benchmarks/gpu_checks.sh``."""

import pytest
import torch
from helpers import GEOMETRY_PRESETS, classification_data, mlp, preset_ids, train

from specopt import AdaGO, AdaMuon, DoG, DropMuon, GluonMVR, MuonBP, NorMuon, ProxSpectral, msign, msign_band

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


@pytest.mark.parametrize("cls, kwargs, closure", MEMBERS, ids=preset_ids([m[:2] for m in MEMBERS]))
def test_member_cuda_step_matches_cpu(cls, kwargs, closure):
    X, y = classification_data()
    cpu, gpu = mlp(3), mlp(3).cuda()
    opt_c, opt_g = cls(cpu.parameters(), **kwargs), cls(gpu.parameters(), **kwargs)
    train(cpu, opt_c, X, y, 4, closure=closure)
    train(gpu, opt_g, X.cuda(), y.cuda(), 4, closure=closure)
    for a, b, w0 in zip(cpu.parameters(), gpu.parameters(), mlp(3).parameters(), strict=True):
        assert b.device.type == "cuda"
        moved_cpu, moved_gpu = a.detach() - w0, b.detach().cpu() - w0
        assert moved_cpu.abs().max() > 0 and moved_gpu.abs().max() > 0
        # the same displacement up to the GPU's bf16 msign: each entry within a quarter of the largest move
        torch.testing.assert_close(moved_gpu, moved_cpu, atol=0.25 * float(moved_cpu.abs().max()), rtol=0)


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
