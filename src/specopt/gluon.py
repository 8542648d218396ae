"""Gluon's layer-wise radius (Riabinin et al. 2025, *Gluon: Making Muon & Scion Great Again!*) and its online (L0,
L1) estimate.

Per layer i, under (L0, L1)-smoothness in the layer's norm, the step ``W_i ← W_i + t_i·lmo_i(d_i)`` with

    t_i = ‖d_i‖_* / (L0_i + L1_i·‖d_i‖_*)                       (deterministic, ``schedule="constant"``)
    t_i^k = t_i·(k+1)^{-3/4},  β_k = 1 − (k+1)^{-1/2}          (``schedule="stochastic"``)
    t_i^k = t_i·(k+1)^{-2/3},  a_k = (k+1)^{-2/3}               (``schedule="mvr"``, on STORM: ``GluonMVR``)

``L0``/``L1`` are given per group, or ``"online"``: the optimizer measures the local smoothness of each layer
along its own trajectory,

    L̂_i = ‖g_i(W^k) − g_i(W^{k−1})‖_* / max_j t_j^{k−1}

(``t_j^{k−1}`` the length of layer j's last step in its own norm), and fits ``L̂ ≈ L0 + L1·‖d_i‖_*``
(``d_i`` the estimator's direction, the momentum)
over the last :data:`HISTORY` measurements by asymmetric least squares: residuals where the fit
*under*-estimates L̂ weigh :data:`UNDER_WEIGHT`, the others 1 − that; L0, L1 ≥ 0. Before the first
measurement the step is ``t = warmup_radius``, and the online radius grows by at most a factor
:data:`GROWTH` per step (a safeguard while the fit rests on few measurements).

Why the joint step ``max_j t_j`` and not the layer's own ``t_i``: every layer moves at once, so layer i's
gradient changes also because the others moved. That is smoothness in the network's norm
``‖W‖ = max_j ‖W_j‖_(j)`` (the max over layers of the layer norms, as in Scion's analysis):
``‖∇_i f(X) − ∇_i f(Y)‖_* ≤ L_i‖X − Y‖``. Dividing by ``t_i`` alone charges a layer with small steps for its
neighbours' large ones; its L̂ grows, its step shrinks further, and the layer stops learning (measured on the
char-GPT: hidden radii fell from 1.5e-2 to 5e-5 while the embedding's grew to 14, validation loss 2.305;
with the joint step the radii stay within 0.02–0.03 and the loss is 1.934, see EXPERIMENTS.md).

Both gradients of a measurement should see the same data: with ``step(closure)`` the optimizer re-evaluates the
closure at the previous weights every ``probe_every`` steps (one extra forward/backward each time). Without a
closure (HF Trainer, plain loops) it falls back to consecutive minibatch gradients, with a warning: their
difference includes two batches' noise, which divided by the step reads as extra smoothness (``L̂ ≈ noise/t``,
so every radius would shrink geometrically and training would stop). The fallback drops a measurement whose
gradient difference exceeds ``‖d‖_*`` (noise-dominated) and keeps the radii the others give; they come out smaller
than with a closure (char-GPT, 600 steps, 3 seeds: validation 2.18 against 1.93), and on the MNIST CNN training nearly
stops (200 steps: 2.08 against 0.13). The
smoothness that sets a stable step is the one of a batch's loss; no comparison of gradients of two different
batches measures it (the noise-floor regression ``‖Δg‖ ≈ c + L·t`` diverged, the secant of averaged gradients,
which measures the expected loss's smoothness, ended at 3.26: EXPERIMENTS.md). A zero step (lr 0) is not anchored.
The online estimate goes beyond the paper, which fits L0/L1 offline from a tuned run.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from specopt._checks import check_number
from specopt.steps import StepRule, weight_decay

SCHEDULES = {"constant": 0.0, "stochastic": 0.75, "mvr": 2.0 / 3.0}
"""Schedule name → p of ``t_i^k = t_i·(k+1)^{-p}``: constant, the momentum analysis's, the MVR (STORM) analysis's."""
DEFAULTS = {"L0": "online", "L1": "online", "schedule": "constant", "warmup_radius": 1e-3, "probe_every": 1}
"""Gluon's group keys, for an engine built with ``rule="gluon"`` (:class:`specopt.Gluon` sets them itself)."""
NONE, WEIGHTS, GRADIENT = 0, 1, 2
"""What ``gluon_anchor`` holds: nothing, the weights before the last update, or the last gradient. Ints, not names:
torch's ``Optimizer.load_state_dict`` turns a string in the state into the text of a generator."""


