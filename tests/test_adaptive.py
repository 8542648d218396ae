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
