"""Step rules (Pethick et al. 2025, *Training Deep Learning Models with Norm-Constrained LMOs*; Riabinin et al.
2025, Gluon). Every rule is one update per tensor,

    W ← (1 − shrink)·W + scale·s,

where ``s`` is the unit-ball lmo of the estimator's direction ``d`` (or, after ALMOND's averaged lmo, a point of
the ρ-ball with radius 1) and ``shrink``/``scale`` are scalars the rule computes from the group's hyperparameters
(γ = lr, ρ = radius, λ = weight_decay) and, for some rules, from the dual norms ``‖d_l‖_* = −⟨d_l, s_l⟩``:

| rule | shrink | scale | source |
|---|---|---|---|
| :class:`USCG` ``uscg`` (UScion, Muon) | γλ | γρ | uSCG; Muon adds decoupled weight decay λ |
| :class:`SCG` ``scg`` (Scion) | γ | γρ | SCG: convex combination, stays in the ρ-ball |
| :class:`Clipped` ``clipped`` | γλ | γρ·min{1, D/ρ_c},  D = Σ_l ρ_l‖d_l‖_* | Clipped Scion (unconstrained) |
| :class:`ClippedConstrained` | γη | γηρ, η = min{1, Ψ/ρ_c}, Ψ = Σ_l ⟨d_l, W_l − ρ_l s_l⟩ | Clipped Scion, constrained |
| :class:`Steepest` ``steepest`` | γλ | γ‖d_l‖_* | steepest descent in the norm |
| :class:`~specopt.gluon.GluonRule` ``gluon`` | γλ | γ·t_l,  t_l = ‖d_l‖_*/(L0_l + L1_l‖d_l‖_*) | Gluon |
| :class:`Almond` ``almond`` | γλ | γ  (s = the averaged ρ·lmo) | ALMOND: uSCG on the averaged lmo |

Weight decay (the ``shrink`` of every rule but SCG and the constrained clipped one, whose shrink is the convex
combination that keeps W in its ball) is *decoupled* from the gradient, as AdamW's, and has three forms, chosen
per param group by ``weight_decay_mode``:

* ``"coupled"`` (default): ``shrink = γ_k·λ``: it follows the learning rate, and so the LR schedule;
* ``"independent"``: ``shrink = λ·γ_k/γ_0`` with γ_0 the schedule's peak (:func:`decay_reference_lr`): the
  schedule's shape, but a decay per step that does not change with the size of γ (Wortsman et al. 2023, *Small-scale
  proxies for large-scale Transformer training instabilities*), so a learning-rate sweep does not also sweep the
  decay; λ is the decay per step at the peak, and a γ_k above γ_0 is an error (the decay would pass λ);
* ``"cautious"``: ``W ← W − γ_kλ·𝟙[Δ ⊙ W ≤ 0] ⊙ W + Δ`` with Δ the rule's update: only the entries the update
  already moves toward zero are decayed (Chen et al. 2025, *Cautious Weight Decay*, arXiv:2510.12402).

A rule is an object with the :class:`StepRule` protocol, of the same standing as a :class:`~specopt.norms.Norm`:
``GeometryOptimizer(params, rule=...)`` takes one (or its name).
"""

from __future__ import annotations

import inspect

import torch

from specopt._checks import check_number

DECAY_MODES = ("coupled", "independent", "cautious")


def check_decay_mode(mode) -> None:
    if mode not in DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {DECAY_MODES}, got {mode!r}")


def weight_decay(rec) -> float:
    """The decay factor of one step, ``γ_k·λ`` or, for ``weight_decay_mode="independent"``, ``λ·γ_k/γ_0``."""
    group = rec.group
    if group.get("weight_decay_mode") == "independent":
        lr, reference = group["lr"], decay_reference_lr(group)
        if isinstance(reference, torch.Tensor):  # branch-free, as a compiled step needs
            return group["weight_decay"] * torch.where(reference > 0, lr / reference.clamp_min(1e-30), 1.0)
        if not reference:  # a schedule from a zero base lr (or a checkpoint from before the reference): λ per step
            return group["weight_decay"]
        return group["weight_decay"] * lr / reference
    return group["lr"] * group["weight_decay"]