class GluonRule(StepRule):
    """Gluon's step ``W ← (1−γλ)W + γ·t_l·lmo(d_l)``: each step measures the layers' smoothness (online L0/L1),
    sets their radii ``t_l`` and anchors the next measurement; its state keys start with ``gluon_`` and all exist
    from the first step (:func:`init_state`)."""

    name = "gluon"
    needs_dual = True
    traceable = False
    group_defaults = DEFAULTS

    any_online = False
    """Whether a param group measures online (set as groups are validated): only then do the AdamW tensors, whose
    weights the probe moves back, need an anchor."""

    def validate_group(self, group: dict) -> None:
        validate(group)
        self.any_online = self.any_online or group["L0"] == "online"

    def init_state(self, rec) -> None:
        init_state(rec, self.any_online)

    def probe_weights(self, state: dict):
        if "gluon_anchor_w" in state:  # a state saved before the fixed layout, first step after its load
            return state["gluon_anchor_w"]
        return state["gluon_anchor"] if state.get("gluon_anchor_kind") == WEIGHTS else None

    def missed(self, state: dict, p) -> None:
        """A tensor that sat out the last step takes no measurement on the next: its anchor (weights or gradient)
        is from the step before, and the probe leaves it where it is."""
        state.pop("gluon_anchor_w", None)
        state.pop("gluon_anchor_g", None)
        if state.get("gluon_anchor_kind"):
            state["gluon_anchor_kind"] = NONE
        if "gluon_anchor_step" in state:
            state["gluon_anchor_step"] = 0.0

    def scale(self, records, ctx) -> None:
        measure(records, ctx.aux, ctx.lmo, ctx.probed if ctx.closure else None)
        radii = layer_radii(records)
        for rec, t in zip(records, radii, strict=True):
            rec.shrink = weight_decay(rec)
            rec.scale = rec.group["lr"] * t
        anchor(records, ctx.aux, ctx.closure)


HISTORY = 32
UNDER_WEIGHT = 0.9
"""The descent lemma needs an upper bound on the smoothness, so the fit leans to an upper envelope of the
measurements (0.75 also met the char-GPT target, 0.5 did not: EXPERIMENTS.md)."""
GROWTH = 2.0
def validate(group: dict) -> None:
    online = [group[k] == "online" for k in ("L0", "L1")]
    if any(online) and not all(online):
        raise ValueError("L0 and L1 must both be 'online' or both be numbers")
    if not any(online):
        check_number(group["L0"], "L0")
        check_number(group["L1"], "L1")
        if group["L0"] == 0 and group["L1"] == 0:
            raise ValueError("L0 and L1 cannot both be 0 (the radius t = ‖d‖_*/(L0 + L1‖d‖_*) is undefined)")
    if group["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {tuple(SCHEDULES)}, got {group['schedule']!r}")
    check_number(group["warmup_radius"], "warmup_radius", low_open=True)
    p = group["probe_every"]
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"probe_every must be a positive int, got {p!r}")


def _online(it) -> bool:
    return it.group["L0"] == "online"


