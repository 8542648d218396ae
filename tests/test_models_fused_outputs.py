"""Layouts of transformers, diffusers and x-transformers models an outside review found misread (2026-12-02):
every fused projection is cut where its forward splits it, every lookup table is a table, every MoE router is known
and every output layer is the head, with no guess and no warning."""

import warnings

import pytest
import torch
from model_checks import assert_one_step_geometry, one_step_moves

import specopt

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

DELTANET = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, linear_num_value_heads=4, linear_num_key_heads=2,
                linear_key_head_dim=8, linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"],
                pad_token_id=0, bos_token_id=1, eos_token_id=1)


def built(model_type: str, **config):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **config))


def layouts(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no F.linear guess
        return {n: layout for n, (layout, _) in specopt.layouts.classify(model)[0].items()}


def lm_loss(model):
    x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    return model(input_ids=x, labels=x).loss


def test_gated_deltanet_projections_are_cut_per_key_head_group():
    """Qwen3-Next's in_proj_qkvz is viewed per key-head group as [q 8 | k 8 | v 16 | z 16] and in_proj_ba as
    [b 2 | a 2]; Qwen3.5's in_proj_qkv is split [key_dim, key_dim, value_dim]. Each block steps by exactly γρ."""
    nxt = built("qwen3_next", moe_intermediate_size=16, shared_expert_intermediate_size=16, num_experts=4,
                num_experts_per_tok=2, **DELTANET)
    got = layouts(nxt)
    assert got["model.layers.0.linear_attn.in_proj_qkvz.weight"].blocks == (8, 8, 16, 16) * 2
    assert got["model.layers.0.linear_attn.in_proj_ba.weight"].blocks == (2, 2) * 2
    assert_one_step_geometry(nxt, lm_loss, blocks={r"in_proj_qkvz": (8, 8, 16, 16) * 2,
                                                   r"in_proj_ba": (2, 2) * 2})
    q35 = built("qwen3_5_text", **DELTANET)
    assert layouts(q35)["model.layers.0.linear_attn.in_proj_qkv.weight"].blocks == (16, 16, 32)


def test_moe_routers_are_known_f_linear_maps():
    """A TopKRouter's ``weight`` is F.linear(x, W) (experts × d): read so, by its class, not guessed."""
    model = built("mixtral", vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    router = layouts(model)["model.layers.0.mlp.gate.weight"]
    assert (router.role, router.transposed, router.guessed) == ("hidden", False, False)
    assert "MoE router" in router.source
    gate = type("MoEGate", (torch.nn.Module,), {})()  # DeepSeek's remote code and diffusers' HiDream name it so
    gate.weight = torch.nn.Parameter(torch.zeros(4, 32))
    assert not layouts(torch.nn.ModuleDict({"gate": gate}))["gate.weight"].guessed


def test_ibert_tables_are_embeddings_and_the_model_is_text():
    """I-BERT's QuantEmbedding is no nn.Embedding subclass: its tables had been read as linear maps (the word table,
    tied to the output layer, as a Spectral head) and the model, holding no nn.Embedding, by the image scheme."""
    torch.manual_seed(0)
    config = transformers.IBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=40)
    model = transformers.IBertForMaskedLM(config)
    got = layouts(model)
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        assert got[f"ibert.embeddings.{table}.weight"].role == "embedding"
    assert got["ibert.encoder.layer.0.attention.self.query.weight"].role == "hidden"
    groups = specopt.param_groups(model)
    word = next(g for g in groups if any(n == "ibert.embeddings.word_embeddings.weight" for n, _ in g["params"]))
    assert isinstance(word["norm"], specopt.Sign)  # the text scheme's embedding geometry


@pytest.mark.parametrize("case", ["layoutlmv2", "mobilevitv2"])
def test_fused_q_k_v_of_layoutlmv2_and_mobilevitv2(case):
    """LayoutLMv2's qkv_linear is chunked into q, k, v; MobileViTV2's 1×1 qkv conv is split [1, d, d] (one query
    channel, then the key and the value)."""
    torch.manual_seed(0)
    if case == "layoutlmv2":
        from transformers.models.layoutlmv2.modeling_layoutlmv2 import LayoutLMv2SelfAttention

        module = LayoutLMv2SelfAttention(transformers.LayoutLMv2Config(hidden_size=32, num_attention_heads=4))
        assert layouts(module)["qkv_linear.weight"].blocks == (32, 32, 32)
        return
    config = transformers.MobileViTV2Config(image_size=64, num_channels=3, width_multiplier=0.5)
    model = transformers.MobileViTV2Model(config)
    got = layouts(model)
    qkv = [n for n in got if n.endswith("attention.qkv_proj.convolution.weight")]
    assert qkv
    for name in qkv:
        d = dict(model.named_parameters())[name].shape[1]
        assert got[name].blocks == (1, d, d)


def test_chunked_projections_of_cohere2_vision_and_vibevoice_by_their_class():
    """Cohere2-Vision's projector chunks linear_1 into value and gate (as Aya Vision's); VibeVoice's diffusion head
    chunks its adaLN linear into shift, scale, gate and its final layer's linear_1 into shift, scale. Built here as
    classes of the same names (the real models are billions of parameters)."""
    from torch import nn

    def named(cls_name, **linears):
        module = type(cls_name, (nn.Module,), {})()
        for local, (d_in, d_out) in linears.items():
            setattr(module, local, nn.Linear(d_in, d_out, bias=False))
        return module

    model = nn.ModuleDict({"projector": named("Cohere2VisionMultiModalProjector", linear_1=(8, 24)),
                           "ada": named("VibeVoiceDiffusionHeadAdaLayerNorm", linear=(8, 24)),
                           "final": named("VibeVoiceDiffusionHeadFinalLayer", linear_1=(8, 16))})
    got = layouts(model)
    assert got["projector.linear_1.weight"].blocks == (12, 12)
    assert got["ada.linear.weight"].blocks == (8, 8, 8)
    assert got["final.linear_1.weight"].blocks == (8, 8)


def test_x_transformers_wrappers_state_their_output_layer():
    """x-transformers' forward does not trace with torch.fx, and the vocabulary fallback had missed ``to_logits``
    where the vocabulary equals the feed-forward width (and taken a feed-forward projection for the head where it
    equals a position table's rows); ViTransformerWrapper's ``mlp_head`` had been hidden."""
    xt = pytest.importorskip("x_transformers")
    lm = xt.TransformerWrapper(num_tokens=256, max_seq_len=128, attn_layers=xt.Decoder(dim=64, depth=1, heads=2))
    assert {n for n, layout in layouts(lm).items() if layout.role == "head"} == {"to_logits.weight"}
    odd = xt.TransformerWrapper(num_tokens=32, max_seq_len=16,
                                attn_layers=xt.Decoder(dim=16, depth=1, heads=2, attn_on_attn=True))
    assert {n for n, layout in layouts(odd).items() if layout.role == "head"} == {"to_logits.weight"}
    several = xt.TransformerWrapper(num_tokens=64, max_seq_len=32, num_output_heads=2,
                                    attn_layers=xt.Decoder(dim=16, depth=1, heads=2))
    assert {n for n, layout in layouts(several).items() if layout.role == "head"} == {"to_logits.0.weight",
                                                                                     "to_logits.1.weight"}
    vit = xt.ViTransformerWrapper(image_size=16, patch_size=8, num_classes=10,
                                  attn_layers=xt.Encoder(dim=16, depth=1, heads=2))
    assert layouts(vit)["mlp_head.weight"].role == "head"


def test_diffusers_scale_shift_time_projection_and_vae_moments_are_blocks():
    """A ResNet block with ``time_embedding_norm="scale_shift"`` chunks its time projection into scale and shift; the
    VAE's ``quant_conv`` output is chunked into the mean and the log-variance."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.resnet import ResnetBlock2D

    block = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=32, groups=4,
                          time_embedding_norm="scale_shift")
    assert layouts(block)["time_emb_proj.weight"].blocks == (16, 16)
    plain = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=32, groups=4)
    assert layouts(plain)["time_emb_proj.weight"].blocks is None
    vae = diffusers.AutoencoderKL(block_out_channels=(16,), latent_channels=4, norm_num_groups=4)
    assert layouts(vae)["quant_conv.weight"].blocks == (4, 4)


def _diffusers_meta(cls: str, **config):
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        return getattr(diffusers, cls)(**config)


@pytest.mark.parametrize("cls, config, tensor, blocks", [
    ("Lumina2Transformer2DModel", dict(num_layers=1, num_refiner_layers=1), "layers.0.norm1.linear.weight", 4),
    ("CogView3PlusTransformer2DModel", dict(num_layers=1), "transformer_blocks.0.norm1.linear.weight", 12),
    ("Flux2Transformer2DModel", dict(num_layers=1, num_single_layers=1), "double_stream_modulation_img.linear.weight",
     6),
    ("Flux2Transformer2DModel", dict(num_layers=1, num_single_layers=1), "single_stream_modulation.linear.weight", 3),
    ("Flux2Transformer2DModel", dict(num_layers=1, num_single_layers=1), "transformer_blocks.0.ff.linear_in.weight",
     2),
    ("Flux2Transformer2DModel", dict(num_layers=1, num_single_layers=1),
     "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight", (6144,) * 3 + (18432,) * 2),
    ("HunyuanVideoTransformer3DModel", dict(num_layers=1, num_single_layers=1),
     "context_embedder.token_refiner.refiner_blocks.0.norm_out.linear.weight", 2),
    ("MochiTransformer3DModel", dict(num_layers=1), "transformer_blocks.0.norm1.linear.weight", 4),
    ("QwenImageTransformer2DModel", dict(num_layers=1), "transformer_blocks.0.img_mod.1.weight", 6),
    ("QwenImageTransformer2DModel", dict(num_layers=1), "transformer_blocks.0.txt_mod.1.weight", 6),
    ("AuraFlowTransformer2DModel", dict(num_mmdit_layers=1, num_single_dit_layers=1), "norm_out.linear.weight", 2),
    ("SanaTransformer2DModel", dict(num_layers=1), "transformer_blocks.0.ff.conv_inverted.weight", 2),
    ("Kandinsky3UNet", {}, "down_blocks.0.resnets_in.0.resnet_blocks.0.group_norm.context_mlp.1.weight", 2),
    ("StableCascadeUNet", {}, "down_blocks.0.1.mapper.weight", 2),
    ("UVit2DModel", dict(num_hidden_layers=1), "down_block.res_blocks.0.cond_embeds_mapper.weight", 2),
    ("AutoencoderKLWan", {}, "quant_conv.weight", 2),
    ("AutoencoderKLQwenImage", {}, "quant_conv.weight", 2),
    ("AutoencoderKLHunyuanVideo", {}, "quant_conv.weight", 2),
    ("AutoencoderKLAllegro", {}, "quant_conv.weight", 2),
    ("AutoencoderKLFlux2", {}, "quant_conv.weight", 2),
    ("AutoencoderKLTemporalDecoder", {}, "quant_conv.weight", 2),
    ("AutoencoderKLCogVideoX", {}, "encoder.conv_out.conv.weight", 2),
    ("AutoencoderKLMochi", {}, "encoder.proj_out.weight", 2),
    ("AutoencoderKLLTXVideo", {}, "encoder.conv_out.conv.weight", (128, 1)),
    ("AutoencoderKL", dict(use_quant_conv=False), "encoder.conv_out.weight", 2),
])
def test_diffusers_outputs_the_forward_chunks_are_blocks(cls, config, tensor, blocks):
    """A second outside review of diffusers (2026-12-02): adaLN modulations (CogVideoX, Lumina 2, CogView3-Plus,
    Flux 2, HunyuanVideo's refiner, Mochi, Qwen-Image, AuraFlow, Kandinsky 3, Stable Cascade, aMUSEd), Flux 2's
    SwiGLU and fused q/k/v/MLP projection, Sana's GLU conv and the VAEs' moments had each been one matrix."""
    got = layouts(_diffusers_meta(cls, **config))[tensor]
    rows = sum(got.blocks or ())
    assert got.blocks == (blocks if isinstance(blocks, tuple) else (rows // blocks,) * blocks)


def test_a_vae_encoder_followed_by_quant_conv_stays_whole():
    """With a ``quant_conv`` after it, the encoder's output is mixed before the chunk: one map (SD 1.x/2.x, SDXL)."""
    got = layouts(_diffusers_meta("AutoencoderKL", block_out_channels=(16,), latent_channels=4, norm_num_groups=4))
    assert got["encoder.conv_out.weight"].blocks is None and got["quant_conv.weight"].blocks == (4, 4)


def test_cogvideox_modulation_and_wan_fused_image_kv_each_step_by_gamma_rho():
    """One uSCG step moves each of CogVideoX's modulation parts by γρ (the last block's encoder gate gets no gradient:
    the text stream's output is dropped), and Wan's fused image k and v are two blocks."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cog = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=1, sample_width=8,
        sample_height=8, sample_frames=9, patch_size=2, text_embed_dim=16, time_embed_dim=8, max_text_seq_length=8)
    g = torch.Generator().manual_seed(0)
    video, text = torch.randn(1, 3, 4, 8, 8, generator=g), torch.randn(1, 8, 16, generator=g)
    moves = one_step_moves(cog, lambda m: m(video, text, torch.tensor([3])).sample.square().mean(),
                           blocks={r"norm[12]\.linear": 6})
    for norm in ("norm1", "norm2"):
        ratios = moves[f"transformer_blocks.0.{norm}.linear.weight"]
        assert len(ratios) == 6 and sum(r > 0 for r in ratios) >= 3  # norm2: the text parts get none
        assert all(abs(r - 1) < 1e-4 for r in ratios if r > 0)
    wan = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=16, ffn_dim=32, num_layers=1, image_dim=12, added_kv_proj_dim=16, rope_max_seq_len=32)
    wan.fuse_qkv_projections()
    assert layouts(wan)["blocks.0.attn2.to_added_kv.weight"].blocks == (16, 16)


def test_mochi_rotary_frequencies_hunyuan_dit_padding_and_a_continuous_wrapper_head():
    """Mochi's ``pos_frequencies`` is the einsum ``nd,dhf->nhf`` from 3 coordinates into heads (it had been read as a
    table of positions by its name); HunyuanDiT's ``text_embedding_padding`` is a table of pad tokens (it had been
    F.linear's guess, with a warning); x-transformers' ContinuousTransformerWrapper's ``project_out`` is its head."""
    freqs = layouts(_diffusers_meta("MochiTransformer3DModel", num_layers=1))["pos_frequencies"]
    assert (freqs.role, freqs.transposed, freqs.flattened) == ("hidden", True, (24, 64))
    diffusers = pytest.importorskip("diffusers")
    dit = diffusers.HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, hidden_size=16, num_layers=2,
        sample_size=8, cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=8, text_len=4,
        text_len_t5=4)
    assert layouts(dit)["text_embedding_padding"].role == "token"
    xt = pytest.importorskip("x_transformers")
    continuous = xt.ContinuousTransformerWrapper(dim_in=12, dim_out=10, max_seq_len=16,
                                                 attn_layers=xt.Encoder(dim=32, depth=1, heads=2))
    assert {n for n, layout in layouts(continuous).items() if layout.role == "head"} == {"project_out.weight"}


