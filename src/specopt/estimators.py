"""Gradient estimators ``d_k`` (Pethick et al. 2025; Cutkosky & Orabona 2019): the "dual feedback" fed to the geometry.

An estimator is an object with the :class:`Estimator` protocol, of the same standing as a
:class:`~specopt.norms.Norm`: pass one as ``GeometryOptimizer(params, estimator=...)`` (or its name). Built in:

* :class:`Momentum` — EMA ``d_k = β d_{k−1} + (1−β) g_k`` (the papers write α = 1 − β), optionally Nesterov
  ``d̃_k = β d_k + (1−β) g_k`` (as torch.optim.Muon: ``g.lerp(d_k, β)``); β = 0 feeds the gradient itself;
* :class:`Storm` — ``d_k = g(x_k; ξ_k) + (1 − a_k)(d_{k−1} − g(x_{k−1}; ξ_k))`` with β = 1 − a_k (Cutkosky &
  Orabona 2019; the STORM variant of *Constrained Stochastic Spectral Preconditioning Converges for Nonconvex
  Objectives* (2026)): the gradient at the previous iterate on the *same* batch comes from the engine's probe
  (``step(closure)`` runs the closure twice per step, 2× the gradient cost); ``d_1 = g_1``;
* :class:`AveragedLmo` (ALMOND) — ``d_k = β d_{k−1} + (1−β)·ρ·lmo(g_k)``: the geometry is applied *before*
  averaging, so it acts after the lmo and hands the rule a point of the ρ-ball (``produces = "averaged_lmo"``).

``momentum`` (a group key) may be a number β ∈ [0, 1), ``"theory"``: ``β_k = 1 − (k+1)^{-1/2}`` (k = 0, 1, …), the
schedule of the stochastic SCG/Gluon analyses and of the heavy-tailed momentum analysis, or ``"storm"``:
``a_k = 1 − β_k = (k+1)^{-2/3}``, STORM's schedule. The step-size schedules that go with them
(``γ_k ∝ k^{-3/4}``, ``k^{-2/3}``) are LR schedulers: :func:`specopt.schedules.power_decay`.

The step counts are 0-d tensors (see the engine), so a schedule's β is a 0-d tensor on the parameter's device
(no host sync to read the count, and no recompilation under torch.compile as it grows). ``ctx.ok`` (a 0-d
boolean, given under torch.compile) makes the buffer writes conditional: :func:`specopt.steps.commit`.
"""

from __future__ import annotations

import torch

from specopt.steps import commit, part_config, refuse_builtin_name, settle_part

MOMENTUM_SCHEDULES = {"theory": 0.5, "storm": 2.0 / 3.0}
"""Named schedules: ``β_k = 1 − (k+1)^{-power}``."""


def momentum_at(momentum: float | str, step):
    """β for the ``step``-th update (0-based): a float for a number, for a schedule a float or a 0-d tensor
    as ``step`` is an int or a 0-d tensor."""
    if isinstance(momentum, str):
        return 1.0 - (step + 1) ** -MOMENTUM_SCHEDULES[momentum]
    return float(momentum)


def beta(rec) -> float | torch.Tensor:
    """β of this update of record ``rec``: the group's number, or its schedule at the (0-d tensor) step count, on
    the device. The count was advanced before the estimator runs, hence ``step − 1`` (0-based)."""
    momentum = rec.group["momentum"]
    if not isinstance(momentum, str):
        return float(momentum)
    step = rec.state["step"] - 1
    if isinstance(step, torch.Tensor) and rec.p.dtype == torch.float64:  # β to float64's precision, not float32's
        step = step.double()
    return momentum_at(momentum, step)


def validate_momentum(momentum) -> None:
    if isinstance(momentum, str) and momentum in MOMENTUM_SCHEDULES:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be a number in [0, 1) or one of {tuple(MOMENTUM_SCHEDULES)}, "
                         f"got {momentum!r}")


def momentum_buffer(state: dict, like: torch.Tensor) -> torch.Tensor:
    """The EMA buffer of one parameter, created at zero in float32 or wider (bf16 params keep fp32 state)."""
    if "momentum_buffer" not in state:
        dtype = torch.promote_types(like.dtype, torch.float32)
        state["momentum_buffer"] = torch.zeros_like(like, dtype=dtype, memory_format=torch.preserve_format)
    return state["momentum_buffer"]


