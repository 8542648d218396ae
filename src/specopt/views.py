"""Norms on a view of the stored tensor: the geometry of layouts other than ``nn.Linear``'s ``(d_out, d_in)``.

A norm of the catalogue reads a matrix as ``(d_out, d_in)``. Four wrappers let it act on tensors stored otherwise,
so that the geometry follows the map the module computes, not the order of the axes in memory:

* :class:`Transposed` — the tensor is stored ``(d_in, d_out)`` (transformers' ``Conv1D`` in the GPT-2 family,
  expert stacks stored ``(E, d_in, d_out)``): ``lmo(G) = inner.lmo(Gᵀ)ᵀ``, ``‖W‖ = ‖Wᵀ‖_inner``.
* :class:`Flattened` — the map's input or output is stored over several axes (XLNet's ``q`` of shape ``(d_model,
  heads, d_head)``, the per-head projections of an einsum): the trailing axes are read as one, ``(a, b, c) → (a,
  b·c)``, the matrix the einsum multiplies by.
* :class:`Stacked` — the leading ``dims`` axes index independent maps (the E experts of an MoE layer): each map has
  its own ball, so ``‖W‖ = max_e ‖W_e‖`` with dual ``‖G‖_* = Σ_e ‖G_e‖_*`` and ``lmo(G)_e = lmo(G_e)``, the
  same product-of-balls geometry as :class:`~specopt.norms.Blocked` (one msign call for all experts).

* :class:`Unflattened` — one stored axis holds a whole item (timm's ``CondConv2d`` stores each expert's ``(d_out,
  c_in, kh, kw)`` kernel as one row of its ``(E, d_out·c_in·kh·kw)`` weight): the axis is read as that shape,
  ``(a, ∏ shape) → (a, *shape)``, the kernel the convolution applies.

They wrap any norm, :class:`~specopt.norms.Blocked` included: ``Stacked(Transposed(Blocked(Spectral(), 2)))`` is
the geometry of a fused gate/up expert stack stored ``(E, d_in, 2·d_ffn)``.
"""

from __future__ import annotations

import copy
import math

import torch

from specopt.norms import _NAMES, CATALOGUE, Norm, lmo_each, per_item


