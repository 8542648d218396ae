"""Optimizers by name, with the defaults the `specopt` command uses, for any task.

Every builder takes the model, the task and the user's hyperparameters (``lr``, ``momentum``,
``weight_decay``, ``radius`` — the hidden-layer radius; the other roles keep their ratio to it —,
``clip_radius``, ``adamw_lr`` — the Muon family's and ProxSpectral's AdamW tensors — and ``gram``, msign's Gram
form for the spectral norms, see :func:`specopt.linalg.use_gram`) and returns a list of optimizers stepped together
(``torch-muon`` is two: torch's Muon on the hidden matrices and AdamW on the rest). Defaults come from the sweeps
recorded in EXPERIMENTS.md.
"""

from __future__ import annotations

import inspect
import math

import torch

import specopt
from specopt._checks import check_number, lr_like
from specopt.norms import Blocked, Spectral, SpectralConv
from specopt.roles import DEFAULT_RADII, param_groups
from specopt.views import LAYOUT_VIEWS, Stacked, Transposed


def class_defaults(cls: type, *names: str) -> dict:
    """The defaults of ``cls``'s constructor arguments ``names``: the registry reads its step sizes, radii and
    AdamW lr from the optimizer classes, so that ``specopt train --optimizer scion`` and
    ``specopt.Scion(specopt.param_groups(model))`` run the same hyperparameters."""
    params = inspect.signature(cls).parameters
    return {name: params[name].default for name in names}


DEFAULTS: dict[str, dict] = {
    "adamw": {"lr": 4e-3, "weight_decay": 0.0},
    "torch-muon": class_defaults(specopt.Muon, "lr", "adamw_lr", "weight_decay"),
    "muon": class_defaults(specopt.Muon, "lr", "adamw_lr", "weight_decay"),
    "normuon": {**class_defaults(specopt.NorMuon, "lr"), **class_defaults(specopt.Muon, "adamw_lr", "weight_decay")},
    "adamuon": {**class_defaults(specopt.AdaMuon, "lr"), **class_defaults(specopt.Muon, "adamw_lr", "weight_decay")},
    "drop-muon": {**class_defaults(specopt.DropMuon, "lr"), **class_defaults(specopt.Muon, "adamw_lr", "weight_decay")},
    "adago": {**class_defaults(specopt.AdaGO, "lr"), **class_defaults(specopt.Muon, "adamw_lr", "weight_decay")},
    "muonbp": {**class_defaults(specopt.MuonBP, "lr"), **class_defaults(specopt.Muon, "adamw_lr", "weight_decay")},
    "scion": class_defaults(specopt.Scion, "lr", "radius", "momentum"),
    "uscion": class_defaults(specopt.UScion, "lr", "radius", "momentum"),
    "clipped-scion": class_defaults(specopt.ClippedScion, "lr", "radius", "momentum", "clip_radius"),
    "gluon": class_defaults(specopt.Gluon, "lr", "momentum"),
    "dog": class_defaults(specopt.DoG, "lr", "momentum"),
    "gluon-mvr": class_defaults(specopt.GluonMVR, "lr", "momentum"),
    "almond": class_defaults(specopt.ALMOND, "lr", "radius", "momentum"),
    "sgd": {"lr": 0.1, "momentum": 0.9},
    "prox-spectral": {**class_defaults(specopt.ProxSpectral, "lr", "momentum"), "adamw_lr": 1e-2},
}
"""Per-optimizer defaults. The specopt presets' come from their classes (:func:`class_defaults`), whose defaults
come from recorded sweeps (``benchmarks/sweep_defaults.py``, EXPERIMENTS.md "Defaults sweep"): the setting with the
smallest worst regret over the tasks each was swept on (Muon, Scion, UScion, Clipped Scion, ALMOND and GluonMVR: the
char-GPT tiny and small and the MNIST CNN; ProxSpectral and Gluon: the tiny char-GPT and the CNN; the rest of the
family: the tiny char-GPT; Clipped Scion's lr is the sweep's noted exception); ``radius`` is the hidden radius,
``roles.DEFAULT_RADII["hidden"]``, so the registry's groups are ``param_groups(model)``'s. ``adamw`` and ``sgd``
are torch's optimizers with their swept (AdamW) and conventional (SGD) step sizes; ``torch-muon`` takes Muon's.
"""

HPARAMS = ("lr", "momentum", "weight_decay", "radius", "clip_radius", "adamw_lr", "gram")
_MUON = ("lr", "momentum", "weight_decay", "adamw_lr", "gram")
_GEOMETRY = ("lr", "momentum", "weight_decay", "radius", "gram")
TAKES: dict[str, tuple[str, ...]] = {
    "adamw": ("lr", "weight_decay"), "sgd": ("lr", "momentum", "weight_decay"),
    "torch-muon": ("lr", "momentum", "weight_decay", "adamw_lr"),
    **dict.fromkeys(("muon", "normuon", "adamuon", "drop-muon", "adago", "muonbp"), _MUON),
    "prox-spectral": ("lr", "momentum", "weight_decay", "adamw_lr"),
    "scion": _GEOMETRY, "uscion": _GEOMETRY, "almond": _GEOMETRY, "clipped-scion": (*_GEOMETRY, "clip_radius"),
    "gluon": ("lr", "momentum", "weight_decay", "gram"), "gluon-mvr": ("lr", "momentum", "weight_decay", "gram"),
    "dog": _GEOMETRY}
