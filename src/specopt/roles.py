"""Automatic parameter roles: which norm and radius each tensor of a model gets.

Roles, from module types and shapes:

| role | what | text scheme norm | image scheme norm |
|---|---|---|---|
| ``embedding`` | ``nn.Embedding`` weights (tied head included) | Sign (ℓ∞) — or ColNorm(transpose) | Sign |
| ``hidden`` | ``nn.Linear`` weights but the head; attention projections; other 2-D params | Spectral | Spectral |
| ``conv`` | ``nn.Conv1d/2d/3d`` kernels, other ≥3-D params | SpectralConv | SpectralConv |
| ``head`` | the output ``nn.Linear`` (``head=`` name, default: the last Linear) | Sign(fan_in_scaled) | Spectral |
| ``vector`` | biases, LayerNorm/RMSNorm/BatchNorm gains, other 1-D params | BiasRMS | BiasRMS |

This is Sign → Spectral → Sign for text models (Pethick et al. 2025, Scion) and Spectral(conv) for images.
Default radii are the small-model values of ALGORITHMS.md §3 (embedding 1, hidden 3, head 10); override
per role with ``radii=`` and per parameter name (regex) with ``overrides=``.

Fused QKV weights (``nn.MultiheadAttention.in_proj_weight``, or names matched by ``split_sizes``) get a
:class:`~specopt.norms.Blocked` norm so that q, k and v are orthogonalised separately; ``num_heads`` splits
those blocks further, one per attention head.
"""

from __future__ import annotations

import re

from torch import nn

from specopt.norms import BiasRMS, Blocked, ColNorm, Norm, Sign, Spectral, SpectralConv