def decay_reference_lr(group: dict):
    """γ_0 of ``weight_decay_mode="independent"``: the schedule's peak where the group records it (``max_lr``, which
    OneCycleLR sets, and a user may set for any schedule that rises above its start, as CyclicLR does), else the
    ``initial_lr`` torch's LR schedulers set, else ``decay_reference_lr``, the lr the group was built with (set by the
    optimizer: without a scheduler, or with ReduceLROnPlateau, which records none). None where none is set."""
    for key in ("max_lr", "initial_lr", "decay_reference_lr"):
        if group.get(key) is not None:
            return group[key]
    return None


def settle_part(cls: type, hooks: tuple[str, ...]) -> None:
    """What a new estimator or step rule class leaves unsaid: without a ``name`` it is named by its qualified name,
    and its import path is kept in ``class_path`` (a state dict records both, and loading refuses another's: two
    unnamed classes of one name in two modules never pass for each other); overriding one of ``hooks`` without saying
    ``per_tensor``, it is taken to need every tensor of the step at once (a per-tensor base's True would hand a sum
    over tensors one bucket at a time)."""
    cls.class_path = None if "name" in cls.__dict__ else f"{cls.__module__}:{cls.__qualname__}"
    if "name" not in cls.__dict__:
        cls.name = cls.__qualname__
    if "per_tensor" not in cls.__dict__ and any(hook in cls.__dict__ for hook in hooks):
        cls.per_tensor = False


def part_config(part) -> dict:
    """``{"name": …, **settings}`` of an estimator or step rule: the arguments its constructor takes, read back from
    the attributes of the same names (a part stores them so, as a norm does its config), numbers, strings and None
    as they are, anything else as its ``repr``. What a state dict records, so that a state saved with other settings
    (NorMuon's β₂, a user's MARS γ) is refused rather than resumed into a different algorithm."""
    settings = {}
    for name in setting_names(part):
        if not hasattr(part, name):
            continue
        value = getattr(part, name)
        settings[name] = value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
    return {"name": part.name, **settings}


def setting_names(part) -> list[str]:
    """The names of the arguments an estimator's or a step rule's constructor takes: its settings, one value for
    every param group."""
    return [name for name, parameter in inspect.signature(type(part).__init__).parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]


class StepRule:
    """The protocol of a step rule. :meth:`scale` sets ``rec.shrink`` and ``rec.scale`` of every record it is given
    (it may also replace ``rec.s``/``rec.factor``: a rule that reshapes the lmo's output, as NorMuon does); the
    engine then writes ``W ← (1 − shrink)·W + scale·factor·s``.

    Class attributes: ``name`` (recorded in state dicts; by default the class's qualified name); ``accepts``, the
    estimator outputs it composes with (``"direction"``: a gradient estimate, whose lmo and dual norm ``‖d‖_*`` the
    rule may read as the gradient's, as Gluon's smoothness, Steepest's and DoG's steps and the clipped rules' ρ_c do;
    ``"preconditioned"``: a direction not in the gradient's units — Adam-normalised, a sign — whose lmo alone is
    meaningful, which uSCG and SCG take; ``"averaged_lmo"``: a ball point, see
    :class:`~specopt.estimators.AveragedLmo`); ``needs_dual`` (``rec.dual = ‖d‖_*`` is computed with the lmo);
    ``per_tensor`` (True where shrink and scale of a tensor depend on that tensor alone, so that the engine may
    update one lmo bucket at a time, with less memory; the default False hands :meth:`scale` every tensor of the
    step at once, as a rule with a sum over tensors needs; a subclass that overrides :meth:`scale` and says
    nothing is False too); ``traceable`` (False where the rule reads tensors on the host); ``needs_closure`` (True
    where the rule reads ``ctx.loss``, as a Polyak step does: ``step()`` without a closure is then an error before
    anything is written);
    ``group_defaults`` (param-group keys the rule adds, validated by :meth:`validate_group`); ``max_lr`` (the largest
    γ the rule's guarantee holds for, e.g. SCG's convex combination 1: the engine checks it before every eager step,
    as an LR scheduler or a write to ``param_groups`` may raise lr after construction; None: no bound).
    :meth:`init_state` creates its state before the first step; :meth:`active` may leave tensors out of a step.
    :meth:`probe_weights` names weights at which the engine re-evaluates the batch before the step
    (``ctx.probed``), and :meth:`missed` keeps them true of a tensor that sat out a step; the context also carries
    ``ctx.lmo(records, need_dual)`` (the optimizer's lmo runner),
    ``ctx.complete(values, records)`` (per-tensor sums completed over shards), ``ctx.aux`` (the AdamW records),
    ``ctx.closure`` (whether the step got one) and ``ctx.ok``.
    """

    name: str = "rule"
    accepts: tuple[str, ...] = ("direction",)
    needs_dual: bool = False
    per_tensor: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        settle_part(cls, ("scale",))
    traceable: bool = True
    needs_closure: bool = False
    group_defaults: dict = {}
    max_lr: float | None = None

    def validate_group(self, group: dict) -> None:
        """Raise ``ValueError`` for a param group this rule cannot serve (called at construction)."""

    def init_state(self, rec) -> None:
        """Create the rule's state of ``rec`` (``rec.p``, ``rec.group``, ``rec.state``; also called for the AdamW
        tensors) ahead of the step: every key the rule's first step does not make (state made lazily in that step is
        fine). torch.compile traces a step whose state exists, and torch.distributed.checkpoint loads only the keys a
        new optimizer's state has after one zero step. Called before every step: add only absent keys
        (``rec.state.setdefault``), never overwrite."""

    def probe_weights(self, state: dict) -> torch.Tensor | None:
        return None

    def missed(self, state: dict, p: torch.Tensor) -> None:
        """A tensor with state got no gradient in a completed step, so it did not move (``p``: its local weights):
        keep what refers to the previous iterate true of it. Eager steps only (a step traced by torch.compile does
        not call it)."""

    def active(self, records: list, ctx) -> list:
        """The records this step updates (after their step counts advanced); the others get no estimator update,
        no lmo and no step (Drop-Muon's dropped layers). All of them by default."""
        return records

    def scale(self, records: list, ctx) -> None:
        raise NotImplementedError

    def config(self) -> dict:
        """The rule's name and settings (:func:`part_config`), recorded in the optimizer's state dict."""
        return part_config(self)


