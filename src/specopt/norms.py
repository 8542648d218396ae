"""The norm catalogue (Pethick et al. 2025; Bernstein & Newhouse 2024, *Modular Duality in Deep Learning*): one
object per geometry, owning its lmo, dual, norm, init, project.

For a norm ``‖·‖`` on one tensor, the linear minimisation oracle over the unit ball is
``lmo(g) = argmin_{‖s‖≤1} ⟨g, s⟩``, so that ``⟨g, lmo(g)⟩ = −‖g‖_*`` (the dual norm) and ``‖lmo(g)‖ = 1``
for ``g ≠ 0`` (exactly with an exact lmo; the spectral norms' polynomial msign lands within its band,
:func:`~specopt.linalg.msign_band`: ``‖lmo(g)‖`` up to 1.141 with Polar Express); ``lmo(0) = 0``.
Shapes ``d_out × d_in`` follow ``nn.Linear.weight``.

Batches. Every method takes a batch of same-shape tensors stacked along leading dims. Matrix norms
(``Spectral``, ``ColNorm``, ``RowNorm``, ``Sign(fan_in_scaled=True)``) and ``SpectralConv`` know the rank of
one item, so every leading dim beyond it is a batch dim. The entrywise norms (``Euclidean``, ``Sign``,
``BiasRMS``) treat the whole tensor as one item unless ``batch_dims`` says how many leading dims index the
batch. ``norm`` and ``dual`` return one value per item (shape = the batch shape).

The spectral norms compute the polar factor with :func:`specopt.msign`; their ``dual`` is
``−⟨g, lmo(g)⟩`` with the same method, so it is exact with ``method="svd"`` and lies within the method's
band (:func:`specopt.linalg.msign_band`) of the true scaled nuclear norm otherwise.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod

import torch

from specopt._checks import check_positive, check_tensor, rebuild_user_class
from specopt.linalg import METHODS, _steps, check_compute_dtype, check_gram, msign, polar_factor, resolve_compute_dtype


def _safe_div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``x / d`` with ``0 / 0 = 0`` (so that lmo(0) = 0 and zero columns stay zero)."""
    return x / torch.where(d > 0, d, torch.ones_like(d))


def per_item(norm: Norm, method: str, x: torch.Tensor, *args, batch_dims: int | None = None,
             check=None) -> torch.Tensor:
    """``norm.<method>(x, *args)`` (``lmo``, ``dual``, ``norm``, ``project``) of every item of ``x`` (the items after
    ``batch_dims`` leading dims, or of ``item_ndim`` dims): one call where the norm is :attr:`~Norm.batched`, one
    call per item otherwise, the results stacked in the batch's shape. ``check(out, given)``, if given, sees each
    call's output and input and returns the output."""
    fn = getattr(norm, method)
    if check is None:  # not ``check or …``: dynamo 2.11 breaks the graph on the truth value of a function
        check = _unchecked
    lead = batch_dims if batch_dims is not None else x.ndim - (norm.item_ndim or x.ndim)
    if lead > 0 and not norm.batched:
        items = x.reshape((-1,) + tuple(x.shape[lead:])).unbind(0)
        outs = torch.stack([check(fn(item, *args), item) for item in items])
        return outs.reshape(tuple(x.shape[:lead]) + tuple(outs.shape[1:]))
    return check(fn(x, *args, batch_dims=batch_dims), x)


