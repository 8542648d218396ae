"""specopt.layouts over every torchvision model (classification, detection, segmentation, video, optical flow),
built without weights on the meta device; prints each refusal and warning, then the counts.

    .venv-timm-litgpt/bin/python benchmarks/torchvision_layouts_sweep.py   # README, "Testing with timm and litgpt"
"""

from __future__ import annotations

import functools

import torch
from layouts_sweep import need, summary, sweep

VENV = "run this script with .venv-timm-litgpt/bin/python (README: Testing with timm and litgpt)"
torchvision = need("torchvision", VENV)


def build(name: str):
    """Without weights; detection and segmentation models without their backbone's either (no download). On the meta
    device, or on the CPU for the models whose constructor reads tensor values (RegNet's widths)."""
    try:
        with torch.device("meta"):
            return _get(name)
    except NotImplementedError:
        return _get(name)


def _get(name: str):
    try:
        return torchvision.models.get_model(name, weights=None, weights_backbone=None)
    except TypeError:  # a model without a separate backbone
        return torchvision.models.get_model(name, weights=None)


def main() -> None:
    names = torchvision.models.list_models()
    counts = sweep((name, functools.partial(build, name)) for name in names)
    print(f"\n{summary(counts)}, {counts['unbuilt']} that do not build (torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
