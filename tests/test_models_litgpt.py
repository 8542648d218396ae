"""litgpt's GPT (Lightning AI): grouped-query and multi-head attention with its fused ``qkv``, a mixture of experts,
and its LoRA model, random init: roles tensor by tensor, the geometry by its defining property (the q/k/v sizes as
litgpt's forward splits them, read here from the config), every preset trains, exact state_dict round trip.

litgpt pins ``huggingface_hub<1.4`` and transformers 5 needs a newer one, so the two cannot share an environment:
these tests skip where ``import litgpt`` fails, and ``.ci/run`` runs them in the separate environment of the timm
tests (see the README's "Testing with timm and litgpt").
"""

import pytest
import torch
from model_checks import assert_one_step_geometry, assert_presets_train, assert_roles, assert_state_dict_round_trip
from torch import nn

litgpt = pytest.importorskip("litgpt")
from litgpt.lora import GPT as LoRAGPT  # noqa: E402
from litgpt.lora import mark_only_lora_as_trainable  # noqa: E402

VOCAB, SEQ = 64, 16
SMALL = dict(block_size=SEQ, vocab_size=VOCAB, padded_vocab_size=VOCAB, n_layer=2, n_embd=32, head_size=8,
             rotary_percentage=1.0)
LLAMA = dict(SMALL, n_head=4, n_query_groups=2, mlp_class_name="LLaMAMLP", intermediate_size=48, bias=False,
             norm_class_name="RMSNorm", parallel_residual=False)
"""Grouped-query attention: q has 4 heads, k and v 2 each, so the fused qkv is 32 + 16 + 16 rows."""
PYTHIA = dict(SMALL, n_head=4, n_query_groups=4, mlp_class_name="GptNeoxMLP", intermediate_size=64, bias=True)
MOE = dict(LLAMA, mlp_class_name="LLaMAMoE", n_expert=4, n_expert_per_token=2, moe_intermediate_size=24)

pytestmark = pytest.mark.usefixtures("one_thread")


def make(config: dict, lora: bool = False):
    def build():
        torch.manual_seed(0)
        if not lora:
            return litgpt.GPT(litgpt.Config(**config))
        model = LoRAGPT(litgpt.lora.Config(**config, lora_r=4, lora_alpha=8, lora_query=True, lora_key=True,
                                           lora_value=True, lora_projection=True, lora_mlp=True))
        for name, p in model.named_parameters():
            if "lora_B" in name:  # LoRA's B starts at zero: nothing below it would get a gradient
                nn.init.normal_(p, std=0.02)
        mark_only_lora_as_trainable(model)
        return model
    return build


def lm_loss(model):
    x = torch.randint(0, VOCAB, (4, SEQ + 1), generator=torch.Generator().manual_seed(0))
    logits = model(x[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))


def qkv_rows(config: dict) -> tuple[int, int, int]:
    """q's, k's and v's rows of the fused projection, as litgpt's CausalSelfAttention splits its output."""
    return (config["n_head"] * config["head_size"],) + (config["n_query_groups"] * config["head_size"],) * 2


CASES = {
    "llama-gqa": (make(LLAMA), {r"^transformer\.wte\.weight$": "embedding", r"^lm_head\.weight$": "head",
                                r"(qkv|proj|fc_1|fc_2)\.weight$": "hidden", r"norm_\d\.weight$|ln_f": "vector"},
                  {r"attn\.qkv\.weight": qkv_rows(LLAMA)}),
    "pythia-mha": (make(PYTHIA), {r"^transformer\.wte\.weight$": "embedding", r"^lm_head\.weight$": "head",
                                  r"(qkv|proj|fc)\.weight$": "hidden", r"\.bias$|norm_\d\.weight$|ln_f": "vector"},
                   {r"attn\.qkv\.weight": qkv_rows(PYTHIA)}),
    "moe": (make(MOE), {r"^transformer\.wte\.weight$": "embedding", r"^lm_head\.weight$": "head",
                        r"(qkv|proj|fc_1|fc_2|gate)\.weight$": "hidden", r"norm_\d\.weight$|ln_f": "vector"},
            {r"attn\.qkv\.weight": qkv_rows(MOE)}),
    "lora": (make(LLAMA, lora=True), {r"lora_[AB]$": "hidden"},
             {r"attn\.qkv\.lora_A": 3, r"attn\.qkv\.lora_B": qkv_rows(LLAMA)}),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_roles_tensor_by_tensor(arch):
    build, expected, _ = CASES[arch]
    assert_roles(build(), expected)


@pytest.mark.parametrize("arch", list(CASES))
def test_one_uscg_step_moves_every_qkv_and_lora_block_by_gamma_rho(arch):
    """The fused qkv's q, k and v (unequal under grouped-query attention) are three matrices; LoRA's qkv factors
    feed q, k and v through a grouped conv: A's r rows per projection and B's q, k, v rows are each a matrix."""
    build, _, blocks = CASES[arch]
    assert_one_step_geometry(build(), lm_loss, blocks)


@pytest.mark.parametrize("arch", list(CASES))
def test_every_preset_lowers_the_loss_in_30_steps(arch):
    # steepest descent's step is lr·‖g‖_*: LoRA's factors see a gradient a few times smaller than a whole matrix's
    assert_presets_train(CASES[arch][0], lm_loss, lr_scale={"SteepestDescent": 10.0} if arch == "lora" else None)


@pytest.mark.parametrize("arch", ["llama-gqa", "lora"])
def test_state_dict_round_trip_is_exact(arch):
    assert_state_dict_round_trip(CASES[arch][0], lm_loss)


def test_the_adapter_v2_wrapped_qkv_keeps_its_q_k_v_blocks():
    """litgpt's adapter v2 wraps every Linear (``attn.qkv.linear``): trained whole, its q, k, v are still three."""
    from litgpt.adapter_v2 import GPT as AdapterGPT

    torch.manual_seed(0)
    model = AdapterGPT(litgpt.adapter_v2.Config(**LLAMA, adapter_start_layer=0))
    assert_one_step_geometry(model, lm_loss, {r"attn\.qkv\.linear\.weight": qkv_rows(LLAMA)})


def test_multi_head_latent_attention_is_cut_where_its_forward_splits_it():
    """litgpt's MLA keeps its dims in ``attn.config`` (transformers' DeepSeek on the module): kv_a_proj_with_mqa is the
    compressed k/v and the shared rope key, kv_b_proj per head its k (no rope) and v; both had been one matrix."""
    mla = dict(LLAMA, n_query_groups=4, latent_attention=dict(q_lora_rank=24, kv_lora_rank=16, qk_rope_head_dim=4,
                                                              qk_nope_head_dim=8, v_head_dim=8))
    assert_one_step_geometry(make(mla)(), lm_loss, {r"attn\.kv_a_proj_with_mqa\.weight": (16, 4),
                                                    r"attn\.kv_b_proj\.weight": (8, 8) * 4})
