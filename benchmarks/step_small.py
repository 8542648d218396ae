"""Optimizer step on small models, where a step is per-call overhead rather than matmuls (CPU).

    python benchmarks/step_small.py            # the table; rewrites the step-small section of BENCHMARKS.md
    python benchmarks/step_small.py --quick    # fewer rounds, prints only

Three parameter sets, each the trainable tensors of a real model with fixed random gradients:

- LoRA (r = 8) on GPT-2 small through peft: 96 adapter matrices (8×768, 8×3072, 768×8, 2304×8, 3072×8);
- the char-GPT of ``specopt compare`` (tiny: 2 layers of width 64);
- the CNN of ``specopt compare --task cnn`` (3×3 kernels of 32 channels and a linear head).

Each set is stepped by torch.optim.Muon (5 Newton–Schulz steps in bf16, one matrix per call; AdamW (fused) on the
tensors specopt's roles give to AdamW) and by specopt's Muon on :func:`specopt.param_groups`' groups, with the lmo's
of one shape stacked into one msign call (``batch_lmo=None``: the CPU default for tensors of at most
:data:`specopt.linalg.CPU_BATCH_MAX_NUMEL` entries) or one call per matrix (``batch_lmo=False``), in bf16 (torch's
dtype) and in float32 (specopt's CPU default without native bf16). Interleaved rounds, median step; like against
like: same threads, same gradients, same dtype where a ratio is taken.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import specopt
from specopt import linalg
from specopt.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msign import DRIFT_NOTE, command, median_times, parse_machine_args, publish, where  # noqa: E402


def lora_gpt2() -> torch.nn.Module:
    """GPT-2 small (random weights, nothing downloaded) with peft's LoRA, r = 8, on every attention and MLP
    projection: only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:
        raise SystemExit(f"the LoRA set needs transformers and peft (pip install -e '.[models]'): {exc}") from None
    model = GPT2LMHeadModel(GPT2Config())
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    return get_peft_model(model, config)


MODELS = {
    "LoRA r=8 on GPT-2 small (peft)": lora_gpt2,
    "char-GPT tiny (specopt compare)": lambda: get_task("char-gpt").build_model(),
    "CNN (specopt compare --task cnn)": lambda: get_task("cnn").build_model(),
}