class USCG(StepRule):
    """Unconstrained SCG: ``W ← (1−γλ)W + γρ·lmo(d)``."""

    name = "uscg"
    per_tensor = True
    accepts = ("direction", "preconditioned", "averaged_lmo")

    def scale(self, records, ctx) -> None:
        for rec in records:
            rec.shrink = weight_decay(rec)
            rec.scale = rec.group["lr"] * rec.radius


class Almond(USCG):
    """ALMOND's step: uSCG on the averaged lmo, ``W ← (1−γλ)W + γ·d_k``."""

    name = "almond"
    accepts = ("averaged_lmo",)


def _convex_combination(rule: StepRule, group: dict) -> None:
    """The groups of a rule whose shrink is the convex combination ``(1 − γ)W + γ·s``: no weight decay of any mode
    (the shrink keeps W in the ρ-ball already) and γ ≤ 1, in every group (its AdamW tensors aside)."""
    if group.get("norm") == "adamw":
        return
    if group.get("weight_decay_mode", "coupled") != "coupled":
        raise ValueError(f"rule {rule.name!r} has no weight decay (its shrink keeps W in the ρ-ball), so "
                         f"weight_decay_mode={group['weight_decay_mode']!r} has no meaning")
    decay = group.get("weight_decay", 0.0)
    if float(decay) != 0.0:
        raise ValueError(f"rule {rule.name!r} has no weight decay (its shrink (1 − γ)W keeps W in the ρ-ball), got "
                         f"weight_decay={decay!r}; use UScion (rule 'uscg') for a decoupled decay")
    lr = float(group["lr"]) if isinstance(group["lr"], torch.Tensor) else group["lr"]
    if lr > rule.max_lr:
        raise ValueError(f"lr must be in [0, {rule.max_lr:g}] for rule {rule.name!r} (W ← (1 − γ)W + γ·s is a convex "
                         f"combination only then), got {lr!r}")


class SCG(StepRule):
    """SCG: ``W ← (1−γ)W + γρ·lmo(d)``, a convex combination that keeps W in the ρ-ball."""

    name = "scg"
    per_tensor = True
    accepts = ("direction", "preconditioned", "averaged_lmo")
    max_lr = 1.0

    def validate_group(self, group: dict) -> None:
        _convex_combination(self, group)

    def scale(self, records, ctx) -> None:
        for rec in records:
            rec.shrink, rec.scale = rec.group["lr"], rec.group["lr"] * rec.radius


