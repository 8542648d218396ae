"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): saved at one world size, resumed at any other.

    specopt.checkpoint.save("run/ckpt", model, optimizer, extra={"step": 100})   # or a list of optimizers
    extra = specopt.checkpoint.load("run/ckpt", model, optimizer)

Works single-process (no process group), under DDP (pass the DDP wrapper or its module) and under FSDP2
(``fully_shard``: DTensor parameters and optimizer state are saved as their shards and resharded on load).
Layout of the checkpoint: ``model.<fqn>`` (the module's state dict), ``optim.<i>.<fqn>.<key>`` for every
state tensor of optimizer ``i`` with at least one dimension (momentum, STORM's previous iterate, AdamW's moments,
NorMuon's row moments: under FSDP2 each rank's rows of one whole tensor, :func:`specopt.distributed.sharded_state`),
and ``meta``: a JSON string with the param groups' hyperparameters (a tensor ``lr`` as its value, written back into
the group's tensor on load), the small per-parameter state (0-d step counts, Gluon's measurements) and ``extra``,
identical on every rank.

Saving is atomic: DCP writes into ``<path>.tmp``, which replaces ``<path>`` once every rank has finished (the
earlier checkpoint is moved to ``<path>.old`` first and removed last; a crash between leaves it there, and
:func:`load` reads it). ``<path>`` must be new, empty or a checkpoint: a directory holding anything else is refused,
not replaced.
Loading builds its template from the checkpoint's own metadata, so optimizer state need not exist beforehand. Every
file's size and CRC-32 are recorded (``.checksums``) and checked before anything is loaded, as is the settings'
record of a specopt optimizer (its estimator's and rule's ``config()``): a damaged checkpoint, or one of other
settings, leaves the model and the optimizer as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from specopt._checks import listing
from specopt.distributed import is_dtensor, local, sharded_state
from specopt.engine import OWNER_KEY, GeometryOptimizer, check_owner, fresh_state_dtypes, loaded_state


def _module(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameters the optimizer holds: the module inside DDP, ``nn.DataParallel`` and
    ``torch.compile``'s wrapper (their state-dict keys are the plain model's); FSDP2 modules resharded first (a
    forward without backward, such as an evaluation, leaves the unsharded parameters registered)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    module = model
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):  # torch.compile(model)
            module = module._orig_mod
        else:
            break
    for m in module.modules():
        reshard = getattr(m, "reshard", None)
        if callable(reshard) and type(m).__name__.startswith("FSDP"):
            reshard()
    return module


def _encode(value):
    """``value`` as JSON: tensors as ``{"__tensor__": values, "dtype": …}``, inside lists, tuples and dicts too."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value, device):
    """The inverse of :func:`_encode`, tensors made on ``device``."""
    if isinstance(value, dict) and "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]), device=device)
    if isinstance(value, list):
        return [_decode(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _decode(v, device) for k, v in value.items()}
    return value


def _rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _as_list(optimizers) -> list:
    out = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
    for opt in out:
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizers must be a torch.optim.Optimizer or a list of them, got {type(opt).__name__}")
    return out


CHECKSUMS = ".checksums"
"""The file of a checkpoint directory that records each other file's size and CRC-32 (JSON), written once every
rank's shards are in place and checked before anything is loaded."""
CHECKPOINT_FILES = (".metadata", ".distcp", CHECKSUMS)
"""What a DCP checkpoint directory holds (its metadata, ``*.distcp`` shards and :data:`CHECKSUMS`)."""


