"""NorMuon and AdaMuon (specopt.adaptive): the property that defines each, and that they train."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_resumes_exactly, classification_data, mlp, train

import specopt
from specopt.adaptive import SecondMomentNormalized


def first_updates(make, steps=1, shape=(64, 16), seed=0):
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(*shape))
    opt = make([w])
    out = []
    for _ in range(steps):
        w.grad = torch.randn(*shape) * torch.linspace(0.1, 3.0, shape[0])[:, None]
        before = w.detach().clone()
        opt.step()
        out.append(w.detach() - before)
    return out


def test_normuon_gives_every_output_row_the_same_rms_and_keeps_muons_size():
    (muon,) = first_updates(lambda p: specopt.Muon(p, lr=0.1))
    (normuon,) = first_updates(lambda p: specopt.NorMuon(p, lr=0.1))
    rows = normuon.norm(dim=1)
    assert muon.norm(dim=1).max() / muon.norm(dim=1).min() > 1.5  # a tall matrix: msign's rows differ
    torch.testing.assert_close(rows, torch.full_like(rows, rows.mean().item()), rtol=1e-3, atol=0)
    torch.testing.assert_close(normuon.norm(), muon.norm(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("layout", ["conv1d", "experts"])
def test_normuon_normalizes_output_rows_through_the_layout(layout):
    """A Conv1D weight is stored (d_in, d_out) and an expert stack (E, d_out, d_in): NorMuon's moment is per output
    neuron of each map, so the update's columns (Conv1D) or each expert's rows get the same RMS."""
    torch.manual_seed(0)
    if layout == "conv1d":
        transformers = pytest.importorskip("transformers")
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64,
                                                                     n_positions=16))
        w = model.transformer.h[0].mlp.c_proj.weight  # stored (128, 32): d_in 128, d_out 32
        groups = specopt.param_groups(model)
        each_row = lambda u: u.norm(dim=0)  # noqa: E731
        moment_shape = (32, 1)
    else:
        model = torch.nn.Module()
        model.w = torch.nn.Parameter(torch.randn(3, 16, 8))  # 3 experts, 16 → ... stored (E, d_out, d_in)
        w = model.w
        groups = specopt.param_groups(model, layouts={"w": "experts"})
        each_row = lambda u: u.norm(dim=2)  # noqa: E731
        moment_shape = (3, 16, 1)
    opt = specopt.NorMuon(groups, lr=0.1, beta2=0.0, method="svd")
    for p in model.parameters():
        p.grad = torch.randn_like(p) * torch.linspace(0.1, 3.0, p.shape[-1])
    before = w.detach().clone()
    opt.step()
    rows = each_row(w.detach() - before)
    torch.testing.assert_close(rows, torch.full_like(rows, rows.mean().item()), rtol=1e-3, atol=0)
    assert tuple(opt.state[w]["second_moment"].shape) == moment_shape
    adamw = [q for g in opt.param_groups if g["norm"] == "adamw" for q in g["params"]]
    assert all("second_moment" not in opt.state[q] for q in adamw)  # AdamW's tensors (GPT-2's embeddings) keep none
    assert bool(adamw) == (layout == "conv1d")


def test_adamuon_has_adamw_rms_and_steps_against_msign_of_the_sign():
    lr = 0.01
    updates = first_updates(lambda p: specopt.AdaMuon(p, lr=lr), steps=3)
    for update in updates:  # RMS-aligned: 0.2·lr per entry at every step (to msign's band: ‖O‖_F ≈ √min(m, n))
        torch.testing.assert_close(update.square().mean().sqrt(), torch.tensor(0.2 * lr), rtol=0.02, atol=0)
    # The first step: V = (1−β₂)O², so Ô = O/(|O|·√(1−β₂)) is ±1/√(1−β₂): every entry moves by the same amount,
    # in the direction of −msign(sign(d)).
    first = updates[0]
    torch.testing.assert_close(first.abs(), torch.full_like(first, first.abs().mean().item()), rtol=1e-3, atol=0)
    torch.manual_seed(0)
    torch.randn(64, 16)
    g = torch.randn(64, 16) * torch.linspace(0.1, 3.0, 64)[:, None]
    expected = -specopt.msign(torch.sign(g), method="svd")
    assert (torch.sign(first) == torch.sign(expected)).float().mean() > 0.99


@pytest.mark.parametrize("cls, lr", [(specopt.NorMuon, 0.02), (specopt.AdaMuon, 0.05)])
def test_trains_and_resumes_exactly(cls, lr):
    X, y = classification_data()
    model = mlp()
    opt = cls(specopt.param_groups(model), lr=lr)
    losses = train(model, opt, X, y, 60)
    assert losses[-1] < 0.5 * losses[0]
    twin_model, _ = assert_resumes_exactly(model, opt, lambda m: cls(specopt.param_groups(m), lr=lr), X, y)
    with pytest.raises(ValueError, match="rule"):
        specopt.Muon(specopt.param_groups(twin_model)).load_state_dict(opt.state_dict())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="per must be"):
        SecondMomentNormalized("column")
    with pytest.raises(ValueError, match="beta2"):
        SecondMomentNormalized("row", beta2=1.0)
    with pytest.raises(ValueError, match="sets scale itself"):
        specopt.AdaMuon([torch.nn.Parameter(torch.zeros(2, 2))], scale="original")


def test_adamuons_update_has_adamw_rms_whatever_the_rank_of_the_sign_of_its_momentum():
    """``0.2·√(mn)/‖Ô‖_F``: the update's RMS is 0.2·lr also where sign(M) has rank 1 (a batch-1 gradient), whose
    msign has Frobenius norm 1, not √min(m, n) (the step came out 4× too small on a 16 × 16 matrix)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(16, 24, dtype=torch.float64))
    opt = specopt.AdaMuon([w], lr=1.0, method="svd")
    w.grad = torch.randn(16, 1, dtype=torch.float64) @ torch.randn(1, 24, dtype=torch.float64)
    opt.step()
    assert float(w.detach().square().mean().sqrt()) == pytest.approx(0.2, rel=1e-12)


@pytest.mark.parametrize("cls", [specopt.NorMuon, specopt.AdaMuon])
def test_each_expert_of_a_stack_steps_as_the_same_matrix_on_its_own(cls):
    """An expert stack is E matrices for Muon, each with its own msign and scale: NorMuon's and AdaMuon's rescale
    is per expert too (it was over the whole stack, so an expert back from a few idle steps got a larger step and
    the others smaller ones)."""
    torch.manual_seed(0)
    stack = torch.nn.Module()
    stack.experts = torch.nn.Parameter(torch.randn(3, 16, 12, dtype=torch.float64))
    alone = [torch.nn.Parameter(stack.experts.detach()[e].clone()) for e in range(3)]
    opt = cls(specopt.param_groups(stack, layouts={r"experts$": "experts"}, msign={"method": "svd"}), lr=0.1)
    opt_alone = cls(alone, lr=0.1, method="svd")
    for k in range(4):
        g = torch.randn(3, 16, 12, dtype=torch.float64)
        if k < 3:
            g[2] = 0  # no token reached expert 2
        stack.experts.grad = g
        for e, w in enumerate(alone):
            w.grad = g[e].clone()
        opt.step()
        opt_alone.step()
    for e, w in enumerate(alone):
        torch.testing.assert_close(stack.experts.detach()[e], w.detach(), rtol=0, atol=1e-12)
