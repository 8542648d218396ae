"""A tensor learning rate, as torch.optim takes one (``lr=torch.tensor(0.02)``, written in place by torch's LR
schedulers so that a compiled step is not recompiled when it changes): every preset and family member steps with it
as with the float, groups do not share it, it round-trips through state dicts, and a bad one is a clear error."""

import io

import pytest
import torch
from helpers import GEOMETRY_PRESETS, classification_data, loss_fn, mlp, preset_ids, train
from torch.optim.lr_scheduler import LambdaLR

import specopt
from specopt import (
    AdaGO,
    AdaMuon,
    DoG,
    DropMuon,
    GluonMVR,
    Muon,
    MuonBP,
    NorMuon,
    ProxSpectral,
    Scion,
    UScion,
    registry,
)
from specopt.constraints import FrobeniusBall
from specopt.integrations import create_optimizer

MEMBERS = GEOMETRY_PRESETS + [(NorMuon, {}), (AdaMuon, {}), (AdaGO, {}), (DoG, {}), (DropMuon, {}),
                              (MuonBP, {"blocks": 2, "period": 2}), (GluonMVR, {}), (ProxSpectral, {})]
CLOSURE = {GluonMVR}


def train_scheduled(model, opt, scheduler, X, y, steps: int, closure: bool = False) -> None:
    """``steps`` training steps, the scheduler stepped after each."""
    for _ in range(steps):
        train(model, opt, X, y, 1, closure=closure)
        scheduler.step()


def scheduled_run(cls, kwargs, tensor: bool, steps: int = 4, bias: bool = True):
    """``steps`` steps under a LambdaLR (γ_k = γ_0/(1+k)), with the preset's default lr as a float or a tensor."""
    X, y = classification_data()
    model = mlp(3, bias=bias)
    lr = cls(mlp(3, bias=bias).parameters(), **kwargs).defaults["lr"]
    opt = cls(model.parameters(), lr=torch.tensor(lr) if tensor else lr, **kwargs)
    train_scheduled(model, opt, LambdaLR(opt, lambda k: 1 / (1 + k)), X, y, steps, closure=cls in CLOSURE)
    return model, opt


@pytest.mark.parametrize("cls, kwargs", MEMBERS, ids=preset_ids(MEMBERS))
def test_a_tensor_lr_under_a_scheduler_steps_as_the_float(cls, kwargs):
    floats, float_opt = scheduled_run(cls, kwargs, tensor=False)
    tensors, tensor_opt = scheduled_run(cls, kwargs, tensor=True)
    for a, b in zip(floats.parameters(), tensors.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)  # a float32 γ·ρ against Python's float64 one
    for f, t in zip(float_opt.param_groups, tensor_opt.param_groups, strict=True):
        assert isinstance(t["lr"], torch.Tensor) and float(t["lr"]) == pytest.approx(f["lr"])


def test_a_tensor_lr_reaches_the_projection_of_a_constraint():
    """ProxSpectral's projection in the smooth preconditioner's geometry depends on γ (it is computed on the host)."""
    kwargs = {"preconditioner": "smooth", "constraint": FrobeniusBall(2.0)}
    floats, _ = scheduled_run(ProxSpectral, kwargs, tensor=False, bias=False)
    tensors, _ = scheduled_run(ProxSpectral, kwargs, tensor=True, bias=False)
    for a, b in zip(floats.parameters(), tensors.parameters(), strict=True):
        assert float(torch.linalg.vector_norm(b)) <= 2.0 * (1 + 1e-5)
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_a_tensor_lr_steps_bf16_parameters_as_the_float():
    """Low-precision parameters take AdamW's single-tensor formulas (fp32 state) beside Muon's step."""
    X, y = classification_data()
    runs = []
    for lr in (0.02, torch.tensor(0.02)):
        model = mlp(3).bfloat16()
        opt = Muon(model.parameters(), lr=lr)
        train_scheduled(model, opt, LambdaLR(opt, lambda k: 1 / (1 + k)), X.bfloat16(), y, 3)
        runs.append(model)
    for a, b in zip(*(m.parameters() for m in runs), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=3e-3)  # a bf16 rounding or two apart (steps of ~0.05)
        assert b.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_tensor_lr_decays_low_precision_weights_as_the_float(dtype, compiled):
    """γλ = 0.002 with zero gradients: the weights shrink as with the float lr, bit for bit (1 − γλ rounded to bf16
    first is 1 − 2⁻⁸, twice the decay; in fp16 it is off by a few percent)."""
    start, runs = torch.randn(16, 16, generator=torch.Generator().manual_seed(0)).to(dtype), []
    for lr in (0.02, torch.tensor(0.02)):
        torch._dynamo.reset()
        p = torch.nn.Parameter(start.clone())
        opt = UScion([p], lr=lr, weight_decay=0.1)
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step  # the branch-free update
        for _ in range(5):
            p.grad = torch.zeros_like(p)
            step()
        runs.append(p.detach())
    torch._dynamo.reset()
    assert torch.equal(runs[1], runs[0])
    assert torch.linalg.vector_norm(runs[0].float()) < torch.linalg.vector_norm(start.float())  # it decayed


