"""specopt.layouts over timm: one model per architecture family of ``timm.list_models()`` (the first name of each
family), built on the meta device; prints each refusal and warning, then the counts.

    .venv-timm-litgpt/bin/python benchmarks/timm_layouts_sweep.py   # timm needs torchvision: README, "Testing with
                                                                    # timm and litgpt"
"""

from __future__ import annotations

import functools

import torch
from layouts_sweep import need, summary, sweep

VENV = "run this script with .venv-timm-litgpt/bin/python (README: Testing with timm and litgpt)"
timm = need("timm", VENV)


def first_of_each_family():
    families = set()
    for name in timm.list_models():
        family = name.split("_")[0]
        if family not in families:
            families.add(family)
            yield name, functools.partial(build, name)


def build(name: str):
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def main() -> None:
    print(f"\n{summary(sweep(first_of_each_family()))} (timm {timm.__version__})")


if __name__ == "__main__":
    main()
