"""A parameter-free radius rule: DoG ("distance over gradients", Ivgi, Hinder & Carmon 2023, *DoG is SGD's Best
Friend: A Parameter-Free Dynamic Step Size Schedule*, arXiv:2302.12022), layer by layer (their L-DoG), on the
steepest-descent step of each tensor's norm.

Per tensor l, in its norm ``‖·‖_l`` (the lmo's) with dual ``‖·‖_{l*}``:

    r̄_k = max(r_ε, max_{i≤k} ‖W_i − W_0‖_l),   r_ε = r_rel·(1 + ‖W_0‖_l)
    G_k = Σ_{i≤k} ‖d_i‖_{l*}²
    W_{k+1} = (1 − cλ)·W_k + c·(r̄_k/√G_k)·‖d_k‖_{l*}·lmo_l(d_k)

``d`` is the estimator's direction: the gradient at the default ``momentum=0``, as DoG is published. The step
``‖d‖_*·lmo(d)`` is steepest descent in the norm (``−d`` itself in the Euclidean norm, where this is L-DoG exactly;
``−‖d‖_nuc·msign(d)``, scaled, in the spectral one), so the step has length ``c·r̄_k·‖d_k‖_*/√G_k ≤ c·r̄_k`` in the
tensor's norm: each tensor's trust radius is the distance its own trajectory has explored. It grows as the tensor
moves away from its initialisation, by at most a factor ``1 + c`` a step (``‖W_{k+1} − W_0‖ ≤ ‖W_k − W_0‖ + c·r̄_k``),
and shrinks relative to it as gradients accumulate. There is no step size: the update is invariant to the scale of
the loss and of the norm (the radius ρ is not used), and ``c`` (the group's ``lr``) is a multiplier, 1 as published,
through which LR schedules act. ``λ`` is a decay per step (times ``c``), decoupled from the step.

Where the rule comes from. The family's issue asks for the distance-aware Muon of Demidovich et al. 2026,
*Distance-Aware Muon: Adaptive Step Scaling for Normalized Optimization* (arXiv:2605.18999), whose Distance-Adaptive
Muon sets its trust-region radius from the radius the trajectory has explored, "or an equivalent trajectory-based
rule". That paper's exact update was not available to us; this module implements DoG's, whose form is published, in
the lmo's geometry, and makes no claim to be the paper's algorithm.

Which norms, which momentum. The radius grows while consecutive steps agree, and the gradient's own noise, which a
random walk does not turn into distance, is what holds it back. Filter the noise out with momentum, or take a norm
whose lmo moves every coordinate by the full step (the ℓ∞ ``Sign`` that :func:`specopt.param_groups` gives
embeddings and heads, where the most persistent coordinate sets the radius of all), and the radius runs away: on the
char-GPT, momentum 0.9 diverged, 0.5 ended at 2.47 against 2.07 at 0, and the ``Sign`` embeddings and head at 3.18
(EXPERIMENTS.md, "AdaGO and DoG"). :class:`DoG` therefore takes the gradient itself (momentum 0), keeps
``param_groups``' spectral geometry on the matrices Muon orthogonalises (hidden, expert, conv; all-Euclidean DoG, i.e.
L-DoG, ended at 2.51) and steps every other role in the Euclidean norm.

State per tensor (keys ``dog_``): the initial weights ``W_0`` (one copy of the weights), ``r̄`` and ``G`` (0-d
float32). The distance is the norm's ``norm`` (an exact operator norm for the spectral norms: one SVD per matrix per
step); FSDP2-sharded tensors are refused (a shard's norm is not the tensor's).
"""

from __future__ import annotations

import torch

from specopt._checks import check_number
from specopt.engine import GeometryOptimizer
from specopt.estimators import Estimator
from specopt.optimizers import MUON_ROLES, refuse_role_radius
from specopt.steps import StepRule, commit, weight_decay