class _View(Norm):
    """A norm applied to a rearranged view of the tensor; ``_to_view``/``_from_view`` are inverse maps."""

    batched = True

    def __init__(self, inner: Norm):
        if not isinstance(inner, Norm):
            raise ValueError(f"{type(self).__name__} needs a specopt Norm inside, got {inner!r}")
        self.inner = inner

    def with_inner(self, inner: Norm) -> _View:
        """The same view (its settings) around another norm: how a walker rebuilds a layout with a new leaf."""
        view = copy.copy(self)
        _View.__init__(view, inner)
        return view

    def _to_view(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    _from_view = _to_view

    def _view_shape(self, shape) -> tuple:
        """The shape of one item as the inner norm sees it."""
        raise NotImplementedError

    def _inner_batch(self, batch_dims: int | None) -> int | None:
        return batch_dims

    def item_shape(self, shape) -> tuple[Norm, tuple]:
        """``(inner norm, shape of one inner item)`` for a stored tensor of ``shape`` (Muon's scale reads it)."""
        return self.inner, self._view_shape(tuple(shape))

    def lmo(self, g, batch_dims=None):
        return self._from_view(lmo_each(self.inner, self._to_view(g), self._inner_batch(batch_dims)))

    def lmo_factored(self, g, batch_dims=None, *, private=False):
        S, factor = self.inner.lmo_factored(self._to_view(g), self._inner_batch(batch_dims), private=private)
        return self._from_view(S), factor

    def lmo_factor(self, shape):
        return self.inner.lmo_factor(self._view_shape(tuple(shape)))

    def work_dtype(self, like):
        return self.inner.work_dtype(like)

    def dual(self, g, batch_dims=None):
        return self._reduce(per_item(self.inner, "dual", self._to_view(g), batch_dims=self._inner_batch(batch_dims)),
                            torch.sum)

    def norm(self, x, batch_dims=None):
        return self._reduce(per_item(self.inner, "norm", self._to_view(x), batch_dims=self._inner_batch(batch_dims)),
                            torch.amax)

    def _reduce(self, values: torch.Tensor, how) -> torch.Tensor:
        return values

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        shape = tuple(shape)
        view = self._full_view_shape(shape)
        return self._from_view(self.inner.init(view, radius, generator=generator, dtype=dtype, device=device))

    def _full_view_shape(self, shape) -> tuple:
        return self._view_shape(shape)

    def project(self, x, radius=1.0, batch_dims=None):
        return self._from_view(per_item(self.inner, "project", self._to_view(x), radius,
                                        batch_dims=self._inner_batch(batch_dims)))

    @property
    def item_ndim(self):  # type: ignore[override]
        return self.inner.item_ndim


class Transposed(_View):
    """``inner`` on the transpose of the item's first two axes: for weights stored ``(d_in, d_out, …)``.

    transformers' ``Conv1D`` computes ``y = x·W + b`` with ``W`` of shape ``(in_features, out_features)``; its
    RMS→RMS geometry is ``Spectral`` of ``Wᵀ``: ``lmo(G) = −√(d_out/d_in)·msign(Gᵀ)ᵀ``. Reading ``W`` as
    ``(d_out, d_in)`` instead inverts the scale (the step of a 768×3072 ``c_fc`` would be 1/4 of the intended one).
    Also ``nn.ConvTranspose*d`` kernels, stored ``(c_in, d_out, *k)``: ``Transposed(SpectralConv())``.
    """

    def _axes(self, ndim: int) -> tuple[int, int]:
        rank = self.inner.item_ndim or 2
        if ndim < rank:
            raise ValueError(f"Transposed({type(self.inner).__name__}) needs tensors with at least {rank} dims")
        return ndim - rank, ndim - rank + 1

    def _to_view(self, x):
        return x.transpose(*self._axes(x.ndim))

    _from_view = _to_view

    def _view_shape(self, shape):
        a, b = self._axes(len(shape))
        shape = list(shape)
        shape[a], shape[b] = shape[b], shape[a]
        return tuple(shape)


class Stacked(_View):
    """``inner`` on each of the maps indexed by the leading ``dims`` axes (an MoE layer's experts).

    ``‖W‖ = max_e ‖W_e‖_inner``, ``‖G‖_* = Σ_e ‖G_e‖_inner*``, ``lmo(G)_e = inner.lmo(G_e)`` — each expert is its
    own linear map with its own ball, as in the per-expert Muon of MoE training recipes (e.g. Moonlight, Liu et al.
    2025), and all experts of a tensor go through one batched msign call.
    """

    def __init__(self, inner: Norm, dims: int = 1):
        super().__init__(inner)
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise ValueError(f"Stacked dims must be a positive int, got {dims!r}")
        self.dims = dims

    def _to_view(self, x):
        if x.ndim <= self.dims:
            raise ValueError(f"Stacked(dims={self.dims}) needs tensors with more than {self.dims} dims, got shape "
                             f"{tuple(x.shape)}")
        return x

    _from_view = _to_view

    def _inner_batch(self, batch_dims):
        if batch_dims is None and self.inner.item_ndim is not None:  # every axis before the inner items is a batch
            return None  # axis: the stacked ones and any a caller put in front (a Blocked norm's axis of blocks)
        return (batch_dims or 0) + self.dims

    def _view_shape(self, shape):
        return shape[self.dims:]

    def _full_view_shape(self, shape):
        return shape

    def shard_local(self, shape, rows, rank):
        """Itself: FSDP2's ``Shard(0)`` cuts the first stacked axis, so every shard holds whole maps, whose lmo's are
        their own (each rank orthogonalises its experts, with no gather)."""
        return self

    def _reduce(self, values, how):
        return how(values, dim=tuple(range(values.ndim - self.dims, values.ndim)))

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        shape = tuple(shape)
        items = [self.inner.init(shape[self.dims:], radius, generator=generator, dtype=dtype, device=device)
                 for _ in range(math.prod(shape[:self.dims]))]
        return torch.stack(items).reshape(shape)

    @property
    def item_ndim(self):  # type: ignore[override]
        return None if self.inner.item_ndim is None else self.inner.item_ndim + self.dims


class Flattened(_View):
    """``inner`` on the item with its trailing axes ``trailing`` merged into one: ``(a, *trailing) → (a, ∏ trailing)``.

    An einsum such as XLNet's ``q_head = einsum("ibh,hnd->ibnd", x, q)``, with ``q`` of shape ``(d_model, n_head,
    d_head)``, is the linear map ``x ↦ x·Q`` with ``Q = q.reshape(d_model, n_head·d_head)`` stored ``(d_in, d_out)``:
    its geometry is ``Flattened(Transposed(Spectral()), (n_head, d_head))``. The output projection ``einsum("ibnd,
    hnd->ibh", v, o)`` is ``Flattened(Spectral(), (n_head, d_head))``: ``(d_out, d_in)`` with d_in over two axes.
    """

    def __init__(self, inner: Norm, trailing):
        super().__init__(inner)
        trailing = tuple(trailing) if isinstance(trailing, (list, tuple)) else trailing
        if not (isinstance(trailing, tuple) and len(trailing) >= 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in trailing)):
            raise ValueError(f"Flattened needs the sizes of at least two trailing axes (positive ints), got "
                             f"{trailing!r}")
        self.trailing = trailing

    def _check(self, shape) -> None:
        if tuple(shape[len(shape) - len(self.trailing):]) != self.trailing:
            raise ValueError(f"Flattened(trailing={self.trailing}) got a tensor of shape {tuple(shape)}: its last "
                             f"axes are not {self.trailing}")

    def _to_view(self, x):
        self._check(x.shape)
        return x.flatten(x.ndim - len(self.trailing))

    def _from_view(self, x):
        return x.unflatten(-1, self.trailing)

    def _view_shape(self, shape):
        self._check(shape)
        return tuple(shape[:len(shape) - len(self.trailing)]) + (math.prod(self.trailing),)

    @property
    def item_ndim(self):  # type: ignore[override]
        return None if self.inner.item_ndim is None else self.inner.item_ndim + len(self.trailing) - 1


