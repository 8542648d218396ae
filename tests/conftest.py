"""Shared test helpers: matrices with a prescribed spectrum; each pytest-xdist worker's share of the cores."""

import os

import numpy as np
import pytest
import torch

from specopt import linalg


def matrix_with_singular_values(m: int, n: int, sigma, *, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """``U diag(sigma) Vᵀ`` with Haar-random orthonormal U (m×k) and V (n×k), k = len(sigma)."""
    g = torch.Generator().manual_seed(seed)
    k = len(sigma)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return ((U * torch.as_tensor(np.asarray(sigma), dtype=torch.float64)) @ V.T).to(dtype)


def normalized_spectrum(k: int, safety: float, low: float = 1.0001e-3) -> np.ndarray:
    """k singular values whose normalised values ``σ/(‖σ‖₂·safety)`` span ``[low, ≈0.98]``: the rest are
    log-spaced in [low, 0.5/√k] and the top one fills up the Frobenius norm."""
    rest = np.geomspace(low, 0.5 / np.sqrt(k), k - 1)
    top = np.sqrt(1 / safety**2 - np.sum(rest**2))
    return np.concatenate([[top], rest])


def pytest_configure(config):
    """Under pytest-xdist (``-n N``) each worker computes on its share of the cores (and hands it to the processes it
    starts, through ``OMP_NUM_THREADS``): N workers of torch's default thread count would each spin on every core,
    and a loaded 2-core run takes several times as long. An ``OMP_NUM_THREADS`` set by the user is kept."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        share = max(1, cores // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """One torch thread for the test (many small models: OpenMP threads cost more than they give), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fp32_msign_on_cpu(request, monkeypatch):
    """The tests' tolerances are those of an fp32 msign on the CPU, but on a CPU with native bf16 (AVX512-BF16, AMX)
    msign computes in bf16 by default (``linalg.default_compute_dtype``): pin fp32 for CPU tensors there, keep every
    other device's default. A test marked ``native_bf16_default`` sees the real default."""
    if request.node.get_closest_marker("native_bf16_default"):
        return
    default = linalg.default_compute_dtype
    monkeypatch.setattr(linalg, "default_compute_dtype",
                        lambda device: None if device.type == "cpu" else default(device))