def test_groups_own_their_tensor_lr():
    """torch would hand every group the one default tensor; a scheduler with per-group values then overwrites it."""
    model = mlp()
    lr = torch.tensor(0.1)
    opt = UScion([{"params": [model[0].weight]}, {"params": [model[2].weight], "lr": torch.tensor(0.3)},
                  {"params": [model[4].weight]}], lr=lr)
    LambdaLR(opt, [lambda k: 1.0, lambda k: 1.0, lambda k: 0.5])
    values = [float(g["lr"]) for g in opt.param_groups]
    assert values == pytest.approx([0.1, 0.3, 0.05])
    assert len({id(g["lr"]) for g in opt.param_groups}) == 3 and float(lr) == pytest.approx(0.1)


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
@pytest.mark.parametrize("cls", [Muon, UScion])
def test_a_one_element_tensor_lr_of_any_shape_steps_as_the_float(cls, shape):
    """torch.optim takes ``lr=torch.tensor([0.02])``; a (1, 1) γ would broadcast a bias's update to a row, a (1,)
    one a 0-d parameter's."""
    runs = []
    for lr in (0.02, torch.full(shape, 0.02)):
        model = mlp(3)
        model.gain = torch.nn.Parameter(torch.tensor(1.0))
        opt = cls(model.parameters(), lr=lr, weight_decay=0.1)
        for _ in range(2):
            opt.zero_grad()
            (loss_fn(model, *classification_data()) * model.gain).backward()
            opt.step()
        runs.append(model)
    for a, b in zip(*(m.parameters() for m in runs), strict=True):
        assert b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # float32 γ·λ, γ·ρ against Python's float64 ones


@pytest.mark.parametrize("shape", [(), (1,)])
def test_muons_adamw_groups_own_their_tensor_lr(shape):
    """One ``adamw_lr`` serves every AdamW group Muon makes (the head and the vectors of role-aware groups); one of
    shape (1,) is held as 0-d views, which must not share its storage either."""
    opt = create_optimizer(mlp(), "muon", lr=torch.tensor(0.02), adamw_lr=torch.full(shape, 0.03))
    adamw = [g for g in opt.param_groups if g["norm"] == "adamw"]
    assert len(adamw) >= 2 and len({id(g["lr"]) for g in opt.param_groups}) == len(opt.param_groups)
    LambdaLR(opt, [lambda k, i=i: 1 / (1 + i) for i in range(len(opt.param_groups))])
    lrs = [float(g["lr"]) for g in opt.param_groups]
    assert lrs == pytest.approx([float(g["initial_lr"]) / (1 + i) for i, g in enumerate(opt.param_groups)])


@pytest.mark.parametrize("name", [n for n in registry.DEFAULTS if n not in ("adamw", "sgd", "torch-muon")])
def test_every_named_optimizer_takes_a_tensor_lr_into_every_group(name):
    """``create_optimizer(model, name, lr=tensor)``: every group, AdamW's included, holds a tensor of its own."""
    lr = float(registry.resolve(name)["lr"])
    opt = create_optimizer(mlp(), name, lr=torch.tensor(lr))
    assert all(isinstance(g["lr"], torch.Tensor) for g in opt.param_groups)
    assert len({id(g["lr"]) for g in opt.param_groups}) == len(opt.param_groups)


def test_muon_gives_its_adamw_a_tensor_lr_too():
    opt = Muon(mlp().parameters(), lr=torch.tensor(0.02), adamw_lr=0.03)
    adamw = [g for g in opt.param_groups if g["norm"] == "adamw"]
    assert adamw and all(isinstance(g["lr"], torch.Tensor) and float(g["lr"]) == pytest.approx(0.03) for g in adamw)