def with_gradients(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every trainable tensor a fixed random gradient (the step's cost does not depend on its values)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return model


def orthogonalised(opt: specopt.Muon) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Muon's tensors split into those it orthogonalises and those its AdamW updates."""
    matrices = [p for g in opt.param_groups if g["norm"] != "adamw" for p in g["params"]]
    rest = [p for g in opt.param_groups if g["norm"] == "adamw" for p in g["params"]]
    return matrices, rest


def optimizers(model: torch.nn.Module) -> dict[str, list]:
    """name → the optimizers one step runs, all over the same tensors."""
    opts = {}
    for dtype, label in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        opts[f"specopt Muon ({label}), one call per matrix"] = [
            specopt.Muon(specopt.param_groups(model), lr=0.02, compute_dtype=dtype, batch_lmo=False)]
        opts[f"specopt Muon ({label}), default"] = [
            specopt.Muon(specopt.param_groups(model), lr=0.02, compute_dtype=dtype)]
    matrices, rest = orthogonalised(opts["specopt Muon (fp32), default"][0])
    if all(p.ndim == 2 for p in matrices):  # torch.optim.Muon takes 2-D parameters only
        torch_muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.0, adjust_lr_fn="original")
        opts = {"torch.optim.Muon (bf16)": [torch_muon] + (
            [torch.optim.AdamW(rest, lr=3e-4, weight_decay=0.0, fused=True)] if rest else []), **opts}
    return opts


def time_steps(opts: dict[str, list], rounds: int) -> dict[str, float]:
    """Median seconds of one step of each entry, in interleaved rounds in a fresh random order each round
    (:func:`msign.median_times`) after a warm-up step."""

    def stepper(group):
        def step():
            for opt in group:
                opt.step()
        return step

    return median_times({name: stepper(group) for name, group in opts.items()}, rounds, torch.device("cpu"))


def matrix_summary(opts: dict[str, list]) -> str:
    """How many tensors specopt orthogonalises and in how many distinct shapes."""
    shapes = [tuple(p.shape) for p in orthogonalised(opts["specopt Muon (fp32), default"][0])[0]]
    return f"{len(shapes)} tensors in {len(set(shapes))} shapes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds; print only")
    parser.add_argument("--rounds", type=int, default=21)
    args = parse_machine_args(parser)
    if args.device.type != "cpu":
        parser.error("this benchmark measures the CPU path (on a GPU every stack is one call anyway)")
    rounds = 5 if args.quick else args.rounds
    rows = []
    for set_name, build in MODELS.items():
        print(f"{set_name} …", flush=True)
        torch.manual_seed(0)
        model = with_gradients(build())
        opts = optimizers(model)
        summary = matrix_summary(opts)
        med = time_steps(opts, rounds)
        torch_ref = med.get("torch.optim.Muon (bf16)")
        for name, seconds in med.items():
            label = name.split(" (")[1].split(")")[0] if name.startswith("specopt") else None
            per_matrix = med.get(f"specopt Muon ({label}), one call per matrix") if label else None
            rows.append({"set": set_name, "tensors": summary, "optimizer": name, "step_ms": seconds * 1e3,
                         "vs_torch": None if torch_ref is None or "(fp32)" in name else seconds / torch_ref,
                         "vs_one_call_per_matrix": None if per_matrix is None else seconds / per_matrix})
    lines = [
        "## Optimizer step on small models (cpu)", "",
        f"Measured by {command('step_small.py', args)} on {where(args)}, median of {rounds} interleaved steps, fixed "
        "random gradients. torch.optim.Muon: Newton–Schulz in bf16 (its only dtype), one matrix per call, with "
        "AdamW (fused) on the tensors specopt gives to AdamW. specopt Muon on `param_groups(model)`: Polar Express "
        "(5 steps) with the lmo's of one shape stacked into one call (the default on the CPU for tensors of at most "
        f"{linalg.CPU_BATCH_MAX_NUMEL} entries) or one call per matrix (`batch_lmo=False`, the CPU default before), "
        "in bf16 and in float32. Ratios within one run, like against like: the torch column for the bf16 rows "
        "only (torch's Newton–Schulz is bf16). Not the same matrices: `param_groups` splits a fused q/k/v into its "
        "three blocks (stacked: 3·(d×d)), which torch.optim.Muon orthogonalises as one (3d×d) matrix.", "",
        "| parameter set | orthogonalised | optimizer | step (ms) | ÷ torch.optim.Muon (bf16) "
        "| ÷ one call per matrix |",
        "|---|---|---|---:|---:|---:|"]
    for r in rows:
        vs_torch = "—" if r["vs_torch"] is None else f"{r['vs_torch']:.2f}"
        vs_loop = "—" if r["vs_one_call_per_matrix"] is None else f"{r['vs_one_call_per_matrix']:.2f}"
        lines.append(f"| {r['set']} | {r['tensors']} | {r['optimizer']} | {r['step_ms']:.1f} | {vs_torch} "
                     f"| {vs_loop} |")
    native = linalg.default_compute_dtype(torch.device("cpu")) == torch.bfloat16
    lines += ["", "- the CNN's conv kernels are 4-D, which torch.optim.Muon does not take: no torch row there",
              ("- this CPU multiplies bf16 natively: the bf16 rows are specopt's default here" if native else
               "- this CPU has no native bf16 (its bf16 matmuls are emulated, several times slower than float32's): "
               "the float32 rows are specopt's default here; the bf16 rows are like against like with "
               "torch.optim.Muon, whose Newton–Schulz is bf16 only"),
              DRIFT_NOTE["cpu"]]
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        publish("step-small", args, table, {"device": where(args), "rows": rows})


if __name__ == "__main__":
    main()
