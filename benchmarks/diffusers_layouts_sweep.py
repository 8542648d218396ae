"""specopt.layouts over every diffusers model class (UNets, DiT/PixArt/SD3/Flux transformers, VAEs, ControlNets…)
built from its default config on the meta device: how many are classified, which refuse (and on which tensor),
which raw matrices are read as F.linear's with a warning.

    python benchmarks/diffusers_layouts_sweep.py     # one line per refusal and warning, then the counts

Every public ``diffusers`` class that subclasses ``ModelMixin`` and builds from its ``__init__`` defaults is built
once (the defaults are the published sizes; on the meta device nothing is allocated). Classes whose defaults do
not build are counted apart.
"""

from __future__ import annotations

import functools
import inspect

import diffusers
import torch
from layouts_sweep import summary, sweep


def model_classes():
    for name in sorted(dir(diffusers)):
        try:
            cls = getattr(diffusers, name)
        except Exception:  # noqa: BLE001 — a class whose optional dependency is missing
            continue
        if inspect.isclass(cls) and issubclass(cls, diffusers.ModelMixin) and cls is not diffusers.ModelMixin:
            yield name, functools.partial(build, cls)


def build(cls):
    with torch.device("meta"):
        return cls()


def main() -> None:
    print(f"\n{summary(sweep(model_classes()))} (diffusers {diffusers.__version__})")


if __name__ == "__main__":
    main()
