"""PyTorch optimizer conventions and error handling of the engine (shared by every preset)."""

import copy
import io
import pickle
import warnings

import pytest
import torch
from helpers import GEOMETRY_PRESETS, assert_resumes_exactly, classification_data, loss_fn, mlp, preset_ids, train
from torch import nn

import specopt
from specopt import ClippedScion, Gluon, Muon, Scion, UScion
from specopt.norms import Spectral

ALL = GEOMETRY_PRESETS
IDS = preset_ids(ALL)


@pytest.mark.parametrize("cls, kwargs", ALL, ids=IDS)
def test_state_dict_round_trip_is_bit_for_bit(cls, kwargs):
    X, y = classification_data()
    straight = mlp(1)
    opt = cls(straight.parameters(), **kwargs)
    train(straight, opt, X, y, 20)

    first = mlp(1)
    opt1 = cls(first.parameters(), **kwargs)
    train(first, opt1, X, y, 10)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only=True: the state dict is plain data
    resumed = mlp(99)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed.parameters(), **kwargs)
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, X, y, 10)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_dicts_with_int_step_counts_still_load():
    """Step counts were Python ints before they became 0-d tensors: such state dicts resume bit for bit (a
    schedule's β reads the count)."""
    X, y = classification_data()
    straight = mlp(1)
    train(straight, UScion(straight.parameters(), momentum="theory"), X, y, 4)
    first = mlp(1)
    opt1 = UScion(first.parameters(), momentum="theory")
    train(first, opt1, X, y, 2)
    saved = opt1.state_dict()
    for state in saved["state"].values():
        state["step"] = int(state["step"])
    resumed = mlp(99)
    resumed.load_state_dict(first.state_dict())
    opt2 = UScion(resumed.parameters(), momentum="theory")
    opt2.load_state_dict(saved)
    assert all(s["step"].dtype == torch.float32 and s["step"].ndim == 0 for s in opt2.state.values())
    train(resumed, opt2, X, y, 2)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


WITH_OWN_STATE = [(specopt.NorMuon, {}), (specopt.DoG, {}), (specopt.AdaGO, {})]
"""Members with state of their own kinds: row moments, a copy of the weights, 0-d float32 running sums."""
WITH_OWN_STATE_IDS = ["NorMuon", "DoG", "AdaGO"]


def state_dtypes(model, opt) -> dict:
    """``{(parameter index, state key): dtype}`` of every state tensor."""
    return {(i, k): v.dtype for i, p in enumerate(model.parameters()) for k, v in opt.state[p].items()
            if torch.is_tensor(v)}


@pytest.mark.parametrize("cls, kwargs", ALL + WITH_OWN_STATE, ids=IDS + WITH_OWN_STATE_IDS)
def test_float64_weights_resume_bit_for_bit(cls, kwargs):
    X, y = classification_data()
    model = mlp(1).double()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, X.double(), y, 3)
    assert_resumes_exactly(model, opt, lambda m: cls(m.parameters(), **kwargs), X.double(), y)


LOW_PRECISION = [(c, k) for c, k in WITH_OWN_STATE if c is not specopt.DoG]  # DoG refuses bf16 weights (below)


@pytest.mark.parametrize("cls, kwargs", ALL + LOW_PRECISION, ids=IDS + preset_ids(LOW_PRECISION))
def test_bf16_weights_resume_bit_for_bit_with_their_float32_state(cls, kwargs):
    """The state of low-precision weights is float32 (momentum, AdamW's moments, NorMuon's row moments); torch's
    load_state_dict casts every floating state tensor to the parameter's dtype, which would resume them in bf16."""
    X, y = classification_data()
    model = mlp(1).bfloat16()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, X.bfloat16(), y, 3)
    twin_model, twin = assert_resumes_exactly(model, opt, lambda m: cls(m.parameters(), **kwargs), X.bfloat16(), y)
    dtypes = state_dtypes(model, opt)
    assert dtypes == state_dtypes(twin_model, twin)
    assert all(dtype == torch.float32 for dtype in dtypes.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dog_refuses_weights_too_coarse_for_its_first_steps(dtype):
    """DoG's first steps (r_ε ≈ 1e-6·‖W_0‖) are below bf16's and fp16's resolution: the weights never moved and the
    distance that sets its step never grew, so it did not train at all; a clear error instead."""
    model = mlp(1).to(dtype)
    with pytest.raises(ValueError, match=rf"DoG on {dtype} weights: its first steps.* train float32 weights"):
        specopt.DoG(specopt.param_groups(model))


@pytest.mark.parametrize("cls, kwargs", ALL + WITH_OWN_STATE, ids=IDS + WITH_OWN_STATE_IDS)
def test_float32_state_loads_into_float64_weights_in_their_dtype(cls, kwargs):
    """As torch casts state to the parameter's dtype: a float32 run resumed in float64 keeps stepping (its moments
    in float64, as a float64 run's)."""
    X, y = classification_data()
    model = mlp(1)
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, X, y, 2)
    wide = copy.deepcopy(model).double()
    wide_opt = cls(wide.parameters(), **kwargs)
    wide_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(wide, wide_opt, X.double(), y, 2)
    fresh = copy.deepcopy(model).double()  # the dtypes a float64 run's own state has
    fresh_opt = cls(fresh.parameters(), **kwargs)
    train(fresh, fresh_opt, X.double(), y, 1)
    assert state_dtypes(wide, wide_opt) == state_dtypes(fresh, fresh_opt)


