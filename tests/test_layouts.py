"""specopt.layouts: declarations, fused and per-head blocks, errors that name the tensor, the view norms."""

import math
import warnings

import pytest
import torch
from torch import nn

import specopt
from specopt.layouts import classify
from specopt.norms import Blocked, Spectral, SpectralConv, norm_from_config
from specopt.roles import DEFAULT_RADII
from specopt.views import Flattened, MuonScaled, Stacked, Transposed, Unflattened


class Experts(nn.Module):
    """A user MoE layer: E experts stored (E, d_in, d_out), used as x @ w[e]."""

    def __init__(self, experts=3, d=8, ffn=12):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(experts, d, ffn) / d**0.5)
        self.w_out = nn.Parameter(torch.randn(experts, ffn, d) / ffn**0.5)

    def forward(self, x):
        return sum(torch.relu(x @ self.w_in[e]) @ self.w_out[e] for e in range(self.w_in.shape[0]))


class MoENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.experts = Experts()
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.experts(self.inp(x)))


def roles(groups):
    return {n: g for g in groups for n, _ in g["params"]}


def test_an_undeclared_3d_tensor_is_an_error_that_names_it_and_says_how_to_declare_it():
    with pytest.raises(ValueError, match=r"experts\.w_in of shape \(3, 8, 12\).*layouts=\{'experts\.w_in'"):
        specopt.param_groups(MoENet())


@pytest.mark.parametrize("layouts", [{Experts: "experts_transposed"}, {r"experts\.w_(in|out)$": "experts_transposed"}])
def test_declared_expert_stack_steps_each_expert_by_gamma_rho(layouts):
    torch.manual_seed(0)
    model = MoENet()
    groups = specopt.param_groups(model, layouts=layouts, msign={"method": "svd"})
    assert roles(groups)["experts.w_in"]["role"] == "expert"
    assert roles(groups)["experts.w_in"]["norm"] == Stacked(Transposed(Spectral(method="svd")))
    before = model.experts.w_in.detach().clone()
    opt = specopt.UScion(groups, lr=0.01, momentum=0.0)
    model(torch.randn(16, 4)).square().mean().backward()
    opt.step()
    for delta in model.experts.w_in.detach() - before:  # (d_in, d_out) per expert: the map is delta.T
        m = delta.T
        rms_rms = (m.shape[1] / m.shape[0]) ** 0.5 * torch.linalg.matrix_norm(m.double(), ord=2)
        assert float(rms_rms) == pytest.approx(0.01 * DEFAULT_RADII["expert"], rel=1e-5)


def test_a_declaration_of_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown layout"):
        specopt.param_groups(MoENet(), layouts={Experts: "matrix"})


@pytest.mark.parametrize("extra", [{r"\.w_inn$": "linear_transposed"}, {torch.nn.Conv2d: "conv"}])
def test_a_declaration_that_matches_nothing_is_an_error(extra):
    """A typo in a regex (or a module type the model does not have) would leave the tensor it meant read another
    way, with no warning: it is refused, naming the declaration."""
    with pytest.raises(ValueError, match="apply to no trainable parameter"):
        specopt.param_groups(MoENet(), layouts={Experts: "experts_transposed", **extra})


@pytest.mark.parametrize("kwargs, match", [
    ({"split_sizes": {"nothing_here": (4, 4)}}, "matches no matrix parameter"),
    ({"split_sizes": {r"inp\.weight": (3, 4)}}, r"split_sizes for inp\.weight \(d_out = 8\)"),
    ({"num_heads": 2}, "applies to no tensor"),
    ({"overrides": {"nope": {"lr": 1.0}}}, "match no trainable parameter"),
    ({"head": 3}, "head must be"),
])
def test_options_that_apply_to_nothing_or_do_not_fit_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        specopt.param_groups(MoENet(), layouts={Experts: "experts_transposed"}, **kwargs)


class Attention(nn.Module):
    """Separate q/k/v projections with grouped-query attention (4 query heads, 2 key/value heads of 4 dims)."""

    def __init__(self):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = 4, 2, 4
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)
        self.o_proj = nn.Linear(16, 16)