class Steepest(StepRule):
    """Steepest descent in the norm: ``W ← (1−γλ)W + γ‖d‖_*·lmo(d)``."""

    name = "steepest"
    per_tensor = True
    needs_dual = True

    def scale(self, records, ctx) -> None:
        for rec in records:
            rec.shrink = weight_decay(rec)
            rec.scale = rec.group["lr"] * rec.dual


class Clipped(StepRule):
    """Clipped Scion: the uSCG step × ``min{1, Σ_l ρ_l‖d_l‖_* / ρ_c}`` (one factor for all tensors)."""

    name = "clipped"
    needs_dual = True

    def __init__(self, clip_radius: float):
        check_number(clip_radius, "clip_radius", low_open=True)
        self.clip_radius = float(clip_radius)

    def scale(self, records, ctx) -> None:
        factor = torch.clamp(_global_sum([rec.radius * rec.dual for rec in records]) / self.clip_radius, max=1.0)
        for rec in records:
            rec.shrink = weight_decay(rec)
            rec.scale = rec.group["lr"] * rec.radius * factor


class ClippedConstrained(Clipped):
    """Constrained Clipped Scion: gap ``Ψ = Σ_l ⟨d_l, W_l − ρ_l s_l⟩``, ``η = min{1, Ψ/ρ_c}``,
    ``W ← (1−γη)W + γηρ·s``."""

    name = "clipped_constrained"
    max_lr = 1.0

    def validate_group(self, group: dict) -> None:
        _convex_combination(self, group)

    def scale(self, records, ctx) -> None:
        dots = ctx.complete([torch.sum(rec.d * rec.p, dtype=torch.float64) for rec in records], records)
        gap = _global_sum([dot + rec.radius * rec.dual for dot, rec in zip(dots, records, strict=True)])
        if not torch.compiler.is_compiling():
            _starts_inside_the_balls(gap, records)
        eta = torch.clamp(gap / self.clip_radius, min=0.0, max=1.0)
        for rec in records:
            rec.shrink, rec.scale = rec.group["lr"] * eta, rec.group["lr"] * rec.radius * eta


def _starts_inside_the_balls(gap: torch.Tensor, records) -> None:
    """Inside its ball a weight has ``⟨d, W⟩ ≥ −ρ‖d‖_*`` (duality), so the gap Ψ is ≥ 0 there, or a little below
    with an inexact lmo (Polar Express's iterates reach 1.14ρ). A gap under −¼·Σρ‖d‖_* means weights well outside
    their balls, where η = min{1, Ψ/ρ_c} is 0 and nothing would ever move: refused, not frozen."""
    gap, total = float(gap), float(_global_sum([rec.radius * rec.dual for rec in records]))
    if gap < -0.25 * total:
        raise ValueError(f"the weights are outside their norm balls (the gap Ψ = {gap:.4g} < 0, which no point "
                         "of the balls has): constrained Clipped Scion steps only from inside, where it keeps them. "
                         "Start from the balls: each norm's init(shape, radius), or project the weights (norm.project)")


def _global_sum(values: list) -> torch.Tensor:
    """The sum of per-tensor scalars in float64 (not rounded to float32: a step factor from it would move float64
    weights by a float32-rounded step)."""
    if not values:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]).sum()


def rules() -> dict:
    """The built-in rules by name."""
    from specopt.gluon import GluonRule

    return {cls.name: cls for cls in (USCG, SCG, Clipped, ClippedConstrained, Steepest, GluonRule, Almond)}


