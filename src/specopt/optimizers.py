"""The named optimizers: thin presets over :class:`~specopt.engine.GeometryOptimizer` (Pethick et al. 2025; Riabinin
et al. 2025).

| preset | estimator | step rule | defaults |
|---|---|---|---|
| :class:`Muon` | Nesterov 0.95 | ``W ← (1−γλ)W − γ·scale·msign(d̃)``, AdamW elsewhere | γ = 0.02, AdamW γ = 0.03 |
| :class:`Scion` | momentum 0.9 (α = 0.1) | SCG ``W ← (1−γ)W + γρ·lmo(d)`` | γ = 2⁻¹⁰, ρ = 30 |
| :class:`UScion` | momentum 0.9 | uSCG ``W ← (1−γλ)W + γρ·lmo(d)`` | γ = 2⁻¹¹, ρ = 30 |
| :class:`ClippedScion` | momentum 0.9 | uSCG × min{1, Σρ‖d‖_*/ρ_c} (or the gap rule) | γ = 2⁻⁷, ρ = 30, ρ_c = 600 |
| :class:`Gluon` | momentum 0.9 or theory | ``W ← (1−γλ)W + γt_i·lmo(d)``, ``t_i = ‖d‖_*/(L0+L1‖d‖_*)`` | γ = 1 |
| :class:`ALMOND` | averaged lmo | ``W ← (1−γλ)W + γ·d``, ``d = β d + (1−β)ρ·lmo(g)`` | γ = 2⁻⁸, ρ = 30 |
| :class:`SteepestDescent` | none | ``W ← (1−γλ)W + γ‖d‖_*·lmo(d)`` | γ = 0.01 |
| :class:`ProxSpectral` | momentum 0.9 or STORM | ``Y = W − γP(αd)``, ``W ← proj_C(Y)`` in P's geometry | γ = 0.02 |

``norm="auto"`` gives each tensor the geometry of its rank (Spectral, SpectralConv, BiasRMS); use
:func:`specopt.param_groups` to assign roles (embedding, hidden, head, vector) with their norms and radii.
ρ is the hidden radius: ``radius`` defaults to ``roles.DEFAULT_RADII["hidden"]`` and is the radius of every group
that states none; :func:`specopt.param_groups` gives each role its radius from the same table (embedding 10,
head 100, vectors 10). The lr defaults (and Muon's AdamW lr, Clipped Scion's ρ_c) are the settings with the
smallest worst regret over the char-GPT tiny and small and the MNIST CNN (``benchmarks/sweep_defaults.py``,
EXPERIMENTS.md "Defaults sweep"; ProxSpectral's over tiny and the CNN only, and Gluon's lr 1 is the rule as
published, with nothing to sweep), but for Clipped Scion's lr: 2⁻⁷, not the smallest-regret 2⁻⁶, which diverges on a
2-layer GPT-2 whose first dual norm is above ρ_c. The `specopt` command reads them from here
(:data:`specopt.registry.DEFAULTS`). SteepestDescent's were not swept.
Every preset's ``lr`` may be a number or a one-element tensor (each group holds a 0-d copy, which torch's schedulers
write in place and a compiled step follows without recompiling). Every preset also takes the engine's
``nonfinite``, ``batch_lmo`` and ``process_group`` (see :class:`GeometryOptimizer` and :mod:`specopt.distributed`),
and all but ALMOND, AdaMuon (its own sign estimator) and GluonMVR (always STORM) take ``estimator="storm"``
(variance-reduced momentum; ``step(closure)``, two gradients per step).
"""

from __future__ import annotations

import copy

import torch

from specopt._checks import lr_like
from specopt.constraints import Constraint
from specopt.engine import GeometryOptimizer
from specopt.estimators import Estimator, get_estimator
from specopt.layouts import auto_norm
from specopt.norms import Blocked, Norm, Spectral, _SpectralBase
from specopt.preconditioners import Preconditioner
from specopt.roles import DEFAULT_RADII
from specopt.steps import StepRule
from specopt.views import LAYOUT_VIEWS, MuonScaled

