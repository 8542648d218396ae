"""Drop-Muon (Gruntkowska et al. 2025, *Drop-Muon: Update Less, Converge Faster*, arXiv:2510.02239): each step
updates a random subset of the layers, so the dropped layers cost no orthogonalization (and, in a training loop that
stops the backward pass early, no gradient).

Randomized progressive training, the paper's sampling: at step k a cutoff ``c_k ∈ {0, …, L−1}`` is drawn over the L
geometry tensors in depth order (input side first: the model's parameter order, ``order=model``) and the tensors
``l ≥ c_k`` are updated,
``W_l ← (1−γλ)W_l − γ·scale·msign(d̃_l)``; the others keep their weights and momentum (the paper's
``M_l^k = M_l^{k−1}`` for a dropped layer). Muon's AdamW tensors
(embeddings, head, gains) step every time. The draw is a function of the seed and the step count, so a resumed run
given the same ``seed`` draws the same layers (the seed is a constructor argument, not part of the state dict). The
cutoff is drawn inside ``step()``, after the backward pass: the dropped tensors save their orthogonalization, not
their gradient (the paper's backward pass that stops at the cutoff needs the cutoff before it).

The cutoff's distribution is the paper's free choice of sampling (any distribution over the starting index); here
``p(c) ∝ decay^c``: ``decay = 1`` is the uniform index sampling of the paper's experiments (layer l updated with
probability ``P_l = (l+1)/L``, ``(L+1)/2`` lmo's per step on average), ``decay < 1`` favours small cutoffs: layer l
is updated with probability ``P_l = Σ_{c ≤ l} p(c)`` and ``Σ_c p(c)·(L−c)`` lmo's are taken per step on average
(:func:`expected_lmo_fraction`), trading cheaper steps for progress per step.
"""

from __future__ import annotations

import torch
from torch import nn

from specopt._checks import check_number
from specopt.optimizers import Muon, _is_named, refuse_own
from specopt.steps import USCG


def cutoff_probabilities(n: int, decay: float) -> torch.Tensor:
    """``p(c) ∝ decay^c`` for ``c = 0 … n−1`` (float64)."""
    weights = torch.full((n,), float(decay), dtype=torch.float64).pow(torch.arange(n, dtype=torch.float64))
    return weights / weights.sum()


def expected_lmo_fraction(n: int, decay: float = 1.0) -> float:
    """The expected share of the n tensors updated per step, ``Σ_c p(c)·(n−c)/n`` (the step-cost proxy)."""
    probs = cutoff_probabilities(n, decay)
    return float((probs * (n - torch.arange(n, dtype=torch.float64))).sum() / n)


class ProgressiveDrop(USCG):
    """uSCG on the tensors at or above a random cutoff ``c ~ p(c) ∝ decay^c`` (randomized progressive training).

    Args:
        seed: seed of the cutoff draws (with the step count).
        decay: ``p(c) ∝ decay^c`` (0 < decay ≤ 1; 1 is uniform).
        order: the tensors input side first (a module: its ``parameters()``), over which the cutoff is drawn;
            None: the order the engine holds them in (its param groups', flattened).
    """

    name = "progressive_drop"
    traceable = False  # the draw reads the step count on the host

    def __init__(self, seed: int = 0, decay: float = 1.0, order=None):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.decay = check_number(decay, "decay", low_open=True, high=1.0)
        if isinstance(order, nn.Module):
            order = order.parameters()
        self.tensors = None if order is None else list(order)  # the tensors, not their ids: a deepcopy maps them

    def _by_depth(self, records: list) -> list:
        if self.tensors is None:
            return records
        depth = {id(p): k for k, p in enumerate(self.tensors)}
        missing = [rec.name for rec in records if id(rec.param) not in depth]
        if missing:
            raise ValueError(f"{', '.join(map(str, missing))}: not among the tensors of Drop-Muon's order= (the "
                             "model whose layers it drops, or its tensors input side first)")
        return sorted(records, key=lambda rec: depth[id(rec.param)])

    def active(self, records: list, ctx) -> list:
        if not records:
            return records
        records = self._by_depth(records)
        step = int(records[0].state["step"])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        if self.decay == 1.0:  # the uniform draw as first written: the same layers as earlier runs
            cutoff = int(torch.randint(len(records), (), generator=generator))
        else:
            cutoff = int(torch.multinomial(cutoff_probabilities(len(records), self.decay), 1, generator=generator))
        return records[cutoff:]


class DropMuon(Muon):
    """Drop-Muon (Gruntkowska et al. 2025, arXiv:2510.02239): Muon on a random top part of the network each
    step, the layers ``S^k = {s^k, …, L}`` from a random cutoff ``s^k`` (see the module docstring). Takes every
    :class:`~specopt.Muon` argument but ``rule``, plus ``seed``, ``decay`` and ``order`` of
    :class:`ProgressiveDrop`.

    ``order``: the model (or its tensors input side first); without it the tensors are taken in the order given.
    :func:`specopt.param_groups` groups tensors by role, not by depth, so its groups need ``order=model``.
    """

    def __init__(self, params, lr: float = 0.02, seed: int = 0, decay: float = 1.0, order=None, **muon):
        refuse_own("DropMuon", muon, "rule")
        params = [_listed(g) for g in (list(params) if not isinstance(params, torch.Tensor) else [params])]
        self._order_given = order is not None
        if order is None:
            if any(isinstance(g, dict) and "role" in g for g in params):
                raise ValueError("DropMuon draws its cutoff over the layers input side first, and param_groups' "
                                 "groups are by role, not depth: pass order=model (the model the groups came from)")
            order = _tensors_in(params)
        super().__init__(params, lr=lr, rule=ProgressiveDrop(seed, decay, order), **muon)

    def add_param_group(self, param_group: dict) -> None:
        """As the engine's. A group added after construction joins the cutoff's order: at its end where the order is
        the tensors as given (input side first, so the last added is the deepest). Where ``order=`` was passed, every
        tensor, at construction or added later, must be in it (a ``ValueError`` before anything is added)."""
        rule = getattr(self, "rule", None)
        if not isinstance(rule, ProgressiveDrop) or rule.tensors is None:
            super().add_param_group(param_group)
            return
        param_group = _listed(param_group)
        known = {id(t) for t in rule.tensors}
        new = [t for t in _tensors_in([param_group]) if id(t) not in known]
        if new and self._order_given:
            raise ValueError(f"{len(new)} tensor(s) of shape(s) {', '.join(str(tuple(t.shape)) for t in new)} are "
                             "not among the tensors of Drop-Muon's order= (the model whose layers it drops, or its "
                             "tensors input side first): pass an order= that holds them")
        super().add_param_group(param_group)
        rule.tensors.extend(new)


def _listed(group):
    """A group dict whose ``params`` is a list (a generator, ``model.parameters()``, read once for the cutoff's
    order, would leave the optimizer none); anything else as it is."""
    if isinstance(group, dict) and "params" in group and not isinstance(group["params"], (torch.Tensor, list)):
        return {**group, "params": list(group["params"])}
    return group


def _tensors_in(groups: list) -> list[torch.Tensor]:
    """The tensors of ``params`` as an optimizer takes it (tensors, named tensors or group dicts), in order."""
    members = [g["params"] if isinstance(g, dict) else [g] for g in groups]
    return [m[1] if _is_named(m) else m for ms in members for m in ([ms] if isinstance(ms, torch.Tensor) else ms)]
