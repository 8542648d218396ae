"""specopt.layouts on tensors stored outside nn.Linear/nn.Conv: parametrized weights, RNN gates, Mamba mixers,
expert stacks that state their count, broadcast-shaped tokens and gains, raw matrices (warned when guessed)."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from specopt.layouts import classify


def layouts(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these models should need the F.linear guess
        return {name: layout for name, (layout, _) in classify(model, **kwargs)[0].items()}


class Box(nn.Module):
    """A module holding raw parameters of the given shapes."""

    def __init__(self, **shapes):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))


def test_weight_norm_direction_has_the_conv_layout_and_its_magnitude_is_entry_wise():
    """wav2vec2/HuBERT's positional conv: weight_norm over a grouped Conv1d (parametrizations.weight.original0/1)."""
    model = nn.Sequential(weight_norm(nn.Conv1d(8, 8, 5, groups=2), dim=2))
    got = layouts(model)
    g, v = got["0.parametrizations.weight.original0"], got["0.parametrizations.weight.original1"]
    assert g.role == "vector"
    assert (v.role, v.blocks, v.kernel_dims) == ("conv", (4, 4), 1)


def test_the_deprecated_weight_norm_hook_reads_the_same():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.Sequential(nn.utils.weight_norm(nn.ConvTranspose1d(6, 4, 3)))
    got = layouts(model)
    assert got["0.weight_g"].role == "vector"
    assert (got["0.weight_v"].role, got["0.weight_v"].transposed) == ("conv", True)


def test_a_parametrized_linear_weight_keeps_the_linear_layout():
    class Symmetric(nn.Module):
        def forward(self, x):
            return x.triu() + x.triu(1).T

    model = nn.Sequential(nn.Linear(6, 6))
    parametrize.register_parametrization(model[0], "weight", Symmetric())
    got = layouts(model, head=False)
    assert got["0.parametrizations.weight.original"].role == "hidden"


def test_lstm_and_gru_weights_hold_one_block_per_gate():
    model = nn.ModuleDict({"lstm": nn.LSTM(5, 8, num_layers=2, proj_size=3), "gru": nn.GRU(5, 8),
                           "rnn": nn.RNN(5, 8), "cell": nn.LSTMCell(5, 8), "gru_cell": nn.GRUCell(5, 8)})
    got = layouts(model, head=False)
    assert got["lstm.weight_ih_l0"].blocks == (8,) * 4 and got["lstm.weight_hh_l1"].blocks == (8,) * 4
    assert got["lstm.weight_hr_l0"].blocks is None  # the projection is one matrix
    assert got["gru.weight_ih_l0"].blocks == (8,) * 3
    assert got["rnn.weight_hh_l0"].blocks is None
    assert got["cell.weight_hh"].blocks == (8,) * 4 and got["gru_cell.weight_ih"].blocks == (8,) * 3
    assert got["lstm.bias_ih_l0"].role == "vector"


class MambaMixer(nn.Module):
    """The attributes and tensors of transformers' Mamba / Mamba-2 mixers."""

    def __init__(self, d=8, inner=16, state=4, rank=2, groups=None, heads=None):
        super().__init__()
        self.intermediate_size, self.ssm_state_size, self.time_step_rank = inner, state, rank
        rows = 2 * inner
        if groups:
            self.n_groups, self.num_heads = groups, heads
            rows = 2 * inner + 2 * groups * state + heads
        self.in_proj = nn.Linear(d, rows)
        self.x_proj = nn.Linear(inner, rank + 2 * state)
        self.A_log = nn.Parameter(torch.zeros(inner, state))


def test_mamba_in_proj_is_not_qkv_and_its_blocks_are_the_mixers_outputs():
    mamba = layouts(nn.ModuleDict({"mixer": MambaMixer()}), head=False)
    assert mamba["mixer.in_proj.weight"].blocks == (16, 16)
    assert mamba["mixer.x_proj.weight"].blocks == (2, 4, 4)
    assert mamba["mixer.A_log"].role == "vector"
    mamba2 = layouts(nn.ModuleDict({"mixer": MambaMixer(groups=2, heads=4)}), head=False)
    assert mamba2["mixer.in_proj.weight"].blocks == (16, 16, 8, 8, 4)