RADIUS = DEFAULT_RADII["hidden"]
"""The presets' default radius: the hidden radius of :func:`specopt.param_groups`."""
MUON_ROLES = ("hidden", "expert", "conv")
"""The roles of :func:`specopt.param_groups` Muon orthogonalises; the others (embedding, token, head, vector)
go to its AdamW."""


def _defaults(**kwargs) -> dict:
    out = {"momentum": 0.9, "nesterov": False, "norm": "auto", "radius": RADIUS, "weight_decay": 0.0}
    out.update(kwargs)
    return out


class Scion(GeometryOptimizer):
    """Scion — stochastic conditional gradient (SCG), constrained: ``W ← (1−γ)W + γρ·lmo(d)``.

    Pethick et al., *Training Deep Learning Models with Norm-Constrained LMOs* (2025, arXiv:2502.07529). With
    γ ∈ [0, 1] and ``‖W₀‖ ≤ ρ`` every iterate stays in the ρ-ball of its norm (with an exact lmo; the default
    Polar Express lmo has singular values up to 1.141, so up to that factor). ``momentum`` is β = 1 − α
    (``d ← βd + (1−β)g``; ``nesterov=True`` steps along ``βd + (1−β)g`` instead). Scion has no weight decay: the
    convex combination already shrinks W by γ.
    """

    def __init__(self, params, lr: float = 2**-10, momentum: float | str = 0.9, norm="auto", radius=RADIUS,
                 nesterov: bool = False, estimator: str | Estimator = "momentum", nonfinite: str = "raise",
                 batch_lmo: bool | None = None, process_group="auto", weight_decay: float = 0.0):
        if weight_decay:  # taken so that it is refused with the reason, as a param group's is
            raise ValueError(f"Scion has no weight_decay (its SCG step already shrinks W by lr), got "
                             f"{weight_decay!r}; use UScion for decoupled weight decay")
        value = float(lr) if isinstance(lr, torch.Tensor) and lr.numel() == 1 else lr  # a tensor lr as its value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1:
            raise ValueError(f"lr must be in [0, 1] for Scion (a convex combination), got {lr!r}")
        super().__init__(params, _defaults(lr=lr, momentum=momentum, norm=norm, radius=radius, nesterov=nesterov),
                         rule="scg", estimator=estimator, nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)


class UScion(GeometryOptimizer):
    """Unconstrained Scion (uSCG): ``W ← (1−γλ)W + γρ·lmo(d)``; ``‖W_n − W_0‖ ≤ ρ Σ_k γ_k`` when λ = 0 (times up
    to 1.141 with the default Polar Express lmo).

    Pethick et al., *Training Deep Learning Models with Norm-Constrained LMOs* (2025, arXiv:2502.07529).

    Args:
        lr: γ. momentum: β of ``d ← βd + (1−β)g`` (``nesterov``: step along ``βd + (1−β)g``). norm, radius: the
            geometry of groups that state none (``"auto"``: by rank). weight_decay: λ, decoupled (``1 − γλ``).
        estimator: ``"momentum"`` or ``"storm"`` (``step(closure)``).
    """

    def __init__(self, params, lr: float = 2**-11, momentum: float | str = 0.9, norm="auto", radius=RADIUS,
                 weight_decay: float = 0.0, nesterov: bool = False, estimator: str | Estimator = "momentum",
                 nonfinite: str = "raise", batch_lmo: bool | None = None,
                 process_group="auto"):
        super().__init__(params, _defaults(lr=lr, momentum=momentum, norm=norm, radius=radius,
                                           weight_decay=weight_decay, nesterov=nesterov),
                         rule="uscg", estimator=estimator, nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)