def ema(buf: torch.Tensor, x: torch.Tensor, b, ok: torch.Tensor | None = None) -> torch.Tensor:
    """``buf ← b·buf + (1−b)·x`` in place (through ``ok``, see :func:`~specopt.steps.commit`); returns the new value.
    ``b`` may be a 0-d tensor (a scheduled β)."""
    w = (1.0 - b).to(buf.dtype) if isinstance(b, torch.Tensor) else 1.0 - b
    if ok is None:
        return buf.lerp_(x, w)
    return commit(buf, buf.lerp(x, w), ok)


class Estimator:
    """The protocol of an estimator. The engine calls, per step and per tensor record ``rec`` (a
    :class:`specopt.lmo.Record`: ``rec.g`` the gradient, ``rec.state`` the parameter's state, ``rec.group`` its
    param group, ``rec.p`` the weights):

    1. :meth:`begin` once with every record, after the gradients are checked and before any update;
    2. :meth:`direction` → ``rec.d``, the tensor the lmo sees;
    3. the lmo (``rec.s·rec.factor = lmo(rec.d)``), then :meth:`after_lmo` (estimators that act on the lmo's
       output set ``rec.s``/``rec.factor``/``rec.radius`` there).

    Class attributes: ``name`` (recorded in state dicts; by default the class's qualified name), ``produces``
    (``"direction"``: a gradient estimate, in the gradient's units, whose dual norm rules such as Gluon's read as the
    gradient's; ``"preconditioned"``: a direction in other units — ``m/(√v + ε)``, a sign — that only rules taking
    the lmo alone accept (uSCG, SCG); ``"averaged_lmo"`` when the rule receives a ball point instead of a unit lmo:
    rules list what they accept), ``needs_closure`` and ``traceable`` (False where the estimator reads tensors on
    the host: no single compiled graph), ``per_tensor`` (True where a tensor's direction depends on that tensor
    alone, so that the engine may run the step one lmo bucket at a time; the default False, also of a subclass that
    overrides
    :meth:`begin`, :meth:`direction` or :meth:`after_lmo` and says nothing, hands them every tensor of the step
    before the lmo, as an estimator with a sum over tensors needs), ``group_defaults`` (param-group keys the
    estimator adds, validated by :meth:`validate_group`; as a rule's).
    :meth:`probe_weights` names weights at which the engine re-evaluates the step's batch before the step; the
    gradients come back in ``ctx.probed``. State keys are the estimator's own.
    """

    name: str = "estimator"
    produces: str = "direction"
    needs_closure: bool = False
    traceable: bool = True
    per_tensor: bool = False
    group_defaults: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        settle_part(cls, ("begin", "direction", "after_lmo"))

    def validate_group(self, group: dict) -> None:
        """Raise ``ValueError`` for a param group this estimator cannot serve (called at construction)."""

    def init_state(self, rec) -> None:
        """Create the zero state that ``rec.state`` is missing, ahead of the step (torch.compile traces a step whose
        state exists). Called before every step: add only absent keys (``rec.state.setdefault``), never overwrite."""

    def probe_weights(self, state: dict) -> torch.Tensor | None:
        return None

    def missed(self, state: dict, p: torch.Tensor) -> None:
        """A tensor with state got no gradient in a completed step, so it did not move (``p``: its local weights):
        keep what refers to the previous iterate true of it. Eager steps only (a step traced by torch.compile does
        not call it)."""

    def begin(self, records: list, ctx) -> None:
        """Once per step with every record (geometry and AdamW ones), before any update."""

    def direction(self, rec, ctx) -> torch.Tensor:
        raise NotImplementedError

    def after_lmo(self, rec, ctx) -> None:
        """After ``rec.s``/``rec.factor`` hold ``lmo(rec.d)``."""

    def config(self) -> dict:
        """The estimator's name and settings (:func:`~specopt.steps.part_config`), recorded in state dicts."""
        return part_config(self)


class Momentum(Estimator):
    """EMA momentum, Nesterov where the group says ``nesterov=True``; β = 0 feeds the gradient itself."""

    name = "momentum"
    per_tensor = True

    def init_state(self, rec) -> None:
        if rec.group["momentum"] != 0:
            momentum_buffer(rec.state, rec.p)

    def direction(self, rec, ctx) -> torch.Tensor:
        if rec.group["momentum"] == 0:
            return rec.g
        b = beta(rec)
        buf = ema(momentum_buffer(rec.state, rec.g), rec.g, b, ctx.ok)
        if rec.group["nesterov"]:
            return rec.g.lerp(buf, b.to(rec.g.dtype) if isinstance(b, torch.Tensor) else b)
        return buf