"""The hyperparameters each builder uses (Scion's ``weight_decay`` and DoG's ``radius`` are taken to refuse them
with a reason); :func:`resolve` refuses any other, so that no flag is silently ignored."""


def optimizer_names() -> list[str]:
    return list(DEFAULTS)


def resolve(name: str, overrides: dict | None = None) -> dict:
    """The hyperparameters of optimizer ``name``: its defaults updated by the non-None ``overrides``."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(DEFAULTS)}")
    hp = dict(DEFAULTS[name])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in HPARAMS:
            raise ValueError(f"unknown hyperparameter {key!r}; valid: {', '.join(HPARAMS)}")
        if key not in TAKES[name]:
            raise ValueError(f"{name} does not use {key} (it takes {', '.join(TAKES[name])}), got {key}={value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        hp[key] = value
    return hp


GROUP_OPTIONS = ("layouts", "num_heads", "head", "split_sizes", "overrides", "embedding_norm", "msign")
"""Keywords of :func:`specopt.param_groups` that :func:`build` passes on to it (``groups=``)."""
ROLE_OPTIONS = ("layouts", "head")
"""The :data:`GROUP_OPTIONS` that decide only roles: all that ``torch-muon`` and ``prox-spectral`` read (torch's Muon
and ``P(d)`` take each whole matrix with their own norm)."""


def groups_of(model, task, gram: bool | None = None, groups: dict | None = None, **extra) -> list[dict]:
    """:func:`specopt.param_groups` of ``model`` for ``task``'s scheme with the caller's ``groups`` keywords
    (:data:`GROUP_OPTIONS`: a declared layout, per-head blocks, a head, msign settings) and the ``gram`` setting."""
    groups = dict(groups or {})
    unknown = set(groups) - set(GROUP_OPTIONS)
    if unknown:
        raise ValueError(f"unknown param_groups option(s) {sorted(unknown)}; the builders pass on "
                         f"{', '.join(GROUP_OPTIONS)}")
    declared = getattr(task, "layouts", None)  # a Task's own declarations, under the caller's (the integrations
    if declared:  # pass a namespace with a scheme only)
        groups["layouts"] = {**declared, **(groups.get("layouts") or {})}
    msign = dict(groups.pop("msign", None) or {})
    if gram is not None:
        if msign.get("gram", gram) != gram:
            raise ValueError(f"gram={gram!r} and msign={{'gram': {msign['gram']!r}}} disagree: give it in one place")
        msign["gram"] = gram
    return param_groups(model, scheme=task.scheme, msign=msign or None, **groups, **extra)


def role_groups(model, task, radius: float | None, gram: bool | None = None, groups: dict | None = None):
    """param_groups with every role radius scaled so that the hidden radius is ``radius``."""
    if radius is not None:  # before scaling: an error names the radius given, not a role's scaled one
        check_number(radius, "radius", low_open=True)
    scale = 1.0 if radius is None else radius / DEFAULT_RADII["hidden"]
    radii = {role: r * scale for role, r in DEFAULT_RADII.items()}
    return groups_of(model, task, gram, groups, radii=radii)


def reads_as_stored(norm) -> bool:
    """Whether ``norm`` (a spectral geometry of :func:`specopt.param_groups`) is one of the stored ``(d_0, d_1·…)``
    matrix or its transpose, which ProxSpectral's ``P(d)`` reads (a spectral function: ``P(Gᵀ) = P(G)ᵀ``): a Linear
    or Conv1D weight, a conv kernel, an einsum's heads, a fused projection (taken whole); not an expert stack, nor
    a ConvTranspose kernel (``(c_in, d_out, *k)``: its matrix is ``d_out × c_in·k``)."""
    transposed = False
    while isinstance(norm, (Blocked, *LAYOUT_VIEWS)):
        if isinstance(norm, Stacked):
            return False
        transposed |= isinstance(norm, Transposed)
        norm = norm.inner
    return type(norm) is Spectral or (type(norm) is SpectralConv and not transposed)


def build(name: str, model: torch.nn.Module, task, hp: dict, groups: dict | None = None,
          **options) -> list[torch.optim.Optimizer]:
    """The optimizer(s) for ``model`` on ``task`` with resolved hyperparameters ``hp``.

    ``groups``: keywords of :func:`specopt.param_groups` (:data:`GROUP_OPTIONS`), for every optimizer that reads
    the model's roles (AdamW and SGD do not: a ``ValueError``). ``options`` go to the optimizer's constructor as they
    are (e.g. ``estimator="storm"``, ``nonfinite="skip"``, Gluon's ``L0``/``L1``); ``torch-muon`` (two optimizers)
    takes none. ``hp["weight_decay"]`` reaches every
    optimizer that has one; Scion (SCG, whose step already shrinks W by γ) has none and refuses a non-zero one.
    """
    lr = hp["lr"]
    wd = hp.get("weight_decay") or 0.0
    if groups and name in ("adamw", "sgd"):
        raise ValueError(f"{name} steps model.parameters() as one group and reads no layouts or roles; drop "
                         f"{', '.join(sorted(groups))}")
    unread = sorted(set(groups or {}) - set(ROLE_OPTIONS)) if name in ("torch-muon", "prox-spectral") else []
    if unread:  # their steps act on whole stored matrices: per-head blocks, norms, msign settings would be dropped
        raise ValueError(f"{name} reads only the roles of param_groups ({', '.join(ROLE_OPTIONS)}): its step acts "
                         f"on each whole matrix with its own norm, so {', '.join(unread)} would be ignored; drop "
                         f"{'it' if len(unread) == 1 else 'them'}")
    if name == "adamw":
        return [torch.optim.AdamW(model.parameters(), **{"lr": lr, "weight_decay": wd, "betas": (0.9, 0.95),
                                                         **options})]
    if name == "sgd":
        return [torch.optim.SGD(model.parameters(), **{"lr": lr, "momentum": hp["momentum"], "weight_decay": wd,
                                                       **options})]
    momentum = {"momentum": hp["momentum"]} if hp.get("momentum") is not None else {}  # the Muon family: if given
    if name == "torch-muon":
        if options:
            raise ValueError(f"torch-muon builds two torch optimizers and takes no options, got {sorted(options)}")
        assigned = groups_of(model, task, groups=groups)
        hidden = [p for g in assigned if g["role"] == "hidden" for _, p in g["params"] if p.ndim == 2 and p.numel()]
        rest = [p for g in assigned for _, p in g["params"]  # torch's Muon: 2-D, non-empty (it divides by the size)
                if g["role"] != "hidden" or p.ndim != 2 or not p.numel()]
        if not hidden:  # torch's Muon would say "optimizer got an empty parameter list"
            raise ValueError(f"torch-muon: the model of task {task.name!r} has no hidden matrix for torch.optim.Muon "
                             "(every tensor's role is AdamW's: param_groups(model, print_table=True) lists them); "
                             "use adamw, or muon, which steps such a model with AdamW alone")
        opts = [torch.optim.Muon(hidden, lr=lr, weight_decay=wd, adjust_lr_fn="original", **momentum)]
        if rest:
            opts.append(torch.optim.AdamW(rest, lr=hp["adamw_lr"], weight_decay=0.0, betas=(0.9, 0.95)))
        return opts
    if name in ("muon", "normuon", "adamuon", "drop-muon", "adago", "muonbp"):
        cls = {"muon": specopt.Muon, "normuon": specopt.NorMuon, "adamuon": specopt.AdaMuon,
               "drop-muon": specopt.DropMuon, "adago": specopt.AdaGO, "muonbp": specopt.MuonBP}[name]
        assigned = groups_of(model, task, hp.get("gram"), groups)
        depth = {"order": model} if name == "drop-muon" else {}  # Drop-Muon's cutoff runs over the model's depth
        return [cls(assigned, **depth, **{"lr": lr, "weight_decay": wd, "adamw_lr": hp["adamw_lr"],
                                        "gram": hp.get("gram"), **momentum, **options})]
    if name == "prox-spectral":  # P(d) by Polar Express on the matrices it reads as stored; the rest: AdamW
        groups = [{"params": g["params"]} if g["role"] in ("hidden", "conv") and reads_as_stored(g["norm"]) else
                  {"params": g["params"], "norm": "adamw", "lr": lr_like(hp["adamw_lr"], lr), "betas": (0.9, 0.95)}
                  for g in groups_of(model, task, groups=groups)]
        return [specopt.ProxSpectral(groups, **{"lr": lr, "momentum": hp["momentum"], "weight_decay": wd,
                                                **options})]
    if name == "dog" and hp.get("radius") is not None:
        raise ValueError(f"dog has no radius (its steps are invariant to the radii), got {hp['radius']!r}")
    groups = role_groups(model, task, hp.get("radius"), hp.get("gram"), groups)
    common = {"lr": lr, "momentum": hp["momentum"]}
    if name == "scion":
        if wd:
            raise ValueError(f"scion has no weight_decay (its SCG step shrinks W by lr already), got {wd!r}; "
                             "use uscion for decoupled weight decay")
        return [specopt.Scion(groups, **{**common, **options})]
    common["weight_decay"] = wd
    if name == "uscion":
        return [specopt.UScion(groups, **{**common, **options})]
    if name == "clipped-scion":
        return [specopt.ClippedScion(groups, **{**common, "clip_radius": hp["clip_radius"], **options})]
    if name in ("gluon", "gluon-mvr"):  # the radii are unused: t_l comes from L0, L1
        return [{"gluon": specopt.Gluon, "gluon-mvr": specopt.GluonMVR}[name](groups, **{**common, **options})]
    if name == "almond":
        return [specopt.ALMOND(groups, **{**common, **options})]
    if name == "dog":
        return [specopt.DoG(groups, **{**common, **options})]  # lr: a multiplier of DoG's steps (1)
    raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(DEFAULTS)}")