def _unchecked(out: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    return out


def lmo_each(norm: Norm, g: torch.Tensor, batch_dims: int | None = None) -> torch.Tensor:
    """``norm.lmo`` of every item of ``g`` (:func:`per_item`), each output checked to have its input's shape."""
    return per_item(norm, "lmo", g, batch_dims=batch_dims, check=lambda out, given: _same_shape(norm, out, given))


def _same_shape(norm: Norm, out: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``out``, an lmo's output for ``g``, if it has ``g``'s shape (broadcast into the weights, another shape would
    be a silently wrong update, or a reshape error from deep inside)."""
    if not isinstance(out, torch.Tensor) or out.shape != g.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ValueError(f"{type(norm).__name__}.lmo returned {got} for an input of shape {tuple(g.shape)}: an lmo "
                         "returns one tensor of its input's shape")
    return out


class Norm(ABC):
    """A norm on tensors of one role. Subclasses define the geometry; see the module docstring."""

    #: rank of one item (None: the entrywise norms, whose item is the whole tensor).
    item_ndim: int | None = None
    #: whether :meth:`lmo` computes a stack of items in one call (its ``batch_dims``, or the dims before an item of
    #: ``item_ndim``), as every specopt norm does. A norm that leaves it False is handed one item at a time by
    #: :meth:`lmo_factored`, which the optimizers call: its ``lmo`` may be written for a single tensor.
    batched: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.lmo_factored is not Norm.lmo_factored and cls.lmo_factor is Norm.lmo_factor:
            raise TypeError(f"{cls.__qualname__} overrides lmo_factored but not lmo_factor: a distributed step "
                            "computes the lmo on one rank and takes its factor from lmo_factor(shape) on the others, "
                            "so the two must agree; define lmo_factor(shape) to return the factor lmo_factored "
                            "returns (or override lmo only)")

    def _dims(self, x: torch.Tensor, batch_dims: int | None, what: str) -> tuple[int, ...]:
        """Validate ``x`` and return the dims one item spans (the reduction dims)."""
        check_tensor(x, f"{type(self).__name__}.{what} input")
        rank = self._item_rank(x)
        if batch_dims is not None:
            if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
                raise ValueError(f"batch_dims must be a non-negative int, got {batch_dims!r}")
            if rank is not None and x.ndim - batch_dims != rank:
                raise ValueError(f"{type(self).__name__} items have {rank} dims; a tensor of shape "
                                 f"{tuple(x.shape)} with batch_dims={batch_dims} does not fit")
            rank = x.ndim - batch_dims
        elif rank is None:
            rank = x.ndim
        if x.ndim < rank:
            raise ValueError(f"{type(self).__name__} needs tensors with at least {rank} dims, got shape "
                             f"{tuple(x.shape)}")
        return tuple(range(x.ndim - rank, x.ndim))

    def _item_rank(self, x: torch.Tensor) -> int | None:
        return self.item_ndim

    @abstractmethod
    def lmo(self, g: torch.Tensor, batch_dims: int | None = None) -> torch.Tensor:
        """``argmin_{‖s‖≤1} ⟨g, s⟩`` per item; same shape and dtype as ``g``."""

    def dual(self, g: torch.Tensor, batch_dims: int | None = None) -> torch.Tensor:
        """``‖g‖_* = sup_{‖s‖≤1} ⟨g, s⟩ = −⟨g, lmo(g)⟩`` per item: this default takes it from :meth:`lmo`
        (override it where a closed form is cheaper). The optimizers do not call it: a rule that needs ``‖d‖_*``
        gets ``−⟨d, lmo(d)⟩`` from the lmo the step ran (``rec.dual``)."""
        dims = self._dims(g, batch_dims, "dual")
        s = lmo_each(self, g, batch_dims if batch_dims is not None else g.ndim - len(dims))
        return -(g.float() * s.float()).sum(dim=dims)

    @abstractmethod
    def norm(self, x: torch.Tensor, batch_dims: int | None = None) -> torch.Tensor:
        """``‖x‖`` per item."""

    @abstractmethod
    def init(self, shape, radius: float = 1.0, *, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """A random point with ``norm = radius`` (orthogonal, scaled, for the spectral norms)."""

    def work_dtype(self, like: torch.Tensor) -> torch.dtype:
        """The dtype :meth:`lmo_factored` computes in for an input like ``like``."""
        return like.dtype

    def lmo_factored(self, g: torch.Tensor, batch_dims: int | None = None, *,
                     private: bool = False) -> tuple[torch.Tensor, float]:
        """``lmo(g) = factor · tensor``, the tensor possibly in :meth:`work_dtype` (the spectral norms return
        msign(ĝ) in bf16 and −scale, so an optimizer adds it to the weights without a conversion pass).
        With ``private=True`` the caller hands over ``g`` and it may be overwritten. A norm that is not
        :attr:`batched` gets each item of a stack on its own."""
        return lmo_each(self, g, batch_dims), 1.0

    def lmo_factor(self, shape) -> float:
        """The ``factor`` :meth:`lmo_factored` returns for items of ``shape`` (it depends on the shape only)."""
        return 1.0

    def project(self, x: torch.Tensor, radius: float = 1.0, batch_dims: int | None = None) -> torch.Tensor:
        """Euclidean projection of each item onto the ball ``{‖x‖ ≤ radius}``."""
        raise NotImplementedError(f"{type(self).__name__} has no cheap projection")

    def shard_local(self, shape, rows: tuple[int, ...], rank: int) -> Norm | None:
        """A norm whose lmo of rank ``rank``'s rows of a tensor of ``shape``, row-sharded as ``rows`` (the rows of
        dim 0 per rank: FSDP2's ``Shard(0)``), is those rows of this norm's lmo of the whole tensor; None (the
        default) where the lmo needs the whole tensor. Where it is not None the optimizer computes the lmo of a
        sharded tensor on each rank's own rows, with no communication (:class:`~specopt.lmo.LmoRunner`)."""
        return None

    def config(self) -> dict:
        """A plain-data description (for state dicts and config files); :func:`norm_from_config` inverts it."""
        cls = type(self)
        out = {"name": _NAMES.get(cls) or f"{cls.__module__}:{cls.__qualname__}"}  # a user's norm: by import path
        for key, value in self._fields().items():
            if isinstance(value, Norm):
                value = value.config()
            elif isinstance(value, torch.dtype):
                value = str(value)  # "torch.float64": read back as the dtype by norm_from_config
            out[key] = value
        return out

    def _fields(self) -> dict:
        """The attributes that define the norm: its public ones, the constructor's keywords (a private attribute,
        ``self._cache``, is working data: not saved, compared or hashed)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._fields().items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), _frozen(self._fields())))


def _frozen(value):
    """``value`` hashable: lists and tuples as tuples, dicts as sorted item tuples (a user's norm may hold them)."""
    if isinstance(value, dict):
        return tuple(sorted(((k, _frozen(v)) for k, v in value.items()), key=lambda kv: repr(kv[0])))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, set):
        return frozenset(_frozen(v) for v in value)
    return value


def _gaussian(shape, generator, dtype, device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64, device=device).to(dtype)


class Euclidean(Norm):
    """ℓ2 norm: ``lmo(g) = −g/‖g‖₂``, ``‖g‖_* = ‖g‖₂``. SGD geometry."""

    batched = True

    def norm(self, x, batch_dims=None):
        return torch.linalg.vector_norm(x, dim=self._dims(x, batch_dims, "norm"))

    dual = norm

    def lmo(self, g, batch_dims=None):
        n = torch.linalg.vector_norm(g, dim=self._dims(g, batch_dims, "lmo"), keepdim=True)
        return -_safe_div(g, n)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        x = _gaussian(shape, generator, torch.float64, device)
        return (radius * x / torch.linalg.vector_norm(x)).to(dtype)

    def project(self, x, radius=1.0, batch_dims=None):
        radius = check_positive(radius, "radius")
        n = torch.linalg.vector_norm(x, dim=self._dims(x, batch_dims, "project"), keepdim=True)
        return x * torch.clamp(_safe_div(torch.full_like(n, radius), n), max=1.0)


class Sign(Norm):
    """ℓ∞ (max-entry) norm, optionally on the ball ``‖W‖_max ≤ 1/d_in`` (``fan_in_scaled``, d_in = last dim).

    ``lmo(g) = −sign(g)/s``, ``‖g‖_* = ‖g‖₁/s`` with ``s = d_in`` if scaled else 1; ``‖x‖ = s·max|x|``.
    Sign descent; one-hot embeddings; the output head of text models (scaled).
    """

    batched = True

    def __init__(self, fan_in_scaled: bool = False):
        self.fan_in_scaled = bool(fan_in_scaled)

    def _item_rank(self, x):
        return 2 if self.fan_in_scaled else None

    def _scale(self, x) -> float:
        return float(x.shape[-1]) if self.fan_in_scaled else 1.0

    def norm(self, x, batch_dims=None):
        return torch.amax(x.abs(), dim=self._dims(x, batch_dims, "norm")) * self._scale(x)

    def dual(self, g, batch_dims=None):
        return g.abs().sum(dim=self._dims(g, batch_dims, "dual")) / self._scale(g)

    def lmo(self, g, batch_dims=None):
        self._dims(g, batch_dims, "lmo")
        return -torch.sign(g) / self._scale(g)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        signs = torch.sign(_gaussian(shape, generator, torch.float64, device))
        scale = shape[-1] if self.fan_in_scaled else 1
        return (radius / scale * signs).to(dtype)

    def project(self, x, radius=1.0, batch_dims=None):
        radius = check_positive(radius, "radius")
        self._dims(x, batch_dims, "project")
        bound = radius / self._scale(x)
        return x.clamp(-bound, bound)


class BiasRMS(Norm):
    """RMS norm of a vector or gain: ``‖b‖ = ‖b‖₂/√n``; ``lmo(g) = −g/RMS(g)``, ``‖g‖_* = √n·‖g‖₂``."""

    batched = True

    def _numel(self, x, dims) -> int:
        return math.prod([x.shape[d] for d in dims])  # a list: dynamo cannot trace math.prod over a generator

    def norm(self, x, batch_dims=None):
        dims = self._dims(x, batch_dims, "norm")
        return torch.linalg.vector_norm(x, dim=dims) / math.sqrt(self._numel(x, dims))

    def dual(self, g, batch_dims=None):
        dims = self._dims(g, batch_dims, "dual")
        return torch.linalg.vector_norm(g, dim=dims) * math.sqrt(self._numel(g, dims))

    def lmo(self, g, batch_dims=None):
        dims = self._dims(g, batch_dims, "lmo")
        rms = torch.linalg.vector_norm(g, dim=dims, keepdim=True) / math.sqrt(self._numel(g, dims))
        return -_safe_div(g, rms)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        x = _gaussian(shape, generator, torch.float64, device)
        return (radius * x / (torch.linalg.vector_norm(x) / math.sqrt(x.numel()))).to(dtype)

    def project(self, x, radius=1.0, batch_dims=None):
        radius = check_positive(radius, "radius")
        rms = self.norm(x, batch_dims)
        shrink = torch.clamp(_safe_div(torch.full_like(rms, radius), rms), max=1.0)
        return x * shrink.reshape(shrink.shape + (1,) * (x.ndim - shrink.ndim))


class ColNorm(Norm):
    """Max column norm (1 → RMS): ``‖W‖ = max_j ‖W_{:,j}‖₂/√d_out``.

    ``lmo``: column j ↦ ``−√d_out·g_j/‖g_j‖₂``; ``‖g‖_* = √d_out·Σ_j ‖g_j‖₂``. With ``transpose=True`` the
    columns are the rows of the stored tensor, for ``nn.Embedding`` weights of shape (vocab, d): each token's
    vector gets RMS 1 (d_out = d).
    """

    item_ndim = 2
    batched = True

    def __init__(self, transpose: bool = False):
        self.transpose = bool(transpose)

    def _view(self, x):
        return x.mT if self.transpose else x

    def norm(self, x, batch_dims=None):
        self._dims(x, batch_dims, "norm")
        w = self._view(x)
        return torch.linalg.vector_norm(w, dim=-2).amax(dim=-1) / math.sqrt(w.shape[-2])

    def dual(self, g, batch_dims=None):
        self._dims(g, batch_dims, "dual")
        w = self._view(g)
        return torch.linalg.vector_norm(w, dim=-2).sum(dim=-1) * math.sqrt(w.shape[-2])

    def lmo(self, g, batch_dims=None):
        self._dims(g, batch_dims, "lmo")
        w = self._view(g)
        s = -math.sqrt(w.shape[-2]) * _safe_div(w, torch.linalg.vector_norm(w, dim=-2, keepdim=True))
        return self._view(s)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        w = self._view(_gaussian(shape, generator, torch.float64, device))
        w = radius * math.sqrt(w.shape[-2]) * w / torch.linalg.vector_norm(w, dim=-2, keepdim=True)
        return self._view(w).to(dtype)

    def project(self, x, radius=1.0, batch_dims=None):
        radius = check_positive(radius, "radius")
        self._dims(x, batch_dims, "project")
        w = self._view(x)
        n = torch.linalg.vector_norm(w, dim=-2, keepdim=True)
        bound = torch.full_like(n, radius * math.sqrt(w.shape[-2]))
        return self._view(w * torch.clamp(_safe_div(bound, n), max=1.0))


class RowNorm(Norm):
    """Max row norm: ``‖W‖ = √d_in·max_i ‖W_{i,:}‖₂``; ``lmo``: row i ↦ ``−g_i/(√d_in‖g_i‖₂)``,
    ``‖g‖_* = Σ_i ‖g_i‖₂/√d_in``. An alternative geometry for output heads."""

    item_ndim = 2
    batched = True

    def norm(self, x, batch_dims=None):
        self._dims(x, batch_dims, "norm")
        return torch.linalg.vector_norm(x, dim=-1).amax(dim=-1) * math.sqrt(x.shape[-1])

    def dual(self, g, batch_dims=None):
        self._dims(g, batch_dims, "dual")
        return torch.linalg.vector_norm(g, dim=-1).sum(dim=-1) / math.sqrt(g.shape[-1])

    def lmo(self, g, batch_dims=None):
        self._dims(g, batch_dims, "lmo")
        return -_safe_div(g, torch.linalg.vector_norm(g, dim=-1, keepdim=True)) / math.sqrt(g.shape[-1])

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        x = _gaussian(shape, generator, torch.float64, device)
        x = radius / math.sqrt(shape[-1]) * x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return x.to(dtype)

    def project(self, x, radius=1.0, batch_dims=None):
        radius = check_positive(radius, "radius")
        self._dims(x, batch_dims, "project")
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        bound = torch.full_like(n, radius / math.sqrt(x.shape[-1]))
        return x * torch.clamp(_safe_div(bound, n), max=1.0)


class _SpectralBase(Norm):
    """Shared machinery of the spectral norms: ``‖W‖ = ‖Ŵ‖_op / s``, ``lmo(g) = −s·msign(ĝ)``, where
    ``Ŵ`` is the matrix view of the tensor and ``s`` the scale of the subclass."""

    batched = True

    def __init__(self, method: str = "polar_express", steps: int | None = None,
                 compute_dtype: torch.dtype | None = None, gram: bool | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown msign method {method!r}; valid methods: {', '.join(METHODS)}")
        check_gram(gram)
        if steps is not None:
            _steps(steps, 1)  # the same check msign makes, at construction rather than at the first step
        check_compute_dtype(compute_dtype)
        self.method, self.steps, self.compute_dtype, self.gram = method, steps, compute_dtype, gram

    @abstractmethod
    def _matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(..., d_out, fan_in)`` matrix view of ``x``."""

    @abstractmethod
    def _scale(self, shape) -> float:
        """``s`` such that the unit ball is ``‖Ŵ‖_op ≤ s``."""

    def work_dtype(self, like):
        return resolve_compute_dtype(like, self.compute_dtype, self.method)

    def lmo_factored(self, g, batch_dims=None, *, private=False):
        self._dims(g, batch_dims, "lmo")
        work = self.work_dtype(g)
        X = self._matrix(g if private and g.dtype == work else g.to(work, copy=True))
        X = polar_factor(X, method=self.method, steps=self.steps, gram=self.gram)
        return X.reshape(g.shape), -self._scale(g.shape)

    def lmo_factor(self, shape):
        return -self._scale(tuple(shape))

    def lmo(self, g, batch_dims=None):
        S, factor = self.lmo_factored(g, batch_dims)
        return S.to(g.dtype).mul_(factor)

    def dual(self, g, batch_dims=None):
        dims = self._dims(g, batch_dims, "dual")
        return -(g * self.lmo(g, batch_dims)).sum(dim=dims)

    def norm(self, x, batch_dims=None):
        self._dims(x, batch_dims, "norm")
        return torch.linalg.matrix_norm(self._matrix(x), ord=2) / self._scale(x.shape)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        shape = tuple(shape)
        m = self._matrix(torch.empty(shape, device="meta"))
        g = _gaussian(m.shape, generator, torch.float64, device)
        return (radius * self._scale(shape) * msign(g, method="svd")).reshape(shape).to(dtype)

    def project(self, x, radius=1.0, batch_dims=None):
        """Singular-value clipping ``U min(Σ, r·s) Vᵀ`` (one SVD per item)."""
        radius = check_positive(radius, "radius")
        self._dims(x, batch_dims, "project")
        m = self._matrix(x)
        U, S, Vh = torch.linalg.svd(m.to(torch.promote_types(x.dtype, torch.float32)), full_matrices=False)
        S = S.clamp(max=radius * self._scale(x.shape))
        return ((U * S.unsqueeze(-2)) @ Vh).reshape(x.shape).to(x.dtype)


class Spectral(_SpectralBase):
    """RMS → RMS operator norm of a ``d_out × d_in`` matrix: ``‖W‖ = √(d_in/d_out)·‖W‖_op``.

    ``lmo(g) = −√(d_out/d_in)·msign(g)``; ``‖g‖_* = √(d_out/d_in)·‖g‖_nuclear``. Hidden matrices
    (Scion, Bernstein & Newhouse's modular norm). ``method``/``steps``/``compute_dtype``/``gram`` go to msign.
    """

    item_ndim = 2

    def _matrix(self, x):
        return x

    def _scale(self, shape):
        return math.sqrt(shape[-2] / shape[-1])


class SpectralConv(_SpectralBase):
    """Spectral norm of a conv kernel ``(d_out, c_in, *kernel)`` viewed as ``d_out × c_in·k²``.

    ``lmo(g) = −√(d_out/c_in)/k²·msign(ĝ)``, ``‖g‖_* = √(d_out/c_in)/k²·‖ĝ‖_nuclear``, with k² the number of
    kernel taps (∏ kernel sizes). ``kernel_dims`` = 1, 2, 3 for Conv1d/2d/3d.
    """

    def __init__(self, kernel_dims: int = 2, method: str = "polar_express", steps: int | None = None,
                 compute_dtype: torch.dtype | None = None, gram: bool | None = None):
        if kernel_dims not in (1, 2, 3):
            raise ValueError(f"kernel_dims must be 1, 2 or 3 (Conv1d/2d/3d), got {kernel_dims!r}")
        super().__init__(method, steps, compute_dtype, gram)
        self.kernel_dims = kernel_dims

    @property
    def item_ndim(self) -> int:  # type: ignore[override]
        return 2 + self.kernel_dims

    def _item_rank(self, x):
        return self.item_ndim

    def _matrix(self, x):
        k = self.kernel_dims
        return x.reshape(x.shape[: x.ndim - k - 1] + (-1,))

    def _scale(self, shape):
        k = self.kernel_dims
        taps = math.prod(shape[len(shape) - k:])
        d_out, c_in = shape[len(shape) - k - 2], shape[len(shape) - k - 1]
        return math.sqrt(d_out / c_in) / taps


class Blocked(Norm):
    """An inner norm applied to blocks of rows (the d_out axis) of each item: ``‖W‖ = max_b ‖W_b‖``.

    The dual of a max over blocks is the sum, ``‖g‖_* = Σ_b ‖g_b‖_*``, and the lmo is the inner lmo of every
    block (each block is its own linear map). ``split_sizes`` are the block heights (an int k means k equal
    blocks). Used for the q, k, v blocks of a fused attention projection (unequal under grouped-query attention),
    per attention head, for fused gate/up projections, and for grouped convolutions (the kernel of a conv with
    ``groups = k`` is block-diagonal: ``Blocked(SpectralConv(), k)``). ``interleaved=True``: row ``r`` belongs to
    block ``r mod k`` (equal blocks only; e.g. gate/up stored as gate₀, up₀, gate₁, up₁, …). Equal blocks are
    handled as one batch (one msign call).
    """

    batched = True

    def __init__(self, inner: Norm, split_sizes: int | tuple[int, ...], interleaved: bool = False):
        if not isinstance(inner, Norm) or not inner.item_ndim or inner.item_ndim < 2:
            raise ValueError(f"Blocked needs a matrix or kernel norm inside, got {inner!r}")
        if isinstance(split_sizes, int) and not isinstance(split_sizes, bool):
            if split_sizes < 1:
                raise ValueError(f"the number of blocks must be >= 1, got {split_sizes}")
        elif not (isinstance(split_sizes, (tuple, list)) and split_sizes
                  and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in split_sizes)):
            raise ValueError(f"split_sizes must be a positive int or a tuple of positive ints, got {split_sizes!r}")
        self.inner = inner
        self.split_sizes = split_sizes if isinstance(split_sizes, int) else tuple(split_sizes)
        self.interleaved = bool(interleaved)
        if self.interleaved and not isinstance(self.split_sizes, int) and len(set(self.split_sizes)) > 1:
            raise ValueError(f"interleaved blocks must be equal, got split sizes {self.split_sizes}")

    @property
    def item_ndim(self) -> int:  # type: ignore[override]
        return self.inner.item_ndim

    def with_inner(self, inner: Norm) -> Blocked:
        """The same blocks around another norm (a walker rebuilding a layout with a new leaf)."""
        return Blocked(inner, self.split_sizes, self.interleaved)

    def _item_rank(self, x):
        return self.item_ndim

    def sizes(self, rows: int) -> tuple[int, ...]:
        if isinstance(self.split_sizes, int):
            if rows % self.split_sizes:
                raise ValueError(f"{rows} rows cannot be split into {self.split_sizes} equal blocks")
            return (rows // self.split_sizes,) * self.split_sizes
        if sum(self.split_sizes) != rows:
            raise ValueError(f"split_sizes {self.split_sizes} do not add up to the {rows} rows of the tensor")
        return self.split_sizes

    def block_shape(self, shape) -> tuple:
        """The shape of one block of an item of ``shape`` (equal blocks only; Muon's scale reads it)."""
        shape = tuple(shape)
        axis = len(shape) - self.item_ndim
        sizes = self.sizes(shape[axis])
        if len(set(sizes)) > 1:
            raise ValueError(f"unequal blocks {sizes} have no single block shape")
        return shape[:axis] + (sizes[0],) + shape[axis + 1:]

    def _stack(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Equal blocks as a new batch axis just before the item's row axis."""
        axis = x.ndim - self.item_ndim
        rows = x.shape[axis]
        if self.interleaved:
            return x.reshape(x.shape[:axis] + (rows // n, n) + x.shape[axis + 1:]).transpose(axis, axis + 1)
        return x.reshape(x.shape[:axis] + (n, rows // n) + x.shape[axis + 1:])

    def _unstack(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.interleaved:
            axis = like.ndim - self.item_ndim
            y = y.transpose(axis, axis + 1)
        return y.reshape(like.shape)

    def _map(self, x: torch.Tensor, fn, combine=None):
        """Apply ``fn`` to every block (batched when the blocks are equal); ``combine`` reduces the per-block
        results over the block axis, otherwise the blocks are put back into ``x``'s shape."""
        axis = x.ndim - self.item_ndim
        sizes = self.sizes(x.shape[axis])
        if len(set(sizes)) == 1:
            out = fn(self._stack(x, len(sizes)))
            return combine(out, -1) if combine else self._unstack(out, x)
        outs = [fn(block) for block in torch.split(x, sizes, dim=axis)]
        return combine(torch.stack(outs, -1), -1) if combine else torch.cat(outs, dim=axis)

    def lmo(self, g, batch_dims=None):
        self._dims(g, batch_dims, "lmo")
        return self._map(g, lambda block: lmo_each(self.inner, block))

    def work_dtype(self, like):
        return self.inner.work_dtype(like)

    def lmo_factor(self, shape):
        shape = tuple(shape)
        sizes = self.sizes(shape[len(shape) - self.item_ndim])
        return self.inner.lmo_factor(self.block_shape(shape)) if len(set(sizes)) == 1 else 1.0

    def lmo_factored(self, g, batch_dims=None, *, private=False):
        self._dims(g, batch_dims, "lmo")
        sizes = self.sizes(g.shape[g.ndim - self.item_ndim])
        if len(set(sizes)) > 1:
            return self.lmo(g), 1.0
        S, factor = self.inner.lmo_factored(self._stack(g, len(sizes)), private=private)
        return self._unstack(S, g), factor

    def dual(self, g, batch_dims=None):
        self._dims(g, batch_dims, "dual")
        return self._map(g, lambda block: per_item(self.inner, "dual", block), torch.sum)

    def norm(self, x, batch_dims=None):
        self._dims(x, batch_dims, "norm")
        return self._map(x, lambda block: per_item(self.inner, "norm", block), torch.amax)

    def init(self, shape, radius=1.0, *, generator=None, dtype=torch.float32, device=None):
        shape = tuple(shape)
        axis = len(shape) - self.item_ndim
        blocks = [self.inner.init(shape[:axis] + (rows,) + shape[axis + 1:], radius, generator=generator,
                                  dtype=dtype, device=device) for rows in self.sizes(shape[axis])]
        if self.interleaved:
            return torch.stack(blocks, axis + 1).reshape(shape)
        return torch.cat(blocks, dim=axis)

    def project(self, x, radius=1.0, batch_dims=None):
        self._dims(x, batch_dims, "project")
        return self._map(x, lambda block: per_item(self.inner, "project", block, radius))

    def shard_local(self, shape, rows, rank):
        """The blocks inside rank ``rank``'s rows (the inner norm for one block, or for an empty shard) where every
        shard boundary is a block boundary: each block's lmo is its own, so a shard's blocks need no other rows."""
        shape = tuple(shape)
        if len(shape) != self.item_ndim or self.interleaved:  # dim 0 is not the blocks' row axis
            return None
        sizes = self.sizes(shape[0])
        starts = list(itertools.accumulate(sizes, initial=0))
        cuts = list(itertools.accumulate(rows, initial=0))
        if not set(cuts) <= set(starts):
            return None
        mine = tuple(size for size, start in zip(sizes, starts, strict=False) if cuts[rank] <= start < cuts[rank + 1])
        return Blocked(self.inner, mine) if len(mine) > 1 else self.inner


CATALOGUE: dict[str, type[Norm]] = {
    "euclidean": Euclidean,
    "sign": Sign,
    "bias_rms": BiasRMS,
    "col_norm": ColNorm,
    "row_norm": RowNorm,
    "spectral": Spectral,
    "spectral_conv": SpectralConv,
    "blocked": Blocked,
}
"""Norms by name, for configuration files and the command line."""

_NAMES = {cls: name for name, cls in CATALOGUE.items()}


def get_norm(name: str, **kwargs) -> Norm:
    """Build a norm of the catalogue by name, e.g. ``get_norm("spectral", method="svd")``."""
    try:
        cls = CATALOGUE[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; valid norms: {', '.join(CATALOGUE)}") from None
    return cls(**kwargs)


def norm_from_config(config: dict) -> Norm:
    """Rebuild a norm from :meth:`Norm.config`: a catalogue name, or ``module:QualName`` for a user's ``Norm``
    subclass (imported; its constructor must take the instance's public attributes as keywords, as every
    catalogue norm's does)."""
    kwargs = {k: v for k, v in config.items() if k != "name"}
    for key, value in kwargs.items():
        if isinstance(value, dict) and "name" in value:
            kwargs[key] = norm_from_config(value)
        elif isinstance(value, str) and isinstance(getattr(torch, value.removeprefix("torch."), None), torch.dtype) \
                and (value.startswith("torch.") or key == "compute_dtype"):  # a dtype ("bfloat16": saved before)
            kwargs[key] = getattr(torch, value.removeprefix("torch."))
    name = config["name"]
    if ":" not in name:
        return get_norm(name, **kwargs)
    return rebuild_user_class(name, kwargs, Norm, "norm")
