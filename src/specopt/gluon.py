"""Gluon's layer-wise radius (ALGORITHMS.md §3, seed 003) and its online (L0, L1) estimate.

Per layer i, under (L0, L1)-smoothness in the layer's norm, the step ``W_i ← W_i + t_i·lmo_i(d_i)`` with

    t_i = ‖d_i‖_* / (L0_i + L1_i·‖d_i‖_*)                       (deterministic, ``schedule="constant"``)
    t_i^k = t_i·(k+1)^{-3/4},  β_k = 1 − (k+1)^{-1/2}          (``schedule="stochastic"``)

``L0``/``L1`` are given per group, or ``"online"``: every step measures the local smoothness
``L̂_i = ‖g_i^k − g_i^{k−1}‖_* / t_i^{k−1}`` (``t`` is the length of the last step, ``‖W^k − W^{k−1}‖``) and
fits ``L̂ ≈ L0 + L1·‖d^{k−1}‖_*`` over the last :data:`HISTORY` measurements by asymmetric least squares
(residuals where the fit *under*-estimates L̂ weigh :data:`UNDER_WEIGHT`, the others 1 − that), with
L0, L1 ≥ 0. Before the first measurement the step is ``t = warmup_radius``. The online estimate goes beyond
the paper (it fits L0/L1 offline from a tuned run); it costs one extra lmo per layer per step.
"""

from __future__ import annotations

import numpy as np
import torch

from specopt._checks import check_number

SCHEDULES = ("constant", "stochastic")
HISTORY = 32
UNDER_WEIGHT = 0.9


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
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {group['schedule']!r}")
    check_number(group["warmup_radius"], "warmup_radius", low_open=True)


def layer_radii(items: list, lmo) -> None:
    """Set ``it.gluon_radius`` (t_i^k) for every item; ``lmo(items, need_dual)`` is the engine's batched lmo."""
    online = [it for it in items if it.group["L0"] == "online" and "gluon_prev_grad" in it.state]
    if online:
        probes = [_Probe(it) for it in online]
        lmo(probes, need_dual=True)
        for it, probe in zip(online, probes, strict=True):
            st = it.state
            st["gluon_x"] = (st.get("gluon_x", []) + [st["gluon_prev_dual"]])[-HISTORY:]
            st["gluon_y"] = (st.get("gluon_y", []) + [float(probe.dual) / st["gluon_prev_step"]])[-HISTORY:]
            st["gluon_L"] = fit_l0_l1(st["gluon_x"], st["gluon_y"])
    for it in items:
        g = it.group
        dual = float(it.dual)
        if g["L0"] == "online":
            if "gluon_L" not in it.state:
                it.gluon_radius = g["warmup_radius"]
                continue
            L0, L1 = it.state["gluon_L"]
        else:
            L0, L1 = g["L0"], g["L1"]
        denom = L0 + L1 * dual
        t = dual / denom if denom > 0 else g["warmup_radius"]
        if g["schedule"] == "stochastic":
            t *= it.state["step"] ** -0.75
        it.gluon_radius = t


def remember(items: list) -> None:
    """After the update: keep what the next online estimate needs."""
    for it in items:
        if it.group["L0"] != "online":
            continue
        it.state["gluon_prev_grad"] = it.g.to(torch.promote_types(it.g.dtype, torch.float32), copy=True)
        it.state["gluon_prev_dual"] = float(it.dual)
        it.state["gluon_prev_step"] = max(float(it.scale), 1e-30)


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
    # constrained: the best of "L1 = 0" and "L0 = 0"
    flat = (sy / sw, 0.0)
    through_zero = (0.0, max(sxy / sxx, 0.0)) if sxx > 0 else flat
    def cost(c):
        return float((w * (y - c[0] - c[1] * x) ** 2).sum())
    return min(flat, through_zero, key=cost)


class _Probe:
    """A stand-in item whose direction is the gradient difference, to reuse the batched lmo."""

    __slots__ = ("d", "norm", "s", "factor", "dual")

    def __init__(self, it):
        self.d = it.g.to(it.state["gluon_prev_grad"].dtype) - it.state["gluon_prev_grad"]
        self.norm, self.s, self.factor, self.dual = it.norm, None, 1.0, None
