"""Which axes of each parameter are d_out, d_in and batch: one rule, used by every preset.

The geometry of a weight is the geometry of the linear map the module computes with it, so the layout is read
from the module type, never from the shape alone:

| module | parameter | layout | role |
|---|---|---|---|
| ``nn.Linear`` | ``weight (d_out, d_in)`` | linear | hidden (head: see below) |
| transformers ``Conv1D`` (GPT-2 family) | ``weight (d_in, d_out)`` | linear, transposed | hidden |
| ``nn.Conv1d/2d/3d`` | ``(d_out, c_in/groups, *k)`` | conv kernel, ``groups`` row blocks | conv |
| ``nn.ConvTranspose1d/2d/3d`` | ``(c_in, d_out, *k)`` | conv kernel, transposed | conv |
| transformers MoE experts (``gate_up_proj``, ``down_proj``) | ``(E, d_out, d_in)`` | E matrices | expert |
| XLNet's ``q/k/v/r``, Funnel's ``r_kernel`` (einsum) | ``(d_model, H, d_head)`` | linear (H·d_head, d_model) | hidden |
| XLNet's ``o`` (einsum out of the heads) | ``(d_model, H, d_head)`` | linear (d_model, H·d_head) | hidden |
| stacks by module class (Inkling, RecurrentGemma, CSM's heads) | ``(E, ·, ·)`` | E matrices | its own |
| ``nn.Embedding`` | ``(vocab, d)`` | table | embedding |
| ``nn.LSTM/GRU/RNN`` | ``weight_ih/hh (gates·h, d_in)`` | linear, one row block per gate | hidden |
| parametrized weights (``weight_norm``, ``parametrize``) | ``original`` / ``original1`` | the weight's | the weight's |
| tokens, positions, tables, latents, queries (by name, 1-D too; lists by their holder) | ``(…, d)`` | entries | token |
| norms, biases, 1-D; ≥3-D with at most one axis > 1; per-head biases, scales, gains, ``A_log`` | | entries | vector |
| MoE routers (``…TopKRouter``, ``MoEGate``), raw matrices known by class | their own | linear | hidden |
| any other 2-D parameter (a module's ``weight`` too) | ``(d_out, d_in)``, with a warning naming it | linear | hidden |

An expert stack's orientation comes from its module: transformers' ``is_transposed`` (``use_experts_implementation``),
or, in a module that states its expert count, its ``input_size``/``output_size``, its FFN width (the d_out of a
gate/up projection, the d_in of a down projection) or its hidden size (the d_in of a gate/up projection, the d_out of a
down projection). Fused projections are split into the blocks they hold: GPT-2's
``c_attn`` (q, k, v columns of the stored tensor), timm's ``qkv``, ``nn.MultiheadAttention.in_proj_weight``, Phi-3's
``qkv_proj`` (unequal under grouped-query attention: ``H·d_h, KV·d_h, KV·d_h`` read off the attention module),
fused ``gate_up_proj`` (dense and expert stacks, concatenated or interleaved), the value/gate projections of
:data:`_CHUNKED_OUTPUTS` (ModernBERT's ``Wi``, diffusers' GEGLU, timm's ``GluMlp``, …) and adaLN modulation
projections, fused k/v, a q/k/v stored by head (GPT-NeoX's ``query_key_value``: one block per head's q, k and v),
and multi-head latent attention's ``kv_a_proj_with_mqa`` (the compressed k/v, the shared rope key) and ``kv_b_proj``
(each head's k and v; DeepSeek-V2/V3 and the models built on it). ``num_heads`` splits q, k, v into heads, in fused
and in separate (``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value``) projections; a projection stored by
head is split per head already (``num_heads=H`` is checked against the heads its module states).

The output layer (role ``head``) is found by what it is: the module transformers' ``get_output_embeddings()`` or
timm's ``get_classifier()`` returns and any classifier of ``config.num_labels`` outputs outside the base model
(BERT's pre-training next-sentence classifier beside its MLM decoder), else the
``nn.Linear`` whose output is the model's output in a ``torch.fx`` trace, else the one projection back to the
vocabulary of the model's ``nn.Embedding``; a head tied to an embedding is that embedding. A model wrapped by
``torch.compile``, DDP or ``nn.DataParallel`` is read through the module it wraps; the rules that know a module by
its class read the class its author wrote (:func:`~specopt.heads.authored_class`), under FSDP2's and parametrize's.

A ≥3-D parameter none of these rules knows is an error that names it; declare it in one line with
``layouts={name regex or module type: kind}`` (:data:`KINDS`).
"""

from __future__ import annotations

import importlib.metadata
import math
import re
import warnings
from dataclasses import dataclass, replace

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

from specopt.heads import EMBEDDING_CLASSES, authored_class, find_heads, is_embedding, is_hf_conv1d
from specopt.norms import BiasRMS, Blocked, Norm, Spectral, SpectralConv, _SpectralBase
from specopt.views import MUON_SCALES as MUON_SCALES
from specopt.views import Flattened, Stacked, Transposed, Unflattened, _View, muon_scale, unwrap

KINDS = ("linear", "linear_transposed", "linear_to_heads", "linear_from_heads", "experts", "experts_transposed", "conv",
         "conv_depthwise", "embedding", "token", "vector")
"""The layouts a user can declare: ``(d_out, d_in)``, ``(d_in, d_out)``, ``(d_in, *out)`` (an einsum into heads:
XLNet's ``q`` ``(d_model, heads, d_head)``), ``(d_out, *in)`` (an einsum out of heads: XLNet's ``o``),
``(E, d_out, d_in)``, ``(E, d_in, d_out)``, a conv kernel ``(d_out, c_in, *k)``, a depthwise one ``(channels, 1,
*k)`` (``groups=channels``), an embedding table, learned tokens/positions, a vector or gain."""

_NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm, nn.LocalResponseNorm)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_POSITION_NAMES = re.compile(r"(^|_)(pos|position|positions|positional)(_|$)|pos_?emb|position_?emb")
"""Position tables kept in a ``nn.ParameterList``/``ParameterDict``, by the list's name or its holder's: the entries
are named ``0``, ``1``, …"""
_TOKEN_NAMES = re.compile(rf"({_POSITION_NAMES.pattern}|(^|_)rel(_|$)|"
                          r"tokens?_?\d*$|(^|_)(emb|embed|embedding|embeddings)(_\d+)?$|(^|_)(ape|pointer)$|"
                          r"_embedding_parameter$|_embedding_padding$|^mem_[kv]$|"
                          r"^(latent_|learned_)?(latents?|quer(y|ies)|probe|prompts?)(_\d+|_[123]d)?$|(^|_)prompts?$)")
"""Learned tokens, positions and tables, by the parameter's own name (``cls_token``, ``pos_embed``,
``relative_position_bias_table``, ``class_embedding``, an absolute position embedding ``*_ape``, SAM-2's learned
``no_object_pointer`` and ``occlusion_spatial_embedding_parameter``, HunyuanDiT's ``text_embedding_padding`` (the
tokens that fill the text sequence's padding), x-transformers' memory keys and values
``mem_k``/``mem_v``; ``latents``, ``query``, a pooling head's
``probe`` as the whole name, so that ``W_query`` or ``linear_probe`` stay matrices)."""
_TOKEN_VECTOR_NAMES = re.compile(r"(^|_)(emb|embed|embedding|embeddings)(_\d+)?$|tokens?_?\d*$")
"""1-D learned tokens, by the parameter's own name: CLIP's ``class_embedding``, wav2vec2's ``masked_spec_embed`` (the
vector that replaces masked frames), a ``cls_position_embedding``, T5Gemma 2's ``eoi_embedding`` — vectors inserted
into the sequence, not gains or biases."""
_VECTOR_NAMES = re.compile(r"(^|_)(bias|biases|scale|scales|temperature|A_log)(_[uv])?$|^(?![wW]_)(\w+_)?(mean|std)$|"
                           r"^(alpha|beta|gamma|gain|shift|offset|translate|modulation)s?(_\d+)?$|"
                           r"(^|_)(scale_shift|shift_scale|modulate)_table$|^static_(alpha|beta)$")
"""Entry-wise parameters of more than one axis, by name: per-head biases (``pos_bias_u``, ``attention_biases``),
scales (``logit_scale``), Mamba's ``A_log``, gains and shifts named by themselves (``alpha``, ``gamma``,
``translate``), the adaLN-single tables of shifts, scales and gates that diffusion transformers add to the time
embedding (PixArt's and Sana's ``scale_shift_table`` ``(2 or 6, d)``, Wan's ``(1, 6, d)`` ``modulation``),
hyper-connections' ``static_alpha``/``static_beta`` (added to the input-dependent mixing weights), and
stored statistics (``clip_mean``, ``clip_std``): added or multiplied entry by entry, not a linear map. A prefixed
``w_gamma`` or ``W_mean`` may be a matrix (FiLM, a VAE's mean projection)."""
_KNOWN_MATRICES = {("MultiModalProjector$", ("mm_input_projection_weight",)): (True, "x @ W, stored d_in × d_out"),
                   ("Hyper(Connection|Head)$", ("fn", "hc_fn")): (False, "F.linear's (d_out, d_in)"),
                   ("EfficientAdditiveAttention$", ("w_g",)): (True, "query @ w_g, stored d_in × 1"),
                   ("AMSoftmaxLoss$", ("weight",)): (True, "torch.mm(x, W), stored d_in × labels"),
                   ("^XCLIPModel$", ("prompts_visual_projection",)): (True, "x @ W, stored d_in × d_out"),
                   ("^Inkling2\\w*RelativePositionBias$|^InklingRelativeLogits$", ("proj",)):
                       (True, "states @ proj, stored d_rel × distances"),
                   ("Indexer$", ("index_kpool_compress_gate",)): (False, "F.linear's (d_out, d_in)"),
                   ("^RelativeProjPositionalBias$", ("distance_bank",)): (True, "weights @ bank, stored basis × "
                                                                                "distances"),
                   ("^HyperConnection$", ("dynamic_alpha_fn",)): (True, "x @ W, stored d × streams"),
                   ("(Top[Kk]|Hash)Router$|^MoEGate$", ("weight",)): (False, "an MoE router: F.linear(x, W), "
                                                                               "experts × d"),
                   ("^(EqualLinear|MotionLinear)$", ("weight",)): (False, "F.linear(x, W·scale)"),
                   ("^WanAnimateMotionEncoder$", ("motion_synthesis_weight",)): (False, "a basis, out × directions: "
                                                                                    "QR(W)·diag(α)"),
                   ("^MiniMaxMusic3FourierEmbedding$", ("weight",)): (False, "t @ W.T: F.linear's"),
                   ("^QuantLinear$", ("weight",)): (False, "I-BERT: F.linear of its quantized weight")}
"""Raw matrices by owner class and name: Gemma 3's vision projector (``torch.matmul(x, W)``), DeepSeek-V4's
hyper-connection mixing weights (``F.linear``), SwiftFormer's additive-attention vector (transformers and timm),
the x-vector heads' AM-softmax weight (wav2vec2 family), X-CLIP's prompt projection, Inkling-2's bank of relative
position profiles (``relative_states @ proj``), GLM-5-Next's indexer gate (``F.linear``), x-transformers' bank of
distance profiles (``use_rel_proj_pos_bias``) and its hyper-connections' dynamic mixing weights (``normed @ W``),
MoE routers (transformers' ``…TopKRouter``/``…HashRouter``, DeepSeek's and HiDream's ``MoEGate``), diffusers'
``EqualLinear``, ``MotionLinear`` and the motion basis (Wan-Animate) and MiniMax-Music-3's Fourier embedding, and
I-BERT's ``QuantLinear``."""
_FUSED_QKV = ("c_attn", "qkv", "qkv_proj", "Wqkv", "in_proj", "to_qkv", "to_added_qkv")
_QKV_BY_HEAD = {"query_key_value": "", "qkv_proj": r"^(CodeGenAttention|MiniMaxLightningAttention)$",
                "c_attn": r"^GPTBigCodeAttention$"}
