"""The engine: one ``torch.optim.Optimizer`` that composes estimator → per-tensor geometry → step rule.

Each param group carries its hyperparameters: ``lr`` (γ), ``momentum`` (β or a schedule name), ``nesterov``,
``norm`` (a :class:`~specopt.norms.Norm`, a catalogue name, ``"auto"`` — Spectral for matrices, SpectralConv
for conv kernels, BiasRMS for vectors — or ``"adamw"`` for tensors updated by the built-in AdamW), ``radius``
(ρ: a number, or a Muon scale name, see :func:`radius_for`), ``weight_decay`` (λ) and optionally ``constraint``
(a :class:`~specopt.constraints.Constraint`: after every step the tensor is projected onto it, in the
geometry of a :class:`~specopt.preconditioners.Preconditioner` norm, Euclidean otherwise). The
optimizer-level ``estimator`` and ``rule`` pick the algorithm (:mod:`specopt.estimators`, :mod:`specopt.steps`).

A step: gather gradients (sparse/complex rejected; non-finite handled by ``nonfinite``) → estimator (STORM:
a second closure call at the previous iterate) → lmo, batched over tensors of one norm, shape, dtype and
device (one msign call per bucket) → step rule → projection onto the group's constraint.

torch.compile. ``torch.compile(opt.step)`` traces the same code. State is created eagerly before tracing (dynamo
runs :meth:`GeometryOptimizer._init_group` in Python, as for torch.optim), step counts are 0-d tensors (a Python
int would be a guard, and every step a recompilation), and the non-finite guard has no branch on tensor data:
the step forms a 0-d flag ``ok`` (all gradients finite), computes the update from gradients zeroed where ``ok``
fails, and writes every parameter and state tensor through ``torch.where(ok, new, old)``
(:func:`specopt.steps.commit`), so a non-finite step writes nothing, bit for bit. Eager steps keep the host-side
check (one sync) and its early return. Gluon, STORM and distributed runs compile with graph breaks: they read
tensors on the host anyway (Gluon's fit, STORM's second closure call, the cross-rank checks). Hyperparameters are
Python numbers, which dynamo specialises on: an LR scheduler that changes ``lr`` every step recompiles every step
until torch's recompile limit (8), after which the step runs eagerly (torch.optim's answer, a tensor ``lr``, is
not supported here yet). Each optimizer instance is a compilation of its own, under the same limit.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch.optim import Optimizer

from specopt import adamw, distributed, gluon
from specopt._checks import check_number
from specopt.constraints import Constraint, constraint_from_config
from specopt.estimators import (
    ESTIMATORS,
    almond_average,
    ema_direction,
    momentum_at,
    momentum_buffer,
    storm_direction,
    validate_momentum,
)
from specopt.layouts import MUON_SCALES, auto_norm, radius_for
from specopt.norms import Norm, get_norm, norm_from_config
from specopt.preconditioners import Preconditioner
from specopt.probe import gradients_at
from specopt.steps import NEEDS_DUAL, PER_TENSOR_RULES, RULES, apply_update, commit, shrink_and_scale

NONFINITE = ("raise", "skip")
ENGINE_DEFAULTS = {"momentum": 0.9, "nesterov": False, "norm": "auto", "radius": 1.0, "weight_decay": 0.0,
                   "betas": (0.9, 0.95), "eps": 1e-8}
"""What a group of the bare engine gets where neither it nor the optimizer's ``defaults`` say (``lr`` is required)."""


def _step_count(state: dict, p: torch.Tensor) -> None:
    """Make ``state["step"]`` a 0-d float32 tensor on ``p``'s device (0 when absent; a Python int from an older
    checkpoint keeps its value), as torch.optim keeps its counts. A tensor count is read without a host sync and
    is no guard under torch.compile; float32 counts are exact up to 2²⁴ steps."""
    count = state.get("step", 0)
    if not isinstance(count, torch.Tensor):
        state["step"] = torch.tensor(float(count), dtype=torch.float32, device=p.device)
    elif count.device != p.device or count.dtype != torch.float32 or count.ndim:
        state["step"] = count.to(device=p.device, dtype=torch.float32).reshape(())