@pytest.mark.parametrize("cls, kwargs", ALL + WITH_OWN_STATE, ids=IDS + WITH_OWN_STATE_IDS)
def test_state_of_another_models_shapes_is_refused_and_the_optimizer_left_as_it_was(cls, kwargs):
    """Same group sizes, other widths: torch loads such state, and the next step fails deep inside with a size
    mismatch, the optimizer's state already replaced."""
    X, y = classification_data()
    narrow, wide = nn.Linear(X.shape[1], 8), nn.Linear(X.shape[1], 16)
    opt = cls(narrow.parameters(), **kwargs)
    narrow(X).logsumexp(1).mean().backward()
    opt.step()
    wide_opt = cls(wide.parameters(), **kwargs)
    wide(X).logsumexp(1).mean().backward()
    wide_opt.step()
    before = copy.deepcopy(wide_opt.state_dict())
    if not any(torch.is_tensor(v) and v.ndim for state in opt.state.values() for v in state.values()):
        # steepest descent without momentum: no state of the weights' shapes to mismatch, so it loads
        wide_opt.load_state_dict(opt.state_dict())
        return
    with pytest.raises(ValueError, match=r"the saved state '\w+' of .* has shape \(8, \d+\), where this optimizer's "
                                         r"is \(16, \d+\): the state belongs to another model"):
        wide_opt.load_state_dict(opt.state_dict())
    after = wide_opt.state_dict()
    assert all(torch.equal(after["state"][i][k], v) for i, s in before["state"].items() for k, v in s.items()
               if torch.is_tensor(v))


@pytest.mark.parametrize("which", ["weight", "bias"])
@pytest.mark.parametrize("cls, kwargs", ALL + WITH_OWN_STATE, ids=IDS + WITH_OWN_STATE_IDS)
def test_a_parameter_resized_in_place_after_stepping_is_refused_before_anything_moves(cls, kwargs, which):
    """``resize_token_embeddings`` keeps the Parameter and replaces its data: torch's fused AdamW kernel, which Muon's
    AdamW part (the biases here) uses, wrote past the old moments (memory corruption), and the other updates failed
    deep inside."""
    X, y = classification_data()
    model = mlp(1)
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, X, y, 2)
    resized = getattr(model[2], which)
    stateless = not any(torch.is_tensor(v) and v.ndim for v in opt.state[resized].values())
    resized.data = torch.randn(40, *resized.shape[1:])
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    if stateless:  # steepest descent without momentum: no state of the weight's shape to mismatch, it steps
        opt.step()
        return
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"has shape \(40.*but its optimizer state '\w+' has \(32.*resized in place"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_state_dict_restores_norm_objects_and_hyperparameters():
    model = mlp()
    opt = Scion(specopt.param_groups(model), lr=0.1)
    sd = opt.state_dict()
    assert all(isinstance(g["norm"], dict) for g in sd["param_groups"])
    other = Scion(specopt.param_groups(mlp()), lr=0.5)
    other.load_state_dict(sd)
    assert [g["norm"] for g in other.param_groups] == [g["norm"] for g in opt.param_groups]
    assert all(g["lr"] == 0.1 for g in other.param_groups)