def test_num_heads_splits_separate_projections_per_head_including_grouped_query_attention():
    a = roles(specopt.param_groups(nn.ModuleDict({"attn": Attention()}), num_heads=True))
    assert a["attn.q_proj.weight"]["norm"] == Blocked(Spectral(), (4,) * 4)
    assert a["attn.k_proj.weight"]["norm"] == Blocked(Spectral(), (4,) * 2)
    assert a["attn.o_proj.weight"]["norm"] == Spectral()
    explicit = roles(specopt.param_groups(nn.ModuleDict({"attn": Attention()}), num_heads=4))
    assert explicit["attn.v_proj.weight"]["norm"] == Blocked(Spectral(), (4,) * 2)


class FusedGQA(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = 4, 2, 4
        self.qkv_proj = nn.Linear(16, 32)  # q: 16 rows, k: 8, v: 8


def test_fused_grouped_query_projection_gets_unequal_blocks_and_muon_scales_each_block():
    model = nn.ModuleDict({"attn": FusedGQA()})
    assert roles(specopt.param_groups(model))["attn.qkv_proj.weight"]["norm"] == Blocked(Spectral(), (16, 8, 8))
    opt = specopt.Muon(specopt.param_groups(model, msign={"method": "svd"}), lr=0.1, momentum=0.0, nesterov=False)
    w = model["attn"].qkv_proj.weight
    before = w.detach().clone()
    w.grad = torch.randn_like(w)
    opt.step()
    for block in (w.detach() - before).split((16, 8, 8)):  # "original" scale max(1, d_out/d_in)^½ = 1: σ = lr
        assert float(torch.linalg.matrix_norm(block.double(), ord=2)) == pytest.approx(0.1, rel=1e-6)


def test_interleaved_blocks_are_the_blocks_of_every_other_row():
    g = torch.randn(2, 12, 5, dtype=torch.float64)
    norm = Blocked(Spectral(method="svd"), 2, interleaved=True)
    s = norm.lmo(g)
    for j in range(2):
        torch.testing.assert_close(s[:, j::2], Spectral(method="svd").lmo(g[:, j::2]))
    assert float(norm.dual(g).sum()) == pytest.approx(-float((g * s).sum()))
    init = norm.init((6, 5), radius=2.0, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(norm.norm(init)) == pytest.approx(2.0)


def test_conv_transpose_and_grouped_conv_are_read_by_their_layout():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ConvTranspose2d(8, 6, 3))
    a = roles(specopt.param_groups(model))
    assert a["0.weight"]["norm"] == Blocked(specopt.SpectralConv(), (4, 4))
    assert a["1.weight"]["norm"] == Transposed(specopt.SpectralConv())
    g = torch.randn(8, 6, 3, 3, dtype=torch.float64)  # ConvTranspose2d(8, 6): (c_in, d_out, k, k)
    s = Transposed(specopt.SpectralConv(method="svd")).lmo(g)
    torch.testing.assert_close(s.transpose(0, 1), specopt.SpectralConv(method="svd").lmo(g.transpose(0, 1)))


def test_head_is_none_with_head_false_and_named_with_a_regex():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10))
    assert roles(specopt.param_groups(model))["2.weight"]["role"] == "head"
    assert roles(specopt.param_groups(model, head=False))["2.weight"]["role"] == "hidden"
    assert roles(specopt.param_groups(model, head=r"^1$"))["1.weight"]["role"] == "head"


def test_muon_refuses_a_plain_3d_tensor_whose_layout_it_cannot_know():
    with pytest.raises(ValueError, match="is 3-D .*param_groups"):
        specopt.Muon([nn.Parameter(torch.randn(3, 4, 5))])
    with pytest.raises(ValueError, match="is 3-D"):  # norm="auto" too, when the optimizer is made
        specopt.UScion([nn.Parameter(torch.randn(3, 4, 5))])


def test_view_norms_round_trip_through_their_config():
    for norm in (Stacked(Transposed(Blocked(Spectral(), 2, interleaved=True))), MuonScaled(Spectral(), "original")):
        assert norm_from_config(norm.config()) == norm