"""Fused q/k/v stored by head, by name and owner class: GPT-NeoX/Pythia's, BLOOM's, Falcon's and Persimmon's
``query_key_value`` (q, k, v of head 0, then of head 1, …; Falcon's new architecture by key/value group), CodeGen's
``qkv_proj`` (``mp_num`` chunks of q, v, k), MiniMax's lightning attention ``qkv_proj`` and GPT-BigCode's
multi-head ``c_attn`` (``view(…, heads, 3·head_dim)``)."""
_FUSED_KV = ("kv", "to_kv", "to_added_kv")
"""Fused key/value projections, k's rows then v's, inside an attention module (timm's PVT-v2, Twins, VOLO and
attention pool, diffusers' fused cross-attention and Wan's fused image key/value ``to_added_kv``, Mochi's pooling,
Evolla and Granite Speech), where the module's head counts or its query projection confirm it
(:func:`_holds_k_and_v`). Not ``kv_proj``: DeepSeek-V4's holds one key-value head shared by k and v (JetMoe's,
chunked into k and v, is known by its owner class: :data:`_CHUNKED_OUTPUTS`)."""
_SEPARATE_QKV = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"), ("wq", "wk", "wv"),
                 ("to_q", "to_k", "to_v"))
_ADALN = "adaLN modulation: {k} shifts, scales and gates"
_GLU = "fused value/gate (GLU)"
_CHUNKED_OUTPUTS = (
    ("Wi", r"^ModernBert\w*MLP$", 2, "fused value/gate"),
    ("fc1", r"^(Moonshine\w*DecoderMLP|GluMlp)$", 2, "fused value/gate"),
    ("proj", r"^(ClvpGatedLinearUnit|GEGLU|SwiGLU|GLU)$", 2, "fused value/gate"),
    ("linear_1", r"^(AyaVision|Cohere2Vision)MultiModalProjector$", 2, "fused value/gate"),
    ("qkv_linear", r"^LayoutLMv2SelfAttention$", 3, "fused q/k/v"),
    ("input_linear", r"^(JetMoeMoE|Granite\w*MLP)$", 2, "fused value/gate"),
    ("kv_proj", r"^JetMoeAttention$", 2, "fused k/v"),
    ("att_proj", r"^BarkSelf(Flash)?Attention2?$", 3, "fused q/k/v"),
    ("pointwise_conv1", r"^(Wav2Vec2(Conformer|Bert)|SeamlessM4T(v2)?Conformer|FastSpeech2Conformer|"
                        r"(Parakeet|Lasr|NemotronAsrStreaming)Encoder)ConvolutionModule$", 2, _GLU),
    ("up_conv", r"^GraniteSpeech(Plus)?ConformerConvModule$", 2, _GLU),
    ("pointwise_lin1", r"^GraniteSpeech5EncoderConvolutionModule$", 2, _GLU),
    ("linear_start", r"^(Gemma4AudioLightConv1d|Gemma3nAudioConformerLightConv1d)$", 2, _GLU),
    ("ext_pw_conv_1d", r"^Phi4MultimodalAudioGluPointWiseConv$", 2, _GLU),
    ("conv", r"^(Wav2Vec2|Wav2Vec2Conformer|WavLM|Data2VecAudio)AdapterLayer$", 2, _GLU),
    ("conv_layers", r"^Conv1dSubsampler$", 2, _GLU),  # each conv of the list, then F.glu (Speech2Text)
    ("residual_conv", r"^(Wav2Vec2Bert|SeamlessM4T(v2)?Conformer)AdapterLayer$", 2, _GLU),
    ("self_attn_conv", r"^(Wav2Vec2Bert|SeamlessM4T(v2)?Conformer)AdapterLayer$", 2, _GLU),
    ("linear", r"^(AdaLayerNormZero|AdaLayerNormSingle)$", 6, _ADALN),
    ("linear", r"^AdaLayerNormZeroSingle$", 3, _ADALN),
    ("linear", r"^SD35AdaLayerNormZeroX$", 9, _ADALN),
    ("linear", r"^(AdaLayerNormContinuous|AdaLayerNorm|AdaGroupNorm)$", 2, _ADALN),
    ("linear", r"^VibeVoiceDiffusionHeadAdaLayerNorm$", 3, _ADALN),
    ("linear", r"^CogVideoXLayerNormZero$", 6, _ADALN),
    ("linear", r"^(LuminaRMSNormZero|MochiRMSNormZero)$", 4, _ADALN),
    ("linear", r"^CogView3PlusAdaLayerNormZeroTextImage$", 12, _ADALN),
    ("linear", r"^(HunyuanVideo(15)?AdaNorm|HunyuanImageAdaNorm|AuraFlowPreFinalBlock)$", 2, _ADALN),
    ("linear", r"^(CogView4|GlmImage)AdaLayerNormZero$", 12, _ADALN),
    ("linear", r"^((CogView4|GlmImage)AdaLayerNormContinuous|ErnieImageAdaLNContinuous|Flux3AdaLayerNorm|"
               r"AudioDiTAdaLayerNormZeroFinal|MiniMaxH3AdaLayerNormOut)$", 2, _ADALN),
    ("linear", r"^(EasyAnimateLayerNormZero|HunyuanVideoTokenReplaceAdaLayerNormZero)$", 6, _ADALN),
    ("linear", r"^HunyuanVideoTokenReplaceAdaLayerNormZeroSingle$", 3, _ADALN),
    ("linear", r"^MotifVideoAdaNorm$", 2, _ADALN),
    ("adaln_proj", r"^IPAdapterTimeImageProjectionBlock$", 4, _ADALN),
    ("linear", r"^Flux3Modulation$", 3, _ADALN),
    ("linear_2", r"^CosmosAdaLayerNormZero$", 3, _ADALN),
    ("linear_2", r"^CosmosAdaLayerNorm$", 2, _ADALN),
    ("adaln_modulation", r"^Ideogram4TransformerBlock$", 4, _ADALN),
    ("img_attn_qkv", r"^JoyImage(EditPlus)?Attention$", 3, "fused q/k/v"),
    ("txt_attn_qkv", r"^JoyImage(EditPlus)?Attention$", 3, "fused q/k/v"),
    ("img_qkv_proj", r"^PRXAttention$", 3, "fused q/k/v"),
    ("ff_in", r"^MiniMaxMusic3TransformerBlock$", 2, _GLU),
    ("proj_mlp", r"^OvisImageSingleTransformerBlock$", 2, _GLU),
    ("linear_x", r"^RFD4ProteinaPairUpdate$", 2, "the left and right factors of an outer product"),
    ("scale_bias", r"^T5FiLMLayer$", 2, "FiLM: scale, shift"),
    ("mapper", r"^SDCascadeTimestepBlock$", 2, _ADALN),
    ("mapper_sca", r"^SDCascadeTimestepBlock$", 2, _ADALN),
    ("mapper_crp", r"^SDCascadeTimestepBlock$", 2, _ADALN),
    ("cond_embeds_mapper", r"^ConvNextBlock$", 2, _ADALN),
    ("linear_in", r"^Flux2FeedForward$", 2, _GLU),
    ("conv_inverted", r"^(GLUMBConv|GLUMBTempConv)$", 2, "fused value/gate (GLU, chunked after a per-channel conv)"),
    ("linear_1", r"^VibeVoiceDiffusionHeadFinalLayer$", 2, _ADALN),
    ("time_proj", r"^(Wan|SkyReelsV2|JoyImage|JoyImageEditPlus)TimeTextImageEmbedding$|^HeliosTimeTextEmbedding$|"
                  r"^AnyFlowDualTimestepTextImageEmbedding(Causal)?$|^AceStepTimestepEmbedding$", 6, _ADALN),
    ("proj_out_1", r"^(DiT|)Transformer2DModel$", 2, _ADALN))
"""Projections whose output is chunked into k equal parts that are used apart, by the module's name in its owner and the
owner's class: ``(name, owner class regex, k, what)``, each part a map of its own (k row blocks), as Phi-3's
``gate_up_proj``; a name of an ``nn.ModuleList`` holds for every module in it. Value/gate halves: ModernBERT's
``Wi``, Moonshine's decoder ``fc1``, CLVP's, diffusers' ``GEGLU``/``SwiGLU`` ``proj`` (Stable Diffusion's UNets),
x-transformers' ``GLU`` ``proj`` (``ff_glu``), Aya Vision's projector, JetMoe's expert stack and Granite's dense
MLPs' ``input_linear``, JetMoe's attention ``kv_proj`` (k, v) and Bark's ``att_proj`` (q, k, v), timm's ``GluMlp``
``fc1`` (gMixer, DeepSeek's ViT, Sapiens-2), and the projections a GLU halves in speech models (conformer blocks'
``pointwise_conv1``, adapters' convs: wav2vec2, Wav2Vec2-BERT, SeamlessM4T, Parakeet, FastSpeech2, Gemma 3n/4 audio,
Granite Speech, Phi-4 audio; Speech2Text's subsampler convs). adaLN modulation (DiT, PixArt, SD3, Flux, Wan, …): the
k shifts, scales and gates of diffusers' ``AdaLayerNorm*`` ``linear`` (``emb.chunk(6, dim=1)``) and of CogVideoX's,
Lumina 2's, Mochi's, CogView3-Plus's, HunyuanVideo's token refiner's and AuraFlow's final norms, Wan's ``time_proj``,
DiT's ``proj_out_1``, Stable Cascade's timestep ``mapper``s, aMUSEd's ``cond_embeds_mapper``; Flux 2's SwiGLU
``linear_in`` and Sana's ``conv_inverted`` (a depthwise conv between it and the chunk keeps the channels apart)."""


@dataclass(frozen=True)
class Layout:
    """How one parameter is stored and what it is.

    ``role``: embedding, token, hidden, expert, conv, head or vector. ``transposed``: the matrix (or kernel) is
    stored ``(d_in, d_out, …)``. ``stack``: leading axes that index independent maps (experts). ``blocks``: row
    blocks of d_out (fused q/k/v, gate/up, heads, conv groups), or of d_in where ``in_blocks`` (peft's LoRA B
    factors of an expert stack), ``interleaved`` if row (column) r is in block r mod k. ``flattened``: the sizes
    of trailing axes that are one side of the matrix (an einsum's heads, ``(d_in, heads, d_head)``).
    ``unflattened``: the shape one stored axis holds (each row of timm's CondConv2d weight is a conv kernel).
    ``kernel_dims``: spatial axes of a conv kernel. ``source``: the rule that decided. ``guessed``: a 2-D tensor no
    rule knows (a module's ``weight`` too), read as ``F.linear``'s: only the module's code says whether it is a linear
    map, so :func:`classify` warns about it.
    """

    role: str
    source: str
    transposed: bool = False
    stack: int = 0
    blocks: tuple[int, ...] | None = None
    interleaved: bool = False
    in_blocks: bool = False
    kernel_dims: int = 0
    guessed: bool = False
    flattened: tuple[int, ...] | None = None
    unflattened: tuple[int, ...] | None = None

    def norm(self, base: Norm) -> Norm:
        """``base`` (a norm on one ``(d_out, d_in)`` matrix, kernel or entry set) on this layout."""
        norm, transposed = base, self.transposed
        if self.blocks and len(self.blocks) > 1 and self.in_blocks and transposed:  # d_in is the stored rows
            norm, transposed = Blocked(Transposed(norm), self.blocks, self.interleaved), False
        elif self.blocks and len(self.blocks) > 1:
            norm = (Transposed(Blocked(Transposed(norm), self.blocks, self.interleaved)) if self.in_blocks
                    else Blocked(norm, self.blocks, self.interleaved))
        if transposed:
            norm = Transposed(norm)
        if self.flattened:
            norm = Flattened(norm, self.flattened)
        if self.unflattened:
            norm = Unflattened(norm, self.unflattened)
        if self.stack:
            norm = Stacked(norm, self.stack)
        return norm


