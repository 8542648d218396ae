"""specopt.param_groups: roles, norms and radii from module types and shapes."""

import copy

import pytest
import torch
from torch import nn

import specopt
from specopt.norms import BiasRMS, Blocked, ColNorm, Sign, Spectral, SpectralConv


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.mha = nn.MultiheadAttention(d, heads)
        self.mlp = nn.Linear(d, 4 * d)
        self.norm = nn.RMSNorm(d)


class TinyGPT(nn.Module):
    def __init__(self, vocab=50, d=16, heads=4, tied=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(2)])
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight


def assignment(groups):
    return {name: (g["role"], g["norm"], g["radius"]) for g in groups for name, _ in g["params"]}


def test_text_model_gets_sign_spectral_sign():
    model = TinyGPT(tied=False)
    a = assignment(specopt.param_groups(model))
    assert a["wte.weight"][:2] == ("embedding", Sign())
    assert a["lm_head.weight"][:2] == ("head", Sign(fan_in_scaled=True))
    assert a["blocks.0.mlp.weight"][:2] == ("hidden", Spectral())
    assert a["blocks.0.mha.out_proj.weight"][:2] == ("hidden", Spectral())
    assert a["blocks.0.ln.weight"][:2] == ("vector", BiasRMS())
    assert a["blocks.1.norm.weight"][0] == "vector" and a["blocks.0.c_attn.bias"][0] == "vector"
    assert {k: v[2] for k, v in a.items() if k in ("wte.weight", "lm_head.weight", "blocks.0.mlp.weight")} == {
        "wte.weight": 10.0, "lm_head.weight": 100.0, "blocks.0.mlp.weight": 30.0}


def test_every_trainable_parameter_is_assigned_exactly_once():
    model = TinyGPT()
    groups = specopt.param_groups(model)
    names = [name for g in groups for name, _ in g["params"]]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters())


def test_tied_embedding_and_head_is_one_embedding():
    a = assignment(specopt.param_groups(TinyGPT(tied=True)))
    assert a["wte.weight"][0] == "embedding" and "lm_head.weight" not in a


def test_multihead_attention_in_proj_is_split_into_q_k_v_and_heads():
    a = assignment(specopt.param_groups(TinyGPT(), split_sizes={"c_attn": (16, 16, 16)}))
    assert a["blocks.0.mha.in_proj_weight"][1] == Blocked(Spectral(), (16, 16, 16))
    assert a["blocks.0.c_attn.weight"][1] == Blocked(Spectral(), (16, 16, 16))
    assert a["blocks.0.c_attn.bias"][1] == BiasRMS()
    per_head = assignment(specopt.param_groups(TinyGPT(), num_heads=4))
    assert per_head["blocks.0.mha.in_proj_weight"][1] == Blocked(Spectral(), (4,) * 12)


def test_blocked_lmo_orthogonalises_each_block():
    norm = Blocked(Spectral(method="svd"), (16, 16, 16))
    g = torch.randn(48, 16, dtype=torch.float64)
    s = norm.lmo(g)
    for block in s.split(16):
        torch.testing.assert_close(block.T @ block, torch.eye(16, dtype=torch.float64), atol=1e-10, rtol=0)
    assert float((g * s).sum()) == pytest.approx(-float(norm.dual(g)))


def test_image_model_gets_spectral_conv_and_spectral_head():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Conv1d(8, 8, 3), nn.Flatten(), nn.Linear(10, 10),
                          nn.Linear(10, 3))
    a = assignment(specopt.param_groups(model))
    assert a["0.weight"][:2] == ("conv", SpectralConv(kernel_dims=2))
    assert a["2.weight"][:2] == ("conv", SpectralConv(kernel_dims=1))
    assert a["1.weight"][0] == "vector"
    assert a["4.weight"][:2] == ("hidden", Spectral())
    assert a["5.weight"][:2] == ("head", Spectral())