def test_every_wrapper_rebuilds_around_a_new_leaf_with_its_settings():
    """Walkers (Muon's block scales, MuonBP's scaled leaves, describe's labels, ProxSpectral's routing) rebuild a
    layout through ``with_inner``: every view of the package keeps its settings, and every view that only
    rearranges the stored tensor is in ``LAYOUT_VIEWS``, so a new one cannot be missed by the walkers."""
    leaf = Spectral(method="svd")
    for wrapper in (Transposed(Spectral()), Stacked(Spectral(), dims=2), Flattened(Spectral(), (3, 4)),
                    Unflattened(Spectral(), (3, 4)), Blocked(Spectral(), (2, 3), interleaved=False),
                    Blocked(Spectral(), 2, interleaved=True),
                    MuonScaled(Spectral(), "spectral")):
        rebuilt = wrapper.with_inner(leaf)
        assert type(rebuilt) is type(wrapper) and rebuilt.inner is leaf and wrapper.inner == Spectral()
        assert {k: v for k, v in vars(rebuilt).items() if k != "inner"} == {
            k: v for k, v in vars(wrapper).items() if k != "inner"}
    with pytest.raises(ValueError, match="MuonScaled needs a spectral norm inside"):
        MuonScaled(Spectral(), "original").with_inner(specopt.Sign())
    views = {cls for cls in vars(specopt.views).values() if isinstance(cls, type)
             and issubclass(cls, specopt.views._View) and cls is not specopt.views._View}
    assert views - set(specopt.views.LAYOUT_VIEWS) == {MuonScaled}
    norm = Stacked(Flattened(Transposed(Blocked(Spectral(), 2)), (3, 4)))
    assert specopt.optimizers._scale_blocks(norm, "spectral") == Stacked(Flattened(Transposed(
        Blocked(MuonScaled(Spectral(), "spectral"), 2)), (3, 4)))
    assert specopt.block_periodic.scaled_leaves(norm, "original") == Stacked(Flattened(Transposed(
        Blocked(MuonScaled(Spectral(), "original"), 2)), (3, 4)))
    assert specopt.roles.norm_label(norm) == "Stacked(Flattened(Transposed(Blocked(Spectral))))"


