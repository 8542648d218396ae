"""specopt.layouts over every transformers model class that builds from its config: how many are classified, which
refuse (and on which tensor), which raw matrices are read as F.linear's with a warning.

    python benchmarks/hf_layouts_sweep.py            # one line per refusal and warning, then the counts

Each ``*Config`` with a model class (``…ForCausalLM``, ``…ForMaskedLM``, ``…ForImageClassification``, ``…Model``,
``…ForConditionalGeneration``, the first that exists) is built on the meta device with small sizes (hidden 32, one
layer, 2 heads, 4 experts where the config has them), or, where those sizes do not fit it (a composite model whose
sub-configs keep their own sizes, a width its vision tower fixes), at the config's own defaults (the meta device holds
no data). Configs that build at neither are counted apart.
"""

from __future__ import annotations

import functools

import torch
import transformers
from layouts_sweep import summary, sweep

transformers.logging.set_verbosity_error()

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_key_value_heads=1,
             vocab_size=97, n_embd=32, n_layer=1, n_head=2, d_model=32, num_layers=1, encoder_layers=1,
             decoder_layers=1, d_ff=64, encoder_attention_heads=2, decoder_attention_heads=2, num_experts=4,
             num_local_experts=4, head_dim=16)
HEADS = ("ForCausalLM", "ForMaskedLM", "ForImageClassification", "Model", "ForConditionalGeneration")


def build(config_name: str):
    base = config_name[: -len("Config")]
    model_cls = next((getattr(transformers, base + h) for h in HEADS if hasattr(transformers, base + h)), None)
    if model_cls is None:
        return None
    config = getattr(transformers, config_name)()
    for key, value in SMALL.items():
        if hasattr(config, key):
            setattr(config, key, value)
    try:
        with torch.device("meta"):
            return model_cls(config)
    except Exception:  # noqa: BLE001 — the small sizes do not fit this model: its own defaults
        with torch.device("meta"):
            return model_cls(getattr(transformers, config_name)())


def main() -> None:
    names = sorted(n for n in dir(transformers) if n.endswith("Config") and not n.startswith("Pretrained"))
    counts = sweep((name, functools.partial(build, name)) for name in names)
    print(f"\n{summary(counts)}, {counts['unbuilt']} configs that do not build at these sizes "
          f"(transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
