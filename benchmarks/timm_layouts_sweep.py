"""specopt.layouts over timm: one model per architecture family of ``timm.list_models()`` (the first name of each
family), built on the meta device; prints each refusal and warning, then the counts.

    .venv-timm/bin/python benchmarks/timm_layouts_sweep.py     # timm needs torchvision: README, "Testing with timm"
"""

from __future__ import annotations

import warnings

import timm
import torch

from specopt.layouts import classify


def main() -> None:
    families, classified, refused, crashed, warned = set(), 0, 0, 0, 0
    for name in timm.list_models():
        family = name.split("_")[0]
        if family in families:
            continue
        families.add(family)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
        except Exception:  # a model that does not build on the meta device: not a specopt result
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                classify(model)
            except ValueError as err:
                refused += 1
                print(f"refused  {name}: {str(err)[:160]}")
                continue
            except Exception as err:  # noqa: BLE001 — anything but the ValueError that names the tensor is a bug
                crashed += 1
                print(f"CRASHED  {name}: {type(err).__name__}: {str(err)[:160]}")
                continue
        classified += 1
        for w in caught:
            if "read as F.linear" in str(w.message):
                warned += 1
                print(f"warned   {name}: {str(w.message)[:160]}")
    print(f"\n{classified} classified ({warned} with a warning), {refused} refused, {crashed} crashed "
          f"(timm {timm.__version__})")


if __name__ == "__main__":
    main()