def get_rule(spec, clip_radius: float | None = None) -> StepRule:
    """A :class:`StepRule` from an instance or a built-in name (``clip_radius`` for the clipped ones)."""
    if isinstance(spec, StepRule):
        if type(spec).scale is StepRule.scale:
            raise ValueError(f"{type(spec).__name__} defines no scale(records, ctx): a StepRule sets rec.shrink and "
                             "rec.scale of every record (see the guide 'Writing a new optimizer')")
        if clip_radius is not None:
            raise ValueError("clip_radius goes to the rule object itself, e.g. Clipped(clip_radius=...)")
        refuse_builtin_name(spec, rules(), "rule")
        return spec
    known = rules()
    if isinstance(spec, type) and issubclass(spec, StepRule):
        raise ValueError(f"rule={spec.__name__} is the class: pass an instance, {spec.__name__}()")
    if not isinstance(spec, str) or spec not in known:
        raise ValueError(f"unknown step rule {spec!r}: pass a StepRule or one of {', '.join(known)}")
    if issubclass(known[spec], Clipped):
        if clip_radius is None:
            raise ValueError(f"rule {spec!r} needs clip_radius (ρ_c > 0)")
        return known[spec](clip_radius)
    if clip_radius is not None:
        raise ValueError(f"clip_radius applies to the clipped rules only, not to {spec!r}")
    return known[spec]()


def refuse_builtin_name(part, builtins: dict, kind: str) -> None:
    """A user's part named as a built-in one it does not derive from is an error: a saved state records the part by
    its name, so the built-in's state would load into it, and its into the built-in, without a word (a subclass of
    the built-in may keep its name on purpose, to resume the built-in's checkpoints)."""
    cls = builtins.get(part.name)
    if cls is not None and not isinstance(part, cls) and not type(part).__module__.startswith("specopt."):
        raise ValueError(f"{type(part).__qualname__}.name = {part.name!r} is the name of specopt's built-in {kind} "
                         f"{cls.__qualname__}: give your {kind} a name of its own (or none: its qualified name is "
                         "used)")


def commit(dst: torch.Tensor, new: torch.Tensor, ok: torch.Tensor | None) -> torch.Tensor:
    """Write ``new`` into ``dst`` and return ``new``; with a 0-d boolean ``ok`` (the step under torch.compile)
    ``dst ← where(ok, new, dst)``, so that a step whose gradients are not finite writes back the old values,
    bit for bit, with no branch on tensor data (a branch would need a host sync and break the graph)."""
    dst.copy_(new if ok is None else torch.where(ok, new, dst))
    return new


def cautiously_decayed(p: torch.Tensor, step: torch.Tensor, shrink) -> torch.Tensor:
    """``p − shrink·𝟙[step⊙p ≤ 0]⊙p``: the decay only where the step moves ``p`` toward zero (Chen et al. 2025,
    *Cautious Weight Decay*, arXiv:2510.12402)."""
    return torch.where(step * p <= 0, p * (1 - shrink), p)


def apply_update(p: torch.Tensor, s: torch.Tensor, shrink, scale, ok: torch.Tensor | None = None,
                 cautious: bool = False) -> None:
    """``p ← (1 − shrink)·p + scale·s`` in place; scalars may be floats or 0-d tensors, which step as the float
    does (``1 − shrink`` is not rounded to a low-precision ``p``'s dtype first: in bf16 that would turn a decay
    γλ = 0.002 into 2⁻⁸ and one under 2⁻⁹ into none). With ``ok`` (see
    :func:`commit`) the new value is formed out of place and written where ``ok`` holds (torch.compile fuses
    the product, the sum and the select into one pass over ``p``). ``cautious``: the shrink only where the update
    ``Δ = scale·s`` and ``p`` have opposite signs (or either is 0), ``p ← p − shrink·𝟙[Δ⊙p ≤ 0]⊙p + Δ``."""
    if cautious and (isinstance(shrink, torch.Tensor) or shrink != 0):
        work = torch.promote_types(torch.promote_types(p.dtype, s.dtype), torch.float32)  # 1 − shrink unrounded
        step = s.to(work) * (scale.to(work) if isinstance(scale, torch.Tensor) else scale)
        commit(p, (cautiously_decayed(p.to(work), step, shrink) + step).to(p.dtype), ok)
        return
    if ok is not None:  # in the wider of the two dtypes, as the in-place ops below compute
        work = torch.promote_types(p.dtype, s.dtype)
        keep = 1 - shrink
        step = scale.to(work) if isinstance(scale, torch.Tensor) else scale
        commit(p, (p.to(work) * keep + s.to(work) * step).to(p.dtype), ok)
        return
    if isinstance(shrink, torch.Tensor) or shrink != 0:
        p.mul_(1 - shrink)
    if isinstance(scale, torch.Tensor):  # a 0-d scale of its own dtype, as a float alpha is (never rounded to s's)
        p.addcmul_(s, scale)
    else:
        p.add_(s, alpha=scale)