class ClippedScion(GeometryOptimizer):
    """Clipped Scion: the uSCG step scaled by ``min{1, ‖d‖_*/ρ_c}`` with the global dual norm
    ``‖d‖_* = Σ_l ρ_l‖d_l‖_(l)*`` (one scalar for all tensors). ``constrained=True``: ``s = ρ·lmo(d)``,
    gap ``Ψ = ⟨d, W − s⟩``, ``η = min{1, Ψ/ρ_c}``, ``W ← (1−γη)W + γη·s``. ρ_c is in the units of the radii
    (it scales with them); 600 at the default radii (Pethick et al. 2025, arXiv:2506.01913, use 600 for a GPT and
    1600 for a CNN). Where ``Σρ‖d‖_*`` is above ρ_c nothing is clipped and the step is the full ``γρ`` (0.23 for
    hidden matrices at the defaults), so γ must be stable at that step. The one measured speed-up (the ``clipping``
    experiment) set ρ_c to half the median of the momentum's ``Σρ‖d‖_*`` over a UScion run's first tenth.

    Args:
        clip_radius: ρ_c. constrained: the gap rule above instead of the norm clip. weight_decay: λ, decoupled
            (``1 − γλ``, uSCG form). lr, momentum, nesterov, norm, radius, estimator: as :class:`UScion`.
    """

    def __init__(self, params, lr: float = 2**-7, momentum: float | str = 0.9, norm="auto", radius=RADIUS,
                 clip_radius: float = 600.0, constrained: bool = False, weight_decay: float = 0.0,
                 nesterov: bool = False, estimator: str | Estimator = "momentum", nonfinite: str = "raise",
                 batch_lmo: bool | None = None,
                 process_group="auto"):
        super().__init__(params, _defaults(lr=lr, momentum=momentum, norm=norm, radius=radius,
                                           weight_decay=weight_decay, nesterov=nesterov),
                         rule="clipped_constrained" if constrained else "clipped", clip_radius=clip_radius,
                         estimator=estimator, nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)


class Gluon(GeometryOptimizer):
    """Gluon: per-layer radius from layer-wise (L0, L1)-smoothness, ``t_i = ‖d_i‖_*/(L0_i + L1_i‖d_i‖_*)``.

    Riabinin et al., *Gluon: Making Muon & Scion Great Again!* (2025, arXiv:2505.13416). ``L0``/``L1`` per group
    (reported for NanoGPT: L0 ≈ 0, hidden L1 ≈ 67–71, embedding/head L1 ≈ 1.3) or ``"online"`` (default): estimated from
    the trajectory (:mod:`specopt.gluon`), so that no step size is tuned; pass ``step(closure)`` so that the
    estimate compares gradients of the same batch (every ``probe_every`` steps, one extra forward/backward
    each time). ``schedule="stochastic"``:
    ``t_i^k = t_i (k+1)^{-3/4}`` and, with ``momentum="theory"``, ``β_k = 1 − (k+1)^{-1/2}``. ``lr`` multiplies
    every ``t_i`` (1 by default).

    Args:
        warmup_radius: the step ``t_i`` until the online estimate has its first measurements. probe_every: how
            often the online estimate re-evaluates the batch (every k-th step). weight_decay: λ, decoupled
            (``W ← (1−γλ)W + γ·t_i·lmo(d)``). momentum, nesterov, norm, estimator: as :class:`UScion`.
    """

    def __init__(self, params, L0: float | str = "online", L1: float | str = "online", lr: float = 1.0,
                 momentum: float | str = 0.9, norm="auto", schedule: str = "constant",
                 warmup_radius: float = 1e-3, probe_every: int = 1, weight_decay: float = 0.0,
                 nesterov: bool = False, estimator: str | Estimator = "momentum", nonfinite: str = "raise",
                 batch_lmo: bool | None = None,
                 process_group="auto"):
        super().__init__(params, _defaults(lr=lr, momentum=momentum, norm=norm, radius=1.0, L0=L0, L1=L1,
                                           schedule=schedule, warmup_radius=warmup_radius, probe_every=probe_every,
                                           weight_decay=weight_decay, nesterov=nesterov),
                         rule="gluon", estimator=estimator, nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)

    def _preset_groups(self, group: dict) -> list[dict]:
        refuse_role_radius(group, type(self).__name__, "sets each layer's step t_l from L0 and L1")
        return [group]


