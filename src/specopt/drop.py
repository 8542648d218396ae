"""Drop-Muon (Gruntkowska et al. 2025, *Drop-Muon: Update Less, Converge Faster*, arXiv:2510.02239): each step
updates a random subset of the layers, so the dropped layers cost no orthogonalization (and, in a training loop that
stops the backward pass early, no gradient).

Randomized progressive training, the paper's sampling: at step k a cutoff ``c_k`` is drawn uniformly from
``{0, …, L−1}`` over the L geometry tensors in parameter order (input side first) and the tensors ``l ≥ c_k`` are
updated, ``W_l ← (1−γλ)W_l − γ·scale·msign(d̃_l)``; the others keep their weights and momentum. Deeper layers are
updated more often (layer l with probability (l+1)/L), ``(L+1)/2`` lmo's per step on average. Muon's AdamW tensors
(embeddings, head, gains) step every time. The draw is a function of the seed and the step count, so a resumed run
draws the same layers.
"""

from __future__ import annotations

import torch

from specopt.optimizers import Muon
from specopt.steps import USCG


class ProgressiveDrop(USCG):
    """uSCG on the tensors at or above a random cutoff (randomized progressive training)."""

    name = "progressive_drop"
    traceable = False  # the draw reads the step count on the host

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed

    def active(self, records: list, ctx) -> list:
        if not records:
            return records
        step = int(records[0].state["step"])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        cutoff = int(torch.randint(len(records), (), generator=generator))
        return records[cutoff:]

    def config(self) -> dict:
        return {"name": self.name, "seed": self.seed}


class DropMuon(Muon):
    """Drop-Muon: Muon on a random top part of the network each step (see the module docstring). Takes every
    :class:`~specopt.Muon` argument but ``rule``, plus ``seed`` of the layer draws."""

    def __init__(self, params, lr: float = 0.02, seed: int = 0, **muon):
        if "rule" in muon:
            raise ValueError("DropMuon sets rule itself; use specopt.Muon(rule=...) for another rule")
        super().__init__(params, lr=lr, rule=ProgressiveDrop(seed), **muon)