@torch.compiler.assume_constant_result
def _has_int_step_counts(optimizer) -> bool:
    """Whether some state holds a Python-int step count (a checkpoint saved before the counts were tensors and
    loaded without :meth:`GeometryOptimizer.load_state_dict`, e.g. by :func:`specopt.checkpoint.load`).
    Under torch.compile this runs in Python: the trace must not read the state before dynamo's
    ``_init_group`` support has filled it in (a dict read earlier would be traced stale)."""
    return any(isinstance(state.get("step"), int) for state in optimizer.state.values())


def _beta(it) -> float | torch.Tensor:
    """β of this update: the group's number, or its schedule at the (0-d tensor) step count, on the device, so
    that neither reads the count on the host. The count was advanced before, hence ``step − 1`` (0-based)."""
    momentum = it.group["momentum"]
    return momentum_at(momentum, it.state["step"] - 1) if isinstance(momentum, str) else float(momentum)


class _Item:
    """One parameter during a step."""

    __slots__ = ("p", "g", "group", "state", "name", "norm", "radius", "d", "s", "factor", "dual", "shrink",
                 "scale", "gluon_radius", "g_previous", "param", "layout")

    def __init__(self, p, g, group, state, name, norm, radius, param=None, layout=None):
        self.p, self.g, self.group, self.state, self.name = p, g, group, state, name
        self.norm, self.radius = norm, radius
        self.param = p if param is None else param  # the nn.Parameter (a DTensor under FSDP2); p is its local view
        self.layout = layout or distributed.Layout(tuple(p.shape))
        self.d = self.s = self.dual = self.gluon_radius = self.g_previous = None
        self.shrink, self.scale, self.factor = 0.0, 0.0, 1.0