class ALMOND(GeometryOptimizer):
    """ALMOND — averaged lmo directions: ``d_k = β d_{k−1} + (1−β)·ρ·lmo(g_k)``, ``W ← (1−γλ)W + γ·d_k``.

    No paper is cited for ALMOND here (``docs/optimizers/almond.md``): the update is the one above. ``momentum`` is
    β; ``weight_decay`` λ, decoupled; no ``estimator`` (the averaging is its estimator) and no Nesterov form.
    """

    def __init__(self, params, lr: float = 2**-8, momentum: float | str = 0.9, norm="auto", radius=RADIUS,
                 weight_decay: float = 0.0, nonfinite: str = "raise", batch_lmo: bool | None = None,
                 process_group="auto"):
        super().__init__(params, _defaults(lr=lr, momentum=momentum, norm=norm, radius=radius,
                                           weight_decay=weight_decay),
                         estimator="almond", rule="almond", nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)


class SteepestDescent(GeometryOptimizer):
    """Norm-scaled steepest descent ``W ← (1−γλ)W + γ‖d‖_*·lmo(d)``: ℓ2 → SGD, ℓ∞ → sign descent × ‖g‖₁,
    spectral → spectral descent × nuclear norm (the unconstrained form of Pethick et al. 2025, arXiv:2502.07529).
    ``momentum`` β (0: none), ``nesterov``, ``weight_decay`` λ (decoupled) and ``estimator`` as :class:`UScion`."""

    def __init__(self, params, lr: float = 0.01, momentum: float | str = 0.0, norm="auto",
                 weight_decay: float = 0.0, nesterov: bool = False, estimator: str | Estimator = "momentum",
                 nonfinite: str = "raise", batch_lmo: bool | None = None,
                 process_group="auto"):
        super().__init__(params, _defaults(lr=lr, momentum=momentum, norm=norm, radius=1.0,
                                           weight_decay=weight_decay, nesterov=nesterov),
                         rule="steepest", estimator=estimator, nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)

    def _preset_groups(self, group: dict) -> list[dict]:
        refuse_role_radius(group, "SteepestDescent", "steps γ‖d‖_*·lmo(d)")
        return [group]


class ProxSpectral(GeometryOptimizer):
    """Proximal spectral preconditioning (Oikonomidis et al., *Constrained Stochastic Spectral Preconditioning
    Converges for Nonconvex Objectives*, 2026, arXiv:2605.11850; reconstructed where the paper is silent):
    ``Y = W − γ·P(α·d)``, then ``W ← argmin_{X∈C} γφ((X − Y)/γ)``, the projection onto the group's
    ``constraint`` in the preconditioner's geometry (:mod:`specopt.constraints`).

    Args:
        lr: γ (a float or a 0-d tensor; pair it with :func:`specopt.schedules.power_decay` for the theory's
            ``γ_k ∝ k^{-3/4}`` with momentum or ``k^{-2/3}`` with STORM).
        momentum: β (a number, ``"theory"`` for ``1 − β_k = (k+1)^{-1/2}``, ``"storm"`` for
            ``a_k = (k+1)^{-2/3}``).
        preconditioner: ``"msign"`` (exact, SVD), ``"smooth"`` (``h'_κ`` with ``kappa``, ``eps``) or
            ``"polar_express"`` (default: the polynomial, no SVD), see :mod:`specopt.preconditioners`.
        kappa, eps: ``h'_κ``'s exponent and floor (``preconditioner="smooth"``).
        scale: α.
        constraint: a :class:`~specopt.constraints.Constraint` for every tensor (per group via param-group
            dicts), or None.
        estimator: ``"momentum"`` or ``"storm"`` (``step(closure)``).
        weight_decay: decoupled, ``W ← (1 − γλ_wd)W`` before the step.
        steps: of the Polar Express polynomial (default: its 5-step set).
        compute_dtype: of the Polar Express polynomial (default: bf16 where native).
    """

    def __init__(self, params, lr: float = 0.02, momentum: float | str = 0.9, preconditioner: str = "polar_express",
                 kappa: float = 4.0, eps: float = 1e-3, scale: float = 1.0, constraint: Constraint | None = None,
                 estimator: str | Estimator = "momentum", weight_decay: float = 0.0, steps: int | None = None,
                 compute_dtype=None, nonfinite: str = "raise", batch_lmo: bool | None = None,
                 process_group="auto"):
        norm = Preconditioner(preconditioner, kappa=kappa, eps=eps, scale=scale, steps=steps,
                              compute_dtype=compute_dtype)
        super().__init__(params, _defaults(lr=lr, momentum=momentum, norm=norm, radius=1.0, constraint=constraint,
                                           weight_decay=weight_decay),
                         rule="uscg", estimator=estimator, nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)

    def _preset_groups(self, group: dict) -> list[dict]:
        """A group of :func:`specopt.param_groups` brings a norm that would replace the preconditioner: refused (a
        group's keys override the optimizer's defaults, as in torch.optim)."""
        if "role" in group and group.get("norm") not in (None, "adamw") and \
                not isinstance(group["norm"], Preconditioner):
            raise ValueError(f"ProxSpectral got the {group['role']!r} group of specopt.param_groups, whose norm "
                             f"{group['norm']!r} would replace its preconditioner: pass model.parameters(), or the "
                             "groups without their norms and radii, e.g. [{'params': g['params']} for g in groups]")
        return [group]


