"""specopt.checkpoint as a user calls it: what save replaces and what it refuses, an interrupted save, wrapped
models, and misuse named in one line."""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, mlp, train

import specopt
from specopt import checkpoint


def trained(steps=3):
    X, y = classification_data()
    model = mlp()
    opt = specopt.Muon(specopt.param_groups(model), lr=0.02)
    train(model, opt, X, y, steps)
    return model, opt


def test_save_refuses_a_directory_holding_anything_but_a_checkpoint_and_leaves_it_as_it_was(tmp_path):
    model, opt = trained()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"holds files that are not a checkpoint \(notes.txt\)"):
        checkpoint.save(mine, model, opt)
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="is a file"):
        checkpoint.save(mine / "notes.txt", model, opt)
    checkpoint.save(tmp_path / "ckpt", model, opt, extra={"step": 3})
    checkpoint.save(tmp_path / "ckpt", model, opt, extra={"step": 4})  # its own earlier checkpoint is replaced
    assert checkpoint.read_extra(tmp_path / "ckpt") == {"step": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mine"]  # no .tmp or .old left


def test_an_interrupted_save_leaves_the_earlier_checkpoint_which_load_reads(tmp_path):
    model, opt = trained()
    checkpoint.save(tmp_path / "ckpt", model, opt, extra={"step": 3})
    (tmp_path / "ckpt").rename(tmp_path / "ckpt.old")  # a crash after moving it aside, before moving the new one in
    twin, twin_opt = trained(steps=0)
    with pytest.warns(UserWarning, match="a save was interrupted"):
        assert checkpoint.load(tmp_path / "ckpt", twin, twin_opt) == {"step": 3}
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_compiled_model_and_its_plain_module_share_checkpoints(tmp_path):
    model, opt = trained()
    checkpoint.save(tmp_path / "ckpt", torch.compile(model), opt)  # the wrapper's keys are '_orig_mod.…'
    twin, twin_opt = trained(steps=0)
    checkpoint.load(tmp_path / "ckpt", twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("args", "error", "match"), [
    (("model", "opt"), TypeError, "the model must be a torch.nn.Module, got str"),
    ((None, None), TypeError, "optimizers must be a torch.optim.Optimizer or a list of them, got NoneType"),
    ((None, "opt", [1, 2]), TypeError, "extra must be a dict, got list"),
])
def test_misuse_is_named(tmp_path, args, error, match):
    model, opt = trained(steps=0)
    args = tuple(model if a is None and i == 0 else opt if a == "opt" else a for i, a in enumerate(args))
    with pytest.raises(error, match=match):
        checkpoint.save(tmp_path / "ckpt", *args)
    with pytest.raises(ValueError, match="must name a directory"):
        checkpoint.save(".", model, opt)