def test_flattened_is_the_inner_norm_of_the_matrix_the_trailing_axes_make():
    """``Flattened(inner, (H, d))`` on ``(a, H, d)`` is ``inner`` on ``(a, H·d)``: lmo, dual, norm, a batch of items,
    the ball's init, projection and the config, with a stack (E experts of einsum heads) outside."""
    inner = Transposed(Spectral(method="svd"))
    norm = Flattened(inner, (3, 4))
    g = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(norm.lmo(g), inner.lmo(g.reshape(5, 12)).reshape(5, 3, 4))
    torch.testing.assert_close(norm.dual(g), inner.dual(g.reshape(5, 12)))
    torch.testing.assert_close(norm.norm(g), inner.norm(g.reshape(5, 12)))
    assert float(norm.dual(g)) == pytest.approx(-float((g * norm.lmo(g)).sum()))
    batch = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(norm.lmo(batch, batch_dims=1)[1], norm.lmo(batch[1]))
    init = norm.init((5, 3, 4), radius=2.0, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert init.shape == (5, 3, 4) and float(norm.norm(init)) == pytest.approx(2.0)
    assert float(norm.norm(norm.project(3 * g, radius=0.5))) <= 0.5 + 1e-9
    stacked = Stacked(norm)
    experts = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(stacked.lmo(experts)[0], norm.lmo(experts[0]))
    assert norm_from_config(stacked.config()) == stacked
    assert specopt.layouts.radius_for("original", (5, 3, 4), norm) == pytest.approx(1.0)  # d_out 12 ≥ d_in 5
    with pytest.raises(ValueError, match=r"last axes are not \(3, 4\)"):
        norm.lmo(torch.randn(5, 4, 3))
    with pytest.raises(ValueError, match="at least two trailing axes"):
        Flattened(inner, (12,))


def test_unflattened_is_the_inner_norm_of_the_item_one_axis_holds():
    """``Unflattened(inner, (o, c, k, k))`` on ``(…, o·c·k·k)`` is ``inner`` on ``(…, o, c, k, k)``: lmo, dual, norm,
    a batch, init, projection, config; under a stack, each row its own kernel."""
    inner = SpectralConv(method="svd")
    norm = Unflattened(inner, (4, 3, 2, 2))
    g = torch.randn(48, dtype=torch.float64)
    torch.testing.assert_close(norm.lmo(g), inner.lmo(g.view(4, 3, 2, 2)).flatten())
    torch.testing.assert_close(norm.dual(g), inner.dual(g.view(4, 3, 2, 2)))
    torch.testing.assert_close(norm.norm(g), inner.norm(g.view(4, 3, 2, 2)))
    assert norm.item_ndim == 1
    init = norm.init((48,), radius=2.0, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert init.shape == (48,) and float(norm.norm(init)) == pytest.approx(2.0)
    assert float(norm.norm(norm.project(3 * g, radius=0.5))) <= 0.5 + 1e-9
    stacked = Stacked(norm)
    experts = torch.randn(3, 48, dtype=torch.float64)
    for e in range(3):
        torch.testing.assert_close(stacked.lmo(experts)[e], inner.lmo(experts[e].view(4, 3, 2, 2)).flatten())
    assert float(stacked.norm(experts)) == pytest.approx(max(float(inner.norm(x.view(4, 3, 2, 2))) for x in experts))
    assert norm_from_config(stacked.config()) == stacked
    with pytest.raises(ValueError, match="last axis is not 48"):
        norm.lmo(torch.randn(3, 47))
    with pytest.raises(ValueError, match="at least two positive ints"):
        Unflattened(inner, (48,))


class CondConv2d(nn.Module):
    """timm's CondConv2d as it stores its weight (Yang et al. 2019): E kernels, each flattened into one row, mixed by
    per-sample routing weights and applied as one grouped convolution."""

    def __init__(self, c_in, c_out, k, experts, groups=1):
        super().__init__()
        self.groups, self.num_experts = groups, experts
        self.weight_shape = (c_out, c_in // groups, k, k)
        self.weight = nn.Parameter(torch.randn(experts, math.prod(self.weight_shape)) / math.sqrt(c_in * k * k))
        self.bias = nn.Parameter(torch.zeros(experts, c_out))

    def forward(self, x, routing):
        b = x.shape[0]
        w = (routing @ self.weight).view(b * self.weight_shape[0], *self.weight_shape[1:])
        out = nn.functional.conv2d(x.reshape(1, -1, *x.shape[2:]), w, (routing @ self.bias).flatten(),
                                   padding="same", groups=self.groups * b)
        return out.view(b, self.weight_shape[0], *out.shape[2:])


class CondConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.routing = nn.Linear(4, 3)
        self.conv = CondConv2d(4, 6, 3, experts=3)
        self.depthwise = CondConv2d(6, 6, 3, experts=3, groups=6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        r = torch.sigmoid(self.routing(x.mean((2, 3))))
        return self.out(self.depthwise(self.conv(x, r), r).mean((2, 3)))


def test_cond_conv_experts_are_conv_kernels_each_with_its_ball():
    """A CondConv weight ``(E, d_out·c_in/groups·k·k)`` is E conv kernels (its ``weight_shape``), blocked per group:
    read as the stored matrix, F.linear's guess, it was one (E × ·) map across the experts (a warning, and Muon
    orthogonalised the E rows against each other). One uSCG step moves every expert's kernel (every group's) by
    γρ in the kernel's own RMS→RMS norm."""
    torch.manual_seed(0)
    model = CondConvNet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = specopt.param_groups(model, head="out", msign={"method": "svd"})
    layouts = {n: layout for n, (layout, _) in classify(model, head="out")[0].items()}
    assert layouts["conv.weight"].role == "conv" and layouts["conv.weight"].unflattened == (6, 4, 3, 3)
    assert layouts["depthwise.weight"].blocks == (1,) * 6 and layouts["conv.bias"].role == "vector"
    assert "E=0 out×in×k=1 as 6×4×3×3" in specopt.describe(groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = specopt.UScion(groups, lr=0.1, momentum=0.0)
    radius = {n: g["radius"] for g in opt.param_groups for n in g["param_names"]}
    model(torch.randn(8, 4, 5, 5)).square().mean().backward()
    opt.step()
    for name, module in (("conv.weight", model.conv), ("depthwise.weight", model.depthwise)):
        for delta in model.get_parameter(name).detach() - before[name]:
            for block in delta.view(module.weight_shape).flatten(1).chunk(module.groups):
                rms_to_rms = 9 * (block.shape[1] / 9 / block.shape[0]) ** 0.5 * torch.linalg.matrix_norm(block, 2)
                assert float(rms_to_rms) == pytest.approx(0.1 * radius[name], rel=1e-4)


def test_describe_shows_axes_without_default_noise():
    table = specopt.describe(specopt.param_groups(MoENet(), layouts={Experts: "experts_transposed"}))
    assert "E=0 out=2 in=1" in table and "gram" not in table and "fan_in_scaled" not in table


class RowScaled(specopt.Norm):
    """A user's norm (Muown-style row magnitude × direction would look like this): ℓ∞ over rows of RMS."""

    item_ndim = 2

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def lmo(self, g, batch_dims=None):
        return -self.scale * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30) * g.shape[-1] ** 0.5

    def dual(self, g, batch_dims=None):
        return -(g * self.lmo(g)).sum(dim=(-2, -1))

    def norm(self, x, batch_dims=None):
        return (x.norm(dim=-1) / x.shape[-1] ** 0.5).amax(dim=-1) / self.scale

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        return self.lmo(torch.randn(shape, generator=generator, dtype=dtype, device=device)) * -radius


def test_a_users_norm_survives_state_dict_and_the_bare_engine_has_defaults():
    model = nn.Linear(6, 4)
    opt = specopt.GeometryOptimizer([{"params": [model.weight], "norm": RowScaled(2.0)}, {"params": [model.bias]}],
                                    {"lr": 0.1})
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    assert saved["param_groups"][0]["norm"]["name"].endswith(":RowScaled")
    twin = specopt.GeometryOptimizer([{"params": [model.weight], "norm": RowScaled(1.0)}, {"params": [model.bias]}],
                                     {"lr": 0.1})
    twin.load_state_dict(saved)
    assert twin.param_groups[0]["norm"] == RowScaled(2.0)
    with pytest.raises(ValueError, match="needs a learning rate"):
        specopt.GeometryOptimizer(model.parameters(), {})


@pytest.mark.parametrize("make, match", [
    (lambda m: specopt.Muon(m), "got a module"),
    (lambda m: specopt.Scion(m), "got a module"),
    (lambda m: specopt.UScion([m.weight, m.weight]), "listed twice"),
    (lambda m: specopt.UScion([nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)]), "int64"),
])
def test_small_traps_get_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make(nn.Linear(4, 4))


def test_frozen_parameters_are_left_out_and_shared_ones_listed_once():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Embedding(10, 8), shared, nn.ReLU(), shared, nn.Linear(8, 10))
    model[0].weight.requires_grad_(False)
    names = [n for g in specopt.param_groups(model) for n, _ in g["params"]]
    assert sorted(names) == ["1.bias", "1.weight", "4.bias", "4.weight"]
    assert roles(specopt.param_groups(model))["4.weight"]["role"] == "head"  # the projection to the vocabulary


class UntraceableLM(nn.Module):
    """x-transformers' layout: token and position tables, hidden layers as wide as the context (64), the logits
    projection ``to_logits``, and a forward torch.fx cannot trace (it branches on the input's length)."""

    def __init__(self, vocab=1000, d=32, ctx=64, heads=None):
        super().__init__()
        self.token_emb, self.pos_emb = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, ctx), nn.ReLU(), nn.Linear(ctx, d)) for _ in range(2))
        self.to_logits = nn.Linear(d, vocab, bias=False)
        if heads:
            self.to_cls = nn.Linear(d, heads)
            self.cls_emb = nn.Embedding(heads, d)

    def forward(self, idx):
        x = self.token_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for block in self.blocks if idx.shape[1] > 1 else self.blocks[:1]:
            x = x + block(x)
        return self.to_logits(x)