def declared(kind: str, p, source: str) -> Layout:
    """The layout of a user declaration (:data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown layout {kind!r} declared for {source}; valid layouts: {', '.join(KINDS)}")
    if kind.startswith("experts") and p.ndim != 3:
        raise ValueError(f"layout {kind!r} needs a 3-D (E, ·, ·) tensor, {source} has shape {tuple(p.shape)}")
    if kind in ("linear_to_heads", "linear_from_heads"):
        if p.ndim < 3:
            raise ValueError(f"layout {kind!r} needs a tensor of 3 or more dims (one side of the map over the trailing "
                             f"axes), {source} has shape {tuple(p.shape)}: declare a 2-D one 'linear' or "
                             f"'linear_transposed'")
        return _einsum_heads(kind == "linear_to_heads", p, f"declared {kind!r}")
    if kind.startswith("linear") and p.ndim != 2:
        raise ValueError(f"layout {kind!r} needs a 2-D tensor, {source} has shape {tuple(p.shape)}")
    if kind == "conv" and not 3 <= p.ndim <= 5:
        raise ValueError(f"layout 'conv' needs a (d_out, c_in, *kernel) tensor with 1-3 kernel dims, {source} has "
                         f"shape {tuple(p.shape)}")
    if kind == "conv_depthwise":  # F.conv*d(x, w, groups=channels): one 1 × taps matrix per channel
        if not (3 <= p.ndim <= 5 and p.shape[1] == 1):
            raise ValueError(f"layout 'conv_depthwise' needs a (channels, 1, *kernel) tensor with 1-3 kernel dims, "
                             f"{source} has shape {tuple(p.shape)}")
        return Layout("conv", "declared 'conv_depthwise'", kernel_dims=p.ndim - 2, blocks=(1,) * p.shape[0])
    role = {"linear": "hidden", "linear_transposed": "hidden", "experts": "expert", "experts_transposed": "expert"}
    return Layout(role.get(kind, kind), f"declared {kind!r}", transposed=kind.endswith("transposed"),
                  stack=int(kind.startswith("experts")), kernel_dims=p.ndim - 2 if kind == "conv" else 0)


def _einsum_heads(to_heads: bool, p, source: str) -> Layout:
    """A ``(d_in, *out)`` (``to_heads``) or ``(d_out, *in)`` tensor: the matrix with its trailing axes merged."""
    return Layout("hidden", source, transposed=to_heads, flattened=tuple(p.shape[1:]))


_EINSUM_HEADS = {"XLNetRelativeAttention": {"q": True, "k": True, "v": True, "r": True, "o": False},
                 "FunnelRelMultiheadAttention": {"r_kernel": True},
                 "MochiTransformer3DModel": {"pos_frequencies": True}}
"""Projections stored ``(d_model, n_head, d_head)`` and applied by einsum: into the heads (``True``: q, k, v, the
relative-position r, Mochi's learned rotary frequencies ``einsum("nd,dhf->nhf", pos, freqs)`` from 3 coordinates)
or out of them (XLNet's ``o``)."""


_HAND_WRITTEN_CONVS = {
    "SanaWMTemporalShortConvolution": {"weight": (True, "F.conv1d(x, W, groups=channels): depthwise")},
    "MotionConv2d": {"weight": (False, "F.conv2d(x, W·scale)")}}
"""Conv kernels of modules that call ``F.conv*d`` themselves, by class: ``{local: (depthwise, what)}`` (Sana-WM's
temporal short convolution, Wan-Animate's motion encoder convs)."""


_STACKED_MATRICES = {
    "InklingSharedExperts": {k: ("expert", False, "shared experts, each F.linear's d_out × d_in (bmm with its "
                                 "transpose)") for k in ("gate_proj", "up_proj", "down_proj")},
    "RecurrentGemmaRglru": {k: ("hidden", True, "a block-diagonal gate, one d_in × d_out block per head (x_h @ W[h])")
                            for k in ("input_gate_weight", "recurrent_gate_weight")},
    "CsmCodebooksHead": {"weight": ("head", True, "one output layer per codebook, hidden × vocab (x @ W[c])")},
}
"""3-D tensors that are stacks of independent matrices, by their module's class: ``(role, stored (d_in, d_out),
what)``. One ball per matrix, as an MoE layer's experts."""


def known(module: nn.Module, local: str, p) -> Layout | None:
    """The layout the module type defines for its parameter ``local`` (None: no rule knows it)."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return Layout("embedding", type(module).__name__)
    if is_embedding(module) and local == "weight":
        return Layout("embedding", EMBEDDING_CLASSES[authored_class(module).__name__])
    if isinstance(module, _NORM_LAYERS):
        return Layout("vector", type(module).__name__)
    if p.ndim == 1 and _TOKEN_VECTOR_NAMES.search(local):
        return Layout("token", "a learned token vector, by its name")
    if p.ndim <= 1:
        return Layout("vector", f"{p.ndim}-D parameter")
    if isinstance(module, nn.Linear) and local == "weight":
        return Layout("hidden", "nn.Linear")
    if is_hf_conv1d(module) and local == "weight":
        return Layout("hidden", "transformers Conv1D (stored d_in × d_out)", transposed=True)
    if isinstance(module, _CONV) and local == "weight":
        blocks = (p.shape[0] // module.groups,) * module.groups if module.groups > 1 else None
        return Layout("conv", type(module).__name__ + (f" (groups={module.groups})" if blocks else ""),
                      blocks=blocks, kernel_dims=p.ndim - 2)
    if isinstance(module, _CONV_T) and local == "weight":  # (c_in, d_out/groups, *k): group i, rows i·c_in/groups…
        groups = module.groups
        return Layout("conv", f"{type(module).__name__} (stored c_in × d_out" +
                      (f", groups={groups}: one block of c_in per group)" if groups > 1 else ")"), transposed=True,
                      kernel_dims=p.ndim - 2, blocks=(p.shape[0] // groups,) * groups if groups > 1 else None,
                      in_blocks=groups > 1)
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)) and local.startswith(("weight_ih", "weight_hh", "weight_hr")):
        gates = 4 if isinstance(module, (nn.LSTM, nn.LSTMCell)) else 3 if isinstance(module, (nn.GRU, nn.GRUCell)) \
            else 1
        gates = 1 if local.startswith("weight_hr") else gates
        return Layout("hidden", f"nn.{type(module).__name__} {local}" + (f", {gates} gates" if gates > 1 else ""),
                      blocks=(module.hidden_size,) * gates if gates > 1 else None)
    if isinstance(module, nn.MultiheadAttention) and local in ("bias_k", "bias_v"):
        return Layout("token", f"nn.MultiheadAttention {local}: a key/value token appended to the sequence")
    if isinstance(module, nn.MultiheadAttention) and local.endswith("proj_weight"):
        blocks = (module.embed_dim,) * 3 if local == "in_proj_weight" else None
        return Layout("hidden", "nn.MultiheadAttention", blocks=blocks)
    stacked = _STACKED_MATRICES.get(authored_class(module).__name__, {}).get(local)
    if stacked is not None and p.ndim == 3:
        role, transposed, what = stacked
        return Layout(role, f"{authored_class(module).__name__}.{local} ({what})", transposed=transposed, stack=1)
    if local == "freqs" and authored_class(module).__name__ == "RotaryEmbeddingMixed":  # t_x·f[0] + t_y·f[1]
        return Layout("vector", "learned rotary frequencies, entry-wise (timm's RotaryEmbeddingMixed)")
    if p.ndim >= 3 and authored_class(module).__name__.endswith("Prompter"):  # TVP's frame-padding prompts
        return Layout("token", f"learned prompt pixels ({authored_class(module).__name__}.{local})")
    conv = _HAND_WRITTEN_CONVS.get(authored_class(module).__name__, {}).get(local)
    if conv is not None and 3 <= p.ndim <= 5:
        depthwise, what = conv
        return Layout("conv", f"{authored_class(module).__name__}.{local} ({what})", kernel_dims=p.ndim - 2,
                      blocks=(1,) * p.shape[0] if depthwise and p.shape[1] == 1 else None)
    into_heads = _EINSUM_HEADS.get(authored_class(module).__name__, {}).get(local)
    if into_heads is not None and p.ndim == 3:
        return _einsum_heads(into_heads, p, f"{authored_class(module).__name__}.{local} (einsum "
                             + ("(d_model → heads × d_head), stored d_in × heads × d_head)" if into_heads else
                                "(heads × d_head → d_model), stored d_out × heads × d_head)"))
    cond_conv = _cond_conv(module, local, p)
    if cond_conv is not None:
        return cond_conv
    experts = _hf_experts(module, local, p)
    if experts is None:
        experts = _expert_stack(module, local, p)
    if experts is not None:
        return experts
    if re.fullmatch("bias_[kv]", local) and not hasattr(module, "bias_u"):  # fairseq-style attention's k/v tokens
        return Layout("token", f"a key/value token appended to the sequence ({local})")
    if local == "attention_biases":  # timm's LeViT, EfficientFormer, TinyViT: (heads, offsets), indexed by offset
        return Layout("token", "a relative-position bias table (attention_biases, as Swin's "
                      "relative_position_bias_table)")
    if _VECTOR_NAMES.search(local):
        return Layout("vector", f"entry-wise ({local})")
    if _TOKEN_NAMES.search(local):
        return Layout("token", f"learned tokens/positions ({local})")
    if p.ndim >= 3 and sum(size > 1 for size in p.shape) <= 1:
        return Layout("vector", "entry-wise (at most one axis longer than 1)")
    dbrx = _dbrx_experts(module, local, p)
    if dbrx is not None:
        return dbrx
    for (owner, names), (transposed, what) in _KNOWN_MATRICES.items():
        if p.ndim == 2 and local in names and re.search(owner, authored_class(module).__name__):
            return Layout("hidden", f"{authored_class(module).__name__}.{local} ({what})", transposed=transposed)
    if p.ndim == 2:
        return Layout("hidden", f"2-D parameter {local!r}: read as F.linear's (d_out, d_in)", guessed=True)
    return None


def _stored_for(mod_name: str, module, local: str, p, parents: dict) -> tuple[str, nn.Module, str, str]:
    """Where a stored tensor belongs: ``(module name, module, tensor name, part)``. A parametrized weight's stored
    tensors (``torch.nn.utils.parametrize``, e.g. wav2vec2's ``weight_norm`` conv) belong to the module that uses the
    weight: ``original``, ``weight_norm``'s direction ``original1`` (``weight_v`` in the deprecated hook) and the
    deprecated ``spectral_norm``'s ``weight_orig`` are the weight (part ``"weight"``), weight_norm's magnitude
    ``original0`` (``weight_g``) is ``"magnitude"``, the tensors of another
    parametrization with several ``original``s are ``"other"``; any other tensor is its own (``"self"``)."""
    base, _, suffix = local.rpartition("_")
    if suffix in ("g", "v") and hasattr(module, f"{base}_g") and hasattr(module, f"{base}_v"):  # weight_norm's hook
        return mod_name, module, base, "magnitude" if suffix == "g" else "weight"
    if suffix == "orig" and hasattr(module, f"{base}_u"):  # the deprecated spectral_norm hook
        return mod_name, module, base, "weight"
    holder = parents.get(id(module))  # (the ``parametrizations`` ModuleDict, the tensor's name)
    owner = parents.get(id(holder[0])) if holder else None
    if not isinstance(module, parametrize.ParametrizationList) or owner is None:
        return mod_name, module, local, "self"
    owner, tensor = owner[0], holder[1]
    owner_name = mod_name[: -len(f"parametrizations.{tensor}")].rstrip(".")
    if isinstance(module[0], _WeightNorm) and local in ("original0", "original1"):
        return owner_name, owner, tensor, "magnitude" if local == "original0" else "weight"
    if local == "original" and p.shape == getattr(owner, tensor).shape:
        return owner_name, owner, tensor, "weight"
    return mod_name, module, local, "other"


_PEFT_ADAPTERS = {"lora_embedding_A": ("embedding", True, "r × vocab: F.embedding(x, A.T)"),
                  "lora_embedding_B": ("hidden", False, "d × r: F.linear's"),
                  "lora_A": ("hidden", False, "AdaLoRA, r × d_in: F.linear's"),
                  "lora_B": ("hidden", False, "AdaLoRA, d_out × r: F.linear's"),
                  "lora_E": ("vector", False, "AdaLoRA's singular values, r × 1: entry-wise"),
                  "ia3_l": ("vector", False, "IA³ scaling, entry-wise"),
                  "trainable_tokens_delta": ("embedding", False, "trainable_token_indices: rows of the token table"),
                  "boft_R": ("vector", False, "BOFT: generators of the butterfly rotations (Cayley of their skew "
                             "part), entry-wise"),
                  "boft_s": ("vector", False, "BOFT scaling, entry-wise")}
"""peft's adapters kept in ``nn.ParameterDict``s keyed by the adapter's name, by the dict's own name: LoRA on an
embedding (``F.embedding(x, A.T)`` then ``· Bᵀ``: A is a token table stored transposed), AdaLoRA's factors and
singular values, IA³'s scalings, the rows of the token table ``trainable_token_indices`` trains, BOFT's rotation
generators and scalings. (LoHa's and LoKr's factors are read as ``F.linear``'s, with the warning.)"""


def _peft(module, local: str, p, parents: dict) -> Layout | None:
    """The layout of a peft adapter tensor (:data:`_PEFT_ADAPTERS`; OFT's rotation generators are entry-wise)."""
    if authored_class(module).__name__ == "OFTRotationModule" and local == "weight":
        return Layout("vector", "peft OFT: skew-symmetric generators of the block rotations, entry-wise")
    holder = parents.get(id(module))
    if not isinstance(module, nn.ParameterDict) or holder is None or holder[1] not in _PEFT_ADAPTERS:
        return None
    role, transposed, what = _PEFT_ADAPTERS[holder[1]]
    if p.ndim != 2 and role != "vector":
        return None
    return Layout(role, f"peft {holder[1]} ({what})", transposed=transposed)


def _lora_b_place(module, local: str, parents: dict):
    """Where the layer a peft LoRA B factor adapts sits, ``(owner, name)``: B's rows are that layer's outputs, so
    they take its row blocks (the q, k, v of a fused ``c_attn``, the gate and up of a ``gate_up_proj``)."""
    holder = parents.get(id(module))
    wrapper = parents.get(id(holder[0])) if holder and local == "weight" else None
    if wrapper is None or wrapper[1] != "lora_B" or not hasattr(wrapper[0], "base_layer"):
        return None
    return parents.get(id(wrapper[0]))


def _listed_positions(module, p, parents: dict) -> Layout | None:
    """A ≥2-D entry of a ``nn.ParameterList``/``ParameterDict`` that a position name holds (the list's own name or its
    holder module's): tokens, each vector along the last axis. Reformer's axial ``position_embeddings.weights`` are
    ``(n₁, 1, d₁)`` and ``(1, n₂, d₂)`` tables broadcast into the ``n₁·n₂`` positions (Kitaev et al. 2020,
    arXiv:2001.04451)."""
    if p.ndim < 2:
        return None
    listed = parents.get(id(module)) if isinstance(module, (nn.ParameterList, nn.ParameterDict)) else None
    holder = parents.get(id(listed[0])) if listed else None
    place = next((place[1] for place in (listed, holder) if place and _POSITION_NAMES.search(place[1])), None)
    return None if place is None else Layout("token", f"learned positions held by {place!r} "
                                                      f"(in {type(module).__name__})")


def _peft_expert_lora(module, local: str, p, parents: dict) -> Layout | None:
    """peft's LoRA on an MoE expert stack (``target_parameters``, its ``ParamWrapper``): one rank-r factor pair per
    expert, packed into two ``nn.Linear``s. A is ``(r·E, d_in)``, read as ``(E, r, d_in)``: E row blocks. B is
    ``(d_out, r·E)``, read as ``(d_out, r, E)``: column ``i·E + e`` is expert e's, E interleaved blocks of d_in."""
    holder = parents.get(id(module))
    wrapper = parents.get(id(holder[0])) if holder else None
    if local != "weight" or p.ndim != 2 or wrapper is None or wrapper[1] not in ("lora_A", "lora_B") or \
            authored_class(wrapper[0]).__name__ != "ParamWrapper" or getattr(wrapper[0], "num_experts", 1) < 2:
        return None
    experts, rank = wrapper[0].num_experts, wrapper[0].r[holder[1]]
    if wrapper[1] == "lora_A":
        return Layout("hidden", f"peft LoRA A of {experts} experts (ParamWrapper): {experts} row blocks of r = {rank}",
                      blocks=(rank,) * experts)
    return Layout("hidden", f"peft LoRA B of {experts} experts (ParamWrapper): {experts} interleaved column blocks of "
                  f"r = {rank}", blocks=(rank,) * experts, interleaved=True, in_blocks=True)


def _litgpt_lora(module, local: str, p) -> Layout | None:
    """litgpt's LoRA factors, raw tensors of its ``LoRALinear`` (``x @ Aᵀ @ Bᵀ``: A is r × d_in, B d_out × r) and
    ``LoRAQKVLinear``, whose factors serve q, k and v at once (a grouped conv: A's rows are r per enabled projection,
    B's rows each projection's outputs, each block its own map)."""
    cls = authored_class(module)
    if local not in ("lora_A", "lora_B") or p.ndim != 2 or not cls.__module__.startswith("litgpt.") or \
            not any(c.__name__ == "LoRALinear" for c in cls.__mro__):
        return None
    if not hasattr(module, "qkv_shapes"):
        return Layout("hidden", f"litgpt {cls.__name__}.{local} (F.linear's)")
    blocks = (module.r,) * sum(module.enable_lora) if local == "lora_A" else tuple(module.qkv_shapes)
    return Layout("hidden", f"litgpt {cls.__name__}.{local}, one block per enabled q/k/v {blocks}",
                  blocks=blocks if len(blocks) > 1 else None)


def _cond_conv(module, local: str, p) -> Layout | None:
    """A CondConv kernel (timm's ``CondConv2d``, Yang et al. 2019): ``weight`` of shape ``(E, ∏ weight_shape)``, each
    row one expert's ``(d_out, c_in/groups, *k)`` kernel (the module's ``weight_shape``), mixed per sample and
    applied by ``F.conv2d``: E conv kernels, each its own ball, blocked per group."""
    shape, experts, groups = (getattr(module, a, None) for a in ("weight_shape", "num_experts", "groups"))
    if local != "weight" or p.ndim != 2 or not isinstance(shape, tuple) or not 3 <= len(shape) <= 5 \
            or experts != p.shape[0] or math.prod(shape) != p.shape[1] or not isinstance(groups, int) or groups < 1:
        return None
    blocks = (shape[0] // groups,) * groups if groups > 1 else None
    return Layout("conv", f"{authored_class(module).__name__}: {experts} experts, each a {shape} kernel stored as one "
                  f"row{f' (groups={groups})' if blocks else ''}", stack=1, unflattened=shape, blocks=blocks,
                  kernel_dims=len(shape) - 2)


def _hf_experts(module, local: str, p) -> Layout | None:
    """transformers' MoE expert stacks: the module says how its weights are stored (``is_transposed``,
    ``is_concatenated``, ``has_gate``, set by ``use_experts_implementation``)."""
    if not hasattr(module, "is_transposed") or not hasattr(module, "num_experts"):
        return None
    source = f"transformers {type(module).__name__}"
    if p.ndim == 2 and "bias" in local:
        return Layout("vector", source + " bias", stack=1)
    if p.ndim != 3 or local not in ("gate_up_proj", "up_proj", "down_proj"):
        return None
    transposed = bool(module.is_transposed)
    blocks = None
    if local == "gate_up_proj" and getattr(module, "has_gate", True):
        rows = p.shape[2] if transposed else p.shape[1]
        blocks = (rows // 2, rows // 2)
    storage = "E × d_in × d_out" if transposed else "E × d_out × d_in"
    return Layout("expert", f"{source} ({storage})", transposed=transposed, stack=1, blocks=blocks,
                  interleaved=blocks is not None and not getattr(module, "is_concatenated", True))


_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "num_routed_experts", "total_experts",
                  "n_shared_experts", "num_shared_experts")
_FFN_WIDTHS = ("intermediate_dim", "intermediate_size", "moe_intermediate_size")
"""An expert's FFN width, by the names transformers gives it (never ``hidden_dim``: the model width in transformers'
experts, the FFN width in torchtitan's)."""
_INPUT_SIDE = re.compile(r"(^|_)(gate|up|w1|w3|input|fc1|wi)(_|$)")
_OUTPUT_SIDE = re.compile(r"(^|_)(down|w2|output|fc2|wo)(_|$)")


def _dbrx_experts(module, local: str, p) -> Layout | None:
    """DBRX's experts, stacked along the rows of 2-D tensors ``(E·d_ffn, d)`` and viewed as ``(E, d_ffn, d)``: ``w1``
    and ``v1`` each expert's ``F.linear`` weight (``x @ w1[e].T``), ``w2`` each stored ``(d_in, d_out)``
    (``h @ w2[e]``): one block per expert."""
    if authored_class(module).__name__ != "DbrxExpertGLU" or local not in ("w1", "v1", "w2") or p.ndim != 2:
        return None
    experts, ffn = getattr(module, "moe_num_experts", None), getattr(module, "ffn_hidden_size", None)
    if not (isinstance(experts, int) and isinstance(ffn, int) and p.shape[0] == experts * ffn):
        return None
    if local == "w2":
        return Layout("expert", f"DBRX experts: {experts} row blocks, each stored d_ffn × d (h @ w2[e])",
                      transposed=True, in_blocks=True, blocks=(ffn,) * experts)
    return Layout("expert", f"DBRX experts: {experts} row blocks, each F.linear's d_ffn × d", blocks=(ffn,) * experts)


def _expert_stack(module, local: str, p) -> Layout | None:
    """An ``(E, ·, ·)`` expert stack in a module that states E (``num_experts``, ``n_routed_experts``, …), with the
    orientation read from the module, not the shape alone: its ``input_size``/``output_size``, its FFN width
    (:data:`_FFN_WIDTHS`) as d_out of an up/gate projection (twice it fused) and d_in of a down projection, or its
    hidden size (``hidden_size``, ``model_dim``; not ``hidden_dim``, the FFN width in torchtitan's experts) as d_in
    of an up/gate projection and d_out of a down projection. None where the two axes cannot be told apart (a square
    expert, no width stated): the layout is then the user's to declare."""
    if p.ndim != 3 or not any(getattr(module, a, None) == p.shape[0] for a in _EXPERT_COUNTS):
        return None
    rows, cols = p.shape[1], p.shape[2]
    d_in, d_out = getattr(module, "input_size", None), getattr(module, "output_size", None)
    hidden = next((v for a in ("hidden_size", "model_dim") if isinstance(v := getattr(module, a, None), int)), None)
    ffn = next((v for a in _FFN_WIDTHS if isinstance(v := getattr(module, a, None), int) and v > 0), None)
    ffn_out = (ffn, 2 * ffn) if ffn else ()  # an up/gate projection's outputs, fused gate/up included
    if isinstance(d_in, int) and isinstance(d_out, int) and d_in != d_out and {d_in, d_out} == {rows, cols}:
        transposed, what = rows == d_in, "input_size/output_size"
    elif ffn and _INPUT_SIDE.search(local) and (rows in ffn_out) != (cols in ffn_out):
        transposed, what = cols in ffn_out, f"FFN width {ffn} as d_out of {local}"
    elif ffn and _OUTPUT_SIDE.search(local) and (rows == ffn) != (cols == ffn):
        transposed, what = rows == ffn, f"FFN width {ffn} as d_in of {local}"
    elif hidden is not None and rows != cols and hidden in (rows, cols) and _INPUT_SIDE.search(local):
        transposed, what = rows == hidden, f"hidden size {hidden} as d_in of {local}"
    elif hidden is not None and rows != cols and hidden in (rows, cols) and _OUTPUT_SIDE.search(local):
        transposed, what = cols == hidden, f"hidden size {hidden} as d_out of {local}"
    else:
        return None
    layout = Layout("expert", f"{type(module).__name__} ({'E × d_in × d_out' if transposed else 'E × d_out × d_in'}"
                    f", from its {what})", transposed=transposed, stack=1)
    if local == "gate_up_proj":
        half = (cols if transposed else rows) // 2
        layout = _with(layout, (half, half), "fused gate/up")
    return layout


def head_counts(attention: nn.Module, config=None) -> tuple[int | None, int | None, int | None]:
    """``(heads, key/value heads, head dim)`` an attention module states (None where it does not)."""
    config = config if config is not None else getattr(attention, "config", None)

    def attr(*names):
        for source in (attention, config):
            for n in names:
                v = getattr(source, n, None) if source is not None else None
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
        return None

    heads = attr("num_heads", "num_attention_heads", "n_head", "n_heads", "heads")
    head_dim = attr("head_dim", "attention_head_size", "head_size")
    kv = attr("num_key_value_heads", "num_kv_heads", "n_kv_heads")
    groups = attr("num_key_value_groups")
    if kv is None and heads and groups:
        kv = heads // groups
    return heads, kv or heads, head_dim


def fused_qkv_blocks(name: str, attention: nn.Module, rows: int, config=None) -> tuple[int, ...]:
    """q, k, v row blocks of a fused projection with ``rows`` outputs inside ``attention``."""
    heads, kv, head_dim = head_counts(attention, config)
    if heads and head_dim and rows == (heads + 2 * kv) * head_dim:
        return (heads * head_dim, kv * head_dim, kv * head_dim)
    if heads and head_dim and rows == 2 * kv * head_dim:  # cross-attention: k and v only
        return (kv * head_dim, kv * head_dim)
    stated_kv = kv != heads  # grouped-query attention, stated by the module
    if rows % 3 == 0 and not stated_kv and (not head_dim or not heads or rows == 3 * heads * head_dim):
        return (rows // 3,) * 3
    raise ValueError(f"cannot tell the q, k, v blocks of the fused projection {name} ({rows} outputs; the attention "
                     f"module states heads={heads}, key/value heads={kv}, head dim={head_dim}); pass "
                     f"split_sizes={{{name!r}: (q_rows, k_rows, v_rows)}}")


def per_head(blocks: tuple[int, ...], head_dim: int, name: str) -> tuple[int, ...]:
    """Split every block into heads of ``head_dim`` rows."""
    if any(b % head_dim for b in blocks):
        raise ValueError(f"num_heads: head dim {head_dim} does not divide the blocks {blocks} of {name}")
    return tuple(head_dim for b in blocks for _ in range(b // head_dim))


def undeclared_error(name: str, p, module: nn.Module) -> ValueError:
    cls = authored_class(module)  # not Parametrized…/FSDP…
    local = name.rsplit(".", 1)[-1]
    every = "" if isinstance(module, (nn.ParameterDict, nn.ParameterList)) else \
        f", or {{{cls.__name__}: {{{local!r}: KIND}}}} for every such module"
    return ValueError(
        f"{name} of shape {tuple(p.shape)} (in {cls.__name__}) has a layout specopt cannot know: no rule "
        f"reads a {p.ndim}-D tensor of this module as a conv kernel, an expert stack, an einsum's heads or learned "
        "tokens. Declare it in "
        f"one line: param_groups(model, layouts={{{name!r}: KIND}}){every}, with KIND 'experts' (E, d_out, d_in), "
        "'experts_transposed' (E, d_in, d_out), 'linear_to_heads' (d_in, *out: an einsum into heads), "
        "'linear_from_heads' (d_out, *in), 'conv' (d_out, c_in, *kernel), 'conv_depthwise' (channels, 1, *kernel: "
        "groups=channels), 'token' (positions, learned tokens) or 'vector'")


def spectral_inside(norm: Norm) -> bool:
    """Whether ``norm`` is spectral under its views and blocks: what a Muon scale needs (:func:`radius_for`)."""
    while isinstance(norm, (Blocked, _View)):
        norm = norm.inner
    return isinstance(norm, _SpectralBase)


def radius_for(radius, shape, norm: Norm) -> float:
    """ρ of one tensor. A number is used as is. The Muon scale names give the radius that makes
    ``ρ·lmo(d) = −scale·msign(d̂)`` for a spectral norm (d̂ one matrix of the tensor as the module computes with
    it, d_out × d_in: an expert, a block, a transposed Conv1D weight), with scale ``max(1, d_out/d_in)^½``
    (original), ``0.2·√max(d_out, d_in)`` (match_rms_adamw) or ``√(d_out/d_in)`` (spectral)."""
    if not isinstance(radius, str):
        return radius
    norm, shape = unwrap(norm, shape)
    if isinstance(norm, Blocked):
        try:
            shape = norm.block_shape(shape)
        except ValueError:
            raise ValueError(f"radius={radius!r} (a Muon scale) needs equal blocks, got split sizes "
                             f"{norm.sizes(shape[len(shape) - norm.item_ndim])}; put the scale in the norm with "
                             "Blocked(MuonScaled(Spectral(), scale), sizes) and radius 1") from None
        norm, shape = unwrap(norm.inner, shape)
    if not isinstance(norm, _SpectralBase):
        raise ValueError(f"radius={radius!r} (a Muon scale) needs a spectral norm, got {norm!r}")
    shape = tuple(shape[len(shape) - norm.item_ndim:])
    return muon_scale(radius, shape[0], math.prod(shape[1:])) / norm._scale(shape)


def auto_norm(shape, name: str = "a parameter", **msign_kwargs) -> Norm:
    """The geometry of a tensor known only by its shape (``norm="auto"``, no module to read the layout from):
    a matrix in ``nn.Linear``'s ``(d_out, d_in)`` layout, a 2-D/3-D conv kernel (4-D/5-D: nothing else is stored
    so in torch), a vector or gain. A 3-D tensor may be a Conv1d kernel, an expert stack or a token table: an
    error, since only the module knows."""
    if len(shape) == 3:
        raise ValueError(f"{name} is 3-D {tuple(shape)}: a Conv1d kernel, an MoE expert stack and a position table "
                         "look alike. Build the optimizer from specopt.param_groups(model), which reads the layout "
                         "from the module, or give the group a norm (e.g. SpectralConv(kernel_dims=1) or "
                         "Stacked(Spectral()))")
    if len(shape) >= 4:
        return SpectralConv(kernel_dims=min(len(shape) - 2, 3), **msign_kwargs)
    if len(shape) == 2:
        return Spectral(**msign_kwargs)
    return BiasRMS()


def classify(model: nn.Module, *, layouts: dict | None = None, head=None, split_sizes: dict | None = None,
             num_heads: int | bool | None = None) -> tuple[dict, str]:
    """``{name: (Layout, parameter)}`` for every trainable parameter and the rule that found the head (see
    :func:`_classify`). diffusers' models answer a read of a config key as an attribute (a module's ``num_heads``, the
    rules' question to every attention-like module) with a FutureWarning; the reading hides that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Accessing config attribute", category=FutureWarning)
        return _classify(model, layouts=layouts, head=head, split_sizes=split_sizes, num_heads=num_heads)


def _classify(model: nn.Module, *, layouts: dict | None = None, head=None, split_sizes: dict | None = None,
              num_heads: int | bool | None = None) -> tuple[dict, str]:
    """``{name: (Layout, parameter)}`` for every trainable parameter (named as ``model.named_parameters()``
    names it; tied and shared tensors once, frozen ones left out), and the rule that found the head.

    ``layouts``: ``{name regex or module type: kind}`` declarations (a type may map to ``{local name: kind}``);
    ``head``: regex of the output module's name, ``False`` for none, ``None`` to find it; ``split_sizes``:
    ``{name regex: row blocks}``; ``num_heads``: an int (query heads) or ``True`` (the heads the attention modules
    state) to split q, k, v per head. Every option must apply to some tensor, or it is a ``ValueError``.
    """
    declarations = _check_declarations(layouts or {})
    heads, head_rule = _heads(model, head)
    occurrences: dict[int, list] = {}
    parents = {}
    for mod_name, module in model.named_modules():
        for child_name, child in module.named_children():
            parents.setdefault(id(child), (module, child_name))
        for local, p in module.named_parameters(recurse=False):
            occurrences.setdefault(id(p), []).append((mod_name, module, local))
    out, guessed = {}, []
    for name, p in model.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ValueError(f"{name} is an uninitialized parameter of a lazy module ({type(p).__name__}, shape not "
                             "known yet): run one forward pass, e.g. model(example_input), before param_groups")
        if not p.requires_grad:
            continue
        places = occurrences[id(p)]
        mod_name, module, local = next((o for o in places if _join(o[0], o[2]) == name), places[0])
        owner_name, owner, tensor, part = _stored_for(mod_name, module, local, p, parents)
        if part == "magnitude":
            layout = Layout("vector", f"weight_norm magnitude of {tensor}")
        else:
            layout = _declared_for(declarations, name, owner, tensor, p)
        table = next((o[1] for o in places if is_embedding(o[1]) and o[2] == "weight"), None)
        if layout is None and table is not None:
            kind = EMBEDDING_CLASSES.get(authored_class(table).__name__, "nn.Embedding")
            layout = Layout("embedding", kind + (" (tied)" if len(places) > 1 else ""))
        if layout is None and part != "other":
            layout = (_peft(module, local, p, parents) or _peft_expert_lora(module, local, p, parents)
                      or _litgpt_lora(module, local, p) or _listed_positions(module, p, parents)
                      or known(owner, tensor, p))
            if layout is not None and part == "weight":
                layout = replace(layout, source=f"{layout.source}, stored as {local} (parametrized {tensor})")
        if layout is None:
            raise undeclared_error(name, p, owner)
        if layout.guessed:
            guessed.append(name)
        module, local = owner, tensor
        if part == "weight":
            places = [(owner_name, owner, tensor)]
        if layout.role in ("hidden", "conv") and local == "weight" and any(o[0] in heads for o in places):
            layout = replace(layout, role="head", source=layout.source + ", output layer")
        if layout.blocks is None and not layout.source.startswith("declared"):
            if layout.role == "hidden":
                layout = _fused(layout, name, module, _lora_b_place(module, local, parents)
                                or parents.get(id(module)), p, parents)
            elif layout.role in ("expert", "conv"):
                layout = _chunked_output(layout, parents.get(id(module)), p, parents)
        out[name] = (layout, p, module, parents.get(id(module)))
    if guessed:
        warnings.warn(f"{len(guessed)} 2-D parameter(s) no rule knows are read as F.linear's (d_out, d_in) weights: "
                      f"{', '.join(guessed[:5])}{', …' if len(guessed) > 5 else ''}. If that is not how the model uses "
                      "them, declare them: param_groups(model, layouts={name regex: KIND}) with KIND 'token' (a table "
                      "or learned queries), 'vector' (entry-wise), 'linear_transposed' (x @ W); 'linear' silences "
                      "this warning", UserWarning, stacklevel=4)
    unused = [entry[0] for entry in declarations if not entry[2]]
    if unused:  # a typo would leave a tensor read another way, silently
        shown = ", ".join(k.__name__ if isinstance(k, type) else repr(k) for k in unused)
        raise ValueError(f"layouts declaration(s) {shown} apply to no trainable parameter (a regex matches the "
                         "names model.named_parameters() gives; a module type its weights, or the local names its "
                         "dict lists)")
    _apply_split_sizes(out, split_sizes or {})
    if num_heads is not None and num_heads is not False:
        _apply_heads(out, num_heads)
    return {name: (entry[0], entry[1]) for name, entry in out.items()}, head_rule


def _join(prefix: str, local: str) -> str:
    return f"{prefix}.{local}" if prefix else local


def _check_declarations(layouts: dict) -> list:
    if not isinstance(layouts, dict):
        raise ValueError(f"layouts must be a dict {{name regex or module type: layout}}, got {layouts!r}")
    checked = []
    for key, kind in layouts.items():
        if not isinstance(key, (str, type)):
            raise ValueError(f"layouts keys are name regexes or module types, got {key!r}")
        kinds = kind.values() if isinstance(kind, dict) and isinstance(key, type) else [kind]
        for k in kinds:
            if k not in KINDS:
                raise ValueError(f"unknown layout {k!r} for {key!r}; valid layouts: {', '.join(KINDS)}")
        checked.append([key, kind, False])
    return checked


def _declared_for(declarations: list, name: str, module, local: str, p) -> Layout | None:
    for entry in declarations:
        key, kind = entry[0], entry[1]
        if isinstance(key, type):
            if not isinstance(module, key):
                continue
            if isinstance(kind, dict):
                if local not in kind:
                    continue
                kind = kind[local]
            elif p.ndim <= 1:  # a type declaration is about its weights; its biases stay vectors
                continue
            else:
                _check_type_wide(key, kind, name, module, local, p)
        elif not re.search(key, name):
            continue
        entry[2] = True
        return declared(kind, p, name)
    return None


def _check_type_wide(key: type, kind: str, name: str, module, local: str, p) -> None:
    """``{Type: KIND}`` declares the tensors of every such module that no rule reads; one a rule of the module's type
    (or of the tensor's name) reads otherwise — a ``groups=1`` ConvTranspose kernel, a 2-D bias, an ``A_log`` — would
    be silently re-read: refused, with the declarations that name the tensors meant."""
    rule = known(module, local, p)
    if rule is None or rule.guessed or rule.source.startswith("2-D parameter"):  # no rule of its own: the user's
        return
    try:
        wanted = declared(kind, p, name)
    except ValueError:  # a KIND of other dims (a 2-D bias under an 'experts' declaration): not what was meant
        wanted = None
    fields = ("role", "transposed", "stack", "kernel_dims", "blocks")
    if wanted is not None and all(getattr(wanted, f) == getattr(rule, f) for f in fields):
        return
    raise ValueError(f"layouts={{{key.__name__}: {kind!r}}} would re-read {name} of shape {tuple(p.shape)}, which "
                     f"specopt reads by a rule ({rule.source}: role {rule.role!r}"
                     f"{', stored transposed' if rule.transposed else ''}); a module type's KIND is for the tensors "
                     f"no rule reads. Name the tensors meant: layouts={{{key.__name__}: {{'<local name>': {kind!r}}}}}"
                     f" or layouts={{'<name regex>': {kind!r}}}")


def _heads(model: nn.Module, head) -> tuple[set[str], str]:
    if head is False:
        return set(), "none (head=False)"
    if head is None:
        return find_heads(model)
    if not isinstance(head, str):
        raise ValueError(f"head must be a regex of the output module's name, False or None, got {head!r}")
    candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or is_hf_conv1d(m)]
    found = {n for n in candidates if re.search(head, n)}
    if not found:
        raise ValueError(f"head={head!r} matches no nn.Linear or Conv1D; those modules are: {candidates}")
    return found, f"head={head!r}"


def _rows(layout: Layout, p) -> int:
    """d_out of one matrix of the tensor."""
    if layout.unflattened:
        return layout.unflattened[0]
    if layout.flattened and layout.transposed:  # (d_in, *out)
        return math.prod(layout.flattened)
    return p.shape[layout.stack + (1 if layout.transposed else 0)]


def _fused(layout: Layout, name: str, module, parent, p, parents: dict) -> Layout:
    """Blocks of a fused projection known by its place: q/k/v in an attention module, gate/up in an MLP."""
    if parent is None:
        return layout
    attention, local = parent
    if local == "linear" and id(attention) in parents and (
            authored_class(attention).__module__.startswith("litgpt.") or
            (authored_class(attention).__name__ == "LinearNorm" and authored_class(attention).__module__.startswith(
                "timm."))):
        attention, local = parents[id(attention)]  # the Linear a litgpt adapter (LoRA, adapter v2) or timm's LeViT
        # LinearNorm (a Linear, then a BatchNorm) wraps: its place
    rows = _rows(layout, p)
    split = _split_output((attention, local), rows, parents)  # known by its owner's class: before the rules by name
    if split is not None:
        return _with(layout, split[1], split[0])
    if _is_mamba_mixer(attention):
        return _mamba_blocks(layout, local, attention, rows)
    if authored_class(attention).__name__.endswith("GatedDeltaNet"):
        gated = _gated_deltanet_blocks(local, attention, rows)
        if gated is not None:
            return _with(layout, gated[1], f"Gated DeltaNet {local}: {gated[0]}")
    if local == "in_proj" and authored_class(attention).__name__ == "DisentangledSelfAttention":  # DeBERTa (v1)
        heads = head_counts(attention)[0]
        if heads and rows % (3 * heads) == 0:
            return _with(layout, (rows // (3 * heads),) * (3 * heads), "q, k, v interleaved per head (DeBERTa)")
    if local == "in_proj" and authored_class(attention).__name__.endswith("ShortConv") and rows % 3 == 0:
        return _with(layout, (rows // 3,) * 3, "LFM2 short conv: B, C, x")
    mla = _mla_dims(attention)
    if mla and local == "kv_a_proj_with_mqa" and rows == mla[0] + mla[1]:
        return _with(layout, mla[:2], "MLA: the compressed k/v (kv_lora_rank), then the shared rope key")
    if mla and local == "kv_b_proj" and rows % (mla[2] + mla[3]) == 0:
        return _with(layout, mla[2:] * (rows // (mla[2] + mla[3])), "MLA: per head, its k (no rope), then its v")
    if _per_head_qkv(attention, local) and _is_attention(attention):
        head_dim = head_counts(attention)[2]
        _check_codegen_shards(name, attention, rows, head_dim)
        if head_dim and rows % head_dim == 0 and rows // head_dim >= 3:
            return _with(layout, (head_dim,) * (rows // head_dim), "fused q/k/v stored by head: one block per head's "
                                                                   "q, k and v")
    by_head = _qkv_parts_by_head(attention, local, rows)
    if by_head is not None:
        return _with(layout, *by_head)
    if local == "qkv" and authored_class(attention).__module__.startswith("litgpt."):
        return _litgpt_qkv(layout, name, attention, rows)
    if local in _FUSED_KV and _is_attention(attention) and _holds_k_and_v(attention, rows):
        return _with(layout, (rows // 2, rows // 2), "fused k/v")
    if local in _FUSED_QKV and (local != "in_proj" or _is_attention(attention)):
        blocks = fused_qkv_blocks(name, attention, rows)
        return _with(layout, blocks, f"fused q/k/v {blocks}")
    if local == "gate_up_proj":
        return _with(layout, (rows // 2, rows // 2), "fused gate/up")
    return _chunked_output(layout, parent, p, parents)


def _parts(k: int, what: str):
    """A rule of :data:`_SPLIT_OUTPUTS`: ``k`` equal parts."""
    return lambda _: (what, k)


_SPLIT_OUTPUTS = {
    ("timm.models.visformer", "Attention", "qkv"): lambda a: ("q, k, v", (a.num_heads * a.head_dim,) * 3),
    ("timm.models.maxxvit", "Attention2d", "qkv"): lambda a: (
        ("per head: its q, k, v", (a.dim_head,) * (3 * a.num_heads)) if a.head_first
        else ("q, k, v", (a.num_heads * a.dim_head,) * 3)),
    ("timm.layers.bottleneck_attn", "BottleneckAttn", "qkv"): lambda a: (
        "q, k, v", (a.dim_out_qk, a.dim_out_qk, a.dim_out_v)),
    ("timm.layers.halo_attn", "HaloAttn", "kv"): lambda a: (
        "per head: its k, v", (a.dim_head_qk, a.dim_head_v) * a.num_heads),
    ("timm.layers.lambda_layer", "LambdaLayer", "qkv"): lambda a: (
        "q (every head), k, v", (a.num_heads * a.dim_qk, a.dim_qk, a.dim_v)),
    ("timm.layers.diff_attention", "DiffAttention", "qkv"): lambda a: ("q, k, v", (a.qkv.out_features // 3,) * 3),
    ("timm.models.convit", "GPSA", "qk"): lambda a: ("q, k", (a.qk.out_features // 2,) * 2),
    ("timm.models.tnt", "Attention", "qk"): lambda a: ("q, k", (a.qk.out_features // 2,) * 2),
    ("timm.models.mobilevit", "LinearSelfAttention", "qkv_proj"): lambda a: (
        "the query (one channel), the key, the value", (1, a.embed_dim, a.embed_dim)),
    ("timm.models.focalnet", "FocalModulation", "f"): lambda a: ("q, context, gates", tuple(a.input_split)),
    ("timm.models.mambaout", "GatedConvBlock", "fc1"): lambda a: ("g, i, c", tuple(a.split_indices)),
    ("timm.models.lowformer", "ConvAttention", "pwise"): lambda a: (
        "per head: its q, k, v", (a.head_dim,) * (a.num_keys * a.num_heads)),
    ("timm.models.cpubone", "ConvAttention", "pwise"): lambda a: (
        "per head: its q, k, v", (a.head_dim,) * (a.num_keys * a.num_heads)),
    ("timm.models.efficientvit_msra", "CascadedGroupAttention", "qkvs"): lambda a: (
        "q, k, v", (a.key_dim, a.key_dim, a.val_dim)),
    ("timm.models.efficientvit_mit", "LiteMLA", "qkv"): lambda a: (
        "per head: its q, k, v", (a.dim,) * (a.qkv.conv.out_channels // a.dim)),
    ("timm.models.vision_transformer", "ParallelScalingBlock", "in_proj"): lambda a: (
        "the MLP's fc1, q, k, v", tuple(a.in_split)),
    ("timm.models.vision_transformer", "DiffParallelScalingBlock", "in_proj"): lambda a: (
        "the MLP's fc1, q, k, v", tuple(a.in_split)),
    ("timm.models.efficientvim", "HSMSSD", "BCdt_proj"): lambda a: ("B, C, dt", (a.state_dim,) * 3),
    ("timm.models.efficientvim", "HSMSSD", "hz_proj"): lambda a: ("h, z", (a.d_inner,) * 2),
    ("timm.models.iformer", "SHMA", "v_gate"): lambda a: ("value, gate", (a.v_gate.c.out_channels // 2,) * 2),
    ("timm.models.shvit", "SHSA", "qkv"): lambda a: ("q, k, v", (a.qk_dim, a.qk_dim, a.pdim)),
    ("timm.models.cspnet", "CrossStage", "conv_exp"): lambda a: (
        "the half the blocks take, the half they pass by", (a.expand_chs // 2,) * 2),
    ("timm.models.cspnet", "CrossStage3", "conv_exp"): lambda a: (
        "the half the blocks take, the half they pass by", (a.expand_chs // 2,) * 2),
    ("diffusers.models.resnet", "ResnetBlock2D", "time_emb_proj"): lambda a: (
        ("scale, shift", (a.time_emb_proj.out_features // 2,) * 2) if a.time_embedding_norm == "scale_shift" else None),
    ("diffusers.models.transformers.transformer_flux2", "Flux2Modulation", "linear"): lambda a: (
        "shifts, scales and gates", (a.linear.out_features // (3 * a.mod_param_sets),) * (3 * a.mod_param_sets)),
    ("diffusers.models.transformers.transformer_flux2", "Flux2ParallelSelfAttention", "to_qkv_mlp_proj"): lambda a: (
        "q, k, v, the MLP's gate and value", (a.inner_dim,) * 3 + (a.mlp_hidden_dim,) * a.mlp_mult_factor),
    ("diffusers.models.transformers.transformer_qwenimage", "QwenImageTransformerBlock", "img_mod"): lambda a: (
        "shift, scale, gate of the attention and of the MLP", (a.dim,) * 6),
    ("diffusers.models.transformers.transformer_qwenimage", "QwenImageTransformerBlock", "txt_mod"): lambda a: (
        "shift, scale, gate of the attention and of the MLP", (a.dim,) * 6),
    ("diffusers.models.unets.unet_kandinsky3", "Kandinsky3ConditionalGroupNorm", "context_mlp"): lambda a: (
        "scale, shift", (a.context_mlp[1].out_features // 2,) * 2),
    **{(f"diffusers.models.{where}", owner, local): _parts(k, "shifts, scales and gates")
       for where, owner, local, k in (
        ("transformers.transformer_wan_animate_2", "WanAnimate2Transformer3DModel", "time_projection", 6),
        ("transformers.transformer_bria_fibo2", "BriaFibo2TransformerBlock", "adaLN_modulation", 4),
        ("transformers.transformer_z_image", "ZImageTransformerBlock", "adaLN_modulation", 4),
        ("controlnets.controlnet_z_image", "ZImageControlTransformerBlock", "adaLN_modulation", 4),
        ("transformers.transformer_ernie_image", "ErnieImageTransformer2DModel", "adaLN_modulation", 6),
        ("transformers.transformer_hidream_image", "HiDreamImageTransformerBlock", "adaLN_modulation", 12),
        ("transformers.transformer_hidream_image", "HiDreamImageSingleTransformerBlock", "adaLN_modulation", 6),
        ("transformers.transformer_hidream_image", "HiDreamImageOutEmbed", "adaLN_modulation", 2),
        ("transformers.transformer_nucleusmoe_image", "NucleusMoEImageTransformerBlock", "img_mod", 4),
        ("transformers.transformer_prx", "Modulation", "lin", 6),
        ("transformers.transformer_prx", "FinalLayer", "adaLN_modulation", 2),
        ("transformers.transformer_longcat_audio_dit", "AudioDiTAdaLNMLP", "mlp", 6),
        ("transformers.transformer_kandinsky", "Kandinsky5TransformerEncoderBlock", "text_modulation", 6),
        ("transformers.transformer_kandinsky", "Kandinsky5TransformerDecoderBlock", "visual_modulation", 9),
        ("transformers.transformer_kandinsky", "Kandinsky5OutLayer", "modulation", 2),
        ("transformers.transformer_kandinsky6", "Kandinsky6TransformerEncoderBlock", "text_modulation", 6),
        ("transformers.transformer_kandinsky6", "Kandinsky6TransformerDecoderBlock", "visual_modulation", 9),
        ("transformers.transformer_kandinsky6", "Kandinsky6OutLayer", "modulation", 2),
        ("transformers.transformer_kandinsky6_sr", "Kandinsky6SRTransformerBlock", "visual_modulation", 6),
        ("transformers.transformer_kandinsky6_sr", "Kandinsky6SROutLayer", "modulation", 2))},
    ("diffusers.models.transformers.transformer_kandinsky6", "Kandinsky6FusedTransformerDecoderBlock",
     "va_modulation"): lambda a: ("shift, scale, gate", (a.model_dim, a.model_dim, a.model_dim_a) if a.cross_gates
                                  else 3),
    ("diffusers.models.transformers.transformer_kandinsky6", "Kandinsky6FusedTransformerDecoderBlock",
     "av_modulation"): lambda a: ("shift, scale, gate", (a.model_dim_a, a.model_dim_a, a.model_dim) if a.cross_gates
                                  else 3),
    ("diffusers.models.transformers.transformer_minimax_h3", "MiniMaxH3AdaLayerNormModulation", "linear"): lambda a: (
        "6 shifts, scales and gates per modality", (a.hidden_size,) * (a.linear.out_features // a.hidden_size)),
    ("diffusers.models.autoencoders.ltx2_diffusion_decoder", "LTX2VideoVaeAdaLNZero", "proj"): lambda a: (
        "shifts, scales and gates", a.num_chunks),
    **{(f"diffusers.models.{where}", owner, local): _parts(2, _GLU) for where, owner, local in (
        ("transformers.transformer_stable_audio3", "StableAudio3FeedForward", "proj_in"),
        ("autoencoders.autoencoder_same", "FeedForward", "proj_in"),
        ("transformers.transformer_rfd4_proteina", "RFD4ProteinaTransition", "swish_linear"),
        ("transformers.transformer_sana_wm", "GLUMBConvTemp", "inverted_conv"))},
    ("diffusers.models.autoencoders.autoencoder_rfd4_proteina", "RFD4ProteinaEncoder",
     "latent_decoder_mean_n_log_scale"): _parts(2, "the posterior's mean, log-scale"),
    **{(f"diffusers.models.autoencoders.{where}", owner, "to_qkv"): _parts(3, "q, k, v") for where, owner in (
        ("autoencoder_kl_wan", "WanAttentionBlock"), ("autoencoder_kl_qwenimage", "QwenImageAttentionBlock"),
        ("autoencoder_kl_qwenimage21", "QwenImage21AttentionBlock"))},
    ("diffusers.models.transformers.transformer_stable_audio3", "StableAudio3SelfAttention", "to_qkv"): lambda a: (
        ("q₁, q₂, k₁, k₂, v (differential attention)", 5) if a.use_differential else ("q, k, v", 3)),
    ("diffusers.models.transformers.transformer_stable_audio3", "StableAudio3CrossAttention", "to_q"): lambda a: (
        ("q₁, q₂ (differential attention)", 2) if a.use_differential else None),
    ("diffusers.models.transformers.transformer_stable_audio3", "StableAudio3CrossAttention", "to_kv"): lambda a: (
        ("k₁, k₂, v (differential attention)", 3) if a.use_differential else ("k, v", 2)),
    ("diffusers.models.unets.unet_dreamlite", "ResnetBlock2DDreamLite", "time_emb_proj"): lambda a: (
        ("scale, shift", 2) if a.time_embedding_norm == "scale_shift" else None),
}
"""Outputs the forward splits, by the owner's module and class and the projection's name: ``owner → (what, row
blocks)`` (None: not split); the projection may sit in a module that only wraps it (timm's ConvNorm, ConvNormAct: a
conv with its norm) or in a ``ModuleList`` (EfficientViT-MSRA's ``qkvs``, one per head group). timm's q/k/v cut per
head out of one conv (LowFormer's and CPUBone's ``pwise``, EfficientViT-MIT's ``qkv``), or into unequal parts
(EfficientViT-MSRA, SHViT), the parallel ViT blocks' ``in_proj`` (the MLP's fc1, q, k, v), EfficientViM's ``BCdt_proj``
and ``hz_proj``, iFormer's ``v_gate``, CSPNet's ``conv_exp`` (one half through the blocks, the other past them);
timm's differential attention's ``qkv`` (``chunk(3)``, where its head counts
do not tell the blocks), timm's attention held in 1×1 convs or a ``qk`` Linear (Visformer; CoAtNet/MaxViT's
``Attention2d``, per head where ``head_first``; BoTNet; HaloNet's k/v per head; LambdaNet's q of every head, then one
k and one v; ConViT's and TNT's q/k; MobileViT-v2's one-channel query), FocalNet's modulation ``f``, MambaOut's gated
``fc1``, diffusers' ResNet time projection with ``scale_shift``, Flux 2's modulations (3 per parameter set) and its
single blocks' ``to_qkv_mlp_proj`` (q, k, v, the SwiGLU's gate and value), Qwen-Image's ``img_mod``/``txt_mod`` (a
``Sequential`` of SiLU and the projection: 6 parts), Kandinsky 3's conditional group norm. A VAE's moments:
:func:`_vae_moments`."""


def _split_output(parent, rows: int, parents: dict):
    """``(what (owner.name), blocks)`` of :data:`_SPLIT_OUTPUTS` for the projection ``parent`` names, looked up
    through up to two modules that only wrap it (:func:`_wraps_one_map`), or None."""
    for _ in range(3):
        cls = authored_class(parent[0])
        rule = _SPLIT_OUTPUTS.get((cls.__module__, cls.__name__, parent[1]))
        if rule is not None:
            try:
                found = rule(parent[0])
            except (AttributeError, TypeError):  # another version of the module: no split known
                return None
            what, blocks = found or (None, None)
            if isinstance(blocks, int):  # k equal parts
                blocks = (rows // blocks,) * blocks if rows % blocks == 0 else None
            if blocks is None or sum(blocks) != rows:
                return None
            return f"{what} ({cls.__name__}.{parent[1]})", blocks
        if id(parent[0]) not in parents or not _wraps_one_map(parent[0]):
            return None
        parent = parents[id(parent[0])]
    return None


def _vae_moments(parent, rows: int, parents: dict):
    """``(what, blocks)`` for the projection whose output a diffusers KL autoencoder chunks into the posterior's mean
    and log-variance (``DiagonalGaussianDistribution``: ``chunk(2, dim=1)``), or None: its ``quant_conv``, else (no
    ``quant_conv``: SD3's and Flux's VAE, CogVideoX's, Mochi's, LTX's) the encoder's last projection, ``conv_out`` or
    ``proj_out``; LTX-Video's encoder appends one log-variance channel shared by every latent channel (blocks
    ``(latents, 1)``). Looked up through the modules that only wrap the conv (the causal convs' ``conv``)."""
    what = "the posterior's mean, log-variance"
    for _ in range(3):
        owner, local = parent
        if local == "quant_conv" and authored_class(owner).__name__.startswith("AutoencoderKL"):
            return (f"{what} ({authored_class(owner).__name__}.quant_conv)", (rows // 2,) * 2) if rows % 2 == 0 \
                else None
        holder = parents.get(id(owner))
        if local in ("conv_out", "proj_out") and holder is not None and holder[1] == "encoder" and \
                authored_class(holder[0]).__name__.startswith("AutoencoderKL") and \
                getattr(holder[0], "quant_conv", None) is None:
            where = f"{authored_class(owner).__name__}.{local}, no quant_conv after it"
            if authored_class(owner).__name__ == "LTXVideoEncoder3d":
                return f"the mean, one shared log-variance ({where})", (rows - 1, 1)
            return (f"{what} ({where})", (rows // 2,) * 2) if rows % 2 == 0 else None
        if holder is None or not _wraps_one_map(owner):
            return None
        parent = holder
    return None


def _wraps_one_map(module: nn.Module) -> bool:
    """A ``ModuleList``/``ModuleDict``, or a module with one ≥2-D parameter in all (a conv or linear with its norm and
    activation): what its owner calls by its name is that one map."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return True
    matrices = (p for p in module.parameters() if p.ndim >= 2)
    return next(matrices, None) is not None and next(matrices, None) is None


def _chunked_output(layout: Layout, parent, p, parents: dict) -> Layout:
    """k row blocks for a projection of :data:`_CHUNKED_OUTPUTS`, the blocks of :data:`_SPLIT_OUTPUTS`, or two for
    one an ``nn.GLU`` halves (:func:`_glu_next`)."""
    if parent is None:
        return layout
    owner, local = authored_class(parent[0]).__name__, parent[1]
    rows = _rows(layout, p)
    split = _split_output(parent, rows, parents) or _vae_moments(parent, rows, parents)
    if split is not None:
        return _with(layout, split[1], split[0])
    if _glu_next(layout, parent) and rows % 2 == 0:
        return _with(layout, (rows // 2, rows // 2), f"fused value/gate (nn.GLU after it in {owner})")
    gate = getattr(parent[0], "gate", None)
    if owner == "GatedMlp" and local == "fc1" and type(gate).__name__ == "SpatialGatingUnit" and rows % 2 == 0:
        return _with(layout, (rows // 2, rows // 2), "value/gate halves (timm's gMLP: its SpatialGatingUnit chunks "
                                                     "fc1's output)")
    if owner == "MobileViTV2ConvLayer" and local == "convolution" and id(parent[0]) in parents:
        holder, name = parents[id(parent[0])]
        d = getattr(holder, "embed_dim", None)
        if authored_class(holder).__name__ == "MobileViTV2LinearSelfAttention" and name == "qkv_proj" and \
                isinstance(d, int) and rows == 1 + 2 * d:
            return _with(layout, (1, d, d), "MobileViTV2 qkv_proj: the query (one channel), the key, the value")
    if isinstance(parent[0], (nn.ModuleList, nn.ModuleDict)) and id(parent[0]) in parents:  # the list's owner
        holder, listed = parents[id(parent[0])]
        owner, local = authored_class(holder).__name__, listed
    for name, pattern, k, what in _CHUNKED_OUTPUTS:
        if local == name and re.search(pattern, owner) and rows % k == 0:
            return _with(layout, (rows // k,) * k, f"{what.format(k=k)} ({owner}.{local})")
    return layout


def _glu_next(layout: Layout, parent) -> bool:
    """Whether the module is followed in an ``nn.Sequential`` by an ``nn.GLU`` that halves its outputs: along the
    features (``dim=-1``) of a linear map, along the channels (``dim=1``) of a conv (x-transformers' ``on_attn``
    output, conformer blocks written as Sequentials). Its two halves are the value and the gate maps."""
    container, local = parent
    if not isinstance(container, nn.Sequential) or not local.isdigit() or int(local) + 1 >= len(container):
        return False
    glu = container[int(local) + 1]
    if type(glu) is not nn.GLU:
        return False
    return glu.dim in ((1, -layout.kernel_dims - 1) if layout.kernel_dims else (-1,))


def _mla_dims(attention: nn.Module) -> tuple[int, int, int, int] | None:
    """Multi-head latent attention's ``(kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim)`` (DeepSeek-V2/V3
    and the models built on it: ``kv_a_proj_with_mqa``'s output is split into the compressed k/v and the shared rope
    key, ``kv_b_proj``'s viewed per head and split into k and v), or None for other attention modules."""
    config = getattr(attention, "config", None)  # litgpt keeps them in its config
    dims = tuple(getattr(attention, k, getattr(config, k, None)) for k in ("kv_lora_rank", "qk_rope_head_dim",
                                                                          "qk_nope_head_dim", "v_head_dim"))
    return dims if all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims) else None


def _check_codegen_shards(name: str, attention: nn.Module, rows: int, head_dim: int | None) -> None:
    """CodeGen's ``qkv_proj`` holds ``mp_num`` shards of q, v, k, each ``embed/mp_num`` rows, and cuts heads out of
    each: where the head dim does not divide a shard's part, a head's rows are not contiguous, which no block split
    expresses — refused (the released CodeGen models have head counts that are multiples of ``mp_num``)."""
    shards = getattr(attention, "mp_num", None)
    if isinstance(shards, int) and shards > 0 and head_dim and rows % (3 * shards) == 0 and \
            (rows // (3 * shards)) % head_dim:
        raise ValueError(f"{name}: CodeGen's fused projection holds {shards} shards of q, v and k of "
                         f"{rows // (3 * shards)} rows each, which its head dim {head_dim} does not divide, so a "
                         f"head's rows are not contiguous and no block split expresses them; use a head count that "
                         f"is a multiple of {shards} (as CodeGen's released models), or declare the matrix whole with "
                         f"layouts={{{name!r}: 'linear'}}")


def _per_head_qkv(attention: nn.Module, local: str) -> bool:
    """A fused q/k/v whose rows are not q's, then k's, then v's, but grouped by head (:data:`_QKV_BY_HEAD`). Every
    head_dim rows are one head's q, k or v in all of them, so these are split into blocks of head_dim rows (a q/k/v
    split would mix heads' rows)."""
    if local not in _QKV_BY_HEAD or (local == "c_attn" and getattr(attention, "multi_query", False)):
        return False  # GPT-BigCode's multi-query c_attn is q, k, v in turn
    return re.search(_QKV_BY_HEAD[local], authored_class(attention).__name__) is not None


def _qkv_parts_by_head(attention: nn.Module, local: str, rows: int) -> tuple[tuple[int, ...], str] | None:
    """``(blocks, what)`` of a fused q/k/v (or k/v) whose rows hold head 0's q, k and v, then head 1's, …, as the
    module states it: timm's ``head_first`` attention (MaxViT/MaxxViT ``*_rw``: ``view(B, N, heads, 3·dim_head)``,
    then ``chunk(3)``), and attention modules with a ``key_dim`` and a ``val_dim`` per head (timm's LeViT and
    EfficientFormer: ``view(B, N, heads, -1).split([key_dim, key_dim, val_dim])``). None for any other module:
    a q/k/v split in thirds would mix heads' rows in every block of these."""
    heads = getattr(attention, "num_heads", None)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or local not in ("qkv", "kv"):
        return None
    dim_head = getattr(attention, "dim_head", None)
    if local == "qkv" and getattr(attention, "head_first", False) is True and isinstance(dim_head, int) and \
            rows == 3 * heads * dim_head:
        return (dim_head,) * (3 * heads), "fused q/k/v stored by head (head_first): one block per head's q, k and v"
    key, val = getattr(attention, "key_dim", None), getattr(attention, "val_dim", None)
    if not (isinstance(key, int) and isinstance(val, int) and key > 0 and val > 0):
        return None
    parts = (key, key, val) if local == "qkv" else (key, val)
    if rows != heads * sum(parts):
        return None
    return parts * heads, f"fused {'q/k/v' if local == 'qkv' else 'k/v'} stored by head: each head's {parts}"


def _litgpt_qkv(layout: Layout, name: str, attention: nn.Module, rows: int) -> Layout:
    """litgpt's fused ``qkv`` (its ``config`` states ``n_head``, ``n_query_groups`` and ``head_size``): from
    litgpt 0.5.7 q's rows, then k's, then v's; before (PR #1013 dropped the interleaving), grouped by query group, each
    group's q heads, then its k head, then its v head: one block per head there."""
    config = getattr(attention, "config", None)
    heads, groups, head_dim = (getattr(config, k, None) for k in ("n_head", "n_query_groups", "head_size"))
    if not all(isinstance(v, int) and v > 0 for v in (heads, groups, head_dim)) or \
            rows != (heads + 2 * groups) * head_dim:
        raise ValueError(f"cannot tell the q, k, v blocks of litgpt's fused projection {name} ({rows} outputs; its "
                         f"config states n_head={heads}, n_query_groups={groups}, head_size={head_dim}); pass "
                         f"split_sizes={{{name!r}: (q_rows, k_rows, v_rows)}}")
    if _version("litgpt") >= (0, 5, 7):
        blocks = (heads * head_dim, groups * head_dim, groups * head_dim)
        return _with(layout, blocks, f"litgpt fused q/k/v {blocks}")
    return _with(layout, (head_dim,) * (rows // head_dim), "litgpt < 0.5.7 fused q/k/v, grouped by query group: one "
                                                           "block per head's q, k and v")


def _version(package: str) -> tuple[int, ...]:
    """The installed version of ``package`` as numbers, ``(0, 5, 13)``."""
    return tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version(package))[:3])


def _holds_k_and_v(attention: nn.Module, rows: int) -> bool:
    """Whether a fused ``kv`` of ``rows`` outputs is k then v, by what the attention module states: 2·KV·d_h rows, or
    twice its query projection's. Other fused layouts share the name (Stable Audio 3's differential attention holds
    k₁, k₂, v), so a projection that matches neither stays one matrix."""
    _, kv, head_dim = head_counts(attention)
    if kv and head_dim and rows == 2 * kv * head_dim:
        return True
    query = next((m for n in ("q", "to_q", "q_proj", "query") if isinstance(m := getattr(attention, n, None),
                                                                             nn.Linear)), None)
    return query is not None and rows == 2 * query.out_features


def _is_attention(module) -> bool:
    """``in_proj`` is q/k/v only in an attention module (in Mamba's mixers and some MLPs it is not)."""
    return isinstance(module, nn.MultiheadAttention) or \
        re.search("attention|attn", authored_class(module).__name__, re.I) is not None


def _is_mamba_mixer(module) -> bool:
    """A Mamba (selective state space) mixer: transformers' ``MambaMixer``, ``Mamba2Mixer`` and the hybrids'."""
    return all(isinstance(getattr(module, a, None), int) for a in ("ssm_state_size", "intermediate_size"))


def _mamba_blocks(layout: Layout, local: str, mixer, rows: int) -> Layout:
    """The outputs Mamba's fused projections hold (Gu & Dao 2023; Dao & Gu 2024): ``in_proj`` gives x and the gate
    z (Mamba), or z, x, B, C and Δt (Mamba-2, ``n_groups``·N rows for each of B and C, one Δt per head);
    ``x_proj`` gives Δt (rank R), B and C (N rows each). A projection whose rows do not add up is one matrix."""
    inner, state = mixer.intermediate_size, mixer.ssm_state_size
    groups, heads, rank = (getattr(mixer, a, None) for a in ("n_groups", "num_heads", "time_step_rank"))
    candidates = {"in_proj": [("x, z", (inner, inner))],
                  "x_proj": [("Δt, B, C", (rank, state, state))] if isinstance(rank, int) else []}
    if isinstance(groups, int) and isinstance(heads, int):
        candidates["in_proj"].insert(0, ("z, x, B, C, Δt", (inner, inner, groups * state, groups * state, heads)))
    for what, blocks in candidates.get(local, []):
        if sum(blocks) == rows and all(b > 0 for b in blocks):
            if local == "in_proj" and authored_class(mixer).__name__ == "ZambaMambaMixer":  # view(…, 2, L): x, z
                return replace(layout, source=f"{layout.source}, Zamba in_proj: x, z interleaved",
                               blocks=blocks, interleaved=True)
            return _with(layout, blocks, f"Mamba {local}: {what} {blocks}")
    return layout


def _gated_deltanet_blocks(local: str, net, rows: int) -> tuple[str, tuple[int, ...]] | None:
    """The outputs a Gated DeltaNet's fused projections hold (Qwen3-Next, Qwen3.5, their MoE and derived models):
    ``in_proj_qkv`` gives q, k (``key_dim`` rows each) and v (``value_dim``); Qwen3-Next's ``in_proj_qkvz`` holds, per
    key-head group, that group's q and k (``head_k_dim`` each), v and z (``r·head_v_dim`` each, ``r`` value heads per
    key head), and ``in_proj_ba`` its b and a gates (``r`` each): ``(what, blocks)``, or None where the rows do not
    add up (the other rules then read the projection)."""
    dims = [getattr(net, a, None) for a in ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim")]
    if not all(isinstance(d, int) and d > 0 for d in dims) or dims[1] % dims[0]:
        return None
    groups, values, hk, hv = dims
    r = values // groups
    candidates = {"in_proj_qkv": ("q, k, v", (groups * hk, groups * hk, values * hv)),
                  "in_proj_qkvz": ("q, k, v, z per key-head group", (hk, hk, r * hv, r * hv) * groups),
                  "in_proj_ba": ("b, a per key-head group", (r, r) * groups)}
    if local in candidates and sum(candidates[local][1]) == rows:
        return candidates[local]
    return None


def _with(layout: Layout, blocks, what: str) -> Layout:
    """``layout`` with contiguous d_out ``blocks`` (``what`` says which rule gave them)."""
    return replace(layout, source=f"{layout.source}, {what}", blocks=tuple(blocks), interleaved=False)


def _apply_split_sizes(out: dict, split_sizes: dict) -> None:
    if not isinstance(split_sizes, dict):
        raise ValueError(f"split_sizes must be a dict {{name regex: (rows, …)}}, got {split_sizes!r}")
    for pattern, sizes in split_sizes.items():
        matched = [n for n, e in out.items() if e[0].role in ("hidden", "head", "expert") and re.search(pattern, n)]
        if not matched:
            raise ValueError(f"split_sizes pattern {pattern!r} matches no matrix parameter; matrix parameters: "
                             f"{[n for n, e in out.items() if e[0].role in ('hidden', 'head', 'expert')]}")
        for name in matched:
            layout, p = out[name][0], out[name][1]
            rows = _rows(layout, p)
            try:
                Blocked(Spectral(), sizes).sizes(rows)
            except ValueError as err:
                raise ValueError(f"split_sizes for {name} (d_out = {rows}): {err}") from None
            sizes_t = (sizes,) if isinstance(sizes, int) else tuple(sizes)
            if len(sizes_t) == 1 and isinstance(sizes, int):
                sizes_t = (rows // sizes,) * sizes
            out[name] = (_with(layout, sizes_t, f"split_sizes {sizes_t}"),) + out[name][1:]


_BY_HEAD = re.compile(r"stored by head|interleaved per head|one block per head|MLA: per head")
"""The layout sources whose blocks are each one head's q, k or v already (GPT-NeoX, BLOOM, Falcon, CodeGen, DeBERTa,
litgpt < 0.5.7, MLA's ``kv_b_proj``): ``num_heads`` has nothing left to split there."""


def _apply_heads(out: dict, num_heads) -> None:
    if num_heads is not True and (isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1):
        raise ValueError(f"num_heads must be a positive int or True, got {num_heads!r}")
    applied = []
    for name, (layout, p, module, parent) in list(out.items()):
        if layout.role not in ("hidden", "expert"):
            continue
        attention = parent[0] if parent else None
        user_qkv = "split_sizes" in layout.source and parent is not None and parent[1] in _FUSED_QKV
        if layout.blocks and _BY_HEAD.search(layout.source):  # one block per head's q, k or v already
            stated = head_counts(attention)[0] if attention is not None else None
            if num_heads is not True and stated and num_heads != stated:
                raise ValueError(f"num_heads={num_heads}, but {name} is stored by head and its attention module "
                                 f"states {stated} heads")
            applied.append(name)
            continue
        if layout.blocks and ("q/k/v" in layout.source or "MultiheadAttention" in layout.source or user_qkv):
            q_rows = layout.blocks[0]
            stated = head_counts(module if isinstance(module, nn.MultiheadAttention) else attention)[2] \
                if num_heads is True else None
            if isinstance(module, nn.MultiheadAttention) and num_heads is True:
                stated = module.head_dim
            head_dim = stated if num_heads is True else _divide(q_rows, num_heads, name)
        elif layout.flattened and layout.transposed and len(layout.flattened) == 2:  # (d_in, heads, d_head)
            heads, head_dim = layout.flattened
            if num_heads is not True and num_heads != heads:
                raise ValueError(f"num_heads={num_heads}, but {name} of shape {tuple(p.shape)} is stored by head: "
                                 f"{heads} heads")
        elif parent and any(parent[1] in triple for triple in _SEPARATE_QKV) and _is_triple(attention, parent[1]):
            head_dim = head_counts(attention)[2] if num_heads is True else _separate_head_dim(attention, parent[1],
                                                                                                 num_heads, name)
        else:
            continue
        if not head_dim:
            raise ValueError(f"num_heads=True: the attention module of {name} states no head dim; pass num_heads=H")
        blocks = per_head(layout.blocks or (_rows(layout, p),), head_dim, name)
        out[name] = (_with(layout, blocks, f"per head ({head_dim} rows)"), p, module, parent)
        applied.append(name)
    if not applied:
        raise ValueError(f"num_heads={num_heads!r} applies to no tensor: the model has no fused q/k/v projection, "
                         "no q/k/v projections inside an attention module and no split_sizes")


def _divide(rows: int, heads: int, name: str) -> int:
    if rows % heads:
        raise ValueError(f"num_heads={heads} does not divide the {rows} query rows of {name}")
    return rows // heads


def _is_triple(attention, local: str) -> bool:
    children = dict(attention.named_children())
    return any(local in triple and all(isinstance(children.get(c), nn.Linear) or is_hf_conv1d(children.get(c))
                                       for c in triple) for triple in _SEPARATE_QKV)


def _separate_head_dim(attention, local: str, heads: int, name: str) -> int:
    children = dict(attention.named_children())
    triple = next(t for t in _SEPARATE_QKV if local in t)
    query = children[triple[0]]
    rows = query.weight.shape[1] if is_hf_conv1d(query) else query.weight.shape[0]
    return _divide(rows, heads, name)