class Muon(GeometryOptimizer):
    """Muon: Nesterov momentum, ``W ← (1−γλ)W − γ·scale·msign(d̃)`` on hidden matrices (and conv kernels,
    flattened), a built-in AdamW for everything else (embeddings, output head, gains, biases).

    Which tensors are Muon's: the ``role`` of a group from :func:`specopt.param_groups` (hidden, expert, conv:
    each matrix as the module computes with it, experts one by one, fused blocks each with their own scale), or
    else every tensor with ≥ 2 dims (2-D in ``nn.Linear``'s layout, 4-D/5-D conv kernels; a 3-D tensor's layout
    is unknown, an error). The rest go to AdamW with ``adamw_lr``, ``adamw_betas``, ``adamw_eps``,
    ``adamw_weight_decay`` (separate param groups, so LR schedulers scale both; with a tensor ``lr`` a float
    ``adamw_lr`` becomes a tensor too, so that a compiled step follows a scheduler without recompiling). A group's
    own keys (``lr``, ``weight_decay``, ``constraint``, ``betas``, …; not ``norm``, ``radius``, ``momentum``,
    ``nesterov``) hold for its AdamW tensors too, as torch.optim applies a group's keys to every tensor in it;
    :meth:`add_param_group` splits a group the same way.

    ``scale``: "original" ``max(1, d_out/d_in)^½`` (Jordan et al. 2024, the Muon blog post; torch.optim.Muon),
    "match_rms_adamw" ``0.2·√max(d_out, d_in)`` (Liu et al. 2025, *Muon is Scalable for LLM Training*,
    arXiv:2502.16982), or "spectral" ``√(d_out/d_in)``. ``method``/``steps``/
    ``compute_dtype``/``gram`` choose the msign of every Muon tensor, the groups of :func:`specopt.param_groups`
    included (default: Polar Express, 5 steps, bf16 where native; ``gram=True`` takes the faster, slightly less
    accurate Gram form on wide matrices in bf16, see :func:`specopt.linalg.use_gram`); a group whose norm sets one
    of them otherwise (``param_groups(model, msign={...})``) is a ``ValueError``.
    ``nesterov`` defaults to True, and to False with ``estimator="storm"`` (which has no Nesterov form).
    ``rule`` replaces the uSCG step on the Muon tensors (e.g. NorMuon's row normalisation, see the guide
    "Writing a new optimizer").
    """

    def __init__(self, params, lr: float = 0.02, momentum: float | str = 0.95, nesterov: bool | None = None,
                 weight_decay: float = 0.0, scale: str = "original", method: str = "polar_express",
                 steps: int | None = None, compute_dtype=None, adamw_lr: float = 3e-2,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float = 0.0, estimator: str | Estimator = "momentum",
                 rule: str | StepRule = "uscg", nonfinite: str = "raise", batch_lmo: bool | None = None,
                 process_group="auto", gram: bool | None = None):
        if nesterov is None:
            nesterov = get_estimator(estimator).name != "storm"
        msign_kwargs = {"method": method, "steps": steps, "compute_dtype": compute_dtype, "gram": gram}
        norm = Spectral(**msign_kwargs)
        defaults = _defaults(lr=lr, momentum=momentum, nesterov=nesterov, norm=norm, radius=scale,
                             weight_decay=weight_decay)
        aux = {"norm": "adamw", "lr": lr_like(adamw_lr, lr), "betas": adamw_betas, "eps": adamw_eps,
               "weight_decay": adamw_weight_decay, "momentum": 0.0, "nesterov": False, "radius": 1.0}
        self._muon_split = (aux, msign_kwargs, scale)
        super().__init__(params, defaults, rule=rule, estimator=estimator, nonfinite=nonfinite, batch_lmo=batch_lmo,
                         process_group=process_group)

    def _preset_groups(self, group: dict) -> list[dict]:
        return _split_for_muon(group, *self._muon_split)