ROLES = ("embedding", "hidden", "conv", "head", "vector")
SCHEMES = ("auto", "text", "image")
DEFAULT_RADII = {"embedding": 1.0, "hidden": 3.0, "conv": 3.0, "head": 10.0, "vector": 1.0}
_NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def param_groups(model: nn.Module, *, scheme: str = "auto", radii: dict | None = None, head: str | None = None,
                 embedding_norm: str = "sign", split_sizes: dict[str, tuple[int, ...]] | None = None,
                 num_heads: int | None = None, overrides: dict[str, dict] | None = None, msign: dict | None = None,
                 print_table: bool = False) -> list[dict]:
    """Param groups for any specopt optimizer: ``[{"params": [(name, p), …], "role", "norm", "radius"}, …]``.

    Args:
        model: the module whose trainable parameters are assigned.
        scheme: "text", "image", or "auto" (text when the model has an ``nn.Embedding``).
        radii: per-role radius overrides, e.g. ``{"hidden": 50.0}``.
        head: regex of the output layer's module name; default: the last ``nn.Linear`` of the model.
        embedding_norm: "sign" (ℓ∞) or "col_norm" (ColNorm with transpose, each token vector RMS-normalised).
        split_sizes: ``{name regex: (rows, …)}`` for fused weights, e.g. ``{"c_attn": (768, 768, 768)}``.
        num_heads: orthogonalise each attention head separately inside q, k, v blocks.
        overrides: ``{name regex: {"norm": …, "radius": …, "lr": …}}`` applied last, in order.
        msign: keyword arguments of msign for the spectral norms (method, steps, compute_dtype).
        print_table: print the assignment (:func:`describe`).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    if embedding_norm not in ("sign", "col_norm"):
        raise ValueError(f"embedding_norm must be 'sign' or 'col_norm', got {embedding_norm!r}")
    if num_heads is not None and (isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1):
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    unknown = set(radii or {}) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)} in radii; valid roles: {', '.join(ROLES)}")
    if scheme == "auto":
        scheme = "text" if any(isinstance(m, nn.Embedding) for m in model.modules()) else "image"
    msign = dict(msign or {})
    radii = {**DEFAULT_RADII, **(radii or {})}
    roles, blocks = _assign_roles(model, head, split_sizes or {}, num_heads)
    norms = _role_norms(scheme, embedding_norm, msign)
    rows = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = roles[name]
        norm = norms[role](p) if callable(norms[role]) else norms[role]
        if name in blocks:
            norm = Blocked(Spectral(**msign), blocks[name])
        row = {"role": role, "norm": norm, "radius": radii[role]}
        for pattern, values in (overrides or {}).items():
            if re.search(pattern, name):
                row.update(values)
        rows.append((name, p, row))
    groups: list[dict] = []
    for name, p, row in rows:
        for group in groups:
            if all(_same(group.get(k), v) for k, v in row.items()) and set(group) - {"params"} == set(row):
                group["params"].append((name, p))
                break
        else:
            groups.append({"params": [(name, p)], **row})
    if print_table:
        print(describe(groups))
    return groups


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _role_norms(scheme: str, embedding_norm: str, msign: dict) -> dict:
    embedding = ColNorm(transpose=True) if embedding_norm == "col_norm" else Sign()
    return {
        "embedding": embedding,
        "hidden": Spectral(**msign),
        "conv": lambda p: SpectralConv(kernel_dims=min(p.ndim - 2, 3), **msign),
        "head": Sign(fan_in_scaled=True) if scheme == "text" else Spectral(**msign),
        "vector": BiasRMS(),
    }


def _assign_roles(model: nn.Module, head: str | None, split_sizes: dict, num_heads: int | None):
    """Role of every parameter name, and the block sizes of the fused/per-head ones."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if head is None:
        head_modules = set(linears[-1:])
    else:
        head_modules = {name for name in linears if re.search(head, name)}
        if not head_modules:
            raise ValueError(f"head={head!r} matches no nn.Linear; Linear modules: {linears}")
    roles: dict[str, str] = {}
    blocks: dict[str, tuple[int, ...]] = {}
    embeddings = set()
    for mod_name, module in model.named_modules():
        for local, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{local}" if mod_name else local
            if isinstance(module, nn.Embedding):
                roles[name] = "embedding"
                embeddings.add(id(p))
            elif isinstance(module, nn.Linear) and local == "weight":
                roles[name] = "head" if mod_name in head_modules else "hidden"
            elif isinstance(module, _CONV) and local == "weight":
                roles[name] = "conv"
            elif isinstance(module, _NORM_LAYERS) or p.ndim <= 1:
                roles[name] = "vector"
            else:
                roles[name] = "conv" if p.ndim >= 3 else "hidden"
            if isinstance(module, nn.MultiheadAttention) and local == "in_proj_weight":
                blocks[name] = (module.embed_dim,) * 3
    # a head tied to an embedding is an embedding (named_parameters lists the tensor once)
    for name, p in model.named_parameters():
        if id(p) in embeddings:
            roles[name] = "embedding"
    for name, role in roles.items():
        for pattern, sizes in split_sizes.items():
            if role == "hidden" and re.search(pattern, name):
                blocks[name] = tuple(sizes)
    if num_heads:
        for name, sizes in blocks.items():
            if any(s % num_heads for s in sizes):
                raise ValueError(f"num_heads={num_heads} does not divide the blocks {sizes} of {name}")
            blocks[name] = tuple(s // num_heads for s in sizes for _ in range(num_heads))
    return roles, blocks


def describe(groups: list[dict]) -> str:
    """A table of the assignment: parameter, shape, role, norm, radius (and any other group keys)."""
    lines = [f"{'parameter':<40} {'shape':<18} {'role':<10} {'norm':<34} radius"]
    for group in groups:
        norm = group.get("norm")
        label = _norm_label(norm)
        for member in group["params"]:
            name, p = member if isinstance(member, tuple) else ("?", member)
            lines.append(f"{name:<40} {str(tuple(p.shape)):<18} {group.get('role', '-'):<10} {label:<34} "
                         f"{group.get('radius', '-')}")
    return "\n".join(lines)


def _norm_label(norm) -> str:
    if isinstance(norm, Blocked):
        sizes = norm.split_sizes
        return f"Blocked({_norm_label(norm.inner)}, {len(sizes) if isinstance(sizes, tuple) else sizes} blocks)"
    if isinstance(norm, Norm):
        extra = {k: v for k, v in vars(norm).items() if k not in ("method", "steps", "compute_dtype")}
        return type(norm).__name__ + (f"({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")
    return str(norm)