def _stepped_muon(model, groups):
    opt = Muon(groups)
    model(torch.randn(4, 8)).square().mean().backward()
    opt.step()
    return opt


def test_state_saved_over_parameters_in_another_order_is_refused_by_their_names():
    """torch matches saved state to parameters by position: groups built in another order gave every tensor another
    tensor's momentum without a word (an outside review). Names that differ only by what torch's wrappers insert
    (torch.compile's ``_orig_mod.``, DDP's ``module.``) still load; dropping the names loads by position."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    sd = _stepped_muon(model, specopt.param_groups(model, head=False)).state_dict()
    reversed_groups = [{**g, "params": g["params"][::-1]} for g in specopt.param_groups(model, head=False)]
    other = Muon(reversed_groups)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0 is '0.weight', this optimizer's is '4.weight'"):
        other.load_state_dict(sd)
    assert other.state_dict() == before  # nothing loaded
    for wrapper in (torch.compile(model), nn.DataParallel(model)):  # _orig_mod.0.weight, module.0.weight
        Muon(specopt.param_groups(wrapper, head=False)).load_state_dict(sd)
    unnamed = copy.deepcopy(sd)
    for g in unnamed["param_groups"]:
        del g["param_names"]
    Muon(reversed_groups).load_state_dict(unnamed)


def test_a_tensor_in_two_groups_and_a_complex_one_are_named():
    a, b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(3, 4))
    with pytest.raises(ValueError, match="c is already in param group 0 \\(as 'a'\\)"):
        Muon([{"params": [("a", a), ("b", b)]}, {"params": [("c", a)]}])
    opt = Muon([{"params": [("a", a)]}])
    with pytest.raises(ValueError, match="b is already in param group 1"):
        opt.add_param_group({"params": [("b", b)]})
        opt.add_param_group({"params": [("b", b)]})
    assert len(opt.param_groups) == 2
    with pytest.raises(ValueError, match=r"w of shape \(2, 2\) is complex"):
        Scion([{"params": [("w", nn.Parameter(torch.randn(2, 2, dtype=torch.complex64)))]}])


@pytest.mark.parametrize("cls, kwargs", ALL, ids=IDS)
def test_closure_returns_the_loss(cls, kwargs):
    X, y = classification_data()
    model = mlp()
    opt = cls(model.parameters(), **kwargs)
    losses = train(model, opt, X, y, 3, closure=True)
    assert all(isinstance(v, float) for v in losses)


def test_lr_scheduler_drives_the_step_length():
    model = nn.Linear(8, 8, bias=False)
    opt = UScion(model.parameters(), lr=0.1, momentum=0.0, norm=Spectral(method="svd"), radius=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lengths = []
    for _ in range(3):
        before = model.weight.detach().clone()
        model.weight.grad = torch.randn(8, 8)
        opt.step()
        sched.step()
        lengths.append(float(torch.linalg.matrix_norm(model.weight.detach() - before, ord=2)))
    for k, length in enumerate(lengths):
        assert length == pytest.approx(0.1 * 0.5**k, rel=1e-5)


@pytest.mark.parametrize("cls, kwargs", ALL, ids=IDS)
def test_schedulers_that_cycle_momentum_cycle_the_estimators(cls, kwargs):
    """torch's OneCycleLR and CyclicLR cycle ``momentum``, or ``betas[0]`` where the optimizer's defaults have
    ``betas``: the presets' have none (AdamW groups carry their own), so β of the estimator cycles, as it does for
    torch.optim.SGD and torch.optim.Muon, and the steps follow it."""
    X, y = classification_data()
    runs = []
    for cycle in (True, False):
        model = mlp()
        opt = cls(model.parameters(), **kwargs)
        assert "betas" not in opt.defaults
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                        total_steps=6, cycle_momentum=cycle, base_momentum=0.5,
                                                        max_momentum=0.9)
        momenta = []
        for _ in range(4):
            momenta.append(opt.param_groups[0]["momentum"])
            train(model, opt, X, y, 1)
            scheduler.step()
        runs.append([p.detach().clone() for p in model.parameters()])
        if cycle:
            assert momenta[0] == pytest.approx(0.9) and min(momenta) < 0.6
    assert not all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_adamw_groups_of_the_bare_engine_get_adamw_defaults():
    model = mlp()
    opt = specopt.GeometryOptimizer([{"params": [model[0].bias], "norm": "adamw"},
                                     {"params": [model[0].weight]}], {"lr": 0.01})
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["eps"] == 1e-8
    assert "betas" not in opt.param_groups[1]


def test_parameters_without_grad_are_skipped():
    model = mlp()
    frozen = model[0].weight
    before = frozen.detach().clone()
    opt = Muon(model.parameters())
    X, y = classification_data()
    frozen.requires_grad_(False)
    train(model, opt, X, y, 3)
    assert torch.equal(frozen, before) and frozen not in opt.state


def test_bf16_parameters_keep_fp32_state_and_dtype():
    model = mlp().to(torch.bfloat16)
    X, y = classification_data()
    for cls in (Scion, Muon):
        opt = cls(model.parameters())
        opt.zero_grad()
        loss_fn(model, X.bfloat16(), y).backward()
        opt.step()
        for p in model.parameters():
            assert p.dtype == torch.bfloat16
            for v in opt.state[p].values():
                if isinstance(v, torch.Tensor):
                    assert v.dtype == torch.float32


def test_named_parameters_and_group_dicts_are_accepted():
    model = mlp()
    opt = Scion(model.named_parameters())
    assert opt.param_groups[0]["param_names"][0] == "0.weight"
    opt = UScion([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters()}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    opt = Scion([{"params": model[0].weight}])  # a lone tensor inside a group, as torch allows
    assert len(opt.param_groups[0]["params"]) == 1


def test_same_shape_tensors_are_orthogonalised_in_one_msign_call(monkeypatch):
    import specopt.norms as norms_module

    calls = []
    real = norms_module.polar_factor

    def counting(G, **kw):
        calls.append(tuple(G.shape))
        return real(G, **kw)

    monkeypatch.setattr(norms_module, "polar_factor", counting)
    model = nn.Sequential(*[nn.Linear(16, 16, bias=False) for _ in range(4)], nn.Linear(16, 8, bias=False))
    X = torch.randn(32, 16)
    model(X).square().mean().backward()
    Scion(model.parameters()).step()  # the CPU default for small matrices: one call per shape
    assert sorted(calls) == [(1, 8, 16), (4, 16, 16)]
    calls.clear()
    Scion(model.parameters(), batch_lmo=False).step()
    assert sorted(calls) == [(1, 8, 16)] + [(1, 16, 16)] * 4
    calls.clear()
    big = nn.Sequential(*[nn.Linear(200, 200, bias=False) for _ in range(2)])  # 40000 entries > CPU_BATCH_MAX_NUMEL
    big(torch.randn(8, 200)).square().mean().backward()
    Scion(big.parameters()).step()  # the CPU default for large ones: one BLAS-friendly call per matrix
    assert calls == [(1, 200, 200)] * 2
    calls.clear()
    Scion(big.parameters(), batch_lmo=True).step()
    assert calls == [(2, 200, 200)]


def test_cpu_msign_batches_small_matrices_and_loops_over_large_ones(monkeypatch):
    import specopt.linalg as linalg

    shapes = []
    real = linalg._polynomial_sign

    def recording(X, sched):
        shapes.append(tuple(X.shape))
        return real(X, sched)

    monkeypatch.setattr(linalg, "_polynomial_sign", recording)
    small, large = torch.randn(3, 16, 16), torch.randn(2, 200, 200)
    for X in (small, large):
        batched = linalg.polar_factor(X.clone())
        one_by_one = torch.stack([linalg.polar_factor(x.clone()) for x in X])
        torch.testing.assert_close(batched, one_by_one, atol=1e-6, rtol=0)
    assert shapes == [(3, 16, 16)] + [(16, 16)] * 3 + [(200, 200)] * 2 + [(200, 200)] * 2


def test_batched_step_equals_one_tensor_at_a_time():
    X = torch.randn(32, 16)
    a = nn.Sequential(*[nn.Linear(16, 16, bias=False) for _ in range(3)])
    b = nn.Sequential(*[nn.Linear(16, 16, bias=False) for _ in range(3)])
    b.load_state_dict(a.state_dict())
    opt_a = Scion(a.parameters(), norm=Spectral(compute_dtype=torch.float64), batch_lmo=True)
    opt_b = Scion([{"params": [p], "norm": Spectral(compute_dtype=torch.float64, steps=k + 5)}
                   for k, p in enumerate(b.parameters())])
    for model, opt in ((a, opt_a), (b, opt_b)):
        model(X).square().mean().backward()
        opt.step()
    # the first tensor used the same msign in both; distinct norms made b's buckets single
    torch.testing.assert_close(a[0].weight, b[0].weight, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda p: Scion(p, lr=-0.1), "lr"),
        (lambda p: Scion(p, lr=2.0), "lr must be in \\[0, 1\\]"),
        (lambda p: UScion(p, momentum=1.5), "momentum"),
        (lambda p: UScion(p, momentum=-0.1), "momentum"),
        (lambda p: UScion(p, radius=0.0), "radius"),
        (lambda p: UScion(p, radius="huge"), "radius"),
        (lambda p: UScion(p, norm="nuclear"), "unknown norm 'nuclear'"),
        (lambda p: UScion(p, weight_decay=-1.0), "weight_decay"),
        (lambda p: ClippedScion(p, clip_radius=0.0), "clip_radius"),
        (lambda p: Gluon(p, L0=0.0, L1=0.0), "cannot both be 0"),
        (lambda p: Gluon(p, L0="online", L1=1.0), "both be 'online'"),
        (lambda p: Gluon(p, schedule="cosine"), "schedule"),
        (lambda p: Muon(p, adamw_betas=(0.9, 1.2)), "betas"),
        (lambda p: Muon(p, scale="big"), "radius"),
        (lambda p: Muon(p, gram="auto"), "gram must be True, False or None"),
        (lambda p: Scion(p, nonfinite="ignore"), "nonfinite"),
        (lambda p: Muon([]), "empty"),
    ],
)
def test_bad_hyperparameters_are_named_at_construction(factory, match):
    with pytest.raises(ValueError, match=match):
        factory(mlp().parameters())


def test_sparse_gradient_is_rejected():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = UScion(emb.parameters(), norm="sign")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse gradient"):
        opt.step()


def test_complex_parameters_are_rejected():
    with pytest.raises(ValueError, match="complex"):
        Scion([torch.zeros(3, 3, dtype=torch.complex64, requires_grad=True)])


@pytest.mark.parametrize("cls", [Muon, Scion, Gluon])
def test_nonfinite_gradient_raises_naming_the_parameter_and_writes_nothing(cls):
    model = mlp()
    opt = cls(model.named_parameters())
    before = [p.detach().clone() for p in model.parameters()]
    X, y = classification_data()
    loss_fn(model, X, y).backward()
    model[2].weight.grad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite gradient.*2.weight"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not any(opt.state.values())  # no momentum was polluted either


def test_nonfinite_skip_skips_the_whole_step():
    model = mlp()
    opt = Scion(model.parameters(), nonfinite="skip")
    before = [p.detach().clone() for p in model.parameters()]
    X, y = classification_data()
    loss_fn(model, X, y).backward()
    model[0].bias.grad[0] = float("inf")
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    train(model, opt, X, y, 2)  # and training goes on
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_a_step_on_meta_parameters_names_them_and_what_to_do():
    w = nn.Parameter(torch.empty(4, 4, device="meta"))
    w.grad = torch.empty(4, 4, device="meta")
    with pytest.raises(ValueError, match=r"of shape \(4, 4\) is on the meta device .* materialize the model"):
        specopt.Muon([w]).step()


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


@pytest.mark.parametrize("cls,kwargs", ALL + [(specopt.MuonBP, {}), (specopt.NorMuon, {}), (specopt.ProxSpectral, {})],
                         ids=IDS + ["MuonBP", "NorMuon", "ProxSpectral"])
def test_channels_last_conv_weights_step_like_contiguous_ones(cls, kwargs):
    """``model.to(memory_format=torch.channels_last)`` gives 4-D weights whose memory is not in (d_out, c_in, k, k)
    order: the step must land in the parameter itself (not in a reshaped copy) and equal the contiguous run's."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
    runs = []
    for channels_last in (False, True):
        model = small_cnn()
        inputs = x
        if channels_last:
            model, inputs = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
            assert not model[0].weight.is_contiguous()
        start = [p.detach().clone() for p in model.parameters()]
        groups = specopt.param_groups(model, msign={"compute_dtype": torch.float64})
        if cls is specopt.ProxSpectral:  # its preconditioner is every tensor's geometry: the split without the norms
            groups, kwargs = [{"params": g["params"]} for g in groups], {**kwargs, "compute_dtype": torch.float64}
        opt = cls(groups, **kwargs)
        for _ in range(3):
            def closure(model=model, opt=opt, inputs=inputs):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs), y)
                loss.backward()
                return loss
            opt.step(closure)
        assert all(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_a_scheduler_that_writes_a_number_over_a_momentum_schedule_is_not_silent():
    """OneCycleLR and CyclicLR write ``momentum`` into every group: over GluonMVR's "storm" it made STORM's
    ``a_k = (k+1)^{-2/3}`` a fixed ``1 − β``, silently. One warning per group names the scheduler's switch; a
    scheduler told ``cycle_momentum=False`` keeps the schedule and says nothing, and so does a loaded state."""
    model = nn.Linear(4, 4)

    def closure():
        opt.zero_grad()
        loss = model(torch.ones(2, 4)).square().mean()
        loss.backward()
        return loss

    opt = specopt.GluonMVR(model.parameters())
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    with pytest.warns(UserWarning, match=r"built with momentum='storm', a schedule, .* cycle_momentum=False"):
        opt.step(closure)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure)  # once
        opt = specopt.GluonMVR(model.parameters())
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
        opt.step(closure)
        assert opt.param_groups[0]["momentum"] == "storm"
        twin = specopt.GluonMVR(model.parameters())
        twin.load_state_dict(opt.state_dict())
        twin.step(closure)
        # a refused add_param_group records no schedule (a later group at its index warned, falsely)
        w0, w1, b0 = (nn.Parameter(torch.randn(*s)) for s in ((3, 3), (3, 3), (3,)))
        muon = specopt.Muon([w0, b0], momentum="theory")
        with pytest.raises(ValueError, match="already in param group"):
            muon.add_param_group({"params": [w1, b0]})
        muon.add_param_group({"params": [w1], "momentum": 0.9})
        for p in (w0, w1, b0):
            p.grad = torch.ones_like(p)
        muon.step()


