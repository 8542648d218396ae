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
| ``nn.Embedding`` | ``(vocab, d)`` | table | embedding |
| position embeddings, class/register/mask tokens, ``bias_k/bias_v`` | ``(…, n, d)`` | entries | token |
| norm layers, biases, other 1-D | | entries | vector |
| any other 2-D parameter | ``(d_out, d_in)`` (``F.linear``'s convention, e.g. an MoE router) | linear | hidden |

Expert stacks are stored ``(E, d_in, d_out)`` where the experts module says ``is_transposed`` (transformers'
``use_experts_implementation``). Fused projections are split into the blocks they hold: GPT-2's ``c_attn``
(q, k, v columns of the stored tensor), timm's ``qkv``, ``nn.MultiheadAttention.in_proj_weight``, Phi-3's
``qkv_proj`` (unequal under grouped-query attention: ``H·d_h, KV·d_h, KV·d_h`` read off the attention module),
fused ``gate_up_proj`` (dense and expert stacks, concatenated or interleaved). ``num_heads`` splits q, k, v into
heads, in fused and in separate (``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value``) projections.

The output layer (role ``head``) is found by what it is: the module transformers' ``get_output_embeddings()`` or
timm's ``get_classifier()`` returns, a classifier of ``config.num_labels`` outputs outside the base model, else the
``nn.Linear`` whose output is the model's output in a ``torch.fx`` trace, else the one projection back to the
vocabulary of the model's ``nn.Embedding``; a head tied to an embedding is that embedding.

A ≥3-D parameter none of these rules knows is an error that names it; declare it in one line with
``layouts={name regex or module type: kind}`` (:data:`KINDS`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

from specopt.heads import is_hf_conv1d
from specopt.norms import BiasRMS, Blocked, Norm, Spectral, SpectralConv, _SpectralBase
from specopt.views import Stacked, Transposed, unwrap

KINDS = ("linear", "linear_transposed", "experts", "experts_transposed", "conv", "embedding", "token", "vector")
"""The layouts a user can declare: ``(d_out, d_in)``, ``(d_in, d_out)``, ``(E, d_out, d_in)``, ``(E, d_in, d_out)``,
a conv kernel ``(d_out, c_in, *k)``, an embedding table, learned tokens/positions, a vector or gain."""

MUON_SCALES = ("original", "match_rms_adamw", "spectral")
_NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm, nn.LocalResponseNorm)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_TOKEN_NAMES = re.compile(r"(pos(ition)?_?(embed|embedding|embeddings|emb)|cls_token|class_token|reg_token|"
                          r"register_tokens?|dist_token|mask_token|bias_k|bias_v)$")
_FUSED_QKV = ("c_attn", "qkv", "qkv_proj", "Wqkv", "in_proj")
_SEPARATE_QKV = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"), ("wq", "wk", "wv"),
                 ("to_q", "to_k", "to_v"))


@dataclass(frozen=True)
class Layout:
    """How one parameter is stored and what it is.

    ``role``: embedding, token, hidden, expert, conv, head or vector. ``transposed``: the matrix (or kernel) is
    stored ``(d_in, d_out, …)``. ``stack``: leading axes that index independent maps (experts). ``blocks``: row
    blocks of d_out (fused q/k/v, gate/up, heads, conv groups), ``interleaved`` if row r is in block r mod k.
    ``kernel_dims``: spatial axes of a conv kernel. ``source``: the rule that decided.
    """

    role: str
    source: str
    transposed: bool = False
    stack: int = 0
    blocks: tuple[int, ...] | None = None
    interleaved: bool = False
    kernel_dims: int = 0

    def axes(self, shape) -> str:
        """``d_out``, ``d_in`` and batch axes of a tensor of ``shape``, e.g. ``E=0 out=2 in=1``."""
        ndim = len(shape)
        if self.role in ("embedding", "token", "vector"):
            return "table (rows=tokens)" if self.role == "embedding" else "entries"
        batch = [f"E={i}" for i in range(self.stack)]
        out, inp = (self.stack + 1, self.stack) if self.transposed else (self.stack, self.stack + 1)
        kernel = f" k={','.join(str(i) for i in range(ndim - self.kernel_dims, ndim))}" if self.kernel_dims else ""
        split = ""
        if self.blocks:
            split = f" {len(self.blocks)}{' interleaved' if self.interleaved else ''} blocks"
        return " ".join(batch + [f"out={out}", f"in={inp}"]) + kernel + split

    def norm(self, base: Norm) -> Norm:
        """``base`` (a norm on one ``(d_out, d_in)`` matrix, kernel or entry set) on this layout."""
        norm = base
        if self.blocks and len(self.blocks) > 1:
            norm = Blocked(norm, self.blocks, self.interleaved)
        if self.transposed:
            norm = Transposed(norm)
        if self.stack:
            norm = Stacked(norm, self.stack)
        return norm