class Storm(Estimator):
    """STORM: ``d_k = g_k + β(d_{k−1} − g(x_{k−1}; ξ_k))``; the first step of a tensor gives ``d = g``."""

    name = "storm"
    per_tensor = True
    needs_closure = True
    traceable = False

    def validate_group(self, group: dict) -> None:
        if group.get("nesterov"):
            raise ValueError("nesterov=True has no meaning with estimator='storm'; pass nesterov=False")

    def probe_weights(self, state: dict) -> torch.Tensor | None:
        return state.get("previous_param")

    def missed(self, state: dict, p: torch.Tensor) -> None:
        """A tensor that sat out the last step is at its previous iterate: the next probe leaves it where it is (its
        correction then spans the step it took last, the estimate's own staleness, as momentum's)."""
        if "previous_param" in state:
            state["previous_param"].copy_(p)

    def begin(self, records: list, ctx) -> None:
        """Note which tensors have a previous iterate (their ``g(x_{k−1}; ξ_k)`` is in ``ctx.probed``), then
        remember ``x_k`` for every tensor, AdamW ones too: the next probe moves the whole model back."""
        self._probed = {id(rec.param) for rec in records if "previous_param" in rec.state}
        for rec in records:
            if "previous_param" in rec.state:
                rec.state["previous_param"].copy_(rec.p)
            else:
                rec.state["previous_param"] = rec.p.detach().clone()

    def direction(self, rec, ctx) -> torch.Tensor:
        buf = rec.state.get("momentum_buffer")
        if buf is None or id(rec.param) not in self._probed:
            return momentum_buffer(rec.state, rec.g).copy_(rec.g)
        return buf.sub_(ctx.probed[id(rec.param)]).mul_(beta(rec)).add_(rec.g)


class AveragedLmo(Estimator):
    """ALMOND's averaged lmo: ``d_k = β d_{k−1} + (1−β)·ρ·lmo(g_k)``. The rule receives ``d_k``, a point of the
    ρ-ball, as ``rec.s`` with radius 1 (the ball's radius is inside it): uSCG then steps ``W ← (1−γλ)W + γ·d_k``,
    SCG ``W ← (1−γ)W + γ·d_k``. Rules that need ``‖d‖_*`` of a dual direction do not apply."""

    name = "almond"
    per_tensor = True
    produces = "averaged_lmo"

    def validate_group(self, group: dict) -> None:
        if group.get("nesterov"):
            raise ValueError("nesterov=True has no meaning for ALMOND's averaged lmo (it averages unit-norm "
                             "directions, not gradients); leave it out")

    def init_state(self, rec) -> None:
        momentum_buffer(rec.state, rec.p)

    def direction(self, rec, ctx) -> torch.Tensor:
        return rec.g

    def after_lmo(self, rec, ctx) -> None:
        point = rec.s.to(rec.g.dtype) * (rec.factor * rec.radius)
        rec.s = ema(momentum_buffer(rec.state, point), point, beta(rec), ctx.ok)
        rec.factor, rec.radius = 1.0, 1.0


ESTIMATORS = {"momentum": Momentum, "storm": Storm, "almond": AveragedLmo}


def get_estimator(spec) -> Estimator:
    """An :class:`Estimator` from an instance or a built-in name."""
    if isinstance(spec, Estimator):
        if type(spec).direction is Estimator.direction:
            raise ValueError(f"{type(spec).__name__} defines no direction(rec, ctx): an Estimator returns the "
                             "direction the lmo is taken of (see the guide 'Writing a new optimizer')")
        refuse_builtin_name(spec, ESTIMATORS, "estimator")
        return spec
    if isinstance(spec, str) and spec in ESTIMATORS:
        return ESTIMATORS[spec]()
    if isinstance(spec, type) and issubclass(spec, Estimator):
        raise ValueError(f"estimator={spec.__name__} is the class: pass an instance, {spec.__name__}()")
    raise ValueError(f"unknown estimator {spec!r}: pass an Estimator or one of {', '.join(ESTIMATORS)}")
