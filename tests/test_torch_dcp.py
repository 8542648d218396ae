"""torch's own checkpoint flow (``torch.distributed.checkpoint.state_dict.get_state_dict`` → ``dcp.save``; a new
model and optimizer → ``get_state_dict`` as the template → ``dcp.load`` → ``set_state_dict``), as torchtitan-style
training loops resume: every member resumes bit for bit, those stepped with a closure too (Gluon's online
measurements and anchors, STORM's previous iterate: every key exists after the template's zero step);
specopt.checkpoint, which builds its template from the checkpoint, resumes Gluon exactly too."""

import warnings

import pytest
import torch
from helpers import classification_data, mlp, torch_flow_load, torch_flow_save, train

import specopt
from specopt import gluon

EXACT = ["Muon", "Scion", "UScion", "ClippedScion", "Gluon", "ALMOND", "SteepestDescent", "ProxSpectral", "NorMuon",
         "AdaMuon", "AdaGO", "DoG", "MuonBP", "DropMuon"]
WITH_CLOSURE = {"Gluon": specopt.Gluon, "GluonMVR": specopt.GluonMVR,
                "UScion, STORM": lambda params: specopt.UScion(params, estimator="storm")}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():  # DCP's "no process group: saving in a single process"; Gluon without closure
        warnings.simplefilter("ignore", UserWarning)
        yield


def save_and_resume(make, path, before: int = 4, closure: bool = False) -> tuple:
    """The straight run after ``before`` steps of ``make(params)`` (a name: specopt's class of that name), and its
    resumption by torch's flow into a new model and optimizer."""
    make = getattr(specopt, make) if isinstance(make, str) else make
    X, y = classification_data()
    model = mlp(1)
    opt = make(model.parameters())
    train(model, opt, X, y, before, closure)
    torch_flow_save(str(path), model, opt)
    resumed = mlp(7)
    resumed_opt = make(resumed.parameters())
    torch_flow_load(str(path), resumed, resumed_opt)  # the template: a zero step made its state
    return (model, opt), (resumed, resumed_opt), (X, y)


@pytest.mark.parametrize("name", EXACT)
def test_torch_dcp_state_dict_flow_resumes_bit_for_bit(name, tmp_path):
    (model, opt), (resumed, resumed_opt), (X, y) = save_and_resume(name, tmp_path / "ckpt")
    train(model, opt, X, y, 4)
    train(resumed, resumed_opt, X, y, 4)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", WITH_CLOSURE)
def test_members_stepped_with_a_closure_resume_bit_for_bit_through_the_torch_flow(name, tmp_path):
    """Gluon's fit and anchored weights, STORM's previous iterate: the template's zero step (lr 0, no closure: STORM
    takes it, as it moves nothing and has no previous iterate yet) made every key they hold later."""
    (model, opt), (resumed, resumed_opt), (X, y) = save_and_resume(WITH_CLOSURE[name], tmp_path / "ckpt", closure=True)
    for saved, loaded in zip([opt.state[p] for p in model.parameters()],
                             [resumed_opt.state[p] for p in resumed.parameters()], strict=True):
        assert saved.keys() == loaded.keys() and saved.get("gluon_y") == loaded.get("gluon_y")
        assert saved.get("gluon_n", 1) and saved.get("gluon_anchor_kind", gluon.WEIGHTS) == gluon.WEIGHTS
    train(model, opt, X, y, 4, closure=True)
    train(resumed, resumed_opt, X, y, 4, closure=True)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_closure_is_still_needed_for_any_other_step_without_one():
    model = mlp(1)
    opt = specopt.UScion(model.parameters(), estimator="storm")
    model(classification_data()[0]).sum().backward()
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        opt.step()
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()  # the template step: first, and at lr 0
    assert opt.state and all(torch.equal(p, q) for p, q in zip(model.parameters(), mlp(1).parameters(), strict=True))
    with pytest.raises(ValueError, match="needs step\\(closure\\)"):
        opt.step()


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


def test_a_single_process_checkpoint_round_trip_warns_nothing(tmp_path):
    """torch.distributed.checkpoint warns at each call without a process group; one process is a supported use."""
    model = torch.nn.Linear(4, 4)
    opt = specopt.Muon(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specopt.checkpoint.save(tmp_path / "ckpt", model, opt, extra={"step": 1})
        assert specopt.checkpoint.load(tmp_path / "ckpt", model, opt) == {"step": 1}


def test_another_optimizers_state_is_refused_through_torchs_state_dict_api():
    """torch's flat optimizer state dict (``get_optimizer_state_dict``) keeps the groups and the state only, not the
    owner record: a Muon state was loaded into a UScion by ``set_optimizer_state_dict``, its one group taking Muon's
    AdamW group's hyperparameters (every matrix then trained by AdamW), silently. The record now rides in every
    group's saved form."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    X, y = classification_data()
    model = mlp(1)
    opt = specopt.Muon(model.parameters())
    train(model, opt, X, y, 2)
    saved = get_optimizer_state_dict(model, opt)
    other = mlp(7)
    uscion = specopt.UScion(other.parameters())
    with pytest.raises(ValueError, match="belongs to Muon .* cannot be loaded into UScion"):
        set_optimizer_state_dict(other, uscion, saved)
    assert [g["norm"] for g in uscion.param_groups] == ["auto"]
    same = specopt.Muon(other.parameters())
    set_optimizer_state_dict(other, same, saved)
    assert all("specopt_owner" not in g for g in same.param_groups)  # in the saved form only
