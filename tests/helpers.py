"""Small real problems for the optimizer tests."""

import copy

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from specopt import ALMOND, ClippedScion, Gluon, Muon, Norm, Scion, SteepestDescent, UScion

GEOMETRY_PRESETS = [
    (Muon, {}),
    (Scion, {}),
    (UScion, {}),
    (ClippedScion, {"clip_radius": 1.0}),
    (ClippedScion, {"clip_radius": 1.0, "constrained": True}),
    (Gluon, {}),
    (ALMOND, {}),
    (SteepestDescent, {}),
]
"""Every preset of the engine's geometry step with the settings the engine-wide tests use."""


class Frobenius(Norm):
    """An entry-wise user norm that knows nothing of stacks (``batched`` left False): the whole tensor is one
    item."""

    def lmo(self, g, batch_dims=None):
        return -g / g.norm()

    def dual(self, g, batch_dims=None):
        return g.norm()

    def norm(self, x, batch_dims=None):
        return x.norm()

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        x = torch.randn(shape, generator=generator)
        return (radius * x / x.norm()).to(dtype=dtype, device=device)


def preset_ids(presets) -> list[str]:
    return [f"{c.__name__}{'-' + str(k) if k else ''}" for c, k in presets]


def mlp(seed: int = 0, bias: bool = True, widths=(20, 32, 32, 4)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def classification_data(n: int = 256, d: int = 20, classes: int = 4, seed: int = 0):
    """Linearly separable data from a random teacher (so logistic regression can reach ~0 loss)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X @ torch.randn(d, classes, generator=g)).argmax(1)
    return X, y


def loss_fn(model, X, y):
    return nn.functional.cross_entropy(model(X), y)


def train(model, opt, X, y, steps: int, closure: bool = False) -> list[float]:
    losses = []
    for _ in range(steps):
        def step_closure():
            opt.zero_grad()
            loss = loss_fn(model, X, y)
            loss.backward()
            return loss
        if closure:
            losses.append(float(opt.step(step_closure).detach()))
        else:
            losses.append(step_closure().item())
            opt.step()
    return losses


def assert_resumes_exactly(model, opt, make_opt, X, y, steps: int = 3, closure: bool = False):
    """A twin built by ``make_opt(twin_model)`` from ``opt``'s state dict takes the same ``steps`` steps, bit for
    bit; returns the twin model and optimizer."""
    twin_model = copy.deepcopy(model)
    twin = make_opt(twin_model)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, X, y, steps, closure=closure)
    train(twin_model, twin, X, y, steps, closure=closure)
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)
    return twin_model, twin


def torch_flow_save(path: str, model, opt) -> None:
    """torch's own checkpoint flow (torchtitan-style): ``get_state_dict`` → ``dcp.save``."""
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)


def torch_flow_load(path: str, model, opt) -> None:
    """A new model and optimizer's ``get_state_dict`` (torch makes the optimizer's state with one zero step) as the
    template of ``dcp.load``, then ``set_state_dict``."""
    model_sd, optim_sd = get_state_dict(model, opt)
    template = {"model": model_sd, "optim": optim_sd}
    dcp.load(template, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=template["model"], optim_state_dict=template["optim"])
