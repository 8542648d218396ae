"""An optimizer does not write into the param-group dicts it is given: one list of groups serves several
optimizers, each with its own defaults (torch's add_param_group fills defaults into the dicts it receives)."""

import torch
from helpers import mlp

import specopt
from specopt import Muon, Scion, UScion


def snapshot(groups: list[dict]) -> list[dict]:
    """Each group's keys with the identity of its values, and the identity of every entry of its params list."""
    return [{"keys": list(g), "values": {k: id(v) for k, v in g.items()},
             "params": [(m[0], id(m[1])) if isinstance(m, tuple) else id(m) for m in g["params"]]}
            for g in groups]


def test_one_param_groups_list_gives_each_optimizer_its_own_defaults():
    model = mlp()
    groups = specopt.param_groups(model)
    before = snapshot(groups)
    first = Scion(groups, lr=0.1)
    assert snapshot(groups) == before  # no lr, momentum, ... written into the caller's dicts
    second = UScion(groups, lr=0.2, momentum=0.5)
    assert snapshot(groups) == before
    assert [g["lr"] for g in first.param_groups] == [0.1] * len(groups)
    assert [g["lr"] for g in second.param_groups] == [0.2] * len(groups)
    assert {g["momentum"] for g in second.param_groups} == {0.5}
    # the optimizers' own groups are separate dicts: a scheduler on one leaves the other alone
    first.param_groups[0]["lr"] = 0.05
    assert second.param_groups[0]["lr"] == 0.2 and "lr" not in groups[0]


def test_group_values_still_win_over_the_defaults():
    model = mlp()
    groups = [{"params": list(model[0].parameters()), "lr": 0.5}, {"params": list(model[2].parameters())}]
    before = snapshot(groups)
    opt = UScion(groups, lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    assert snapshot(groups) == before


def test_muon_after_scion_and_back_leave_the_groups_alone():
    model = mlp()
    groups = specopt.param_groups(model)
    before = snapshot(groups)
    muon = Muon(groups, lr=0.03)
    scion = Scion(groups, lr=0.2)
    assert snapshot(groups) == before
    assert {g["lr"] for g in muon.param_groups if g["norm"] != "adamw"} == {0.03}
    assert {g["lr"] for g in scion.param_groups} == {0.2}
    assert {g["momentum"] for g in scion.param_groups} == {0.9}  # Scion's default, not Muon's 0.95


def test_a_lone_tensor_group_is_not_rewritten_into_a_list():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    group = {"params": weight}
    Scion([group])
    assert group == {"params": weight} and group["params"] is weight
