"""Automatic parameter roles: which norm and radius each tensor of a model gets.

The layout of each tensor (which axes are d_out, d_in and batch; fused blocks; the output layer) comes from
:func:`specopt.layouts.classify`, the one rule every preset uses. The role then picks the norm:

| role | what | text scheme norm | image scheme norm |
|---|---|---|---|
| ``embedding`` | ``nn.Embedding`` weights (tied head included) | Sign (ℓ∞) — or ColNorm(transpose) | Sign |
| ``token`` | position embeddings, class/register/mask tokens | Sign (ℓ∞) | Sign |
| ``hidden`` | ``nn.Linear``/``Conv1D`` weights but the head; fused q/k/v, gate/up as blocks | Spectral | Spectral |
| ``expert`` | MoE expert stacks ``(E, ·, ·)``: each expert its own matrix | Stacked(Spectral) | Stacked(Spectral) |
| ``conv`` | conv kernels (grouped: one block per group) | SpectralConv | SpectralConv |
| ``head`` | the output layer (found by what it is, ``head=`` to name it) | Sign(fan_in_scaled) | Spectral |
| ``vector`` | biases, norm-layer gains, other 1-D params | BiasRMS | BiasRMS |

This is Sign → Spectral → Sign for text models (Pethick et al. 2025, Scion) and Spectral(conv) for images.
Every norm acts on the matrix the module computes with (transformers' ``Conv1D`` weights are read transposed,
expert stacks per expert, see :mod:`specopt.views`). Default radii (:data:`DEFAULT_RADII`): embedding 10, hidden 30,
head 100 — the ratios of the Scion paper's small-model values (1 : 3 : 10), scaled so that the hidden radius is
the one Scion's sweep picked over the char-GPT tiny and small and the MNIST CNN (EXPERIMENTS.md, "Defaults
sweep"). Every preset's default lr is stated for these radii (for UScion, ClippedScion and ALMOND only γρ
matters), so ``specopt.Scion(param_groups(model))`` is the `specopt` command's Scion. Override per role with
``radii=`` and per parameter name (regex) with ``overrides=``.
"""

from __future__ import annotations

import re

from torch import nn

from specopt._checks import subclasses
from specopt.heads import _wrapped, is_embedding
from specopt.layouts import Layout, classify
from specopt.norms import BiasRMS, Blocked, ColNorm, Norm, Sign, Spectral, SpectralConv, get_norm
from specopt.views import LAYOUT_VIEWS, Flattened, Stacked, Transposed, Unflattened

ROLES = ("embedding", "token", "hidden", "expert", "conv", "head", "vector")
SCHEMES = ("auto", "text", "image")
OVERRIDE_KEYS = ("norm", "radius", "lr", "weight_decay", "weight_decay_mode", "momentum", "nesterov", "constraint",
                 "betas", "eps", "L0", "L1", "schedule", "warmup_radius", "probe_every")
"""The group keys an ``overrides`` entry may set: those specopt's optimizers read from a param group (a misspelt
key would otherwise sit in the group unread)."""
def readable_keys() -> set[str]:
    """The group keys an ``overrides`` entry may set: :data:`OVERRIDE_KEYS` and the ``group_defaults`` of every
    :class:`~specopt.estimators.Estimator` and :class:`~specopt.steps.StepRule` class defined so far — a user's own
    parts included, once their module is imported."""
    from specopt.estimators import Estimator
    from specopt.steps import StepRule

    return set(OVERRIDE_KEYS).union(*(getattr(cls, "group_defaults", None) or {}
                                      for cls in subclasses(Estimator, StepRule)))


DEFAULT_RADII = {"embedding": 10.0, "token": 10.0, "hidden": 30.0, "expert": 30.0, "conv": 30.0, "head": 100.0,
                 "vector": 10.0}
"""The radius of each role. One table for every preset: the classes' ``radius`` default (the radius of a group
that states none) is its ``"hidden"`` entry, and the `specopt` command's ``--radius`` scales every role with it."""