def test_the_projection_to_the_token_table_is_the_head_when_the_position_table_matches_hidden_widths():
    """Each table its own vocabulary: the position table's 64 rows match four hidden layers, which must not hide
    the one projection to the token table's 1000 rows (x-transformers' ``to_logits`` was read as a hidden matrix)."""
    model = UntraceableLM()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_name = roles(specopt.param_groups(model))
    assert by_name["to_logits.weight"]["role"] == "head"
    assert {by_name[f"blocks.{i}.{j}.weight"]["role"] for i in (0, 1) for j in (0, 2)} == {"hidden"}
    opt = specopt.Muon(specopt.param_groups(model))
    assert next(g for g in opt.param_groups if any(p is model.to_logits.weight for p in g["params"]))["norm"] == \
        "adamw"


def test_two_tables_with_one_projection_each_name_both_in_a_warning():
    model = UntraceableLM(heads=3)  # to_cls projects to cls_emb's 3 rows, to_logits to the token table's
    with pytest.warns(UserWarning, match=r"could not tell the output layer: to_cls, to_logits .*head="):
        by_name = roles(specopt.param_groups(model))
    assert by_name["to_logits.weight"]["role"] == "hidden"
    assert roles(specopt.param_groups(model, head="to_logits"))["to_logits.weight"]["role"] == "head"


