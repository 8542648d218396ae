"""torch.compile: every preset trains a compiled model and runs a compiled step; the compiled step of Muon and
Scion is one graph (fullgraph=True, from torch 2.13; before, one graph break at its start) that equals the eager
step, never recompiles as the step counts grow, and writes nothing, bit for bit, when a gradient is not finite.
Tiny models keep the compile times small; the module skips where torch.compile cannot build code (no C++
compiler, unsupported platform)."""

import copy

import pytest
import torch
from helpers import GEOMETRY_PRESETS, classification_data, loss_fn, mlp, preset_ids, train
from torch import nn

from specopt import AdaGO, AdaMuon, DoG, DropMuon, Muon, MuonBP, NorMuon, ProxSpectral, Scion, UScion, linalg
from specopt.engine import ONE_GRAPH_STEP
from specopt.norms import Spectral

OLD_DYNAMO_SPLITS_THE_STEP = pytest.mark.xfail(
    torch.__version__ < "2.10", strict=True,
    reason="dynamo before 2.10 does not resume the trace after the step's graph break (its check of old step "
           "counts): the step runs correctly, compiled function by function, recompiled per tensor")

PRESETS = GEOMETRY_PRESETS + [(ProxSpectral, {}), (AdaGO, {}), (DoG, {})]
IDS = preset_ids(PRESETS)
SMALL = (20, 16, 4)  # two weight matrices: a short graph to compile


@pytest.fixture(scope="module")
def compiler():
    try:
        torch.compile(lambda x: x.sin() + 1, fullgraph=True)(torch.zeros(2))
    except Exception as error:  # a missing C++ compiler surfaces as one of several exception types
        pytest.skip(f"torch.compile does not work here: {type(error).__name__}: {error}")


