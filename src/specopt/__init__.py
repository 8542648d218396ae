"""specopt: geometry-aware optimizers for PyTorch (Muon, Scion, Gluon, ALMOND, proximal constrained
spectral preconditioning with STORM).

Public API: the matrix sign :func:`msign`, the norm catalogue (:mod:`specopt.norms`), the optimizers
(thin presets over :class:`GeometryOptimizer`), the engine's open parts (:class:`Estimator`, :class:`StepRule`,
:class:`Norm`, :mod:`specopt.estimators`, :mod:`specopt.steps`) and :func:`param_groups` (automatic parameter
roles).
"""

from specopt import checkpoint, constraints, estimators, layouts, linalg, norms, schedules, steps, views
from specopt.adago import AdaGO
from specopt.adaptive import AdaMuon, NorMuon
from specopt.block_periodic import MuonBP
from specopt.constraints import Box, FrobeniusBall, L2Ball, RankAtMost, SparsityAtMost, SpectralBall
from specopt.dog import DoG
from specopt.drop import DropMuon
from specopt.engine import GeometryOptimizer, NonFiniteGradient
from specopt.estimators import Estimator
from specopt.gluon_mvr import GluonMVR
from specopt.linalg import msign, msign_band, polar_express_coefficients
from specopt.lmo import Record, StepContext
from specopt.norms import (
    BiasRMS,
    Blocked,
    ColNorm,
    Euclidean,
    Norm,
    RowNorm,
    Sign,
    Spectral,
    SpectralConv,
    get_norm,
)
from specopt.optimizers import ALMOND, ClippedScion, Gluon, Muon, ProxSpectral, Scion, SteepestDescent, UScion
from specopt.preconditioners import Preconditioner
from specopt.roles import describe, param_groups
from specopt.steps import StepRule

__version__ = "0.1.0"

__all__ = [
    "ALMOND",
    "AdaGO",
    "AdaMuon",
    "DoG",
    "DropMuon",
    "MuonBP",
    "NorMuon",
    "BiasRMS",
    "Box",
    "FrobeniusBall",
    "L2Ball",
    "Preconditioner",
    "ProxSpectral",
    "RankAtMost",
    "SparsityAtMost",
    "SpectralBall",
    "checkpoint",
    "Estimator",
    "estimators",
    "Record",
    "StepContext",
    "StepRule",
    "steps",
    "constraints",
    "layouts",
    "views",
    "schedules",
    "Blocked",
    "ClippedScion",
    "GeometryOptimizer",
    "NonFiniteGradient",
    "Gluon",
    "GluonMVR",
    "Muon",
    "Scion",
    "SteepestDescent",
    "UScion",
    "ColNorm",
    "Euclidean",
    "Norm",
    "RowNorm",
    "Sign",
    "Spectral",
    "SpectralConv",
    "describe",
    "get_norm",
    "linalg",
    "msign",
    "msign_band",
    "norms",
    "param_groups",
    "polar_express_coefficients",
]


_SUBMODULES = {"adago", "adamw", "adaptive", "block_periodic", "bpm", "compare", "compare_seeds", "distributed", "dog",
               "drop", "engine", "experiments", "gluon", "gluon_mvr", "heads", "integrations", "lmo", "msign_schedules",
               "optimizers", "preconditioners", "registry", "roles", "scaling", "tasks", "training"}


def __getattr__(name: str):
    """``specopt.registry``, ``specopt.integrations``, … as the docs write them: the submodules not imported above
    are imported on first use (so that ``import specopt`` stays light)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"specopt.{name}")
    raise AttributeError(f"module 'specopt' has no attribute {name!r}")
