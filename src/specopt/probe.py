"""Gradients at other weights on the same batch: the closure run again with some parameters moved.

Used by the estimators that compare two gradients of one batch: STORM (the previous iterate) and Gluon's online
smoothness estimate (the anchored weights).
"""

from __future__ import annotations

import torch

from specopt.distributed import local


@torch.no_grad()
def gradients_at(items: list, weights: dict, closure) -> dict:
    """Run ``closure`` with ``item.p`` set to ``weights[item]`` for every item in ``weights`` and every gradient of
    ``items`` cleared; return ``id(item.p) → gradient`` for all ``items`` (zeros where the closure gave none; bf16 and
    fp16 gradients in float32). Parameters and their gradients are restored afterwards, also if the closure
    raises."""
    grads = [(it, it.param.grad) for it in items]
    current = [(it, it.p.detach().clone()) for it in weights]
    try:
        for it, w in weights.items():
            it.p.copy_(w)
        for it in items:
            it.param.grad = None
        with torch.enable_grad():
            closure()
        out = {}
        for it in items:
            g = local(it.param.grad)
            g = torch.zeros_like(it.g) if g is None else g
            out[id(it.p)] = g.float() if g.dtype in (torch.bfloat16, torch.float16) else g
    finally:
        for it, x in current:
            it.p.copy_(x)
        for it, grad in grads:
            it.param.grad = grad
    return out
