"""A one-minute demo of the matrix sign: accuracy and speed of each msign method on this machine.

    python -m specopt.demo

Prints, for a square and a wide matrix whose normalised singular values span [1e-3, 1], the time of each
method and the worst deviation of the result's singular values from 1.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from specopt.linalg import METHODS, default_compute_dtype, msign, msign_band


def _spread_spectrum(m: int, n: int) -> torch.Tensor:
    k = min(m, n)
    rest = np.geomspace(1.0001e-3, 0.5 / np.sqrt(k), k - 1)
    sigma = np.concatenate([[np.sqrt(1 / 1.02**2 - np.sum(rest**2))], rest])
    U, _ = torch.linalg.qr(torch.randn(m, k))
    V, _ = torch.linalg.qr(torch.randn(n, k))
    return (U * torch.as_tensor(sigma, dtype=torch.float32)) @ V.T


def main() -> None:
    torch.manual_seed(0)
    compute = default_compute_dtype(torch.device("cpu")) or torch.float32
    print(f"specopt msign demo — CPU, {torch.get_num_threads()} threads, polynomial methods compute in {compute}")
    print(f"{'shape':>10} {'method':>14} {'time ms':>9} {'max|σ−1|':>9} {'band (exact arithmetic)':>26}")
    for m, n in [(512, 512), (512, 2048)]:
        G = _spread_spectrum(m, n)
        for method in METHODS:
            msign(G, method=method)
            start = time.perf_counter()
            for _ in range(3):
                out = msign(G, method=method)
            ms = (time.perf_counter() - start) / 3 * 1e3
            err = float((torch.linalg.svdvals(out.double()) - 1).abs().max())
            lo, hi = msign_band(method)
            print(f"{m}x{n:<6} {method:>14} {ms:9.1f} {err:9.3f} {f'[{lo:.3f}, {hi:.3f}]':>26}")


if __name__ == "__main__":
    main()