def test_a_tensor_lr_resumes_bit_for_bit():
    X, y = classification_data()

    def make(model):
        opt = Muon(model.parameters(), lr=torch.tensor(0.02))
        return opt, LambdaLR(opt, lambda k: 0.9**k)

    straight = mlp(1)
    train_scheduled(straight, *make(straight), X, y, 6)
    first = mlp(1)
    opt1, scheduler1 = make(first)
    train_scheduled(first, opt1, scheduler1, X, y, 3)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict(), "sched": scheduler1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = mlp(99)
    resumed.load_state_dict(saved["model"])
    opt2, scheduler2 = make(resumed)
    opt2.load_state_dict(saved["opt"])
    scheduler2.load_state_dict(saved["sched"])
    train_scheduled(resumed, opt2, scheduler2, X, y, 3)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_tensor_lr_survives_a_dcp_checkpoint_in_place(tmp_path):
    """specopt.checkpoint writes the value into the group's own tensor: the one its scheduler and a compiled step
    hold."""
    X, y = classification_data()

    def build():
        model = mlp(1)
        opt = Muon(model.parameters(), lr=torch.tensor(0.02))
        return model, opt, LambdaLR(opt, lambda k: 0.9**k)

    model, opt, scheduler = build()
    train_scheduled(model, opt, scheduler, X, y, 3)
    specopt.checkpoint.save(tmp_path / "ckpt", model, opt, extra={"scheduler": scheduler.state_dict()})
    resumed_model, resumed, resumed_scheduler = build()
    held = [g["lr"] for g in resumed.param_groups]
    extra = specopt.checkpoint.load(tmp_path / "ckpt", resumed_model, resumed)
    resumed_scheduler.load_state_dict(extra["scheduler"])
    assert all(g["lr"] is h for g, h in zip(resumed.param_groups, held, strict=True))
    assert [float(g["lr"]) for g in resumed.param_groups] == [float(g["lr"]) for g in opt.param_groups]
    train_scheduled(model, opt, scheduler, X, y, 3)
    train_scheduled(resumed_model, resumed, resumed_scheduler, X, y, 3)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lr, problem", [(torch.tensor([0.1, 0.2]), "one real floating value"),
                                         (torch.tensor(1), "one real floating value"),
                                         (torch.tensor(0.1, requires_grad=True), "not require grad"),
                                         (torch.tensor(-0.1), "finite number"),
                                         (torch.tensor(float("nan")), "finite number")])
def test_a_bad_tensor_lr_is_a_clear_error(lr, problem):
    with pytest.raises(ValueError, match=problem):
        UScion(mlp().parameters(), lr=lr)


def test_scion_refuses_a_tensor_lr_over_1_as_the_float():
    with pytest.raises(ValueError, match=r"lr must be in \[0, 1\] for Scion"):
        Scion(mlp().parameters(), lr=torch.tensor(2.0))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_a_numpy_scalar_lr_and_weight_decay_are_floats_in_the_groups_and_the_state_dict(dtype):
    """torch.optim takes numpy's scalars (an HPO library's sample); specopt refused np.float32 ("must be a finite
    number …, got np.float32(0.02)"). Held as Python floats, the state dict loads with weights_only=True."""
    import io

    import numpy as np

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = specopt.Muon(specopt.param_groups(model), lr=np.dtype(dtype).type(1), weight_decay=np.dtype(dtype).type(0))
    assert all(type(g["lr"]) is float and type(g["weight_decay"]) is float for g in opt.param_groups)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))


def test_a_tensor_lr_steps_as_the_float_when_msign_computes_in_bf16():
    """msign's output is bf16 where that is the compute dtype; the tensor step γ·ρ·factor was cast to it before the
    multiply (0.0123 → 0.01233: 0.13 % of a Muon step off the float lr's), where a float alpha is never rounded."""
    def one_step(lr):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 8)
        before = model.weight.detach().clone()
        opt = specopt.Muon([model.weight], lr=lr, compute_dtype=torch.bfloat16)
        model.weight.grad = torch.randn(8, 16)
        opt.step()
        return model.weight.detach() - before

    tensor, number = one_step(torch.tensor(0.0123)), one_step(0.0123)
    assert float((tensor - number).abs().max() / number.abs().max()) < 1e-5  # float32's γ·ρ, not bf16's (2e-3)