def _check_target(path: Path) -> None:
    """Refuse a ``path`` that holds anything but a checkpoint: saving replaces the directory."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a checkpoint directory; save to another path")
    foreign = sorted(p.name for p in path.iterdir() if not p.name.endswith(CHECKPOINT_FILES)) if path.is_dir() else []
    if foreign:
        raise ValueError(f"{path} holds files that are not a checkpoint ({listing(foreign)}), which saving would "
                         "delete; save to another path, or remove them")


def save(path: str | os.PathLike, model: torch.nn.Module, optimizers, extra: dict | None = None) -> Path:
    """Write model, optimizer(s) and ``extra`` (JSON-able but for tensors, which come back as tensors: a scheduler's
    state dict with tensor learning rates) to the DCP directory ``path`` atomically."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise ValueError(f"the checkpoint path must name a directory, got {str(path)!r}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    module = _module(model)
    optimizers = _as_list(optimizers)
    _check_target(path)
    fqn = {p: n for n, p in module.named_parameters()}
    flat: dict = {f"model.{k}": v for k, v in module.state_dict().items()}
    metas = []
    for i, optimizer in enumerate(_as_list(optimizers)):
        small: dict = {}
        for param, state in optimizer.state.items():
            if param not in fqn:
                raise ValueError("the optimizer holds a parameter the model does not have; save the model it trains")
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.ndim:
                    flat[f"optim.{i}.{fqn[param]}.{key}"] = sharded_state(value, param)
                elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) and v.ndim for v in value):
                    raise ValueError(f"the state {key!r} of {fqn[param]} is a {type(value).__name__} of tensors, "
                                     "which a checkpoint stores as JSON, whole, on every rank (not resharded): keep "
                                     "such data in one tensor (its first dimension the rows, under FSDP2)")
                else:
                    small.setdefault(fqn[param], {})[key] = _encode(value)
        groups = [{k: _encode(v) for k, v in g.items() if k not in ("params", "param_names", OWNER_KEY)}
                  for g in optimizer.state_dict()["param_groups"]]
        members = [[fqn.get(p) for p in g["params"]] for g in optimizer.param_groups]
        metas.append({"param_groups": groups, "state": small, "skipped_steps": getattr(optimizer, "skipped_steps", 0),
                      "class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", "members": members,
                      **{part: getattr(optimizer, part).name for part in ("estimator", "rule")
                         if hasattr(optimizer, part)},
                      **({"owner": optimizer._owner()} if isinstance(optimizer, GeometryOptimizer) else {})})
    flat["meta"] = json.dumps({"optimizers": metas, "extra": _encode(extra or {})})
    tmp = path.with_name(path.name + ".tmp")
    if _rank0() and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    with _single_process_is_intended():
        dcp.save(flat, checkpoint_id=str(tmp))
    _barrier()
    if _rank0():
        _write_checksums(tmp)
        old = path.with_name(path.name + ".old")
        if old.exists() and path.exists():  # a crash before left both: the newer is at path
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    _barrier()
    return path


def saved_at(path: str | os.PathLike) -> Path | None:
    """Where the checkpoint saved to ``path`` is: ``path``, or ``<path>.old`` where a save crashed between moving the
    earlier checkpoint aside and moving the new one in (``path`` absent); ``None`` where neither holds one."""
    path = Path(path)
    if (path / ".metadata").exists():
        return path
    old = path.with_name(path.name + ".old")
    if (old / ".metadata").exists() and not path.exists():
        return old
    return None


def _located(path: Path) -> Path:
    """:func:`saved_at`, with a warning where that is ``<path>.old``."""
    found = saved_at(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a torch.distributed.checkpoint directory)")
    if found != path:
        warnings.warn(f"{path} is missing and {found} holds the checkpoint before it (a save was interrupted): "
                      "loading that", stacklevel=3)
    return found


def load(path: str | os.PathLike, model: torch.nn.Module, optimizers) -> dict:
    """Load a checkpoint written by :func:`save` (at any world size) into ``model`` and the optimizer(s) in
    place; returns its ``extra``.

    Raises:
        FileNotFoundError: no checkpoint at ``path`` (nor at ``<path>.old``, left by an interrupted save).
        UnreadableCheckpoint: the files are damaged; nothing is loaded.
        ValueError: the checkpoint belongs to another model or optimizer; nothing is loaded."""
    path = _located(Path(path))
    metadata = _verified(path).state_dict_metadata
    optimizers = _as_list(optimizers)
    module = _module(model)
    params = dict(module.named_parameters())
    # before anything is loaded in place
    _check_optimizers(_read_meta(path, verified=True)["optimizers"], optimizers, params)
    model_sd = module.state_dict()
    missing = [k for k in model_sd if f"model.{k}" not in metadata]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[0]!r} (and {len(missing) - 1} more) of the model's state")
    template: dict = {"meta": ""}
    for key, md in metadata.items():
        if key.startswith("model."):
            if key[6:] not in model_sd:
                raise ValueError(f"the checkpoint holds {key[6:]!r}, which the model does not have")
            template[key] = model_sd[key[6:]]
        elif key.startswith("optim."):
            name, _ = _state_key(key, params)
            param = params[name]
            device = local(param).device
            if is_dtensor(param) and md.size[0] == param.shape[0]:  # the rank's rows of the whole tensor
                buf = torch.empty((local(param).shape[0], *md.size[1:]), dtype=md.properties.dtype, device=device)
                template[key] = sharded_state(buf, param)
            else:
                template[key] = torch.empty(md.size, dtype=md.properties.dtype, device=device)
    _readable(path, lambda: dcp.load(template, checkpoint_id=str(path)))  # in place: the model's own tensors
    meta = json.loads(template["meta"])
    for i, (optimizer, saved) in enumerate(zip(optimizers, meta["optimizers"], strict=True)):
        for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
            for k, v in saved_group.items():
                value, current = _restore_group_value(k, _decode(v, "cpu")), group.get(k)
                if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
                    current.copy_(value)  # a tensor lr in place: what a scheduler and a compiled step hold
                else:
                    group[k] = value
        optimizer.state.clear()
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        fresh: dict = {}
        for key, value in template.items():
            if key.startswith(f"optim.{i}."):
                name, state_key = _state_key(key, params)
                if name not in fresh:
                    fresh[name] = fresh_state_dtypes(optimizer, params[name], group_of[id(params[name])])
                optimizer.state[params[name]][state_key] = loaded_state(value, params[name],
                                                                        fresh[name].get(state_key))
        for name, state in saved["state"].items():
            for k, v in state.items():
                optimizer.state[params[name]][k] = _decode(v, local(params[name]).device)
        if hasattr(optimizer, "skipped_steps"):
            optimizer.skipped_steps = saved["skipped_steps"]
    return _decode(meta["extra"], "cpu")