class GeometryOptimizer(Optimizer):
    """estimator → geometry → step rule, as a drop-in ``torch.optim.Optimizer``.

    Args:
        params: anything ``torch.optim`` accepts: tensors, ``named_parameters()``, or group dicts with
            per-group ``lr``, ``momentum``, ``nesterov``, ``norm``, ``radius``, ``weight_decay`` (and
            ``betas``/``eps`` for ``norm="adamw"`` groups; ``L0``/``L1``/``schedule`` for Gluon).
        estimator: ``"momentum"`` (EMA, optionally Nesterov), ``"almond"`` (averaged lmo) or ``"storm"``
            (variance-reduced; needs ``step(closure)`` and evaluates the closure twice per step).
        rule: a step rule of :mod:`specopt.steps`.
        clip_radius: ρ_c of the clipped rules.
        nonfinite: ``"raise"`` (default: ValueError naming the parameter) or ``"skip"`` (the whole step is
            skipped, nothing is written, ``skipped_steps`` counts it) when a gradient holds NaN or Inf. Under
            torch.compile the check is branch-free (see the module docstring): ``"skip"`` behaves the same, and
            ``"raise"``, which needs the flag on the host, becomes ``torch._assert_async``: a RuntimeError that does
            not name the parameter on CPU, a device-side assert on CUDA (which ends the process); nothing is
            written in either case. Run the step eagerly to learn which parameter it was.
        batch_lmo: stack tensors of one norm, shape and dtype into one msign call. ``None`` (default): on
            accelerators, where one batched call saves kernel launches; not on CPU, where per-matrix BLAS
            calls were measured faster than batched ones and stacking costs a copy.
        process_group: the ranks that share the lmo work on replicated (DDP) parameters (see
            :mod:`specopt.distributed`). ``"auto"`` (default): the default group when torch.distributed is
            initialised with more than one rank; ``None``: every rank computes every lmo itself (for independent
            per-rank optimizers). FSDP2 (DTensor) parameters always use their own mesh.
    """

    def __init__(self, params, defaults: dict | None = None, *, estimator: str = "momentum", rule: str = "uscg",
                 clip_radius: float | None = None, nonfinite: str = "raise", batch_lmo: bool | None = None,
                 process_group="auto"):
        if isinstance(params, torch.nn.Module):
            raise ValueError(f"{type(self).__name__} got a module ({type(params).__name__}); pass its parameters: "
                             "model.parameters(), or specopt.param_groups(model) for roles, norms and radii")
        if defaults is not None and not isinstance(defaults, dict):
            raise ValueError(f"defaults must be a dict of hyperparameters, got {defaults!r}")
        defaults = {**ENGINE_DEFAULTS, **(gluon.DEFAULTS if rule == "gluon" else {}), **(defaults or {})}
        if "lr" not in defaults:
            raise ValueError("GeometryOptimizer needs a learning rate: pass defaults={'lr': ...} (the other "
                             f"hyperparameters default to {ENGINE_DEFAULTS})")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; valid estimators: {', '.join(ESTIMATORS)}")
        if rule not in RULES:
            raise ValueError(f"unknown step rule {rule!r}; valid rules: {', '.join(RULES)}")
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        if rule.startswith("clipped"):
            check_number(clip_radius, "clip_radius", low_open=True)
        if estimator == "storm" and rule in ("almond",):
            raise ValueError("estimator='storm' does not combine with the almond rule (ALMOND averages lmo's)")
        if batch_lmo not in (None, True, False):
            raise ValueError(f"batch_lmo must be True, False or None (automatic), got {batch_lmo!r}")
        self.estimator, self.rule, self.clip_radius, self.nonfinite = estimator, rule, clip_radius, nonfinite
        self.batch_lmo, self.process_group = batch_lmo, process_group
        self._replicas_checked = False
        self._skipped = 0  # steps skipped by the eager check
        self._skipped_flags: torch.Tensor | None = None  # and by the compiled one: a 0-d count on the device
        super().__init__(params, defaults)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients (``nonfinite="skip"``), eager and compiled."""
        return self._skipped + (0 if self._skipped_flags is None else int(self._skipped_flags))

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped = int(value)
        if self._skipped_flags is not None:
            self._skipped_flags.zero_()

    # ----------------------------------------------------------------- construction and validation
    def add_param_group(self, param_group: dict) -> None:
        """As torch's, on a copy of ``param_group``: torch writes the defaults (and the listed params) into the dict
        it is given, so one list of group dicts, e.g. from :func:`specopt.param_groups`, passed to a second
        optimizer would hand it the first one's hyperparameters."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        super().add_param_group(dict(param_group))
        group = self.param_groups[-1]
        seen = set()
        for i, p in enumerate(group["params"]):
            if id(p) in seen:
                name = group["param_names"][i] if group.get("param_names") else f"a tensor of shape {tuple(p.shape)}"
                raise ValueError(f"{name} is listed twice in one param group; it would be stepped twice")
            seen.add(id(p))
        if isinstance(group["norm"], str) and group["norm"] not in ("auto", "adamw"):
            group["norm"] = get_norm(group["norm"])
        self._validate_group(group)

    def _validate_group(self, group: dict) -> None:
        check_number(group["lr"], "lr")
        validate_momentum(group["momentum"])
        check_number(group["weight_decay"], "weight_decay")
        norm = group["norm"]
        if not (isinstance(norm, Norm) or norm in ("auto", "adamw")):
            raise ValueError(f"norm must be a specopt Norm, a catalogue name, 'auto' or 'adamw', got {norm!r}")
        radius = group["radius"]
        if isinstance(radius, str):
            if radius not in MUON_SCALES:
                raise ValueError(f"radius must be a number > 0 or one of {MUON_SCALES}, got {radius!r}")
        else:
            check_number(radius, "radius", low_open=True)
        if norm == "adamw":
            adamw.validate(group)
        if self.estimator == "storm" and group.get("nesterov"):
            raise ValueError("nesterov=True has no meaning with estimator='storm'; pass nesterov=False")
        constraint = group.get("constraint")
        if isinstance(constraint, dict):
            constraint = group["constraint"] = constraint_from_config(constraint)
        if constraint is not None:
            if not isinstance(constraint, Constraint):
                raise ValueError(f"constraint must be a specopt.constraints.Constraint or None, got {constraint!r}")
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                constraint.check(p.shape, names[i] if names else "a parameter")
        if self.rule == "gluon":
            gluon.validate(group)
        for p in group["params"]:
            if p.is_complex():
                raise ValueError(f"complex parameter of shape {tuple(p.shape)} is not supported")
            if not p.is_floating_point():
                raise ValueError(f"parameter of shape {tuple(p.shape)} has dtype {p.dtype}; optimizers step floating "
                                 "tensors only (leave integer buffers out of the optimizer)")

    # ----------------------------------------------------------------- state_dict with portable norms
    def state_dict(self):
        """As torch's, with norms and constraints as plain configs, and what the state belongs to: the optimizer
        class, estimator and rule (:meth:`load_state_dict` refuses another's)."""
        sd = super().state_dict()
        sd["specopt"] = {"optimizer": type(self).__qualname__, "estimator": self.estimator, "rule": self.rule}
        for g in sd["param_groups"]:
            if isinstance(g["norm"], Norm):
                g["norm"] = g["norm"].config()
            if isinstance(g.get("constraint"), Constraint):
                g["constraint"] = g["constraint"].config()
        return sd

    def load_state_dict(self, state_dict) -> None:
        """As torch's, with norms and constraints rebuilt from their configs, and step counts saved as Python ints
        (before they became 0-d tensors) turned into tensors on their parameter's device. The state of another
        optimizer class, estimator or rule is refused before anything is loaded (state dicts saved before these were
        recorded load as before)."""
        saved = state_dict.get("specopt")
        mine = {"optimizer": type(self).__qualname__, "estimator": self.estimator, "rule": self.rule}
        if saved is not None and saved != mine:
            raise ValueError(f"this state belongs to {saved['optimizer']} (estimator {saved['estimator']!r}, rule "
                             f"{saved['rule']!r}) and cannot be loaded into {mine['optimizer']} (estimator "
                             f"{self.estimator!r}, rule {self.rule!r})")
        if any("norm" not in g for g in state_dict["param_groups"]):
            raise ValueError("this state has param groups without a 'norm': it is not a specopt optimizer's state "
                             "(a torch.optim optimizer's?)")
        groups = []
        for g in state_dict["param_groups"]:
            g = dict(g)
            if isinstance(g["norm"], dict):
                g["norm"] = norm_from_config(g["norm"])
            if isinstance(g.get("constraint"), dict):
                g["constraint"] = constraint_from_config(g["constraint"])
            groups.append(g)
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "specopt"} | {"param_groups": groups})
        for param, state in self.state.items():
            _step_count(state, distributed.local(param))

    # ----------------------------------------------------------------- state
    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """Create the state one step of ``p`` (the local tensor) needs and is missing: the step count (a 0-d
        float32 tensor on ``p``'s device), the momentum buffer of the EMA and ALMOND estimators, AdamW's moments.
        All zeros, so creating them ahead of the step is the same as creating them in it. STORM's buffer and
        Gluon's measurements stay with their modules (created on first use)."""
        _step_count(state, p)
        if group["norm"] == "adamw":
            adamw.init_state(p, state)
        elif self.estimator == "almond" or (self.estimator == "momentum" and group["momentum"] != 0):
            momentum_buffer(state, p)

    def _init_group(self) -> None:
        """Create the missing state of every parameter that has a gradient. torch.compile's dynamo runs a method
        of this name in Python instead of tracing it (its support for torch.optim's optimizers) and then guards on
        the state it made, so the compiled step finds its state in place from the first call on. One call for
        all groups: the trace must read no state dict before this call has filled it in."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    p = distributed.local(param)
                    self._init_state(p, self.state[param], group)
                    if self._skipped_flags is None:
                        self._skipped_flags = torch.zeros((), dtype=torch.int64, device=p.device)

    # ----------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure=None):
        """One update. ``closure`` re-evaluates the model and returns the loss (as in torch.optim)."""
        if self.estimator == "storm" and closure is None:
            raise ValueError("estimator='storm' needs step(closure): it re-evaluates the gradient at the previous "
                             "iterate on the same batch (the closure must be deterministic for a given batch)")
        loss, probed = None, {}
        if closure is not None:
            weights = self._probe_weights()
            if weights:  # before the step's own call, so that the closure's last evaluation is at these weights
                probed = gradients_at([p for g in self.param_groups for p in g["params"]], weights, closure)
            with torch.enable_grad():
                loss = closure()
        traced = torch.compiler.is_compiling() and self.rule != "gluon" and self.estimator != "storm"
        if traced:  # state first: the trace must not read a state dict before _init_group has filled it in
            if _has_int_step_counts(self):  # a checkpoint from before the counts were tensors (rare)
                for param, state in self.state.items():
                    _step_count(state, distributed.local(param))
                torch._dynamo.graph_break()  # dynamo's _init_group support reads the counts as tensors
            self._init_group()
        items, aux = self._gather()
        self._check_replicas(items + aux)
        if traced and not self._distributed(items + aux) and items + aux:
            self._traced_step(items, aux, closure)
            return loss
        if not self._all_finite(items + aux):
            self._skipped += 1
            return loss
        if self.estimator == "storm" and not self._storm_probe(items + aux, probed):
            self._skipped += 1
            return loss
        for it in items + aux:
            self._init_state(it.p, it.state, it.group)
        if items:
            self._geometry_step(items, aux, closure, probed=probed)
        adamw.step(aux)
        self._project(items + aux)
        return loss

    def _probe_weights(self) -> dict:
        """``param → weights`` at which this step re-evaluates its batch: STORM's previous iterate and Gluon's
        anchor. Both are x_{k−1} (the weights before the last update), so one evaluation serves both."""
        weights = {}
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param)
                if not state:
                    continue
                w = state.get("previous_param") if self.estimator == "storm" else None
                if w is None and self.rule == "gluon":
                    w = state.get("gluon_anchor_w")
                if w is not None:
                    weights[param] = w
        return weights

    def _traced_step(self, items: list[_Item], aux: list[_Item], closure) -> None:
        """The step without a branch on tensor data (torch.compile): ``ok`` = every gradient finite, a 0-d flag on
        the device; the update is computed from the gradients zeroed where ``ok`` fails (so that no NaN reaches
        an SVD or a projection) and every write goes through :func:`~specopt.steps.commit`."""
        everything = items + aux
        device = self._skipped_flags.device
        ok = torch.stack([torch.isfinite(it.g).all().to(device) for it in everything]).all()
        if self.nonfinite == "raise":
            torch._assert_async(ok, "non-finite gradient (NaN or Inf); nothing was updated (under torch.compile "
                                    "the check does not name the parameter: run the step eagerly to find it, or "
                                    "pass nonfinite='skip' to skip such steps)")
        else:
            self._skipped_flags.add_(ok.logical_not().to(torch.int64))
        for it in everything:
            it.g = torch.where(ok.to(it.g.device), it.g, torch.zeros((), dtype=it.g.dtype, device=it.g.device))
        if items:
            self._geometry_step(items, aux, closure, ok)
        adamw.step(aux, ok)
        self._project(everything, ok)

    def _storm_probe(self, items: list[_Item], probed: dict) -> bool:
        """Set ``it.g_previous = g(x_{k−1}; ξ_k)`` from the probe the step ran before its closure call; remember
        ``x_k`` for the next step. False if the probe's gradients are not finite (and ``nonfinite="skip"``)."""
        probe = [it for it in items if "previous_param" in it.state]
        if probe:
            for it in probe:
                it.g_previous = probed[id(it.param)]
            if not self._all_finite([_Item(it.p, it.g_previous, it.group, it.state, it.name, None, None,
                                           it.param, it.layout) for it in probe]):
                return False
        for it in items:
            if "previous_param" in it.state:
                it.state["previous_param"].copy_(it.p)
            else:
                it.state["previous_param"] = it.p.detach().clone()
        return True

    def _project(self, items: list[_Item], ok: torch.Tensor | None = None) -> None:
        """Project every tensor of a constrained group onto its set, in its preconditioner's geometry (written
        where ``ok`` holds, see :meth:`_traced_step`)."""
        for it in items:
            constraint = it.group.get("constraint")
            if constraint is None:
                continue
            kappa = it.norm.projection_kappa() if isinstance(it.norm, Preconditioner) else None
            if it.layout.sharded:  # the set is defined on the whole tensor: project it whole, keep our rows
                whole = constraint.project(it.param.full_tensor(), gamma=it.group["lr"], kappa=kappa)
                start = sum(it.layout.rows[: torch.distributed.get_rank(it.layout.group)])
                it.p.copy_(whole[start:start + it.p.shape[0]])
            else:
                commit(it.p, constraint.project(it.p, gamma=it.group["lr"], kappa=kappa), ok)

    def _check_replicas(self, items: list[_Item]) -> None:
        """Once: the replicated parameters must be equal on every rank for the split lmo to be right."""
        group = distributed.replica_group(self.process_group)
        if self._replicas_checked or group is None:
            return
        distributed.check_replicated([it.p for it in items if not it.layout.sharded], group)
        self._replicas_checked = True

    def _gather(self) -> tuple[list[_Item], list[_Item]]:
        items, aux = [], []
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for pi, param in enumerate(group["params"]):
                if param.grad is None or param.numel() == 0:  # a zero-size tensor has nothing to update
                    continue
                name = names[pi] if names else f"param_groups[{gi}]['params'][{pi}] of shape {tuple(param.shape)}"
                layout = distributed.layout_of(param, name)
                p, g = distributed.local(param), distributed.local(param.grad)
                if g.is_sparse or g.layout != torch.strided:
                    raise ValueError(f"sparse gradient for {name}: specopt needs dense gradients")
                if g.is_complex():
                    raise ValueError(f"complex gradient for {name} is not supported")
                if g.dtype in (torch.bfloat16, torch.float16):
                    g = g.float()  # low-precision params: estimator, state and lmo in float32
                state = self.state[param]
                if group["norm"] == "adamw":
                    aux.append(_Item(p, g, group, state, name, None, None, param, layout))
                    continue
                shape = layout.shape
                norm = auto_norm(shape, name) if group["norm"] == "auto" else group["norm"]
                items.append(_Item(p, g, group, state, name, norm, radius_for(group["radius"], shape, norm), param,
                                   layout))
        return items, aux

    def _all_finite(self, items: list[_Item]) -> bool:
        """One reduction per gradient and one sync: a sum is finite when every entry is (an overflowing sum
        of finite entries is re-checked entry by entry, so it is never mistaken for NaN/Inf)."""
        if not items:
            return True
        sums = torch.stack([it.g.sum(dtype=torch.float32).to("cpu", non_blocking=True) for it in items])
        bad = []
        if not bool(torch.isfinite(sums).all()):
            bad = [it for it, s in zip(items, sums.tolist(), strict=True)
                   if not math.isfinite(s) and not bool(torch.isfinite(it.g).all())]
        sharded = [it for it in items if it.layout.sharded]
        # FSDP2: each rank sees only its rows, so every rank must learn that some rank saw a NaN
        if sharded and not distributed.any_rank(bool(bad), sharded[0].layout.group, sharded[0].g.device):
            return True
        if not sharded and not bad:
            return True
        if self.nonfinite == "skip":
            return False
        where = bad[0].name if bad else "a gradient shard of another rank"
        raise ValueError(f"non-finite gradient (NaN or Inf) in {where}; nothing was updated "
                         "(pass nonfinite='skip' to skip such steps)")

    def _geometry_step(self, items: list[_Item], aux: list[_Item], closure, ok: torch.Tensor | None = None,
                       probed: dict | None = None) -> None:
        steps = [it.state["step"] for it in items]
        if ok is None:
            torch._foreach_add_(steps, 1.0)
        else:
            for count in steps:
                commit(count, count + 1, ok.to(count.device))
        if self.rule in PER_TENSOR_RULES and not self._distributed(items):
            # No rule-wide sum: update one lmo bucket at a time, so that only one bucket's directions and lmo
            # outputs are alive at once. Fresh memory for all of them would be page-faulted in every step
            # (measured: ~0.9 s of a 2.4 s GPT-2-small Muon step on CPU); reused memory is not.
            for bucket in self._buckets(items).values():
                self._update(bucket, aux, closure, ok, probed)
                for it in bucket:
                    it.d = it.s = None
            return
        self._update(items, aux, closure, ok, probed)

    def _update(self, items: list[_Item], aux: list[_Item], closure, ok: torch.Tensor | None = None,
                probed: dict | None = None) -> None:
        """estimator → lmo → rule → ``W ← (1 − shrink)·W + scale·s`` for ``items`` (writes through ``ok``, see
        :meth:`_traced_step`)."""
        if self.estimator == "almond":
            for it in items:
                it.d = it.g
            self._lmo(items, need_dual=False)
            for it in items:
                beta = _beta(it)
                it.s, it.factor = almond_average(it.state, it.s.to(it.g.dtype) * (it.factor * it.radius), beta,
                                                 ok), 1.0
        else:
            for it in items:
                beta = _beta(it)
                if self.estimator == "storm":
                    it.d = storm_direction(it.state, it.g, it.g_previous, beta)
                elif it.group["momentum"] == 0:
                    it.d = it.g
                else:
                    it.d = ema_direction(it.state, it.g, beta, it.group["nesterov"], ok)
            self._lmo(items, need_dual=self.rule in NEEDS_DUAL)
        if self.rule == "gluon":
            gluon.measure(items, aux, self._lmo, probed if closure is not None else None)
            gluon.layer_radii(items)
        shrink_and_scale(self.rule, items, self.clip_radius,
                         lambda values: distributed.sum_over_shards(values, [it.layout for it in items]))
        if self.rule == "gluon":
            gluon.anchor(items, aux, closure)
        for it in items:
            apply_update(it.p, it.s, it.shrink, it.scale * it.factor, ok)

    def _distributed(self, items: list[_Item]) -> bool:
        return distributed.replica_group(self.process_group) is not None or any(it.layout.sharded for it in items)

    def _buckets(self, items: list[_Item]) -> dict:
        """Items whose lmo is one call: same norm, shape, dtype, device and layout (a bucket per item where
        ``batch_lmo`` is off, unless the bucket is shared out across ranks)."""
        split_all = distributed.replica_group(self.process_group) is not None
        buckets: dict = defaultdict(list)
        for i, it in enumerate(items):
            batch = split_all or it.layout.sharded or (
                self.batch_lmo if self.batch_lmo is not None else it.g.device.type != "cpu")
            buckets[(it.norm, it.layout.shape, it.g.dtype, it.g.device, it.layout.sharded,
                     None if batch else i)].append(it)
        return buckets

    def _lmo(self, items: list, need_dual: bool) -> None:
        """``it.s·it.factor = norm.lmo(it.d)`` (and ``it.dual = −⟨d, lmo(d)⟩``): one call per bucket of tensors
        with the same norm, shape, dtype and device, stacked straight into the norm's compute dtype."""
        replicas = distributed.replica_group(self.process_group)
        buckets = self._buckets(items)
        if replicas is not None or any(key[4] for key in buckets):  # smaller collectives: finer overlap
            buckets = distributed.split_buckets(buckets, replicas)
        sharded = {key: distributed.ShardedLmo(key[0], [it.d for it in bucket], bucket[0].layout)
                   for key, bucket in buckets.items() if key[4]}
        for job in sharded.values():  # every bucket's shards travel to their owners before any matmul
            job.send()
        pending = []
        for key, bucket in buckets.items():
            norm, shape, _, device = key[:4]
            if key in sharded:
                pending.append((bucket, norm.lmo_factor(shape), sharded[key].compute()))
                continue
            if replicas is not None:
                pending.append((bucket, norm.lmo_factor(shape),
                                distributed.lmo_replicated(norm, [it.d for it in bucket], replicas)))
                continue
            first = bucket[0].d
            work = norm.work_dtype(first)
            if len(bucket) == 1:
                private = work != first.dtype
                D = first.to(work).unsqueeze(0)
            else:
                private = True
                D = torch.empty((len(bucket),) + shape, dtype=work, device=device)
                for i, it in enumerate(bucket):
                    D[i].copy_(it.d)
            S, factor = norm.lmo_factored(D, batch_dims=1, private=private)
            for i, it in enumerate(bucket):
                it.s, it.factor = S[i], factor
        for bucket, factor, job in pending:
            for it, s_i in zip(bucket, job.wait(), strict=True):
                it.s, it.factor = s_i, factor
        if need_dual:
            # float64 accumulation: a sum over shards then equals the whole-tensor sum to ~1e-16
            duals = [-it.factor * torch.sum(it.d * it.s, dtype=torch.float64) for it in items]
            for it, dual in zip(items, distributed.sum_over_shards(duals, [it.layout for it in items]), strict=True):
                it.dual = dual