@pytest.mark.parametrize("cls", [specopt.Muon, specopt.Scion, specopt.UScion, specopt.ClippedScion, specopt.ALMOND,
                                 specopt.SteepestDescent, specopt.ProxSpectral])
def test_zero_size_and_scalar_parameters_step_without_a_crash(cls):
    empty, scalar, matrix = nn.Parameter(torch.randn(0, 4)), nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.eye(4))
    opt = cls([empty, scalar, matrix])
    for p in (empty, scalar, matrix):
        p.grad = torch.ones_like(p)
    opt.step()
    assert empty.shape == (0, 4) and float(scalar.detach()) != 1.0 and not torch.equal(matrix.detach(), torch.eye(4))


def test_another_optimizers_state_is_refused_before_anything_is_loaded():
    model = nn.Linear(4, 4)
    muon = specopt.Muon(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    muon.step()
    scion = specopt.Scion(model.parameters())
    with pytest.raises(ValueError, match="belongs to Muon .* cannot be loaded into Scion"):
        scion.load_state_dict(muon.state_dict())
    assert len(scion.state) == 0
    with pytest.raises(ValueError, match="not a specopt optimizer's state"):
        scion.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    specopt.Muon(model.parameters()).load_state_dict(muon.state_dict())  # the same class loads


def test_num_heads_leaves_split_sizes_of_non_attention_weights_alone():
    model = nn.ModuleDict({"attn": Attention(), "mlp": nn.ModuleDict({"gate_up": nn.Linear(16, 32)})})
    a = roles(specopt.param_groups(model, split_sizes={r"gate_up": (16, 16)}, num_heads=4))
    assert a["mlp.gate_up.weight"]["norm"] == Blocked(Spectral(), (16, 16))
    assert a["attn.q_proj.weight"]["norm"] == Blocked(Spectral(), (4,) * 4)


@pytest.fixture
def one_rank_mesh(tmp_path):
    """A one-process gloo group and its CPU mesh (without a mesh FSDP2 moves the model to a GPU where there is one),
    destroyed after the test."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'store'}")
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_param_groups_after_fully_shard_leaves_fsdp_working(one_rank_mesh):
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10))
    fsdp.fully_shard(model[1], mesh=one_rank_mesh)
    fsdp.fully_shard(model, mesh=one_rank_mesh)
    groups = specopt.param_groups(model, msign={"method": "svd"})  # traced with FSDP's hooks off
    assert roles(groups)["2.weight"]["role"] == "head"  # as for the unsharded model (runs resume across both)
    opt = specopt.Muon(groups)
    before = model[1].weight.full_tensor().clone()
    tokens = torch.tensor([[1, 2, 3]])
    nn.functional.cross_entropy(model(tokens).reshape(-1, 10), tokens.reshape(-1)).backward()
    opt.step()
    assert not torch.equal(model[1].weight.full_tensor(), before)


class GEGLU(nn.Module):
    """diffusers' GEGLU: one projection holding the value and the gate."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 32)


class XCLIPModel(nn.Module):
    """A root model that owns a raw matrix used as ``x @ W`` (X-CLIP's prompt projection), known by its class."""

    def __init__(self):
        super().__init__()
        self.geglu = GEGLU()
        self.prompts_visual_projection = nn.Parameter(torch.randn(16, 12))


def test_rules_that_know_a_module_by_its_class_still_apply_after_fully_shard(one_rank_mesh):
    """FSDP2 swaps each sharded module's class for an ``FSDP<Name>`` subclass: GPT-2's Conv1D (sharded on its own),
    a GEGLU and a root model keep the layouts their class names give them."""
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32,
                                                                 n_positions=8))
    model = XCLIPModel()
    for module in (gpt2.transformer.h[0].attn.c_attn, gpt2, model.geglu, model):
        fsdp.fully_shard(module, mesh=one_rank_mesh)
    assert type(model).__name__ == "FSDPXCLIPModel"
    c_attn = classify(gpt2)[0]["transformer.h.0.attn.c_attn.weight"][0]
    assert (c_attn.transposed, c_attn.blocks) == (True, (16, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the prompt projection is known, not guessed
        got = classify(model)[0]
    assert got["geglu.proj.weight"][0].blocks == (16, 16)
    assert got["prompts_visual_projection"][0].transposed


@pytest.mark.parametrize("wrap", ["compile", "DataParallel", "DDP"])
def test_a_wrapped_model_has_the_roles_of_the_model_it_wraps(wrap, request):
    """``torch.compile(model)``, ``DataParallel(model)`` or ``DDP(model)`` before the optimizer is built: the output
    layer is still found (torch.fx cannot trace the wrapper; the head was read as a hidden matrix), and the names are
    the model's own, so that an anchored regex written for it matches (it matched no parameter of the wrapper's
    ``_orig_mod.`` or ``module.`` names)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    plain = {name: g["role"] for g in specopt.param_groups(model) for name, _ in g["params"]}
    if wrap == "DDP":
        request.getfixturevalue("one_rank_mesh")  # DDP needs a process group
    wrapper = {"compile": torch.compile, "DataParallel": nn.DataParallel,
               "DDP": nn.parallel.DistributedDataParallel}[wrap](model)
    groups = specopt.param_groups(wrapper, head=r"^2$", overrides={r"^0\.": {"lr": 1e-3}})
    wrapped = {name: g["role"] for g in groups for name, _ in g["params"]}
    assert wrapped == plain and plain["2.weight"] == "head"
    assert {name for g in groups if g.get("lr") == 1e-3 for name, _ in g["params"]} == {"0.weight", "0.bias"}


def test_a_transformers_model_held_by_a_module_of_ones_own_states_its_head():
    """A LightningModule's ``self.model`` (here a plain nn.Module wrapper): torch.fx cannot trace the transformers
    model inside, so the head is the one the held model states (the vocabulary rule took BERT's intermediate layer,
    whose width equals this vocabulary, for the head)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64, num_labels=3))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=64))

    class Holder(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

    for held, head in ((bert, "model.classifier.weight"), (llama, "model.lm_head.weight")):
        heads = [name for g in specopt.param_groups(Holder(held)) if g["role"] == "head" for name, _ in g["params"]]
        assert heads == [head]


def test_a_lazy_module_before_its_first_forward_is_a_clear_error_and_works_after_it():
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(4))
    with pytest.raises(ValueError, match=r"0\.weight is an uninitialized parameter of a lazy module.*forward pass"):
        specopt.param_groups(model)
    model(torch.randn(2, 8))
    assert {n: g["role"] for g in specopt.param_groups(model) for n, _ in g["params"]}["2.weight"] == "head"
