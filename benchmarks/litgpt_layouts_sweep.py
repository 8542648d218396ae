"""specopt.layouts over every model configuration litgpt ships (``litgpt.config.configs``): how many are classified,
which refuse (and on which tensor), which raw matrices are read as F.linear's with a warning.

    .venv-timm-litgpt/bin/python benchmarks/litgpt_layouts_sweep.py   # litgpt's own environment: README, "Testing
                                                                      # with timm and litgpt"

Each configuration is built on the meta device at its real sizes with two layers (``n_layer=2``), as litgpt's GPT
and as its LoRA GPT with LoRA on every projection (only the LoRA factors trainable, as litgpt's ``finetune_lora``).
"""

from __future__ import annotations

import functools
import importlib.metadata

import torch
from layouts_sweep import need, summary, sweep

VENV = "run this script with .venv-timm-litgpt/bin/python (README: Testing with timm and litgpt)"
litgpt = need("litgpt", VENV)
need("litgpt.lora", VENV)


def build(name: str, lora: bool):
    if lora:
        config = litgpt.lora.Config.from_name(name, n_layer=2, lora_r=8, lora_alpha=16, lora_query=True,
                                              lora_key=True, lora_value=True, lora_projection=True, lora_mlp=True,
                                              lora_head=True)
        with torch.device("meta"):
            model = litgpt.lora.GPT(config)
        litgpt.lora.mark_only_lora_as_trainable(model)
        return model
    with torch.device("meta"):
        return litgpt.GPT(litgpt.Config.from_name(name, n_layer=2))


def main() -> None:
    names = [c["name"] for c in litgpt.config.configs]
    for lora in (False, True):
        counts = sweep((name, functools.partial(build, name, lora)) for name in names)
        print(f"\n{'LoRA GPT' if lora else 'GPT'}: {summary(counts)}, {counts['unbuilt']} configs that do not build "
              f"(litgpt {importlib.metadata.version('litgpt')})")


if __name__ == "__main__":
    main()