def declared(kind: str, p, source: str) -> Layout:
    """The layout of a user declaration (:data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown layout {kind!r} declared for {source}; valid layouts: {', '.join(KINDS)}")
    if kind.startswith("experts") and p.ndim != 3:
        raise ValueError(f"layout {kind!r} needs a 3-D (E, ·, ·) tensor, {source} has shape {tuple(p.shape)}")
    if kind.startswith("linear") and p.ndim != 2:
        raise ValueError(f"layout {kind!r} needs a 2-D tensor, {source} has shape {tuple(p.shape)}")
    if kind == "conv" and not 3 <= p.ndim <= 5:
        raise ValueError(f"layout 'conv' needs a (d_out, c_in, *kernel) tensor with 1-3 kernel dims, {source} has "
                         f"shape {tuple(p.shape)}")
    role = {"linear": "hidden", "linear_transposed": "hidden", "experts": "expert", "experts_transposed": "expert"}
    return Layout(role.get(kind, kind), f"declared {kind!r}", transposed=kind.endswith("transposed"),
                  stack=int(kind.startswith("experts")), kernel_dims=p.ndim - 2 if kind == "conv" else 0)


def known(module: nn.Module, local: str, p) -> Layout | None:
    """The layout the module type defines for its parameter ``local`` (None: no rule knows it)."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return Layout("embedding", type(module).__name__)
    if isinstance(module, _NORM_LAYERS):
        return Layout("vector", type(module).__name__)
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
    if isinstance(module, _CONV_T) and local == "weight" and module.groups == 1:
        return Layout("conv", f"{type(module).__name__} (stored c_in × d_out)", transposed=True,
                      kernel_dims=p.ndim - 2)
    if isinstance(module, nn.MultiheadAttention) and local.endswith("proj_weight"):
        blocks = (module.embed_dim,) * 3 if local == "in_proj_weight" else None
        return Layout("hidden", "nn.MultiheadAttention", blocks=blocks)
    experts = _hf_experts(module, local, p)
    if experts is not None:
        return experts
    if _TOKEN_NAMES.search(local):
        return Layout("token", f"learned tokens/positions ({local})")
    if p.ndim == 2:
        return Layout("hidden", "2-D parameter: F.linear's (d_out, d_in)")
    return None


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

    heads = attr("num_heads", "num_attention_heads", "n_head", "n_heads")
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
    if rows % 3 == 0 and not heads:
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
    return ValueError(
        f"{name} of shape {tuple(p.shape)} (in {type(module).__name__}) has a layout specopt cannot know: a "
        f"{p.ndim}-D tensor is not a known conv kernel, expert stack or token table. Declare it in one line, e.g. "
        f"param_groups(model, layouts={{{name!r}: 'experts'}}) or layouts={{{type(module).__name__}: 'experts'}}; "
        f"layouts: {', '.join(KINDS)}")


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
                             f"{norm.sizes(shape[len(shape) - norm.item_ndim])}") from None
        norm, shape = unwrap(norm.inner, shape)
    if not isinstance(norm, _SpectralBase):
        raise ValueError(f"radius={radius!r} (a Muon scale) needs a spectral norm, got {norm!r}")
    rank = norm.item_ndim
    shape = tuple(shape[len(shape) - rank:])
    d_out, d_in = shape[0], math.prod(shape[1:])
    scale = {"original": math.sqrt(max(1.0, d_out / d_in)), "match_rms_adamw": 0.2 * math.sqrt(max(d_out, d_in)),
             "spectral": math.sqrt(d_out / d_in)}[radius]
    return scale / norm._scale(shape)


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