def init_state(rec, any_online: bool) -> None:
    """Every key of an online tensor's state, from its first step on: the measurements ``gluon_x``/``gluon_y``
    (lists of :data:`HISTORY` floats, oldest first, whose last ``gluon_n`` are measured: a fixed length, as torch's
    full-state-dict loading matches list entries one by one), the fit ``gluon_L`` (valid once ``gluon_n`` > 0), the
    radius ``gluon_t`` (None before the first fit), and the anchor of the next measurement, ``gluon_anchor`` (a
    float32-or-wider buffer of the tensor's shape holding the weights before the last update, with a closure, or
    the last gradient, without one), its ``gluon_anchor_kind`` (:data:`WEIGHTS`, :data:`GRADIENT` or 0: none) and
    the joint step it was taken at, ``gluon_anchor_step``. AdamW tensors (``norm="adamw"`` groups, whatever their
    own L0/L1) keep only an anchor, in their dtype, where some group is online (``any_online``): their weights move
    with the probe (a copy of them, also where no probe uses it: the keys cannot wait for the first closure). A
    fixed set of keys, made at the first step, is what
    ``torch.distributed.checkpoint``'s flow needs: it loads into a new optimizer's state after one zero step, and
    only the keys that state has. A state saved before this layout (separate ``gluon_anchor_w``/``gluon_anchor_g``,
    no ``gluon_L`` before the first fit) is brought to it here."""
    st = rec.state
    earlier = {kind: st.pop(key) for kind, key in ((WEIGHTS, "gluon_anchor_w"), (GRADIENT, "gluon_anchor_g"))
               if key in st}
    st.pop("gluon_measurements", None)
    adamw = rec.group["norm"] == "adamw"
    if not (_online(rec) or adamw and any_online):
        return
    if "gluon_anchor" not in st:
        dtype = rec.p.dtype if adamw else torch.promote_types(rec.p.dtype, torch.float32)  # weights or gradients
        st["gluon_anchor"] = torch.zeros_like(rec.p, dtype=dtype)
        st["gluon_anchor_kind"] = NONE
        for kind, anchor_value in earlier.items():
            st["gluon_anchor"].copy_(anchor_value)
            st["gluon_anchor_kind"] = kind
    if adamw:
        return
    st.setdefault("gluon_anchor_step", 0.0)
    if "gluon_n" not in st:  # also a state of the earlier layout: its lists hold the measurements only
        measured = st.get("gluon_x", [])
        st["gluon_n"] = len(measured)
        for key in ("gluon_x", "gluon_y"):
            st[key] = [0.0] * (HISTORY - len(measured)) + list(st.get(key, []))
    for key, empty in (("gluon_L", (0.0, 0.0)), ("gluon_t", None)):
        st.setdefault(key, empty)


def measure(items: list, aux: list, lmo, probed: dict | None) -> None:
    """Add one smoothness measurement to every online item anchored at the previous step, and refit L0, L1.

    ``x`` of a measurement is ``‖d_i‖_*`` (the dual norm the radius formula uses), ``y`` is L̂_i: with a closure
    from ``probed``, the gradients at the anchored weights on this step's batch (the engine evaluates them before
    its own closure call, :mod:`specopt.probe`); without one (``probed`` None) from the previous step's gradient,
    of another batch (see the module docstring)."""
    online = [it for it in items if _online(it) and it.state["gluon_anchor_kind"]]
    if not online:
        return
    for it in aux:  # their anchored weights served this step's probe
        it.state["gluon_anchor_kind"] = NONE
    kinds = {it.state["gluon_anchor_kind"] for it in online}
    same_batch = probed is not None and kinds == {WEIGHTS} and all(id(it.param) in probed for it in online)
    if same_batch:
        previous = [probed[id(it.param)] for it in online]
    elif kinds == {GRADIENT}:
        previous = [it.state["gluon_anchor"] for it in online]
    else:  # the anchor was kept for the other kind of measurement (a closure passed on some steps only)
        previous = None
    if previous is not None:
        probes = [it.derived(it.g - prev.to(it.g.dtype)) for it, prev in zip(online, previous, strict=True)]
        lmo(probes, need_dual=True)
        joint_step = max(it.state["gluon_anchor_step"] for it in online)  # ‖W^k − W^{k−1}‖ in the max-norm
        for it, probe in zip(online, probes, strict=True):
            st = it.state
            if not same_batch and float(probe.dual) > float(it.dual):
                continue  # two batches' gradients differ by more than the averaged gradient: noise, not smoothness
            st["gluon_x"] = st["gluon_x"][1:] + [float(it.dual)]
            st["gluon_y"] = st["gluon_y"][1:] + [float(probe.dual) / joint_step]
            st["gluon_n"] = n = min(st["gluon_n"] + 1, HISTORY)
            st["gluon_L"] = fit_l0_l1(st["gluon_x"][-n:], st["gluon_y"][-n:])
    for it in online:
        it.state["gluon_anchor_kind"], it.state["gluon_anchor_step"] = NONE, 0.0


