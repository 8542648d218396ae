"""MuonBP (specopt.MuonBP): on block steps the update of a matrix is the msign of each row block (block-diagonal
structure, each block with Muon's scale of its own shape), every P-th update is Muon's; a blocked norm's lmo is local
to the shards that its blocks are made of (the engine computes it with no communication: tests/test_distributed.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_resumes_exactly, classification_data, mlp, train
from torch import nn

import specopt
from specopt.block_periodic import BlockPeriodic, chunk_rows, row_blocks
from specopt.views import Stacked

EXACT = {"method": "svd"}


def msign(g: torch.Tensor) -> torch.Tensor:
    return specopt.msign(g, method="svd")


def scaled_msign(g: torch.Tensor) -> torch.Tensor:
    """Muon's (lr 1) step on one block: ``−max(1, d_out/d_in)^½·msign``."""
    return -math.sqrt(max(1, g.shape[0] / g.shape[1])) * msign(g)


def stepped(opt, params, grads):
    """The update ``W_{k+1} − W_k`` of every tensor, one step per gradient list of ``grads``."""
    out = []
    for gs in grads:
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
        out.append([p.detach() - b for p, b in zip(params, before, strict=True)])
    return out


def gradients(shapes, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (9, 5)])
def test_block_steps_are_the_msign_of_each_row_block_and_every_pth_step_is_muons(shape):
    """Muon and MuonBP on the same gradients: their momenta are the same, so on updates 0, P, 2P, … (full) the steps
    are equal, and on the others MuonBP's step is −γ·r·Σ_b scale(W_b)·msign(M_b) (block-diagonal)."""
    lr, ratio, period, blocks = 0.1, 0.5, 3, 3
    a, b = nn.Parameter(torch.randn(shape)), nn.Parameter(torch.randn(shape))
    muon = specopt.Muon([a], lr=lr, **EXACT)
    bp = specopt.MuonBP([b], lr=lr, period=period, blocks=blocks, block_lr_ratio=ratio, **EXACT)
    grads = gradients([shape], 7)
    momentum = torch.zeros(shape)
    for k, (full, ours, g) in enumerate(zip(stepped(muon, [a], grads), stepped(bp, [b], grads), grads,
                                            strict=True)):
        momentum = 0.95 * momentum + 0.05 * g[0]
        nesterov = g[0].lerp(momentum, 0.95)
        if k % period == 0:
            torch.testing.assert_close(ours[0], full[0], atol=1e-6, rtol=1e-5)
            continue
        sizes = chunk_rows(shape[0], blocks)
        expected = torch.cat([-lr * ratio * math.sqrt(max(1, m.shape[0] / m.shape[1])) * msign(m)
                              for m in nesterov.split(sizes)])
        torch.testing.assert_close(ours[0], expected, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(ours[0], ratio * full[0], atol=1e-4)  # a block step is not Muon's


@pytest.mark.parametrize("shape", [(12, 6), (6, 12)])
def test_split_short_cuts_a_matrix_across_its_shorter_side(shape):
    """``split="short"``: a tall matrix's blocks are column blocks (a smaller msign each), a wide one's row blocks;
    in a fused q/k/v weight the column blocks are cut inside each of q, k, v."""
    qkv = specopt.Blocked(specopt.Spectral(**EXACT), 3)
    w = nn.Parameter(torch.randn(shape))
    opt = specopt.MuonBP([{"params": [w], "norm": qkv}], lr=1.0, period=2, blocks=2, split="short", momentum=0.0,
                         nesterov=False)
    g = gradients([shape], 2)[1][0]
    second = stepped(opt, [w], gradients([shape], 2))[1][0]
    rows, cols = shape
    if rows > cols:  # q, k, v (4 rows each), each cut into 2 column blocks of 3
        pieces = [torch.cat([scaled_msign(b) for b in q.split(cols // 2, dim=1)], dim=1) for q in g.split(4)]
    else:  # the row cuts 0, 3, 6 and q, k, v's 0, 2, 4, 6
        pieces = [scaled_msign(b) for b in g.split((2, 1, 1, 2))]
    expected = torch.cat(pieces)
    torch.testing.assert_close(second, expected, atol=1e-6, rtol=1e-5)


def test_blocks_are_chunked_as_fsdp2_shards_them():
    assert chunk_rows(10, 2) == (5, 5) and chunk_rows(3, 2) == (2, 1) and chunk_rows(9, 4) == (3, 3, 3)
    assert chunk_rows(1, 4) == (1,)


def test_blocks_of_a_fused_projection_are_cut_at_both_boundaries():
    """A q/k/v weight (Blocked, 3 blocks of 4 rows) in 2 row blocks: the blocks are the pieces between the cuts
    0, 4, 6, 8, 12, and each piece gets Muon's scale of its own shape."""
    qkv = specopt.Blocked(specopt.Spectral(**EXACT), (4, 4, 4))
    assert row_blocks(qkv, (6, 6)).split_sizes == (4, 2, 2, 4)
    w = nn.Parameter(torch.randn(12, 3))
    opt = specopt.MuonBP([{"params": [w], "norm": qkv}], lr=1.0, period=2, blocks=2, momentum=0.0, nesterov=False)
    (first, second) = stepped(opt, [w], gradients([(12, 3)], 2))
    g = gradients([(12, 3)], 2)[1][0]
    expected = torch.cat([-math.sqrt(max(1, m.shape[0] / 3)) * msign(m) for m in g.split((4, 2, 2, 4))])
    torch.testing.assert_close(second[0], expected, atol=1e-6, rtol=1e-5)
    g0 = gradients([(12, 3)], 2)[0][0]
    full = torch.cat([-math.sqrt(4 / 3) * msign(m) for m in g0.split(4)])  # the full step: q, k, v
    torch.testing.assert_close(first[0], full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("blocks", [2, 3])  # unequal (2, 1) and equal (1, 1, 1) expert blocks
def test_the_blocks_of_an_expert_stack_are_whole_experts(blocks):
    """An expert stack ``(E, d_out, d_in)`` is cut along its expert axis, as FSDP2 shards it: each block holds whole
    experts, whose msign needs no other expert, so every MuonBP step is Muon's (times r on block steps). Equal
    blocks had failed at the first block step (the block axis was read as a matrix axis)."""
    norm = Stacked(specopt.Spectral(**EXACT))
    a, b = nn.Parameter(torch.randn(3, 7, 8)), nn.Parameter(torch.randn(3, 7, 8))
    muon = specopt.Muon([{"params": [a], "norm": norm}], lr=0.1)
    bp = specopt.MuonBP([{"params": [b], "norm": norm}], lr=0.1, period=2, blocks=blocks, block_lr_ratio=0.5)
    grads = gradients([(3, 7, 8)], 4)
    for k, (full, ours) in enumerate(zip(stepped(muon, [a], grads), stepped(bp, [b], grads), strict=True)):
        torch.testing.assert_close(ours[0], full[0] * (1.0 if k % 2 == 0 else 0.5), atol=1e-6, rtol=1e-5)


def test_the_adamw_tensors_step_as_muons():
    """Update 0 is full (all equal to Muon's); update 1 is a block step: the hidden matrices differ, the AdamW
    tensors (gradients taken at the same weights) do not."""
    model_a, model_b = mlp(), mlp()
    X, y = classification_data()
    opt_a = specopt.Muon(specopt.param_groups(model_a))
    opt_b = specopt.MuonBP(specopt.param_groups(model_b), period=3)
    for steps in (1, 1):
        train(model_a, opt_a, X, y, steps)
        train(model_b, opt_b, X, y, steps)
    adamw = {id(p) for g in opt_b.param_groups if g["norm"] == "adamw" for p in g["params"]}
    assert 0 < len(adamw) < len(list(model_b.parameters()))
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        if id(b) in adamw:
            torch.testing.assert_close(a, b)
        else:
            assert not torch.allclose(a, b)


def test_a_resumed_run_continues_the_period():
    X, y = classification_data()
    model = mlp()
    opt = specopt.MuonBP(model.parameters(), period=3)
    train(model, opt, X, y, 4)
    assert_resumes_exactly(model, opt, lambda m: specopt.MuonBP(m.parameters(), period=3), X, y, steps=5)


def test_muonbp_trains():
    X, y = classification_data()
    model = mlp()
    losses = train(model, specopt.MuonBP(specopt.param_groups(model)), X, y, 120)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kwargs, message", [({"period": 0}, "period"), ({"blocks": 1.5}, "blocks"),
                                             ({"block_lr_ratio": 0.0}, "block_lr_ratio"),
                                             ({"split": "columns"}, "split must be one of"),
                                             ({"rule": "uscg"}, "sets rule itself")])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        specopt.MuonBP(nn.Linear(3, 3).parameters(), **kwargs)


def test_the_rule_saves_its_structure():
    assert BlockPeriodic(4, 2, 0.5, "short").config() == {"name": "block_periodic", "period": 4, "blocks": 2,
                                                          "block_lr_ratio": 0.5, "split": "short"}


@pytest.mark.parametrize("sizes, rows, local", [
    ((4, 4), (4, 4), [specopt.Spectral(), specopt.Spectral()]),                   # a block per shard
    ((2, 2, 4), (4, 4), [specopt.Blocked(specopt.Spectral(), (2, 2)), specopt.Spectral()]),  # 2 blocks in shard 0
    ((3, 5), (4, 4), None),                                                       # a block across the cut
    ((8,), (8, 0), [specopt.Spectral(), specopt.Spectral()]),                     # one rank holds no row
])
def test_a_blocked_norm_is_local_to_shards_whose_cuts_are_block_boundaries(sizes, rows, local):
    norm = specopt.Blocked(specopt.Spectral(), sizes)
    got = [norm.shard_local((8, 3), rows, rank) for rank in range(len(rows))]
    assert got == (local or [None, None])
    assert specopt.Spectral().shard_local((8, 3), rows, 0) is None  # a whole-matrix lmo needs every row
    assert specopt.Blocked(specopt.Spectral(), 2, interleaved=True).shard_local((8, 3), (4, 4), 0) is None