def refuse_role_radius(group: dict, preset: str, why: str) -> None:
    """A group of :func:`specopt.param_groups` whose radius is not its role's default (``radii=``, ``overrides=``),
    given to a preset that has no radii: a ``ValueError`` naming the group, where the radius would be ignored."""
    role, radius = group.get("role"), group.get("radius")
    if role in DEFAULT_RADII and radius is not None and radius != DEFAULT_RADII[role]:
        raise ValueError(f"the {role!r} group's radius {radius!r} (param_groups' radii= or overrides=) has no "
                         f"meaning for {preset}, which {why}: drop it, or train the radii with Scion or UScion")


def refuse_own(preset: str, kwargs: dict, *keys: str) -> None:
    """A preset built on :class:`Muon` that sets ``keys`` itself refuses them from its caller with a clear
    ``ValueError`` (not Python's "got multiple values for keyword argument")."""
    for key in keys:
        if key in kwargs:
            raise ValueError(f"{preset} sets {key} itself; use specopt.Muon({key}=...) for another {key}")


MUON_ONLY = ("norm", "radius", "momentum", "nesterov")
"""Keys of a group that are about Muon's step; its AdamW tensors keep every other key of their group (``lr``,
``weight_decay``, ``constraint``, ``betas``, …)."""


def _split_for_muon(group: dict, aux: dict, msign_kwargs: dict, scale: str) -> list[dict]:
    """One group as Muon's groups: its Muon tensors (matrices; conv kernels by rank, with a SpectralConv norm) and
    its AdamW tensors, which keep the group's own keys but Muon's step's (:data:`MUON_ONLY`) and get ``adamw_lr``
    and the other AdamW defaults where the group sets none. A role group's radius other than its
    :data:`~specopt.roles.DEFAULT_RADII` entry is refused (Muon has no radii; it used to be dropped, silently). A
    group that says ``norm="adamw"`` is AdamW as a
    whole. A Muon role's norm that is not spectral is the user's (param_groups gives these roles spectral ones) and
    is refused: Muon's step is a Muon scale, which needs a spectral norm (it used to be replaced by Spectral,
    silently)."""
    rest = {k: v for k, v in group.items() if k != "params"}
    members = group["params"]
    members = [members] if isinstance(members, torch.Tensor) else list(members)
    if rest.get("norm") == "adamw":
        return [{**aux, **rest, "params": members}]
    role = rest.get("role")
    if role is not None:  # a group of specopt.param_groups: Muon's step length is its scale, not a radius
        refuse_role_radius(rest, "Muon", "steps each matrix by its Muon scale (scale=...) and the rest with AdamW")
        rest.pop("radius", None)
        if role not in MUON_ROLES:
            rest.pop("norm", None)
        elif _spectral(rest.get("norm")):
            rest["norm"] = with_msign(rest["norm"], msign_kwargs, role)
            if _unequal_blocks(rest["norm"]):  # each block its own scale: the scale moves into the norm
                rest["norm"], rest["radius"] = _scale_blocks(rest["norm"], scale), 1.0
        elif isinstance(rest.get("norm"), Norm):
            raise ValueError(f"the {role!r} group's norm {rest['norm']!r} is not spectral, and Muon steps each "
                             "matrix by its Muon scale, which needs one; train that geometry with Scion or UScion "
                             "(param_groups' radii), or give Muon a plain group with a number 'radius'")
    by_rank: dict[int, list] = {}
    other = []
    for member in members:
        p = member[1] if _is_named(member) else member
        if (role in MUON_ROLES) if role is not None else p.ndim >= 2:
            by_rank.setdefault(p.ndim, []).append(member)
        else:
            other.append(member)
    out = []
    for rank, ms in sorted(by_rank.items()):
        sub = {**rest, "params": ms}
        if rank > 2 and "norm" not in rest:
            name = ms[0][0] if _is_named(ms[0]) else f"a Muon tensor of shape {tuple(ms[0].shape)}"
            sub["norm"] = auto_norm(tuple((ms[0][1] if _is_named(ms[0]) else ms[0]).shape), name, **msign_kwargs)
        out.append(sub)
    if other:
        out.append({**aux, **{k: v for k, v in rest.items() if k not in MUON_ONLY}, "params": other})
    return out


