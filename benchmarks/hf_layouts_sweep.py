"""specopt.layouts over every transformers model class that builds from its config: how many are classified, which
refuse (and on which tensor), which raw matrices are read as F.linear's with a warning.

    python benchmarks/hf_layouts_sweep.py            # one line per refusal and warning, then the counts

Each ``*Config`` with a model class (``…ForCausalLM``, ``…ForMaskedLM``, ``…ForImageClassification``, ``…Model``,
``…ForConditionalGeneration``, the first that exists) is built on the meta device with small sizes (hidden 32, one
layer, 2 heads, 4 experts where the config has them). Configs that do not build at those sizes are counted apart.
"""

from __future__ import annotations

import warnings

import torch
import transformers

from specopt.layouts import classify

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
    with torch.device("meta"):
        return model_cls(config)


def main() -> None:
    names = sorted(n for n in dir(transformers) if n.endswith("Config") and not n.startswith("Pretrained"))
    classified, refused, crashed, unbuilt, warned = 0, [], [], 0, []
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build(name)
        except Exception:  # a config whose sizes do not fit ours: not a specopt result
            unbuilt += 1
            continue
        if model is None:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                classify(model)
            except ValueError as err:
                refused.append((name, str(err).split(" has a layout")[0].split(";")[0]))
                print(f"refused  {name}: {refused[-1][1]}")
                continue
            except Exception as err:  # noqa: BLE001 — anything but the ValueError that names the tensor is a bug
                crashed.append(name)
                print(f"CRASHED  {name}: {type(err).__name__}: {str(err)[:160]}")
                continue
        classified += 1
        for w in caught:
            if "read as F.linear" in str(w.message):
                warned.append(name)
                print(f"warned   {name}: {str(w.message).split(': ', 1)[1].split('. If')[0]}")
    print(f"\n{classified} classified ({len(warned)} with a warning), {len(refused)} refused, {len(crashed)} crashed, "
          f"{unbuilt} configs that do not build at these sizes (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