_DEPTH = r"^(num_(\w+_)?layers|num_(\w+_)?blocks|depth|num_hidden_layers|layers_per_block|n_layers)$"
_CONFIGS = {"EasyAnimateTransformer3DModel": dict(in_channels=16, out_channels=16, patch_size=2, mmdit_layers=1),
            "HiDreamImageTransformer2DModel": dict(patch_size=2, out_channels=64, num_single_layers=1,
                                                   caption_channels=[64, 64], llama_layers=[0] * 48),
            "Transformer2DModel": dict(in_channels=4, out_channels=8, patch_size=2, sample_size=32,
                                       num_embeds_ada_norm=1000, norm_type="ada_norm_zero"),
            "ZImageControlNetModel": dict(control_layers_places=[0], control_refiner_layers_places=[0],
                                          control_in_dim=16, add_control_noise_refiner=False, n_refiner_layers=1)}


def _one_layer_meta(cls_name: str):
    """A diffusers model on the meta device with every depth argument 1 (its layers as in the full model)."""
    import inspect
    import re

    diffusers = pytest.importorskip("diffusers")
    cls = getattr(diffusers, cls_name)
    config = {n: 1 for n, p in inspect.signature(cls.__init__).parameters.items() if re.match(_DEPTH, n)
              and isinstance(p.default, int) and not isinstance(p.default, bool) and p.default > 1}
    with torch.device("meta"):
        return cls(**{**config, **_CONFIGS.get(cls_name, {})})


