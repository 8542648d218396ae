"""Gradients at other weights on the same batch: the closure run with some parameters moved, before the step's own
closure call.

Used by the estimators that compare two gradients of one batch: STORM (the previous iterate) and Gluon's online
smoothness estimate (the anchored weights, the same point). The probe runs *first*, so that the last evaluation
of the closure is at the current weights: a trainer that reports the closure's last loss (Lightning) reports this
step's loss, and the gradients the step uses are the ones the closure left. What remains: the closure runs twice
per probing step, so side effects in it (a Lightning ``training_step``'s logging, hooks, dropout masks) happen
twice; the probe's own call is at the previous weights.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from specopt.distributed import any_rank, is_dtensor, local, replica_group


@torch.no_grad()
def gradients_at(params: list, weights: dict, closure) -> dict | None:
    """Run ``closure`` with every parameter of ``weights`` set to its tensor (the local shard under FSDP2) and every
    gradient of ``params`` cleared; return ``id(param) → local gradient`` for all ``params`` (zeros where the closure
    gave none; bf16 and fp16 gradients in float32), or None where it gave none at all (an empty closure, as
    Lightning's manual optimization passes to ``opt.step()``). Parameters and their gradients are restored
    afterwards, also if the closure raises."""
    grads = [(p, p.grad) for p in params]
    current = [(p, local(p).detach().clone()) for p in weights]
    _reshard_fsdp(weights)
    try:
        for p, w in weights.items():
            local(p).copy_(w)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            closure()
        if all(p.grad is None for p in params):
            return None
        out = {}
        for p in params:
            g = local(p.grad) if p.grad is not None else torch.zeros_like(local(p))
            out[id(p)] = g.float() if g.dtype in (torch.bfloat16, torch.float16) else g
    finally:
        for p, x in current:
            local(p).copy_(x)
        for p, grad in grads:
            p.grad = grad
    return out


def _reshard_fsdp(params) -> None:
    """Reshard every FSDP2 module when ``params`` are sharded (DTensors), so that the closure's forward gathers the
    shards the probe writes: a forward without backward (an evaluation between steps) leaves a root module's
    unsharded parameters registered, and the next forward would reuse them, the current weights, not the probe's.
    The modules are found through torch's registry of composable-API states, where ``fully_shard`` registers; all of
    them, as a module holding unsharded copies no longer lists the sharded parameters (a module that does not hold
    the probed ones only gathers again at its next forward)."""
    if not any(is_dtensor(p) for p in params):
        return
    from torch.distributed._composable_state import _module_state_mapping

    for module in list(_module_state_mapping.keys()):
        reshard = getattr(module, "reshard", None)
        if callable(reshard) and type(module).__name__.startswith("FSDP"):
            reshard()


def held_gradient(params: list) -> tuple | None:
    """``(param, its gradient tensor)`` for the first parameter whose gradient holds a nonzero value before a step's
    closure runs, or None: :func:`accumulated` tells from it whether the closure added to that gradient. Under
    FSDP2 "nonzero" is decided over every rank's shard, so that all ranks take the same path (a rank that probed
    while another did not would hang in the closure's collectives)."""
    for p in params:
        if p.grad is not None:
            nonzero = bool(local(p.grad).any())
            if is_dtensor(p.grad):
                nonzero = any_rank(nonzero, None, local(p.grad).device)
            return (p, p.grad) if nonzero else None
    return None


@contextlib.contextmanager
def incoming_gradients(held: tuple | None):
    """Within the block, the gradients backward passes bring to :func:`held_gradient`'s parameter (the list yielded),
    before they are added to its ``.grad``: what :func:`accumulated` compares that gradient with. Nothing is
    recorded on more than one process (DDP averages ``.grad`` after the addition, so a comparison would differ
    between ranks)."""
    incoming: list = []
    recorded = held is not None and held[0].requires_grad and not is_dtensor(held[0]) and replica_group("auto") is None
    handle = held[0].register_hook(lambda g: incoming.append(g.detach().clone())) if recorded else None
    try:
        yield incoming if recorded else None
    finally:
        if handle is not None:
            handle.remove()


def accumulated(held: tuple | None, zeroed: bool, incoming: list | None = None) -> bool:
    """Whether the step's closure added to the gradient :func:`held_gradient` saw, rather than clearing it: the same
    tensor after the closure (``zero_grad(set_to_none=True)`` replaces it), no ``optimizer.zero_grad`` call during
    the closure, and (where :func:`incoming_gradients` recorded them) a gradient that is not the sum of what the
    closure's backward passes brought, as it is where the closure cleared it in place (``model.zero_grad(
    set_to_none=False)``) — gradient accumulation, e.g. Lightning's ``accumulate_grad_batches > 1``, whose closure
    evaluates the last micro-batch only."""
    if held is None or held[0].grad is not held[1] or zeroed:
        return False
    if incoming is None:
        return True
    brought = functools.reduce(torch.add, incoming) if incoming else torch.zeros_like(held[1])
    return not torch.equal(held[1], brought)

