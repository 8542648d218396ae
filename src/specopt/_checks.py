"""Input validation shared by the public functions: clear ``ValueError`` messages, never deep stack traces."""

from __future__ import annotations

import importlib
import numbers

import torch


def check_tensor(x, what: str) -> None:
    """``x`` must be a dense, real, floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_sparse or x.layout != torch.strided:
        raise ValueError(f"{what} must be a dense (strided) tensor, got layout {x.layout}")
    if x.is_complex():
        raise ValueError(f"{what} must be real; complex dtype {x.dtype} is not supported")
    if not x.is_floating_point():
        raise ValueError(f"{what} must have a floating dtype, got {x.dtype}")


def check_matrix(x, what: str) -> None:
    """``x`` must be a real floating tensor with at least 2 dims (a matrix or a batch of matrices)."""
    check_tensor(x, what)
    if x.ndim < 2:
        raise ValueError(f"{what} must have at least 2 dims (a matrix or a batch of matrices), got shape "
                         f"{tuple(x.shape)}")


def check_positive(value, name: str) -> float:
    """A finite number > 0, returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_positive_int(value, name: str) -> int:
    """A positive integer (not a bool), returned as is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_number(value, name: str, low: float = 0.0, high: float = float("inf"), *, low_open: bool = False,
                 high_open: bool = False) -> float:
    """A finite real in the interval [low, high] (ends open where asked), returned as float."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value  # numpy's reals too
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        ok = ok and abs(value) != float("inf")
    if not ok:
        upper = "∞)" if high == float("inf") else f"{high}{')' if high_open else ']'}"
        interval = f"{'(' if low_open else '['}{low}, {upper}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_lr(value, name: str = "lr") -> None:
    """A learning rate: a finite number ≥ 0, or (as torch.optim takes one, so that a compiled step is not recompiled
    when an LR scheduler changes it) a 1-element real floating tensor holding one, not requiring grad."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point() or value.requires_grad:
            raise ValueError(f"{name} as a tensor must hold one real floating value and not require grad, got "
                             f"shape {tuple(value.shape)}, dtype {value.dtype}, requires_grad={value.requires_grad}")
        value = float(value)
    check_number(value, name, high=torch.finfo(torch.float32).max)  # the update multiplies float32 tensors by it


def lr_like(value, lr):
    """``value`` (a second learning rate, e.g. Muon's ``adamw_lr``) in ``lr``'s form: a tensor of ``lr``'s dtype and
    device where ``lr`` is a tensor and ``value`` a number (so a compiled step follows a scheduler in every group
    without recompiling), else as it is."""
    if isinstance(lr, torch.Tensor) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=lr.dtype, device=lr.device)
    return value


def listing(names: list[str]) -> str:
    """The first names of a directory's entries, for a message: ``a, b, c, d and 3 more``."""
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def subclasses(*roots: type) -> list[type]:
    """Every class defined so far that derives from one of ``roots`` (the roots included), at any depth: a user's own
    parts too, once their module is imported."""
    found, stack = [], list(roots)
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack += cls.__subclasses__()
    return found


def rebuild_user_class(path: str, kwargs: dict, base: type, kind: str):
    """``base`` subclass ``path`` (``module:QualName``: a user's own norm or constraint in a saved state) built from
    its saved config ``kwargs``. One saved from a script run as ``__main__`` is found among the subclasses defined so
    far (loaded by a program that imports that script as a module). A ``ValueError`` naming ``kind`` where the class
    cannot be found or its constructor does not take its config."""
    module, _, qualname = path.partition(":")
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as err:
        found = {c for c in subclasses(base) if c.__qualname__ == qualname and c.__module__ != "__main__"}
        cls = found.pop() if module == "__main__" and len(found) == 1 else None
        if cls is None:
            where = (" (it was defined in the script that saved it, __main__: define it in a module, or import the "
                     "script's module, before loading)" if module == "__main__" else "")
            raise ValueError(f"{kind} {path!r} of a saved state cannot be imported ({err}); import the module that "
                             f"defines it before loading{where}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{path!r} is not a specopt {base.__name__} subclass")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{cls.__qualname__} cannot be rebuilt from its saved config {sorted(kwargs)} ({err}): a "
                         f"{base.__name__}'s config is its public attributes, so its constructor must take each of "
                         "them as a keyword; keep values derived from them in attributes whose names start with "
                         "'_'") from None