class Unflattened(_View):
    """``inner`` on the item's last axis read as ``shape``: ``(…, ∏ shape) → (…, *shape)``.

    timm's ``CondConv2d`` (Yang et al. 2019, *CondConv: Conditionally Parameterized Convolutions*) keeps E expert
    kernels as the rows of an ``(E, d_out·c_in/groups·kh·kw)`` tensor and convolves with ``Σ_e r_e·W_e`` reshaped to
    ``(d_out, c_in/groups, kh, kw)``: each row is a conv kernel. Its geometry is ``Stacked(Unflattened(
    SpectralConv(), (d_out, c_in/groups, kh, kw)))`` (blocked per group where ``groups > 1``); read as the stored
    ``(E, ·)`` matrix, the experts would be mixed into one map and the kernel's axes lost.
    """

    def __init__(self, inner: Norm, shape):
        super().__init__(inner)
        shape = tuple(shape) if isinstance(shape, (list, tuple)) else shape
        if not (isinstance(shape, tuple) and len(shape) >= 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise ValueError(f"Unflattened needs the item's shape (at least two positive ints), got {shape!r}")
        self.shape = shape

    def _check(self, shape) -> None:
        if not shape or shape[-1] != math.prod(self.shape):
            raise ValueError(f"Unflattened(shape={self.shape}) got a tensor of shape {tuple(shape)}: its last axis "
                             f"is not {math.prod(self.shape)} = ∏ {self.shape} long")

    def _to_view(self, x):
        self._check(x.shape)
        return x.unflatten(-1, self.shape)

    def _from_view(self, x):
        return x.flatten(x.ndim - len(self.shape))

    def _view_shape(self, shape):
        self._check(shape)
        return tuple(shape[:-1]) + self.shape

    @property
    def item_ndim(self):  # type: ignore[override]
        return None if self.inner.item_ndim is None else self.inner.item_ndim - len(self.shape) + 1


LAYOUT_VIEWS = (Transposed, Stacked, Flattened, Unflattened)
"""The views that only rearrange the stored tensor (not :class:`MuonScaled`, which rescales): under them is the
geometry of the module's maps. Walkers that look for it strip these (and :class:`~specopt.norms.Blocked`, the
blocks of a map) and rebuild through them with ``with_inner``."""


MUON_SCALES = ("original", "match_rms_adamw", "spectral")


def muon_scale(name: str, d_out: int, d_in: int) -> float:
    """Muon's step length per matrix: ``max(1, d_out/d_in)^½`` (original: Keller Jordan; torch.optim.Muon),
    ``0.2·√max(d_out, d_in)`` (match_rms_adamw: Moonlight, Liu et al. 2025) or ``√(d_out/d_in)`` (spectral)."""
    if name not in MUON_SCALES:
        raise ValueError(f"unknown Muon scale {name!r}; valid scales: {', '.join(MUON_SCALES)}")
    return {"original": math.sqrt(max(1.0, d_out / d_in)), "match_rms_adamw": 0.2 * math.sqrt(max(d_out, d_in)),
            "spectral": math.sqrt(d_out / d_in)}[name]


class MuonScaled(_View):
    """A spectral ``inner`` norm rescaled per item so that ``lmo(g) = −scale(d_out, d_in)·msign(g)`` with a Muon
    scale (:func:`muon_scale`): the unit ball is ``{‖W‖_op ≤ scale}``. Muon uses it inside blocks of unequal shapes
    (the q, k, v of grouped-query attention), where one radius per tensor cannot give every block its own scale.
    """

    def __init__(self, inner: Norm, scale: str):
        super().__init__(inner)
        if not hasattr(inner, "_scale") or inner.item_ndim is None:
            raise ValueError(f"MuonScaled needs a spectral norm inside, got {inner!r}")
        muon_scale(scale, 1, 1)
        self.scale = scale

    def with_inner(self, inner: Norm) -> MuonScaled:
        return MuonScaled(inner, self.scale)

    def _to_view(self, x):
        return x

    _from_view = _to_view

    def _view_shape(self, shape):
        return shape

    def _c(self, shape) -> float:
        item = tuple(shape[len(shape) - self.inner.item_ndim:])
        return muon_scale(self.scale, item[0], math.prod(item[1:])) / self.inner._scale(item)

    def lmo(self, g, batch_dims=None):
        return self.inner.lmo(g, batch_dims) * self._c(g.shape)

    def lmo_factored(self, g, batch_dims=None, *, private=False):
        S, factor = self.inner.lmo_factored(g, batch_dims, private=private)
        return S, factor * self._c(g.shape)

    def lmo_factor(self, shape):
        return self.inner.lmo_factor(shape) * self._c(shape)

    def dual(self, g, batch_dims=None):
        return self.inner.dual(g, batch_dims) * self._c(g.shape)

    def norm(self, x, batch_dims=None):
        return self.inner.norm(x, batch_dims) / self._c(x.shape)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        return self.inner.init(shape, radius * self._c(shape), generator=generator, dtype=dtype, device=device)

    def project(self, x, radius=1.0, batch_dims=None):
        return self.inner.project(x, radius * self._c(x.shape), batch_dims)


def unwrap(norm: Norm, shape) -> tuple[Norm, tuple]:
    """Strip the view wrappers: the innermost norm and the shape of one of its items."""
    shape = tuple(shape)
    while isinstance(norm, _View):
        norm, shape = norm.item_shape(shape)
    return norm, shape


def as_maps(norm: Norm, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` (a tensor in the stored layout of a parameter whose norm is ``norm``) seen as the maps the module
    computes with, ``(*maps, d_out, d_in, …)``, and the number of map axes: a ``Conv1D`` weight stored ``(d_in,
    d_out)`` transposed, an expert stack's leading axes as maps. What a rule that reads rows or columns of the update
    (NorMuon's per-row moment) needs; :func:`from_maps` puts such a tensor back. A view of ``x``, no copy."""
    maps = 0
    while isinstance(norm, _View):
        x = norm._to_view(x)
        maps += norm.dims if isinstance(norm, Stacked) else 0
        norm = norm.inner
    return x, maps


def from_maps(norm: Norm, x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`as_maps`: ``x``, shaped as the maps, back in the stored layout."""
    views = []
    while isinstance(norm, _View):
        views.append(norm)
        norm = norm.inner
    for view in reversed(views):
        x = view._from_view(x)
    return x


CATALOGUE.update({"transposed": Transposed, "stacked": Stacked, "flattened": Flattened, "unflattened": Unflattened,
                  "muon_scaled": MuonScaled})
_NAMES.update({Transposed: "transposed", Stacked: "stacked", Flattened: "flattened", Unflattened: "unflattened",
               MuonScaled: "muon_scaled"})