@pytest.fixture(autouse=True)
def fresh_dynamo(compiler):
    """Each compiled optimizer is a new cache entry of GeometryOptimizer.step; start every test with none, so no
    test runs into dynamo's recompile limit and silently falls back to eager."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def inductor_counting():
    """Inductor as the backend, counting the graphs it is handed (one per compilation)."""
    from torch._inductor.compile_fx import compile_fx

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    return backend, graphs


def set_gradients(model, X, y, nan: bool = False) -> None:
    model.zero_grad(set_to_none=True)
    loss_fn(model, X, y).backward()
    if nan:
        next(model.parameters()).grad[0, 0] = float("nan")


def tensors(opt) -> list[torch.Tensor]:
    """Every parameter and state tensor of ``opt``, in a fixed order."""
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            out.append(p)
            out.extend(v for _, v in sorted(opt.state[p].items()) if isinstance(v, torch.Tensor))
    return out


def assert_same_run(eager, compiled, atol):
    for a, b in zip(tensors(eager), tensors(compiled), strict=True):
        torch.testing.assert_close(b, a, atol=atol, rtol=0)


@OLD_DYNAMO_SPLITS_THE_STEP
@pytest.mark.parametrize("cls", [Muon, Scion])
def test_compiled_step_is_one_graph_equal_to_eager_and_skips_nonfinite_exactly(cls, monkeypatch):
    # With biases: Muon's AdamW, Scion's BiasRMS. The eager twin takes the CPU's row-block symmetric products
    # (matrices from 768 rows) on these small matrices too; the compiled step the plain ones (out= into the
    # blocks would break the graph).
    monkeypatch.setattr(linalg, "SYMMETRIC_MIN_ROWS", 8)
    X, y = classification_data()
    eager_model, compiled_model = mlp(widths=SMALL), mlp(widths=SMALL)
    eager = cls(eager_model.parameters(), nonfinite="skip")
    compiled = cls(compiled_model.parameters(), nonfinite="skip")
    backend, graphs = inductor_counting()
    step = torch.compile(compiled.step, backend=backend, fullgraph=ONE_GRAPH_STEP)
    for k in range(6):
        nan = k == 3
        set_gradients(eager_model, X, y, nan)
        set_gradients(compiled_model, X, y, nan)
        eager.step()
        before = [t.clone() for t in tensors(compiled)]
        step()
        if nan:  # nothing written: parameters, momentum, AdamW moments, step counts
            assert all(torch.equal(a, b) for a, b in zip(before, tensors(compiled), strict=True))
        else:
            assert not all(torch.equal(a, b) for a, b in zip(before, tensors(compiled), strict=True))
        assert_same_run(eager, compiled, atol=1e-5)
    assert compiled.skipped_steps == eager.skipped_steps == 1
    assert {float(compiled.state[p]["step"]) for p in compiled_model.parameters()} == {5.0}
    assert len(graphs) == 1  # one compilation: no recompiles as the (tensor) step counts grow, nor for the NaN


@pytest.mark.parametrize("cls, kwargs", PRESETS + [(NorMuon, {}), (AdaMuon, {}), (MuonBP, {}), (DropMuon, {})],
                         ids=IDS + ["NorMuon", "AdaMuon", "MuonBP", "DropMuon"])
def test_a_compiled_skipped_step_writes_no_state_of_any_preset(cls, kwargs):
    """Under torch.compile a step with a NaN gradient runs to its end with ``ok`` false; every state write must go
    through it. NorMuon's and AdaMuon's second moments were updated in place regardless (|Δ| 7e-3)."""
    X, y = classification_data()
    model = mlp(widths=SMALL)
    opt = cls(model.parameters(), nonfinite="skip", **kwargs)
    step = torch.compile(opt.step, backend="aot_eager")
    for k in range(4):
        set_gradients(model, X, y, nan=k == 3)
        before = [t.clone() for t in tensors(opt)]
        step()
    assert opt.skipped_steps == 1
    changed = [i for i, (a, b) in enumerate(zip(before, tensors(opt), strict=True)) if not torch.equal(a, b)]
    assert not changed, f"the skipped step wrote {len(changed)} tensors"


def test_compiled_raise_stops_on_a_nonfinite_gradient_and_writes_nothing():
    torch.manual_seed(0)
    model = nn.Linear(8, 4, bias=False)
    opt = UScion(model.parameters())  # nonfinite="raise"
    step = torch.compile(opt.step, fullgraph=ONE_GRAPH_STEP)
    model.weight.grad = torch.randn(4, 8)
    step()
    before = [t.clone() for t in tensors(opt)]
    model.weight.grad = torch.randn(4, 8)
    model.weight.grad[1, 2] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite gradient"):
        step()
    assert all(torch.equal(a, b) for a, b in zip(before, tensors(opt), strict=True))


def test_compiled_skip_keeps_the_nan_out_of_an_svd():
    """The skipped update is still computed, from zeroed gradients: an exact (SVD) lmo of the NaN would raise."""
    torch.manual_seed(0)
    model = nn.Linear(8, 4, bias=False)
    opt = UScion(model.parameters(), norm=Spectral(method="svd"), nonfinite="skip")
    step = torch.compile(opt.step, backend="eager", fullgraph=ONE_GRAPH_STEP)
    model.weight.grad = torch.randn(4, 8)
    step()
    before = [t.clone() for t in tensors(opt)]
    model.weight.grad[0, 0] = float("nan")
    step()
    assert all(torch.equal(a, b) for a, b in zip(before, tensors(opt), strict=True))
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("cls", [Muon, Scion])
def test_bf16_parameters_under_compile_keep_fp32_state_and_follow_eager(cls):
    X, y = classification_data()
    eager_model, compiled_model = mlp(widths=SMALL).bfloat16(), mlp(widths=SMALL).bfloat16()
    eager, compiled = cls(eager_model.parameters()), cls(compiled_model.parameters())
    step = torch.compile(compiled.step, backend="eager")
    for _ in range(3):
        for model in (eager_model, compiled_model):
            model.zero_grad(set_to_none=True)
            loss_fn(model, X.bfloat16(), y).backward()
        eager.step()
        step()
    assert {p.dtype for p in compiled_model.parameters()} == {torch.bfloat16}
    assert {v.dtype for p in compiled_model.parameters() for v in compiled.state[p].values()} == {torch.float32}
    assert_same_run(eager, compiled, atol=1e-2)  # a bf16 rounding of the weights (~4e-3 here) apart at most


@pytest.mark.parametrize("cls, kwargs", PRESETS, ids=IDS)
def test_every_preset_runs_a_compiled_step(cls, kwargs):
    """dynamo's tracing (with the backend that runs its graphs as they are): graph breaks where a preset reads
    tensors on the host (Gluon's fit), the branch-free writes everywhere else; the same run as eager."""
    X, y = classification_data()
    eager_model, compiled_model = mlp(widths=SMALL), mlp(widths=SMALL)
    eager, compiled = cls(eager_model.parameters(), **kwargs), cls(compiled_model.parameters(), **kwargs)
    step = torch.compile(compiled.step, backend="eager")
    for _ in range(2):  # the first call makes the state, the second runs on it
        set_gradients(eager_model, X, y)
        set_gradients(compiled_model, X, y)
        eager.step()
        step()
    assert_same_run(eager, compiled, atol=1e-5)


def test_every_preset_trains_a_compiled_model():
    X, y = classification_data()
    model = mlp()
    start = copy.deepcopy(model.state_dict())
    compiled = torch.compile(model)
    for cls, kwargs in PRESETS:
        model.load_state_dict(start)
        reference = mlp()
        reference.load_state_dict(start)
        losses = train(compiled, cls(compiled.parameters(), **kwargs), X, y, 3)
        train(reference, cls(reference.parameters(), **kwargs), X, y, 3)
        assert all(torch.isfinite(torch.tensor(losses))), cls.__name__
        for a, b in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=cls.__name__)