class DistanceOverGradients(StepRule):
    """DoG's step on each tensor's steepest-descent direction: ``W ← (1−cλ)W + c·r̄/√G·‖d‖_*·lmo(d)`` with ``r̄``
    the largest distance from ``W_0`` in the tensor's norm and ``G`` the sum of squared dual norms (see
    :mod:`specopt.dog`).

    Args:
        r_rel: the initial distance ``r_ε = r_rel·(1 + ‖W_0‖)`` relative to the initial weights (DoG's default
            1e-6; it sets how many steps the radius takes to grow to the trajectory's scale).
    """

    name = "dog"
    per_tensor = True
    needs_dual = True

    def __init__(self, r_rel: float = 1e-6):
        self.r_rel = check_number(r_rel, "r_rel", low_open=True)

    def validate_group(self, group: dict) -> None:
        """Low-precision weights are refused: DoG's first steps, ``r_ε = r_rel·(1 + ‖W_0‖)``, are far below their
        resolution, so the weights never move and ``r̄`` never grows (30 steps left every bf16 weight as it was)."""
        low = {p.dtype for p in group["params"] if p.dtype in (torch.bfloat16, torch.float16)}
        if low and group["norm"] != "adamw":
            raise ValueError(f"DoG on {', '.join(sorted(map(str, low)))} weights: its first steps, r_ε = r_rel·(1 + "
                             f"‖W_0‖) with r_rel={self.r_rel:g}, are below their resolution, so the weights would "
                             "never move; train float32 weights (bf16 compute under torch.autocast)")

    def init_state(self, rec) -> None:
        """The initial weights ``W_0``, copied as the first step begins (before anything has moved them); none for
        the AdamW tensors of a ``norm="adamw"`` group, whose step is not DoG's."""
        if "dog_w0" not in rec.state and rec.group["norm"] != "adamw":
            rec.state["dog_w0"] = rec.p.detach().clone()

    def scale(self, records, ctx) -> None:
        for rec in records:
            if rec.layout.sharded:
                raise ValueError(f"{rec.name}: DoG measures ‖W − W_0‖ in the whole tensor's norm, which a FSDP2 "
                                 "shard does not give; run it replicated (DDP) or on one device")
            state = rec.state
            if "dog_rbar" not in state:
                start = self.r_rel * (1 + rec.norm.norm(rec.p.float()).float())
                state["dog_rbar"] = start.reshape(()).to(rec.p.device)
                state["dog_g2"] = torch.zeros((), dtype=torch.float32, device=rec.p.device)
            distance = rec.norm.norm((rec.p - state["dog_w0"]).float()).float().reshape(())
            rbar = commit(state["dog_rbar"], torch.maximum(state["dog_rbar"], distance), ctx.ok)
            dual = torch.as_tensor(rec.dual, dtype=torch.float32, device=rbar.device).reshape(())
            g2 = commit(state["dog_g2"], state["dog_g2"] + dual.square(), ctx.ok)
            eta = torch.where(g2 > 0, rbar / g2.sqrt().clamp_min(torch.finfo(torch.float32).tiny), 0.0)
            rec.shrink = weight_decay(rec)
            rec.scale = rec.group["lr"] * eta * dual


class DoG(GeometryOptimizer):
    """Layer-wise DoG (Ivgi, Hinder & Carmon 2023, arXiv:2302.12022) on every tensor's lmo: step sizes from the
    distance travelled and the gradients seen, none to
    choose (see :mod:`specopt.dog`). Groups of :func:`specopt.param_groups` keep their norm where Muon would
    orthogonalise (hidden, expert, conv) and step in the Euclidean norm elsewhere (embeddings, head, gains: plain
    L-DoG). ``lr`` is a multiplier c of every step (1: the rule as published; LR schedules act through it); there is
    no radius (the step is invariant to it). ``momentum`` is β of the EMA whose lmo is taken (0, the gradient, by
    default: DoG's own setting, see the module docstring); ``norm``, ``nesterov``, ``weight_decay`` (λ, a decay per
    step), ``estimator`` and the engine's options as the other presets; ``r_rel`` of :class:`DistanceOverGradients`.
    """

    def __init__(self, params, lr: float = 1.0, momentum: float | str = 0.0, norm="auto", r_rel: float = 1e-6,
                 weight_decay: float = 0.0, nesterov: bool = False, estimator: str | Estimator = "momentum",
                 nonfinite: str = "raise", batch_lmo: bool | None = None, process_group="auto"):
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "norm": norm, "radius": 1.0,
                    "weight_decay": weight_decay}
        super().__init__(params, defaults, rule=DistanceOverGradients(r_rel), estimator=estimator,
                         nonfinite=nonfinite, batch_lmo=batch_lmo, process_group=process_group)

    def _preset_groups(self, group: dict) -> list[dict]:
        """A group with a ``role`` outside Muon's (from :func:`specopt.param_groups`) gets the Euclidean norm; one
        with a radius of its own is refused (the step is invariant to it)."""
        refuse_role_radius(group, "DoG", "sets each step from the distance travelled (invariant to the radius)")
        return [{**group, "norm": "euclidean"} if group.get("role") not in (None, *MUON_ROLES) else group]