def test_options_and_overrides():
    model = TinyGPT(tied=False)
    groups = specopt.param_groups(model, embedding_norm="col_norm", radii={"hidden": 50.0}, head="lm_head",
                                  overrides={r"blocks\.1\.mlp": {"radius": 7.0, "lr": 0.5}},
                                  msign={"method": "newton_schulz"})
    a = {name: g for g in groups for name, _ in g["params"]}
    assert a["wte.weight"]["norm"] == ColNorm(transpose=True)
    assert a["blocks.0.mlp.weight"]["radius"] == 50.0
    assert a["blocks.0.mlp.weight"]["norm"] == Spectral(method="newton_schulz")
    assert a["blocks.1.mlp.weight"]["radius"] == 7.0 and a["blocks.1.mlp.weight"]["lr"] == 0.5


def test_print_table(capsys):
    specopt.param_groups(TinyGPT(), print_table=True)
    out = capsys.readouterr().out
    assert "wte.weight" in out and "embedding" in out and "Spectral" in out and "(50, 16)" in out


def test_groups_drive_every_optimizer():
    model = TinyGPT()
    x = torch.randint(0, 50, (4, 8))
    for cls in (specopt.Scion, specopt.UScion, specopt.Muon, specopt.Gluon):
        opt = cls(specopt.param_groups(model, num_heads=4))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        h = model.wte(x)
        for block in model.blocks:
            h = h + block.mlp(block.ln(h))[..., :16] + block.mha(h, h, h)[0] + block.c_attn(h)[..., :16]
        model.lm_head(block.norm(h)).logsumexp(-1).mean().backward()
        opt.step()
        for name, p in model.named_parameters():
            assert torch.isfinite(p).all(), (cls.__name__, name)
            if p.grad is not None and p.grad.abs().sum() > 0:  # every tensor with a gradient moves
                assert not torch.equal(p, before[name]), (cls.__name__, name)


def test_muon_uses_roles_adamw_for_embedding_and_head():
    model = TinyGPT(tied=False)
    opt = specopt.Muon(specopt.param_groups(model))
    by_role = {g["role"]: g for g in opt.param_groups if len(g["params"])}
    assert by_role["embedding"]["norm"] == "adamw" and by_role["head"]["norm"] == "adamw"
    assert by_role["hidden"]["radius"] == "original"


def innermost(norm):
    while hasattr(norm, "inner"):
        norm = norm.inner
    return norm


def test_muons_msign_options_reach_the_groups_of_param_groups():
    """``Muon(param_groups(model), method=…)`` orthogonalises every tensor with that msign, the fused q/k/v blocks
    included: the same step as ``param_groups(model, msign={…})``, and not the default Polar Express step."""
    torch.manual_seed(0)
    base = TinyGPT(tied=False)
    chosen = {"method": "newton_schulz", "steps": 6, "compute_dtype": torch.float64}
    after = {}
    for label, make in {
        "muon": lambda m: specopt.Muon(specopt.param_groups(m), **chosen),
        "groups": lambda m: specopt.Muon(specopt.param_groups(m, msign=chosen)),
        "default": lambda m: specopt.Muon(specopt.param_groups(m)),
    }.items():
        model = copy.deepcopy(base)
        opt = make(model)
        spectral = [innermost(g["norm"]) for g in opt.param_groups if g["norm"] != "adamw"]
        assert spectral and all(n.method == ("polar_express" if label == "default" else "newton_schulz")
                                for n in spectral)
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        after[label] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after["muon"], after["groups"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(after["muon"], after["default"], strict=True))


def test_muon_refuses_msign_options_that_disagree_with_the_groups():
    model = TinyGPT(tied=False)
    with pytest.raises(ValueError, match=r"Muon\(steps=4\) disagrees with the hidden group's norm.*steps=6"):
        specopt.Muon(specopt.param_groups(model, msign={"steps": 6}), steps=4)
    opt = specopt.Muon(specopt.param_groups(model, msign={"steps": 6}), steps=6, method="cans")  # agreeing: fine
    assert {(innermost(g["norm"]).steps, innermost(g["norm"]).method) for g in opt.param_groups
            if g["norm"] != "adamw"} == {(6, "cans")}


@pytest.mark.parametrize(
    "kwargs, match",
    [({"scheme": "audio"}, "unknown scheme"), ({"head": "nope"}, "matches no nn.Linear"),
     ({"radii": {"middle": 1.0}}, "unknown role"), ({"embedding_norm": "l2"}, "embedding_norm"),
     ({"num_heads": 3}, "does not divide"), ({"num_heads": 0}, "num_heads")],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        specopt.param_groups(TinyGPT(), **kwargs)