def test_int_step_counts_of_old_checkpoints_work_under_compile():
    """State written with Python-int step counts (checkpoints from before the counts were tensors, restored
    without load_state_dict) is converted once, with one graph break, and the run goes on as eagerly."""
    X, y = classification_data()
    eager_model, compiled_model = mlp(), mlp()
    eager, compiled = Muon(eager_model.parameters()), Muon(compiled_model.parameters())
    for model, opt in ((eager_model, eager), (compiled_model, compiled)):
        train(model, opt, X, y, 2)
        for state in opt.state.values():
            state["step"] = int(state["step"])
    step = torch.compile(compiled.step, backend="eager")
    for _ in range(2):
        set_gradients(eager_model, X, y)
        set_gradients(compiled_model, X, y)
        eager.step()
        step()
    assert_same_run(eager, compiled, atol=1e-5)
    assert all(isinstance(s["step"], torch.Tensor) and float(s["step"]) == 4.0 for s in compiled.state.values())


@OLD_DYNAMO_SPLITS_THE_STEP
@pytest.mark.parametrize("cls", [Muon, Scion])
def test_a_tensor_lr_follows_its_scheduler_without_recompiling(cls, monkeypatch):
    """torch.optim's convention for compiled steps under an LR scheduler: with ``lr`` a tensor the scheduler writes
    in place, the step is compiled once and follows the schedule as the eager step does (a float lr that changes
    is a new constant of the trace: a recompilation every step). test_tensor_lr.py: the eager step with a tensor lr
    is the step with the float."""
    monkeypatch.setattr(linalg, "SYMMETRIC_MIN_ROWS", 8)  # the eager twin's symmetric products as the compiled one's
    X, y = classification_data()
    eager_model, compiled_model = mlp(widths=SMALL), mlp(widths=SMALL)
    lr = cls(mlp(widths=SMALL).parameters()).defaults["lr"]
    eager = cls(eager_model.parameters(), lr=torch.tensor(lr))
    compiled = cls(compiled_model.parameters(), lr=torch.tensor(lr))
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k)) for opt in (eager, compiled)]
    backend, graphs = inductor_counting()
    step = torch.compile(compiled.step, backend=backend)  # the scheduler's wrapper of step (skipped by dynamo)
    for _ in range(4):
        set_gradients(eager_model, X, y)
        set_gradients(compiled_model, X, y)
        eager.step()
        step()
        for schedule in schedules:
            schedule.step()
        assert_same_run(eager, compiled, atol=1e-5)
    assert float(compiled.param_groups[0]["lr"]) == pytest.approx(lr / 5)
    assert len(graphs) == 1


@pytest.mark.parametrize("cls, kwargs", [(MuonBP, {"period": 2}), (DropMuon, {}), (AdaGO, {}), (DoG, {})],
                         ids=["MuonBP", "DropMuon", "AdaGO", "DoG"])
def test_the_family_steps_compile_once_and_never_again(cls, kwargs):
    """After the first two steps (state created, then read) no step is compiled anew: MuonBP's compiled step had
    recompiled at every step (its guards read a set of the step's record ids) until dynamo's recompile limit, after
    which the engine's frame ran eagerly, also for the next optimizer in the process."""
    X, y = classification_data()
    model = mlp(widths=SMALL)
    opt = cls(model.parameters(), lr=torch.tensor(cls(mlp(widths=SMALL).parameters()).defaults["lr"]), **kwargs)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    step = torch.compile(opt.step, backend=counting)
    compiled = []
    for _ in range(7):
        set_gradients(model, X, y)
        before = len(graphs)
        step()
        compiled.append(len(graphs) - before)
    assert sum(compiled[2:]) == 0, compiled