_LAYOUTS: dict = {}


@pytest.mark.parametrize("cls, tensor, k", [
    ("AceStepTransformer1DModel", "time_embed.time_proj.weight", 6),
    ("AnyFlowTransformer3DModel", "condition_embedder.time_proj.weight", 6),
    ("AnyFlowFARTransformer3DModel", "condition_embedder.time_proj.weight", 6),
    ("HeliosTransformer3DModel", "condition_embedder.time_proj.weight", 6),
    ("JoyImageEditTransformer3DModel", "condition_embedder.time_proj.weight", 6),
    ("JoyImageEditTransformer3DModel", "double_blocks.0.attn.img_attn_qkv.weight", 3),
    ("JoyImageEditTransformer3DModel", "double_blocks.0.attn.txt_attn_qkv.weight", 3),
    ("JoyImageEditPlusTransformer3DModel", "condition_embedder.time_proj.weight", 6),
    ("JoyImageEditPlusTransformer3DModel", "double_blocks.0.attn.img_attn_qkv.weight", 3),
    ("JoyImageEditPlusTransformer3DModel", "double_blocks.0.attn.txt_attn_qkv.weight", 3),
    ("SkyReelsV2Transformer3DModel", "condition_embedder.time_proj.weight", 6),
    ("WanAnimate2Transformer3DModel", "time_projection.1.weight", 6),
    ("BriaFibo2Transformer2DModel", "layers.0.adaLN_modulation.0.weight", 4),
    ("CogView4Transformer2DModel", "transformer_blocks.0.norm1.linear.weight", 12),
    ("CogView4Transformer2DModel", "norm_out.linear.weight", 2),
    ("CosmosTransformer3DModel", "transformer_blocks.0.norm1.linear_2.weight", 3),
    ("CosmosTransformer3DModel", "norm_out.linear_2.weight", 2),
    ("EasyAnimateTransformer3DModel", "transformer_blocks.0.norm1.linear.weight", 6),
    ("ErnieImageTransformer2DModel", "adaLN_modulation.1.weight", 6),
    ("ErnieImageTransformer2DModel", "final_norm.linear.weight", 2),
    ("Flux3Transformer2DModel", "single_stream_modulations.image.linear.weight", 3),
    ("Flux3Transformer2DModel", "norm_out.linear.weight", 2),
    ("GlmImageTransformer2DModel", "transformer_blocks.0.norm1.linear.weight", 12),
    ("GlmImageTransformer2DModel", "norm_out.linear.weight", 2),
    ("HiDreamImageTransformer2DModel", "double_stream_blocks.0.block.adaLN_modulation.1.weight", 12),
    ("HiDreamImageTransformer2DModel", "single_stream_blocks.0.block.adaLN_modulation.1.weight", 6),
    ("HiDreamImageTransformer2DModel", "final_layer.adaLN_modulation.1.weight", 2),
    ("HunyuanVideo15Transformer3DModel", "context_embedder.token_refiner.refiner_blocks.0.norm_out.linear.weight", 2),
    ("HunyuanImageTransformer2DModel", "context_embedder.token_refiner.refiner_blocks.0.norm_out.linear.weight", 2),
    ("Ideogram4Transformer2DModel", "layers.0.adaln_modulation.weight", 4),
    ("Kandinsky5Transformer3DModel", "text_transformer_blocks.0.text_modulation.out_layer.weight", 6),
    ("Kandinsky5Transformer3DModel", "visual_transformer_blocks.0.visual_modulation.out_layer.weight", 9),
    ("Kandinsky5Transformer3DModel", "out_layer.modulation.out_layer.weight", 2),
    ("Kandinsky6Transformer3DModel", "video_text_transformer_blocks.0.text_modulation.out_layer.weight", 6),
    ("Kandinsky6Transformer3DModel",
     "visual_transformer_blocks.0.video_dec_block.visual_modulation.out_layer.weight", 9),
    ("Kandinsky6Transformer3DModel", "visual_transformer_blocks.0.va_modulation.out_layer.weight", 3),
    ("Kandinsky6Transformer3DModel", "visual_transformer_blocks.0.av_modulation.out_layer.weight", 3),
    ("Kandinsky6Transformer3DModel", "out_layer.modulation.out_layer.weight", 2),
    ("Kandinsky6SRTransformer3DModel", "visual_transformer_blocks.0.visual_modulation.out_layer.weight", 6),
    ("Kandinsky6SRTransformer3DModel", "out_layer.modulation.out_layer.weight", 2),
    ("LongCatAudioDiTTransformer", "adaln_global_mlp.mlp.1.weight", 6),
    ("LongCatAudioDiTTransformer", "norm_out.linear.weight", 2),
    ("MiniMaxH3Transformer3DModel", "norm_out.linear.weight", 2),
    ("MiniMaxMusic3Transformer1DModel", "transformer_blocks.0.ff_in.weight", 2),
    ("NucleusMoEImageTransformer2DModel", "transformer_blocks.0.img_mod.1.weight", 4),
    ("OvisImageTransformer2DModel", "single_transformer_blocks.0.proj_mlp.weight", 2),
    ("PRXTransformer2DModel", "blocks.0.modulation.lin.weight", 6),
    ("PRXTransformer2DModel", "final_layer.adaLN_modulation.1.weight", 2),
    ("PRXTransformer2DModel", "blocks.0.attention.img_qkv_proj.weight", 3),
    ("RFD4ProteinaTransformer", "transition_c_1.swish_linear.0.weight", 2),
    ("RFD4ProteinaTransformer", "pair_update_layers.0.linear_x.weight", 2),
    ("SanaVideoTransformer3DModel", "transformer_blocks.0.ff.conv_inverted.weight", 2),
    ("SanaWMTransformer3DModel", "blocks.0.mlp.inverted_conv.conv.weight", 2),
    ("StableAudio3DiTModel", "transformer_blocks.0.ff.proj_in.weight", 2),
    ("StableAudio3DiTModel", "transformer_blocks.0.cross_attn.to_q.weight", 2),
    ("StableAudio3DiTModel", "transformer_blocks.0.cross_attn.to_kv.weight", 3),
    ("ZImageTransformer2DModel", "layers.0.adaLN_modulation.0.weight", 4),
    ("ZImageControlNetModel", "control_layers.0.adaLN_modulation.0.weight", 4),
    ("Transformer2DModel", "proj_out_1.weight", 2),
    ("T5FilmDecoder", "decoders.0.layer.0.FiLMLayer.scale_bias.weight", 2),
    ("AutoencoderKLWan", "encoder.mid_block.attentions.0.to_qkv.weight", 3),
    ("AutoencoderKLQwenImage", "encoder.mid_block.attentions.0.to_qkv.weight", 3),
    ("AutoencoderKLQwenImage21", "encoder.mid_block.attentions.0.to_qkv.weight", 3),
    ("AutoencoderSAME", "encoder.blocks.0.transformers.0.ff.proj_in.weight", 2),
    ("LTX2VideoDiffusionDecoderModel", "decoder.shared_adaln.proj.weight", 7),
])
def test_the_rest_of_diffusers_chunked_outputs_are_blocks(cls, tensor, k):
    """A systematic scan of diffusers' chunk/split sites (an outside review, 2026-12-02): the adaLN modulations,
    time projections, GLU inputs, fused q/k/v (the VAEs' 1×1-conv to_qkv, Stable Audio 3's differential q₁, q₂, k₁,
    k₂, v) of 40 more models, each cut into the k equal parts its forward uses (each had been one matrix)."""
    if cls not in _LAYOUTS:
        _LAYOUTS[cls] = layouts(_one_layer_meta(cls))
    got = _LAYOUTS[cls][tensor]
    rows = sum(got.blocks or (0,))
    assert got.blocks == (rows // k,) * k and rows


def test_stable_audio_3s_differential_self_attention_is_five_blocks_and_kandinsky_6s_cross_gates_unequal():
    """Stable Audio 3's to_qkv holds q₁, q₂, k₁, k₂, v: read as q/k/v thirds by its name, silently wrong; Kandinsky 6's
    audio-video modulations split [d, d, d_a] where cross_gates is set."""
    sa3 = layouts(_one_layer_meta("StableAudio3DiTModel"))["transformer_blocks.0.self_attn.to_qkv.weight"]
    assert sa3.blocks == (1536,) * 5
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        k6 = diffusers.Kandinsky6Transformer3DModel(num_visual_blocks=1, num_text_blocks=1, cross_gates=True,
                                                    model_dim=256, ff_dim=512, model_dim_a=128, ff_dim_a=256)
    got = layouts(k6)
    va = next(v for n, v in got.items() if n.endswith("va_modulation.out_layer.weight"))
    av = next(v for n, v in got.items() if n.endswith("av_modulation.out_layer.weight"))
    assert (va.blocks, av.blocks) == ((256, 256, 128), (128, 128, 256))


def test_hand_written_convs_of_sana_wm_and_wan_animate_are_read_and_config_reads_stay_quiet():
    """Sana-WM's temporal short convolution (F.conv1d, groups=channels) and Wan-Animate's motion encoder convs
    (F.conv2d of W·scale) hold raw kernels: param_groups refused both models. Reading a diffusers model warned
    FutureWarning ("Accessing config attribute `num_heads`…") from the rules' questions (``layouts`` makes every
    warning an error)."""
    sana = layouts(_one_layer_meta("SanaWMTransformer3DModel"))["blocks.0.attn.conv_k.weight"]
    assert (sana.role, sana.kernel_dims, len(sana.blocks)) == ("conv", 1, 2240)
    wan = layouts(_one_layer_meta("WanAnimateTransformer3DModel"))
    motion = {n: v for n, v in wan.items() if "motion_encoder" in n and v.role == "conv"}
    assert motion and all(v.kernel_dims == 2 for v in motion.values())


def test_modulations_only_other_configs_build_are_blocks():
    """HunyuanVideo's token-replace norms (6 and 3 parts), Motif-Video's AdaNorm (2), the IP-Adapter time-image
    block's adaln_proj (4): modules the models build only with other configs than their defaults."""
    pytest.importorskip("diffusers")
    from diffusers.models.embeddings import IPAdapterTimeImageProjectionBlock
    from diffusers.models.transformers.transformer_hunyuan_video import (
        HunyuanVideoTokenReplaceAdaLayerNormZero,
        HunyuanVideoTokenReplaceAdaLayerNormZeroSingle,
    )
    from diffusers.models.transformers.transformer_motif_video import MotifVideoAdaNorm

    for module, tensor, k in ((HunyuanVideoTokenReplaceAdaLayerNormZero(16), "m.linear.weight", 6),
                              (HunyuanVideoTokenReplaceAdaLayerNormZeroSingle(16), "m.linear.weight", 3),
                              (MotifVideoAdaNorm(16), "m.linear.weight", 2),
                              (IPAdapterTimeImageProjectionBlock(hidden_dim=16, dim_head=8, heads=2),
                               "m.adaln_proj.weight", 4)):
        assert len(layouts(torch.nn.ModuleDict({"m": module}))[tensor].blocks) == k
