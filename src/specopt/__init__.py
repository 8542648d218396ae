"""specopt: geometry-aware optimizers for PyTorch (Muon, Scion, Gluon, ALMOND, constrained spectral methods).

Public API: the matrix sign :func:`msign` and the norm catalogue (:mod:`specopt.norms`).
"""

from specopt import linalg, norms
from specopt.linalg import msign, msign_band, polar_express_coefficients
from specopt.norms import (
    BiasRMS,
    ColNorm,
    Euclidean,
    Norm,
    RowNorm,
    Sign,
    Spectral,
    SpectralConv,
    get_norm,
)

__version__ = "0.1.0"

__all__ = [
    "BiasRMS",
    "ColNorm",
    "Euclidean",
    "Norm",
    "RowNorm",
    "Sign",
    "Spectral",
    "SpectralConv",
    "get_norm",
    "linalg",
    "msign",
    "msign_band",
    "norms",
    "polar_express_coefficients",
]