FAMILY = ALL + [(specopt.NorMuon, {}), (specopt.AdaMuon, {}), (specopt.AdaGO, {}), (specopt.DoG, {}),
                (specopt.MuonBP, {}), (specopt.DropMuon, {}), (specopt.GluonMVR, {}), (specopt.ProxSpectral, {})]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls, kwargs", FAMILY, ids=preset_ids(FAMILY))
def test_a_copied_or_pickled_optimizer_steps_as_the_original(cls, kwargs, how):
    """``copy.deepcopy((model, opt))`` and a pickle round trip give an optimizer that takes the original's next steps
    bit for bit (its estimator, rule and lmo runner are part of it: torch.optim's pickle keeps defaults, state and
    param groups only, and the copy could not step)."""
    X, y = classification_data()
    model = mlp(bias=False)
    opt = cls(model.parameters(), **kwargs)
    closure = opt.estimator.needs_closure or opt.rule.needs_closure or isinstance(opt, Gluon)
    train(model, opt, X, y, 3, closure=closure)
    twin, twin_opt = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    train(model, opt, X, y, 3, closure=closure)
    train(twin, twin_opt, X, y, 3, closure=closure)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_load_state_dict_hooks_run_as_torchs_do():
    """A pre-hook's returned state is what is loaded (here: momentum reset on resume), and a post-hook sees the
    loaded state; a ``state_dict`` post-hook sees the state as saved (with what it belongs to) and may replace it."""
    X, y = classification_data()
    model = mlp(bias=False)
    opt = UScion(model.parameters(), lr=0.1)
    train(model, opt, X, y, 2)
    saved = opt.state_dict()

    def reset_momentum(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        for s in state_dict["state"].values():
            s["momentum_buffer"] = torch.zeros_like(s["momentum_buffer"])
        return state_dict

    seen = []
    fresh = UScion(mlp(bias=False).parameters(), lr=0.1)
    fresh.register_load_state_dict_pre_hook(reset_momentum)
    fresh.register_load_state_dict_post_hook(lambda o: seen.append(max(float(s["momentum_buffer"].abs().max())
                                                                       for s in o.state.values())))
    fresh.load_state_dict(saved)
    assert seen == [0.0] and all(float(s["momentum_buffer"].abs().max()) == 0 for s in fresh.state.values())
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": sd["specopt"]["optimizer"]})
    assert opt.state_dict()["note"] == "UScion"
