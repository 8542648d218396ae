"""specopt.layouts over x-transformers' options: a decoder LM with each attention, feed-forward, layer and wrapper
option of x-transformers switched on alone, and its encoder, continuous, ViT and encoder–decoder wrappers: how many
are classified, which refuse (and on which tensor), which raw matrices are read as F.linear's with a warning.

    python benchmarks/xtransformers_layouts_sweep.py     # one line per refusal and warning, then the counts

The base model: ``TransformerWrapper(num_tokens=1000, max_seq_len=64, attn_layers=Decoder(dim=64, depth=2,
heads=4))``; an option whose defaults do not build alone is counted apart.
"""

from __future__ import annotations

import x_transformers as xt
from layouts_sweep import summary, sweep

ATTENTION = [
    {"pre_talking_heads": True}, {"post_talking_heads": True}, {"head_scale": True}, {"num_mem_kv": 4},
    {"on_attn": True}, {"gate_value_heads": True}, {"swiglu_values": True}, {"gate_values": True},
    {"gate_values": True, "gate_values_rank": 4}, {"output_gate": True}, {"output_gate": True,
                                                                          "output_gate_headwise": True},
    {"qk_norm": True}, {"qk_norm": True, "qk_norm_dim_scale": True}, {"qk_norm": True, "qk_norm_groups": 2},
    {"one_kv_head": True}, {"kv_heads": 2}, {"value_dim_head": 32}, {"add_zero_kv": True},
    {"head_learned_sink": True}, {"data_dependent_alibi": True},
    {"data_dependent_alibi": True, "data_dependent_alibi_per_row": True}, {"use_rel_proj_pos_bias": True},
    {"use_cope": True}, {"orthog_projected_values": True}, {"laser": True},
    {"use_latent_q": True, "dim_latent_q": 32}, {"use_latent_kv": True, "dim_latent_kv": 32},
    {"use_latent_kv": True, "dim_latent_kv": 32, "latent_rope_subheads": 2}, {"selective": True},
    {"cog_signed": True}, {"qk_rmsnorm": True}, {"value_rmsnorm": True}, {"dim_head": 16}, {"sparse_topk": 4},
    {"output_proj_depth": 2}, {"learned_value_residual_mix": True}, {"qkv_receive_diff_residuals": True}]
FEED_FORWARD = [{"glu": True}, {"glu": True, "glu_mult_bias": True}, {"swish": True, "glu": True},
                {"relu_squared": True}, {"solu": True}, {"post_act_ln": True}, {"no_bias": True},
                {"output_proj_depth": 2}, {"glu": True, "glu_softclamp": True}]
LAYERS = [
    {"use_scalenorm": True}, {"use_rmsnorm": True}, {"use_dynamic_tanh": True}, {"use_derf": True},
    {"use_simple_rmsnorm": True}, {"use_adaptive_layernorm": True, "dim_condition": 16},
    {"use_adaptive_rmsnorm": True, "dim_condition": 16}, {"use_adaptive_layerscale": True, "dim_condition": 16},
    {"alibi_pos_bias": True}, {"rel_pos_bias": True}, {"dynamic_pos_bias": True}, {"rotary_pos_emb": True},
    {"rotary_xpos": True, "rotary_pos_emb": True}, {"polar_pos_emb": True}, {"weight_tie_layers": True},
    {"sandwich_coef": 1}, {"residual_attn": True}, {"macaron": True}, {"sandwich_norm": True},
    {"gate_residual": True}, {"scale_residual": True}, {"shift_tokens": 1}, {"use_layerscale": True},
    {"unet_skips": True}, {"integrate_layers": True}, {"num_residual_streams": 4}, {"reinject_input": True},
    {"learned_reinject_input_gate": True}, {"add_value_residual": True}, {"gated_multi_residual": True},
    {"orthog_residual": True}, {"mv_split_residual": True}, {"attn_aggregated_residuals": True},
    {"softclamp_output": True}, {"depth_scale_residual": True}, {"pre_and_post_norm": True}, {"pre_norm": False},
    {"layer_dropout": 0.1}, {"zero_init_branch_output": True}]
WRAPPER = [{"num_memory_tokens": 4}, {"tie_embedding": True}, {"post_emb_norm": True}, {"attn_pool": True},
           {"num_output_heads": 2}, {"mixture_of_softmax": True}, {"ff_deep_embed": True},
           {"embed_num_tokens": {"type": 4}}, {"l2norm_embed": True}, {"use_abs_pos_emb": False},
           {"scaled_sinu_pos_emb": True}, {"recycling": True}, {"add_continuous_pred_head": True},
           {"sigsoftmax_logits": True}, {"emb_dim": 32}, {"logits_dim": 10}]
SMALL = {"dim": 64, "depth": 2, "heads": 4}


def lm(layers: dict | None = None, wrapper: dict | None = None, encoder: bool = False):
    stack = (xt.Encoder if encoder else xt.Decoder)(**SMALL, **(layers or {}))
    return xt.TransformerWrapper(num_tokens=1000, max_seq_len=64, attn_layers=stack, **(wrapper or {}))


def candidates():
    for option in ATTENTION:
        yield f"attn {option}", lambda o=option: lm({f"attn_{k}": v for k, v in o.items()})
    for option in FEED_FORWARD:
        yield f"ff {option}", lambda o=option: lm({f"ff_{k}": v for k, v in o.items()})
    for option in LAYERS:
        yield f"layers {option}", lambda o=option: lm(o)
    for option in WRAPPER:
        yield f"wrapper {option}", lambda o=option: lm(wrapper=o)
    yield "encoder with a CLS token", lambda: lm(wrapper={"use_cls_token": True}, encoder=True)
    yield "encoder with cross-attention", lambda: lm({"cross_attend": True}, encoder=True)
    yield "ContinuousTransformerWrapper", lambda: xt.ContinuousTransformerWrapper(
        dim_in=8, dim_out=8, max_seq_len=64, attn_layers=xt.Decoder(**SMALL))
    yield "ViTransformerWrapper", lambda: xt.ViTransformerWrapper(
        image_size=32, patch_size=8, num_classes=10, attn_layers=xt.Encoder(**SMALL))
    yield "ViTransformerWrapper with registers", lambda: xt.ViTransformerWrapper(
        image_size=32, patch_size=8, num_classes=10, num_register_tokens=4, attn_layers=xt.Encoder(**SMALL))
    yield "XTransformer", lambda: xt.XTransformer(
        dim=64, enc_num_tokens=1000, enc_depth=2, enc_heads=4, enc_max_seq_len=64, dec_num_tokens=1000, dec_depth=2,
        dec_heads=4, dec_max_seq_len=64)


def main() -> None:
    counts = sweep(candidates())
    print(f"\n{summary(counts)}, {counts['unbuilt']} options that do not build alone")


if __name__ == "__main__":
    main()