def _state_key(key: str, params: dict) -> tuple[str, str]:
    """``(parameter name, state key)`` of a checkpoint key ``optim.<i>.<fqn>.<key>``: both may hold dots, and the
    name is the prefix that names a parameter (one at most: a name that is a parameter has nothing below it)."""
    rest = key.split(".", 2)[2]
    for cut in (j for j, c in enumerate(rest) if c == "."):
        if rest[:cut] in params:
            return rest[:cut], rest[cut + 1:]
    raise ValueError(f"the checkpoint holds optimizer state {key!r} of a parameter the model does not have")


def read_extra(path: str | os.PathLike) -> dict:
    """The ``extra`` of a checkpoint written by :func:`save`, read without loading any tensor (to check a
    checkpoint before loading it into a model)."""
    path = _located(Path(path))
    return _decode(_read_meta(path)["extra"], "cpu")


def _read_meta(path: Path, verified: bool = False) -> dict:
    """The checkpoint's ``meta`` (the files checked first, :func:`_verified`, unless ``verified``)."""
    if not verified:
        _verified(path)
    template: dict = {"meta": ""}
    _readable(path, lambda: dcp.load(template, checkpoint_id=str(path)))
    return json.loads(template["meta"])


@contextlib.contextmanager
def _single_process_is_intended():
    """torch.distributed.checkpoint warns at every save and load without a process group that it assumes one
    process: here that is a supported use, not a mistake to warn about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


class UnreadableCheckpoint(ValueError):
    """A checkpoint directory torch.distributed.checkpoint cannot read: a shard missing or truncated, its metadata
    unreadable (as opposed to a readable checkpoint of another model or optimizer)."""


def _readable(path: Path, read):
    """``read()``, with a damaged checkpoint (a missing or truncated shard, unreadable metadata) an
    :class:`UnreadableCheckpoint` naming the directory: torch.distributed.checkpoint raises ``CheckpointException``,
    a ``BaseException`` that an ``except Exception`` does not catch."""
    try:
        with _single_process_is_intended():
            return read()
    except (Exception, CheckpointException) as e:
        cause = e
        if isinstance(e, CheckpointException) and getattr(e, "failures", None):  # the first rank's own failure
            failure = next(iter(e.failures.values()))
            cause = failure[0] if isinstance(failure, tuple) else getattr(failure, "exception", failure)  # wrapped
        first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        raise UnreadableCheckpoint(f"{path} cannot be read as a checkpoint ({type(cause).__name__}: "
                                   f"{first[:300]})") from e


def _crc32(file: Path) -> int:
    crc = 0
    with open(file, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _write_checksums(directory: Path) -> None:
    """Record the size and CRC-32 of every file DCP wrote into ``directory`` (:data:`CHECKSUMS`)."""
    files = sorted(f for f in directory.iterdir() if f.is_file() and f.name != CHECKSUMS)
    sums = {f.name: [f.stat().st_size, _crc32(f)] for f in files}
    (directory / CHECKSUMS).write_text(json.dumps(sums))


def _verified(path: Path):
    """The DCP metadata of ``path``, once every file it names is there and long enough for the bytes it places in it
    and, where :data:`CHECKSUMS` records them (checkpoints saved since it exists), every file has its recorded size
    and CRC-32: a shard cut short, missing or changed is an :class:`UnreadableCheckpoint` before anything is loaded
    in place (DCP writes into the model's own tensors as it reads, and a shard that fails halfway would leave them
    half loaded; a flipped byte it would load as a weight)."""
    metadata = _readable(path, lambda: FileSystemReader(str(path)).read_metadata())
    ends: dict = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        if hasattr(info, "relative_path"):
            ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        file = path / name
        if not file.is_file():
            raise UnreadableCheckpoint(f"{path} cannot be read as a checkpoint: its shard {name} is missing")
        if file.stat().st_size < end:
            raise UnreadableCheckpoint(f"{path} cannot be read as a checkpoint: its shard {name} is cut short "
                                       f"({file.stat().st_size} bytes; its metadata places data up to byte {end})")
    try:
        sums = json.loads((path / CHECKSUMS).read_text())
    except FileNotFoundError:
        return metadata
    except (OSError, ValueError) as e:
        raise UnreadableCheckpoint(f"{path} cannot be read as a checkpoint: its {CHECKSUMS} cannot be read "
                                   f"({type(e).__name__}: {e})") from None
    for name, (size, crc) in sorted(sums.items()):
        file = path / name
        if not file.is_file() or file.stat().st_size != size or _crc32(file) != crc:
            what = ("is missing" if not file.is_file() else
                    f"has {file.stat().st_size} bytes, not the {size} saved" if file.stat().st_size != size else
                    "fails its CRC-32 check")
            raise UnreadableCheckpoint(f"{path} cannot be read as a checkpoint: {name} {what} (the file was changed "
                                       "or damaged since it was saved)")
    return metadata


def _check_optimizers(saved: list, optimizers: list, names: dict) -> None:
    """As many optimizers as the checkpoint holds, each of the class that saved its state (compared by class
    name, so that a class moved to another module still loads; checkpoints from before classes were recorded
    are not checked)."""
    if len(optimizers) != len(saved):
        raise ValueError(f"the checkpoint holds {len(saved)} optimizer(s), got {len(optimizers)}")
    for i, (optimizer, meta) in enumerate(zip(optimizers, saved, strict=True)):
        theirs = meta.get("class")
        if theirs is not None and theirs.rsplit(".", 1)[-1] != type(optimizer).__qualname__:
            raise ValueError(f"the checkpoint's optimizer {i} is a {theirs}, not a {type(optimizer).__qualname__}: "
                             "one optimizer's state cannot be loaded into another")
        if len(optimizer.param_groups) != len(meta["param_groups"]):
            raise ValueError(f"the checkpoint's optimizer {i} has {len(meta['param_groups'])} param groups, the "
                             f"optimizer {len(optimizer.param_groups)}")
        for part in ("estimator", "rule"):
            if part in meta and hasattr(optimizer, part) and meta[part] != getattr(optimizer, part).name:
                raise ValueError(f"the checkpoint's optimizer {i} steps with {part} {meta[part]!r}, this one with "
                                 f"{getattr(optimizer, part).name!r}: its state cannot be loaded here")
        if isinstance(optimizer, GeometryOptimizer):  # the parts' settings (recorded since checkpoints hold them)
            check_owner(meta.get("owner"), optimizer._owner())
        if "members" in meta:  # each group's hyperparameters are loaded by position: the same tensors in each
            fqn = {p: n for n, p in names.items()}
            for j, (group, saved) in enumerate(zip(optimizer.param_groups, meta["members"], strict=True)):
                mine = [fqn.get(p) for p in group["params"]]
                if mine != saved:
                    raise ValueError(f"param group {j} of the checkpoint's optimizer {i} holds {saved[:3]}"
                                     f"{' …' if len(saved) > 3 else ''}, this optimizer's {mine[:3]}"
                                     f"{' …' if len(mine) > 3 else ''}: build the groups as the saved run did")


def _restore_group_value(key: str, value):
    from specopt.constraints import constraint_from_config
    from specopt.norms import norm_from_config

    if key == "norm" and isinstance(value, dict):
        return norm_from_config(value)
    if key == "constraint" and isinstance(value, dict):
        return constraint_from_config(value)
    if key == "betas" and isinstance(value, list):
        return tuple(value)
    return value
