"""torch's own checkpoint flow (``torch.distributed.checkpoint.state_dict.get_state_dict`` → ``dcp.save``; a new
model and optimizer → ``get_state_dict`` as the template → ``dcp.load`` → ``set_state_dict``), as torchtitan-style
training loops resume: every member whose state keys all exist after one step resumes bit for bit (Gluon's online
measurements and anchors included, with and without a closure); specopt.checkpoint, which builds its template from
the checkpoint, resumes Gluon exactly too."""

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import classification_data, mlp, train
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import specopt
from specopt import gluon

EXACT = ["Muon", "Scion", "UScion", "ClippedScion", "Gluon", "ALMOND", "SteepestDescent", "ProxSpectral", "NorMuon",
         "AdaMuon", "AdaGO", "DoG", "MuonBP", "DropMuon"]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():  # DCP's "no process group: saving in a single process"; Gluon without closure
        warnings.simplefilter("ignore", UserWarning)
        yield


def save_and_resume(name: str, path, before: int = 4, closure: bool = False) -> tuple:
    """The straight run after ``before`` steps, and its resumption by torch's flow into a new model and optimizer."""
    X, y = classification_data()
    model = mlp(1)
    opt = getattr(specopt, name)(model.parameters())
    train(model, opt, X, y, before, closure)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    resumed = mlp(7)
    resumed_opt = getattr(specopt, name)(resumed.parameters())
    model_sd, optim_sd = get_state_dict(resumed, resumed_opt)  # the template: a zero step made its state
    template = {"model": model_sd, "optim": optim_sd}
    dcp.load(template, checkpoint_id=str(path))
    set_state_dict(resumed, resumed_opt, model_state_dict=template["model"], optim_state_dict=template["optim"])
    return (model, opt), (resumed, resumed_opt), (X, y)


@pytest.mark.parametrize("name", EXACT)
def test_torch_dcp_state_dict_flow_resumes_bit_for_bit(name, tmp_path):
    (model, opt), (resumed, resumed_opt), (X, y) = save_and_resume(name, tmp_path / "ckpt")
    train(model, opt, X, y, 4)
    train(resumed, resumed_opt, X, y, 4)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gluon_with_a_closure_resumes_its_fit_and_anchor_bit_for_bit_through_the_torch_flow(tmp_path):
    (model, opt), (resumed, resumed_opt), (X, y) = save_and_resume("Gluon", tmp_path / "ckpt", closure=True)
    saved = [opt.state[p] for p in model.parameters()]
    assert all(len(s["gluon_x"]) == 3 and s["gluon_anchor_kind"] == gluon.WEIGHTS for s in saved if "gluon_x" in s)
    for s, r in zip(saved, [resumed_opt.state[p] for p in resumed.parameters()], strict=True):
        assert s.keys() == r.keys() and s.get("gluon_y") == r.get("gluon_y")
    train(model, opt, X, y, 4, closure=True)
    train(resumed, resumed_opt, X, y, 4, closure=True)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gluon_resumes_bit_for_bit_through_specopt_checkpoint(tmp_path):
    X, y = classification_data()
    model = mlp(1)
    opt = specopt.Gluon(model.parameters())
    train(model, opt, X, y, 4)
    specopt.checkpoint.save(tmp_path / "ckpt", model, opt)
    resumed = mlp(7)
    resumed_opt = specopt.Gluon(resumed.parameters())
    specopt.checkpoint.load(tmp_path / "ckpt", resumed, resumed_opt)
    train(model, opt, X, y, 4)
    train(resumed, resumed_opt, X, y, 4)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