def param_groups(model: nn.Module, *, scheme: str = "auto", radii: dict | None = None, head=None,
                 embedding_norm: str = "sign", split_sizes: dict[str, tuple[int, ...]] | None = None,
                 num_heads: int | bool | None = None, layouts: dict | None = None,
                 overrides: dict[str, dict] | None = None, msign: dict | None = None,
                 print_table: bool = False) -> list[dict]:
    r"""Param groups for any specopt optimizer: ``[{"params": [(name, p), …], "role", "norm", "radius"}, …]``.

    Args:
        model: the module whose trainable parameters are assigned (frozen ones are left out, tied ones once); a model
            wrapped by ``torch.compile``, DDP or ``nn.DataParallel`` is read through the module it wraps, under its
            names (no ``_orig_mod.`` or ``module.`` prefix), so the same regexes serve it wrapped or not.
        scheme: "text", "image", or "auto" (text when the model has an ``nn.Embedding``).
        radii: per-role radius overrides, e.g. ``{"hidden": 50.0}`` (the others keep :data:`DEFAULT_RADII`).
        head: regex of the output layer's module name, ``False`` for no head; default: found by what it is
            (:mod:`specopt.heads`).
        embedding_norm: "sign" (ℓ∞) or "col_norm" (ColNorm with transpose, each token vector RMS-normalised).
        split_sizes: ``{name regex: (rows, …)}``: d_out blocks of fused weights the rules do not know.
        num_heads: orthogonalise each attention head separately: an int (query heads) or ``True`` (the head
            counts the attention modules state); fused and separate q/k/v projections.
        layouts: declare what the rules cannot know, ``{name regex or module type: kind}`` with a kind of
            :data:`specopt.layouts.KINDS`, e.g. ``{MyExperts: "experts"}`` or ``{r"\.w_in$": "linear_transposed"}``.
        overrides: ``{name regex: {"norm": …, "radius": …, "lr": …}}`` applied last, in order. A ``norm`` is that of
            one ``(d_out, d_in)`` matrix (kernel, table): it is put on the tensor's layout as the automatic norm is
            (transposed for a Conv1D weight, per expert, per fused block).
        msign: keyword arguments of msign for the spectral norms (method, steps, compute_dtype, gram).
        print_table: print the assignment (:func:`describe`).

    Raises:
        ValueError: a ≥3-D tensor no rule knows (naming it and how to declare it), an option that applies to no
            tensor, blocks that do not add up to the dimension they split.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups reads the model (an nn.Module), got {type(model).__name__}: "
                        "param_groups(model), not param_groups(model.parameters())")
    # torch.compile, DDP, DataParallel: the wrapped model's names, so that the regexes of head=, overrides=, … match
    while (wrapped := _wrapped(model)) is not None:
        model = wrapped[1]
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    if embedding_norm not in ("sign", "col_norm"):
        raise ValueError(f"embedding_norm must be 'sign' or 'col_norm', got {embedding_norm!r}")
    unknown = set(radii or {}) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)} in radii; valid roles: {', '.join(ROLES)}")
    if scheme == "auto":
        scheme = "text" if any(is_embedding(m) for m in model.modules()) else "image"
    msign = dict(msign or {})
    radii = {**DEFAULT_RADII, **(radii or {})}
    assigned, _ = classify(model, layouts=layouts, head=head, split_sizes=split_sizes, num_heads=num_heads)
    for pattern, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise ValueError(f"overrides[{pattern!r}] must be a dict of group keys, got {values!r}")
        readable = readable_keys()
        unknown = [k for k in values if k not in readable]
        if unknown:
            raise ValueError(f"overrides[{pattern!r}] sets {unknown}, which no specopt optimizer or part defined so "
                             f"far reads from a param group (a part of your own declares its keys in group_defaults); "
                             f"valid keys: {', '.join(sorted(readable))}")
    unused = [pattern for pattern in (overrides or {}) if not any(re.search(pattern, n) for n in assigned)]
    if unused:
        raise ValueError(f"overrides pattern(s) {unused} match no trainable parameter")
    rows = []
    for name, (layout, p) in assigned.items():
        row = {"role": layout.role, "norm": layout.norm(_base_norm(layout, scheme, embedding_norm, msign)),
               "radius": radii[layout.role]}
        for pattern, values in (overrides or {}).items():
            if re.search(pattern, name):
                row.update(values)
                if "norm" in values:
                    row["norm"] = _on_layout(values["norm"], layout, name, pattern)
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


def _on_layout(norm, layout: Layout, name: str, pattern: str):
    """An override's norm, a norm of one ``(d_out, d_in)`` matrix (kernel, table) as every norm is written, put on
    the tensor's layout as the automatic norm is (transposed for a Conv1D weight, per expert for a stack, per block
    for a fused projection): on the stored tensor it would act on the transpose, or across experts. A norm that
    already holds a view of its own on such a tensor is refused: the view would be applied twice."""
    if isinstance(norm, str) and norm not in ("auto", "adamw"):
        norm = get_norm(norm)
    if not isinstance(norm, Norm):
        return norm
    on_layout = layout.norm(norm)
    if on_layout is not norm and isinstance(norm, (Blocked, *LAYOUT_VIEWS)):
        raise ValueError(f"overrides[{pattern!r}] gives {name} the norm {norm!r}, which holds a view of its own; "
                         f"param_groups puts an override's norm on the tensor's layout itself ({on_layout!r} here), "
                         "as it does the automatic one: give the norm of one (d_out, d_in) matrix (split_sizes= and "
                         "layouts= change the blocks and the layout)")
    return on_layout


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _base_norm(layout: Layout, scheme: str, embedding_norm: str, msign: dict) -> Norm:
    """The norm of one matrix (kernel, table, entry set) of the role; the layout wraps it."""
    role = layout.role
    if role == "embedding":
        return ColNorm(transpose=True) if embedding_norm == "col_norm" else Sign()
    if role == "token":
        return Sign()
    if role == "vector":
        return BiasRMS()
    if role == "conv" or (role == "head" and layout.kernel_dims):  # a conv classifier (timm's DLA, DPN, ResNetV2)
        return SpectralConv(kernel_dims=min(layout.kernel_dims, 3), **msign)
    if role == "head" and scheme == "text":
        return Sign(fan_in_scaled=True)
    return Spectral(**msign)


def describe(groups: list[dict]) -> str:
    """A table of the assignment: parameter, shape, role, axes (which are d_out, d_in, experts E and kernel k),
    norm, radius. Columns fit the longest entry."""
    if isinstance(groups, nn.Module):
        raise TypeError("describe takes param groups, not a model: describe(specopt.param_groups(model)) or "
                        "describe(optimizer.param_groups)")
    rows = [("parameter", "shape", "role", "axes", "norm", "radius")]
    for group in groups:
        norm = group.get("norm")
        names = group.get("param_names") or []  # an optimizer's named groups (torch ≥ 2.6)
        for i, member in enumerate(group["params"]):
            name, p = member if isinstance(member, tuple) else (names[i] if i < len(names) else "?", member)
            rows.append((name, str(tuple(p.shape)), str(group.get("role", "-")), axes_of(norm, tuple(p.shape)),
                         norm_label(norm), str(group.get("radius", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
                     for r in rows)


def axes_of(norm, shape: tuple) -> str:
    """Which axes of a tensor of ``shape`` the norm reads as experts (E), d_out, d_in and kernel (k)."""
    if not isinstance(norm, Norm):
        return "-"
    parts, start, transposed, blocks, view, blocks_parity, merged = [], 0, False, "", tuple(shape), None, 0
    kernel_in_one_axis = None
    while True:
        if isinstance(norm, Stacked):
            parts += [f"E={i}" for i in range(start, start + norm.dims)]
            start += norm.dims
        elif isinstance(norm, Transposed):
            transposed = not transposed
            view = norm.item_shape(view)[1]
        elif isinstance(norm, Flattened):  # the matrix's second axis spans the last ``merged + 1`` axes
            merged = len(norm.trailing) - 1
            view = norm.item_shape(view)[1]
        elif isinstance(norm, Unflattened):  # the last stored axis holds the whole (d_out, d_in, *k) item
            kernel_in_one_axis = norm.shape
            view = norm.item_shape(view)[1]
        elif isinstance(norm, Blocked):
            n = len(norm.sizes(view[len(view) - norm.item_ndim]))
            blocks, blocks_parity = f" {n}{' interleaved' if norm.interleaved else ''} blocks", transposed
        else:
            break
        norm = norm.inner
    rank = 2 if isinstance(norm, Sign) and norm.fan_in_scaled else norm.item_ndim
    if isinstance(norm, ColNorm) and norm.transpose:
        return "in=0 out=1 (table)"
    if rank is None or rank < 2:
        return "entries"
    first = len(shape) - rank - merged
    second = ",".join(str(i) for i in range(first + 1, first + 2 + merged))
    out, inp = (second, first) if transposed else (first, second)
    kernel = f" k={','.join(str(i) for i in range(first + 2, len(shape)))}" if rank > 2 else ""
    if blocks and blocks_parity != transposed:  # blocks taken under a transpose undone inside them: of d_in
        blocks += " of in"
    if kernel_in_one_axis:
        return " ".join(parts + [f"out×in×k={len(shape) - 1} as {'×'.join(map(str, kernel_in_one_axis))}"]) + blocks
    return " ".join(parts + [f"out={out}", f"in={inp}"]) + kernel + blocks


_MSIGN_DEFAULTS = {"method": "polar_express", "steps": None, "compute_dtype": None, "gram": None}


def norm_label(norm) -> str:
    """A short label: the norm's class and its non-default settings, wrappers outside in."""
    if not isinstance(norm, Norm):
        return str(norm)
    if isinstance(norm, (Blocked, *LAYOUT_VIEWS)):
        return f"{type(norm).__name__}({norm_label(norm.inner)})"
    extra = {k: v for k, v in vars(norm).items() if _MSIGN_DEFAULTS.get(k, object()) != v and v is not False}
    return type(norm).__name__ + (f"({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")