MSIGN_DEFAULTS = {"method": "polar_express", "steps": None, "compute_dtype": None, "gram": None}
"""Muon's msign settings when its caller gives none (those of :class:`~specopt.norms.Spectral`)."""


def with_msign(norm, msign_kwargs: dict, role: str):
    """``norm`` (a spectral geometry on some layout, from :func:`specopt.param_groups`) with the msign settings the
    caller gave Muon: each one not at its default replaces the norm's where the norm has the default, so that
    ``Muon(param_groups(model), method="newton_schulz")`` orthogonalises every tensor with Newton–Schulz; one the norm
    sets otherwise (``param_groups(model, msign={...})``) is a ``ValueError``: the two disagree."""
    if hasattr(norm, "inner"):
        out = copy.copy(norm)
        out.inner = with_msign(norm.inner, msign_kwargs, role)
        return out
    chosen = {k: v for k, v in msign_kwargs.items() if v != MSIGN_DEFAULTS[k]}
    for key, value in chosen.items():
        own = getattr(norm, key)
        if own != MSIGN_DEFAULTS[key] and own != value:
            raise ValueError(f"Muon({key}={value!r}) disagrees with the {role} group's norm, whose msign has "
                             f"{key}={own!r} (set by param_groups(msign=...) or the group's own norm): give it in "
                             "one place")
    if not chosen:
        return norm
    out = copy.copy(norm)
    for key, value in chosen.items():
        setattr(out, key, value)
    return out


def _unequal_blocks(norm) -> bool:
    while isinstance(norm, LAYOUT_VIEWS):
        norm = norm.inner
    return isinstance(norm, Blocked) and not isinstance(norm.split_sizes, int) and len(set(norm.split_sizes)) > 1


def _scale_blocks(norm, scale: str):
    """The same layout with Muon's ``scale`` inside every block: ``Blocked(MuonScaled(inner, scale), sizes)``."""
    if isinstance(norm, LAYOUT_VIEWS):
        return norm.with_inner(_scale_blocks(norm.inner, scale))
    return Blocked(MuonScaled(norm.inner, scale), norm.split_sizes, norm.interleaved)


def _spectral(norm) -> bool:
    """A spectral geometry on some layout (a view, blocks): the norms Muon's msign settings reach."""
    while isinstance(norm, (Blocked, *LAYOUT_VIEWS)):
        norm = norm.inner
    return isinstance(norm, _SpectralBase)


def _is_named(member) -> bool:
    return isinstance(member, tuple) and len(member) == 2 and isinstance(member[0], str)