def test_in_proj_outside_attention_is_one_matrix_and_inside_is_qkv():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = nn.Linear(8, 20)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim = 2, 4
            self.in_proj = nn.Linear(8, 24)

    got = layouts(nn.ModuleDict({"mlp": MLP(), "attn": SelfAttention()}), head=False)
    assert got["mlp.in_proj.weight"].blocks is None
    assert got["attn.in_proj.weight"].blocks == (8, 8, 8)


def test_fused_qkv_of_an_attention_that_states_a_head_dim_but_no_head_count():
    """timm's Hiera: ``MaskUnitAttention`` has ``head_dim`` and ``heads``; a module with a head dim only split too."""
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.head_dim = 4
            self.qkv = nn.Linear(8, 24)

    assert layouts(nn.ModuleDict({"attn": Attention()}), head=False)["attn.qkv.weight"].blocks == (8, 8, 8)


class StatedExperts(nn.Module):
    """Llama 4's experts: E stated, hidden size stated, stored (E, d_in, d_out) and used as torch.bmm(x, W)."""

    def __init__(self, experts=3, hidden=8, inner=6, transposed=True):
        super().__init__()
        self.num_experts, self.hidden_size = experts, hidden
        up, down = ((experts, hidden, 2 * inner), (experts, inner, hidden)) if transposed else \
            ((experts, 2 * inner, hidden), (experts, hidden, inner))
        self.gate_up_proj = nn.Parameter(torch.zeros(up))
        self.down_proj = nn.Parameter(torch.zeros(down))


@pytest.mark.parametrize("transposed", [True, False])
def test_an_expert_stack_that_states_its_count_is_read_from_its_hidden_size(transposed):
    got = layouts(nn.ModuleDict({"experts": StatedExperts(transposed=transposed)}), head=False)
    up, down = got["experts.gate_up_proj"], got["experts.down_proj"]
    assert (up.role, up.stack, up.transposed, up.blocks) == ("expert", 1, transposed, (6, 6))
    assert (down.role, down.stack, down.transposed) == ("expert", 1, transposed)