def layer_radii(items: list) -> list[float]:
    """t_i^k of every item from its dual norm and its (given or fitted) L0, L1."""
    radii = []
    for it in items:
        g = it.group
        dual = float(it.dual)
        if _online(it):
            if not it.state["gluon_n"]:
                radii.append(g["warmup_radius"])
                continue
            L0, L1 = it.state["gluon_L"]
        else:
            L0, L1 = g["L0"], g["L1"]
        denom = L0 + L1 * dual
        if _online(it):  # an estimate from a few noisy measurements: the radius grows by a bounded factor per step
            t = dual / denom if denom > 0 else float("inf")  # no smoothness measured yet: grow
            previous = it.state["gluon_t"]
            t = min(t, GROWTH * (g["warmup_radius"] if previous is None else previous))
            it.state["gluon_t"] = t
        else:
            t = dual / denom if denom > 0 else g["warmup_radius"]
        if SCHEDULES[g["schedule"]]:
            t *= float(it.state["step"]) ** -SCHEDULES[g["schedule"]]
        radii.append(t)
    return radii


def anchor(items: list, aux: list, closure: bool) -> None:
    """After the radii, on steps that precede a probe: keep what the next measurement needs (the weights before
    this update with a closure, this gradient without one) and the joint step. Nothing after a zero step (lr 0,
    as at the start of a warm-up): there is no change to measure, and dividing by a zero step would make L̂ infinite.
    """
    online = [it for it in items if _online(it) and (int(it.state["step"]) + 1) % it.group["probe_every"] == 0]
    if not online:
        return
    joint = max(float(it.scale) for it in online)
    if not joint > 0:
        return
    if not closure:
        warnings.warn("Gluon's online L0/L1 without step(closure): the smoothness is measured from consecutive "
                      "minibatch gradients, whose difference includes the two batches' noise, so the steps come out "
                      "smaller than with a closure, and on some models training nearly stops (char-GPT, 600 steps: "
                      "validation 2.18 against 1.93; the MNIST CNN, 200 steps: 2.08 against 0.13). Pass "
                      "step(closure), or fixed L0/L1.", UserWarning, stacklevel=_callers_level())
    for it in online:
        it.state["gluon_anchor_step"] = joint
        it.state["gluon_anchor"].copy_(it.p if closure else it.g)
        it.state["gluon_anchor_kind"] = WEIGHTS if closure else GRADIENT
    if closure:
        for it in aux:
            it.state["gluon_anchor"].copy_(it.p)
            it.state["gluon_anchor_kind"] = WEIGHTS


def _callers_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside specopt and torch (the user's step)."""
    inside = (str(Path(__file__).parent), str(Path(torch.__file__).parent))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def fit_l0_l1(x: list[float], y: list[float]) -> tuple[float, float]:
    """Asymmetric least squares ``y ≈ L0 + L1·x`` with L0, L1 ≥ 0 (iteratively reweighted)."""
    x_arr, y_arr = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(x_arr)
    L0, L1 = float(y_arr.mean()), 0.0
    for _ in range(20):
        L0, L1 = _weighted_nonneg_line(x_arr, y_arr, w)
        under = y_arr > L0 + L1 * x_arr
        w_new = np.where(under, UNDER_WEIGHT, 1 - UNDER_WEIGHT)
        if np.array_equal(w_new, w):
            break
        w = w_new
    return float(L0), float(L1)


def _weighted_nonneg_line(x, y, w) -> tuple[float, float]:
    sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
    sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
    det = sw * sxx - sx * sx
    if det > 1e-12 * max(sw * sxx, 1e-300):
        L1 = (sw * sxy - sx * sy) / det
        L0 = (sy - L1 * sx) / sw
        if L0 >= 0 and L1 >= 0:
            return float(L0), float(L1)
    flat = (float(sy / sw), 0.0)
    through_zero = (0.0, float(max(sxy / sxx, 0.0))) if sxx > 0 else flat

    def cost(c):
        return float((w * (y - c[0] - c[1] * x) ** 2).sum())

    return min(flat, through_zero, key=cost)