def test_torchtitan_hidden_dim_is_not_taken_for_the_model_width():
    """torchtitan's ``GroupedExperts`` states ``hidden_dim``, its FFN width: refused, not read backwards."""

    class GroupedExperts(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_experts, self.hidden_dim = 4, 64
            self.w1 = nn.Parameter(torch.zeros(4, 64, 32))

    with pytest.raises(ValueError, match="w1.*experts_transposed"):
        classify(nn.ModuleDict({"experts": GroupedExperts()}), head=False)


def test_the_projection_side_is_read_from_whole_words_of_the_name():
    """``group_mix`` holds "up" and ``two_mix`` holds "wo" inside words: neither is a gate/up or down projection."""
    experts = StatedExperts()
    experts.group_mix = nn.Parameter(torch.zeros(3, 8, 12))
    experts.two_mix = nn.Parameter(torch.zeros(3, 12, 8))
    for name in ("group_mix", "two_mix"):
        with pytest.raises(ValueError, match=f"experts.{name} of shape"):
            classify(nn.ModuleDict({"experts": experts}), head=False, layouts={
                other: "experts" for other in ("group_mix", "two_mix") if other != name})


def test_square_experts_cannot_be_oriented_and_are_an_error_that_says_how_to_declare_them():
    with pytest.raises(ValueError, match="experts.down_proj.*experts_transposed"):
        classify(nn.ModuleDict({"experts": StatedExperts(hidden=6, inner=6)}), head=False)


def test_broadcast_shaped_tensors_are_tokens_or_entry_wise():
    model = Box(probe=(1, 1, 8), group_token=(1, 5, 8), queries=(1, 3, 8), height_rel=(7, 4), layer_scale=(8, 1, 1),
                alpha=(1, 8, 1), grn=(1, 1, 1, 8), latents=(16, 8), level_embed=(4, 8), pos_bias_u=(2, 4),
                attention_biases=(2, 9), cls_token_0=(1, 1, 8), cls_token1=(1, 1, 8))
    got = layouts(model, head=False)
    tokens = {"probe", "group_token", "queries", "height_rel", "latents", "level_embed", "cls_token_0", "cls_token1",
              "attention_biases"}  # timm's relative-position bias table (LeViT), as Swin's
    assert {n for n, layout in got.items() if layout.role == "token"} == tokens
    assert all(layout.role == "vector" for n, layout in got.items() if n not in tokens)


def test_a_leading_one_is_not_taken_for_a_batch_axis():
    """``(1, 10, 8)`` may be one expert, one head's projection or ``nn.Bilinear(10, 8, 1)``: refused unless named."""
    with pytest.raises(ValueError, match=r"stuff of shape \(1, 10, 8\).*layouts="):
        classify(Box(stuff=(1, 10, 8)), head=False)
    with pytest.raises(ValueError, match="Bilinear"):
        classify(nn.ModuleDict({"bilinear": nn.Bilinear(10, 8, 1)}), head=False)


@pytest.mark.parametrize("name", ["W_query", "query_w", "embed_out", "linear_probe", "w_gamma", "w_beta", "w_g"])
def test_matrices_whose_names_contain_a_token_or_gain_word_are_not_taken_for_one(name):
    """Only whole names (``query``, ``probe``, ``latents``) or token/embedding suffixes make a 2-D tensor a table, and
    2-D gains by name are not entry-wise: these are read as F.linear's, with the warning."""
    shape = (64, 1) if name == "w_g" else (8, 16)  # SwiftFormer's w_g: query @ w_g
    with pytest.warns(UserWarning, match=name):
        got = classify(Box(**{name: shape}), head=False)[0]
    assert got[name][0].role == "hidden"


def test_raw_bias_k_and_v_tokens_outside_multihead_attention():
    """fairseq-style attention keeps its own (1, 1, d) ``bias_k``/``bias_v``; 2-D ones are tokens too."""
    got = layouts(nn.ModuleDict({"a": Box(bias_k=(1, 1, 8), bias_v=(1, 1, 8)), "b": Box(bias_k=(1, 8), bias_v=(1, 8))}),
                  head=False)
    assert {layout.role for layout in got.values()} == {"token"}


def test_a_raw_matrix_no_rule_knows_is_read_as_f_linear_with_a_warning_naming_it():
    """Named ``weight`` too: a module of no known class may read its ``weight`` as a table (I-BERT's QuantEmbedding
    had been read silently as a linear map and, tied to the output layer, as a Spectral head)."""
    model = Box(mixing=(4, 8), weight=(4, 8))
    with pytest.warns(UserWarning, match=r"2 2-D parameter\(s\).*: mixing, weight\. .*layouts="):
        got = {n: layout for n, (layout, _) in classify(model, head=False)[0].items()}
    assert got["mixing"].role == "hidden" and not got["mixing"].transposed
    declared = layouts(model, head=False, layouts={r"^(mixing|weight)$": "linear"})  # declaring them silences it
    assert declared["mixing"].role == "hidden" and declared["weight"].role == "hidden"


def test_swiftformer_w_g_is_read_as_query_at_w_g():
    class EfficientAdditiveAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_g = nn.Parameter(torch.zeros(64, 1))

    got = layouts(nn.ModuleDict({"attn": EfficientAdditiveAttention()}), head=False)["attn.w_g"]
    assert (got.role, got.transposed) == ("hidden", True)


def test_gemma3_projector_matrix_is_read_as_x_at_w():
    class Gemma3MultiModalProjector(nn.Module):
        def __init__(self):
            super().__init__()
            self.mm_input_projection_weight = nn.Parameter(torch.zeros(12, 8))  # (vision d, text d): x @ W

    got = layouts(nn.ModuleDict({"projector": Gemma3MultiModalProjector()}), head=False)
    assert got["projector.mm_input_projection_weight"].transposed


def test_multihead_attention_bias_k_and_v_are_tokens_and_conformer_per_head_biases_are_entry_wise():
    class ConformerAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias_u, self.bias_v = nn.Parameter(torch.zeros(2, 4)), nn.Parameter(torch.zeros(2, 4))

    got = layouts(nn.ModuleDict({"mha": nn.MultiheadAttention(8, 2, add_bias_kv=True), "rel": ConformerAttention()}),
                  head=False)
    assert got["mha.bias_k"].role == got["mha.bias_v"].role == "token"
    assert got["rel.bias_u"].role == got["rel.bias_v"].role == "vector"


def test_a_weight_normed_output_layer_is_the_head_and_a_weight_normed_fused_qkv_keeps_its_blocks():
    """DINO's projection head ends in ``weight_norm(nn.Linear)``; its direction is the head, its magnitude a vector."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim = 2, 4
            self.qkv = weight_norm(nn.Linear(8, 24))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()
            self.last_layer = weight_norm(nn.Linear(24, 5))

        def forward(self, x):
            return self.last_layer(self.attn.qkv(x))

    got = layouts(Net())
    assert got["last_layer.parametrizations.weight.original1"].role == "head"
    assert got["last_layer.parametrizations.weight.original0"].role == "vector"
    assert got["attn.qkv.parametrizations.weight.original1"].blocks == (8, 8, 8)


def test_deberta_in_proj_is_split_per_head_and_lfm2_short_conv_into_b_c_x():
    """DeBERTa (v1) interleaves q, k, v per head (each head's rows: q, k, v); LFM2's short conv chunks B, C, x."""

    class DisentangledSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_attention_heads = 2
            self.in_proj = nn.Linear(8, 24, bias=False)

    class Lfm2ShortConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = nn.Linear(8, 24, bias=False)

    got = layouts(nn.ModuleDict({"attn": DisentangledSelfAttention(), "conv": Lfm2ShortConv()}), head=False)
    assert got["attn.in_proj.weight"].blocks == (4,) * 6
    assert got["conv.in_proj.weight"].blocks == (8, 8, 8)


def test_a_weight_normed_head_through_the_deprecated_hook_is_the_head():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.lm_head = nn.utils.weight_norm(nn.Linear(8, 5))

        def forward(self, x):
            return self.lm_head(self.body(x))

    got = layouts(Net())
    assert got["lm_head.weight_v"].role == "head" and got["lm_head.weight_g"].role == "vector"


def test_a_type_declaration_reaches_its_parametrized_weight_and_the_error_names_the_module():
    class MyConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 4, 3))

    model = nn.Sequential(weight_norm(MyConv(), dim=0))
    with pytest.raises(ValueError, match=r"\(in MyConv\).*\{MyConv: \{'original1': KIND\}\}"):
        classify(model)
    got = layouts(model, layouts={MyConv: "conv"})
    assert got["0.parametrizations.weight.original1"].role == "conv"
    assert got["0.parametrizations.weight.original0"].role == "vector"  # the magnitude is not the kernel


def test_zamba_in_proj_alternates_x_and_z_rows():
    """Zamba's mixer splits ``in_proj`` with ``view(b, -1, 2, L).chunk(2, dim=2)``: x and z rows alternate."""

    class ZambaMambaMixer(MambaMixer):
        pass

    got = layouts(nn.ModuleDict({"mixer": ZambaMambaMixer()}), head=False)["mixer.in_proj.weight"]
    assert (got.blocks, got.interleaved) == ((16, 16), True)


def test_the_x_vector_am_softmax_weight_is_read_as_x_at_w():
    class AMSoftmaxLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(16, 3))  # (input_dim, num_labels): torch.mm(x, W)

    assert layouts(nn.ModuleDict({"objective": AMSoftmaxLoss()}), head=False)["objective.weight"].transposed


def test_a_parametrized_raw_matrix_is_warned_about_like_a_plain_one():
    class Identity(nn.Module):
        def forward(self, x):
            return x

    model = Box(mixing=(4, 8))
    parametrize.register_parametrization(model, "mixing", Identity())
    with pytest.warns(UserWarning, match="parametrizations.mixing.original"):
        classify(model, head=False)


def test_the_deprecated_weight_norm_and_spectral_norm_hooks_on_any_tensor():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        lstm = nn.utils.weight_norm(nn.LSTM(4, 8), name="weight_hh_l0")
        conv = nn.utils.spectral_norm(nn.Conv2d(3, 8, 3))
    got = layouts(nn.ModuleDict({"lstm": lstm, "conv": conv}), head=False)
    assert got["lstm.weight_hh_l0_g"].role == "vector"
    assert got["lstm.weight_hh_l0_v"].blocks == (8,) * 4
    assert got["conv.weight_orig"].role == "conv"


def test_diffusion_transformers_adaln_tables_and_stored_statistics_are_entry_wise():
    """The adaLN-single tables PixArt/Sana ((2, d), (6, d) per block), Wan ((1, 2, d), (1, 6, d) ``modulation``) and
    LTX-2 (``audio_scale_shift_table``) add to the time embedding, and the prior's ``clip_mean``/``clip_std``: tables
    of gains and shifts, not linear maps (read as F.linear's, or refused, before)."""
    model = nn.ModuleDict({
        "pixart": Box(scale_shift_table=(2, 16)), "block": Box(scale_shift_table=(6, 16)),
        "wan": Box(scale_shift_table=(1, 2, 16), modulation=(1, 6, 16)), "ltx": Box(audio_scale_shift_table=(6, 16)),
        "joy": Box(modulate_table=(1, 6, 16)), "prior": Box(clip_mean=(1, 16), clip_std=(1, 16))})
    got = layouts(model)
    assert {name: layout.role for name, layout in got.items()} == {name: "vector" for name in got}
    assert len(got) == 8


def test_a_matrix_named_like_a_mean_projection_is_not_a_statistic():
    """``W_mean`` (a VAE's mean projection) stays a matrix: the F.linear guess, with its warning."""
    with pytest.warns(UserWarning, match="W_mean"):
        got = {name: layout for name, (layout, _) in classify(Box(W_mean=(8, 16)))[0].items()}
    assert got["W_mean"].role == "hidden"


class ShortConv(nn.Module):
    """A depthwise causal conv on a raw (channels, 1, taps) weight (SANA-WM's, fla's short convolutions)."""

    def __init__(self, channels=8, taps=4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, taps, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return nn.functional.conv1d(x, self.weight, groups=self.weight.shape[0], padding=self.weight.shape[2] - 1)


def test_a_declared_depthwise_conv_steps_exactly_like_nn_conv1d_with_one_group_per_channel():
    import specopt

    torch.manual_seed(0)
    raw = nn.Sequential(nn.Conv1d(8, 8, 1), ShortConv())
    ref = nn.Sequential(nn.Conv1d(8, 8, 1), nn.Conv1d(8, 8, 4, groups=8, padding=3, bias=False))
    ref.load_state_dict(raw.state_dict())
    with pytest.raises(ValueError, match="conv_depthwise"):  # undeclared: refused, and the error names the kind
        specopt.param_groups(raw)
    x = torch.randn(2, 8, 12)
    for model, kwargs in ((raw, {"layouts": {ShortConv: "conv_depthwise"}}), (ref, {})):
        opt = specopt.Scion(specopt.param_groups(model, **kwargs))
        model(x).square().mean().backward()
        opt.step()
    assert torch.equal(raw[1].weight, ref[1].weight)
    with pytest.raises(ValueError, match=r"'conv_depthwise' needs a \(channels, 1, \*kernel\).*\(8, 2, 4\)"):
        specopt.param_groups(nn.Sequential(Box(weight=(8, 2, 4))), layouts={r"weight": "conv_depthwise"})


def test_a_grouped_conv_transpose_steps_exactly_like_one_conv_transpose_per_group():
    """A grouped ConvTranspose kernel ``(c_in, d_out/groups, *k)`` holds one map per group in its rows: torch defines
    the layout, so it is read without a declaration (it was refused), each group's block as a ConvTranspose."""
    import specopt

    torch.manual_seed(0)
    groups, c_in, d_out = 3, 6, 9
    grouped = nn.ConvTranspose1d(c_in, d_out, 4, groups=groups, bias=False)
    apart = nn.ModuleList(nn.ConvTranspose1d(c_in // groups, d_out // groups, 4, bias=False) for _ in range(groups))
    with torch.no_grad():
        for i, part in enumerate(apart):
            part.weight.copy_(grouped.weight[i * c_in // groups:(i + 1) * c_in // groups])
    x = torch.randn(2, c_in, 10)
    for model, forward in ((grouped, grouped), (apart, lambda x: torch.cat([m(c) for m, c in zip(
            apart, x.chunk(groups, dim=1), strict=True)], dim=1))):
        opt = specopt.UScion(specopt.param_groups(model, msign={"method": "svd"}), lr=0.1, momentum=0.0)
        forward(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(grouped.weight, torch.cat([m.weight for m in apart]), rtol=0, atol=1e-5)


def test_a_module_types_kind_is_refused_where_a_rule_reads_its_tensor_otherwise():
    """``{nn.ConvTranspose1d: 'conv'}`` (as the refusal of a grouped kernel advised) re-read every groups=1 kernel
    as stored (d_out, c_in), silently transposed; ``{Mixer: 'experts'}`` took its 2-D biases and A_log too. A
    type's plain KIND covers the tensors no rule reads; a rule's tensor is an error naming the forms that work."""
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Parameter(torch.randn(2, 8, 8))
            self.gate_bias = nn.Parameter(torch.zeros(2, 8))

    model = nn.Sequential(nn.ConvTranspose1d(4, 6, 3), Mixer())
    with pytest.raises(ValueError, match=r"ConvTranspose1d: 'conv'\} would re-read 0\.weight .*stored transposed"):
        classify(model, layouts={nn.ConvTranspose1d: "conv", Mixer: {"gate": "experts"}})
    with pytest.raises(ValueError, match=r"would re-read 1\.gate_bias .*\{Mixer: \{'<local name>': 'experts'\}\}"):
        classify(model, layouts={Mixer: "experts"})
    got = layouts(model, layouts={Mixer: {"gate": "experts"}})
    assert got["1.gate"].role == "expert" and got["1.gate_bias"].role == "vector" and got["0.weight"].transposed


class CrossAttention(nn.Module):
    """A cross-attention with separate q and a fused ``to_kv`` of ``kv_blocks`` × d rows (2: k, v; 3: Stable Audio
    3's differential k₁, k₂, v), optionally stating grouped-query head counts."""

    def __init__(self, d=16, q_blocks=1, kv_blocks=2, heads=None, kv_heads=None):
        super().__init__()
        self.to_q = nn.Linear(d, q_blocks * d)
        self.to_kv = nn.Linear(d, kv_blocks * d)
        if heads:
            self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, d // heads


def test_a_fused_kv_is_split_only_where_the_attention_module_confirms_k_then_v():
    got = layouts(nn.ModuleDict({"plain": CrossAttention(), "differential": CrossAttention(q_blocks=2, kv_blocks=3),
                                 "gqa": CrossAttention(d=16, kv_blocks=1, heads=4, kv_heads=2)}))
    assert got["plain.to_kv.weight"].blocks == (16, 16)
    assert got["differential.to_kv.weight"].blocks is None  # k₁, k₂, v: one matrix, not two halves
    assert got["gqa.to_kv.weight"].blocks == (8, 8)  # 2 key/value heads of 4 rows each, for k and for v


def owned(cls_name: str, **shapes) -> nn.Module:
    """A :class:`Box` whose class is named ``cls_name`` (the rules for raw tensors read their owner's class)."""
    return type(cls_name, (Box,), {})(**shapes)


def test_the_raw_tensors_transformers_models_hold_get_their_layout_without_a_warning():
    """X-CLIP's prompt projection and Inkling-2's relative-position profiles are used as ``x @ W``; GLM-5-Next's
    indexer gate is F.linear's and its ``*_ape`` a position table; SAM-2 video's ``no_object_pointer`` and
    ``occlusion_spatial_embedding_parameter`` are learned vectors added to the features (all read as F.linear's,
    with a warning, before)."""
    got = layouts(nn.ModuleDict({
        "xclip": owned("XCLIPModel", prompts_visual_projection=(32, 16)),
        "rel": owned("Inkling2RelativePositionBias", proj=(8, 64)),
        "indexer": owned("Glm5NextTextIndexer", index_kpool_compress_gate=(16, 32), index_kpool_compress_ape=(4, 16)),
        "sam2": owned("Sam2VideoModel", no_object_pointer=(1, 32), occlusion_spatial_embedding_parameter=(1, 16))}))
    assert (got["xclip.prompts_visual_projection"].role, got["xclip.prompts_visual_projection"].transposed) == \
        ("hidden", True)
    assert (got["rel.proj"].role, got["rel.proj"].transposed) == ("hidden", True)
    gate = got["indexer.index_kpool_compress_gate"]
    assert (gate.role, gate.transposed) == ("hidden", False)
    assert {got[n].role for n in ("indexer.index_kpool_compress_ape", "sam2.no_object_pointer",
                                  "sam2.occlusion_spatial_embedding_parameter")} == {"token"}


def test_the_raw_tensors_x_transformers_holds_get_their_layout_without_a_warning():
    """Its bank of distance profiles (``weights @ bank``) and hyper-connections' dynamic mixing weights (``normed @
    W``) are ``x @ W``, their static mixing weights entry-wise, its attention's memory keys and values
    ``(kv heads, n, d_head)`` tokens (a warning, a warning and a refusal before)."""
    got = layouts(nn.ModuleDict({
        "bias": owned("RelativeProjPositionalBias", distance_bank=(16, 64)),
        "hyper": owned("HyperConnection", dynamic_alpha_fn=(32, 5), static_alpha=(4, 5), static_beta=(4,)),
        "attention": owned("Attention", mem_k=(2, 4, 8), mem_v=(2, 4, 8))}))
    assert {(got[n].role, got[n].transposed) for n in ("bias.distance_bank", "hyper.dynamic_alpha_fn")} == \
        {("hidden", True)}
    assert {got[n].role for n in ("hyper.static_alpha", "hyper.static_beta")} == {"vector"}
    assert {got[n].role for n in ("attention.mem_k", "attention.mem_v")} == {"token"}


@pytest.mark.parametrize("layer, glu, halves", [
    (lambda: nn.Linear(8, 32), nn.GLU(), True),
    (lambda: nn.Linear(8, 32), nn.GLU(dim=1), False),  # the rows of a (batch, features) input, not the features
    (lambda: nn.Conv1d(8, 32, 3), nn.GLU(dim=1), True),
    (lambda: nn.Conv2d(8, 32, 3), nn.GLU(dim=-3), True),
    (lambda: nn.Conv1d(8, 32, 3), nn.GLU(dim=-1), False),  # halves the time axis
    (lambda: nn.Linear(8, 32), nn.ReLU(), False),
])
def test_a_projection_an_nn_glu_halves_in_a_sequential_holds_a_value_and_a_gate_block(layer, glu, halves):
    got = layouts(nn.Sequential(layer(), glu, nn.Linear(16, 4)))["0.weight"]
    assert got.blocks == ((16, 16) if halves else None)


def test_every_conv_of_speech2texts_subsampler_list_holds_a_value_and_a_gate_block():
    """Speech2Text's ``Conv1dSubsampler`` runs each conv of its ``conv_layers`` list into ``F.glu(dim=1)``: the table
    entry names the list, for every module in it; the same list in another owner stays one map per conv."""
    def subsampler(cls_name):
        module = type(cls_name, (nn.Module,), {})()
        module.conv_layers = nn.ModuleList([nn.Conv1d(8, 16, 5), nn.Conv1d(8, 32, 5)])
        return module
    got = layouts(nn.ModuleDict({"s2t": subsampler("Conv1dSubsampler"), "other": subsampler("Subsampler")}))
    assert (got["s2t.conv_layers.0.weight"].blocks, got["s2t.conv_layers.1.weight"].blocks) == ((8, 8), (16, 16))
    assert got["other.conv_layers.0.weight"].blocks is None
