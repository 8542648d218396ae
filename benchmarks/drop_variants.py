"""Drop-Muon's variants on the default char-GPT (600 steps, linear decay, one thread): final validation loss beside
the expected share of the Muon tensors orthogonalized per step (the step-cost proxy, Muon's is 1).

    python benchmarks/drop_variants.py [--seeds 0] [--only NAME,NAME]   # appends to results/drop_variants.csv

Variants (:data:`VARIANTS`): the cutoff's distribution ``p(c) ∝ decay^c`` (``decay`` 1 is the paper's uniform index
sampling, smaller favours small cutoffs; the ``decay`` option of :class:`specopt.drop.ProgressiveDrop`), and two
rules measured here only (:class:`VariantDrop`), not options of the class: ``accumulate``, the dropped layers'
momentum still takes the gradient, ``M_l ← μM_l + (1−μ)g_l``, only the msign and the step are skipped (the paper
freezes it, ``M_l^k = M_l^{k−1}`` for ``l ∉ S^k``, arXiv:2510.02239), and ``rescale``, the step ``γ/P_l`` of a layer
updated with probability ``P_l`` (an unbiased step in expectation, ``P_l·γ/P_l = γ``; measured no better).
DropMuon's constructor arguments are fixed with ``functools.partial`` (the registry passes lr, weight decay and
AdamW's lr only). Rows are appended as runs end; variants already in the file are skipped.
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_defaults import append_row, final_val  # noqa: E402

from specopt.drop import DropMuon, ProgressiveDrop, cutoff_probabilities, expected_lmo_fraction  # noqa: E402
from specopt.training import RunConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "drop_variants.csv"
FIELDS = ("variant", "decay", "rescale", "accumulate", "lr", "seed", "lmo_fraction", "final_val", "seconds")
VARIANTS = {
    "uniform": {},
    "uniform lr 0.01": {"lr": 0.01},
    "uniform lr 0.04": {"lr": 0.04},
    "accumulate": {"accumulate": True},
    "decay 0.8": {"decay": 0.8},
    "decay 0.5": {"decay": 0.5},
    "decay 0.3": {"decay": 0.3},
    "decay 0.1": {"decay": 0.1},
    "rescale": {"rescale": True},
    "rescale lr 0.01": {"rescale": True, "lr": 0.01},
    "rescale lr 0.005": {"rescale": True, "lr": 0.005},
    "decay 0.5 rescale": {"decay": 0.5, "rescale": True},
    "decay 0.5 accumulate": {"decay": 0.5, "accumulate": True},
    "decay 0.8 accumulate": {"decay": 0.8, "accumulate": True},
    "muon": None,
}
"""Name → DropMuon arguments (lr 0.02, the class default, unless given); ``"muon"``: Muon itself, the reference, run
here so that every difference is like against like (one thread, this machine: the char-GPT's final loss moves by
0.005–0.01 with the thread count)."""


class VariantDrop(ProgressiveDrop):
    """ProgressiveDrop whose dropped tensors still update their momentum (``accumulate``) and whose tensor l steps
    ``γ/P_l`` (``rescale``); neither is the paper's rule (see above)."""

    def __init__(self, seed: int, decay: float, accumulate: bool, rescale: bool, estimator):
        super().__init__(seed, decay)
        self.accumulate, self.rescale, self.estimator = accumulate, rescale, estimator
        self._reach: dict[int, float] = {}

    def active(self, records: list, ctx) -> list:
        records = self._by_depth(records)
        kept = super().active(records, ctx)
        cutoff = len(records) - len(kept)
        if self.accumulate:
            for rec in records[:cutoff]:
                self.estimator.direction(rec, ctx)  # M ← μM + (1−μ)g; the direction itself is not used
        reach = cutoff_probabilities(len(records), self.decay).cumsum(0).tolist()  # P_l = P(c ≤ l)
        self._reach = {id(rec): reach[i] for i, rec in enumerate(records) if i >= cutoff}
        return kept

    def scale(self, records, ctx) -> None:
        super().scale(records, ctx)
        if self.rescale:
            for rec in records:
                rec.scale = rec.scale / self._reach[id(rec)]


def drop_muon(params, accumulate: bool = False, rescale: bool = False, **kwargs):
    opt = DropMuon(params, **kwargs)
    if accumulate or rescale:
        tensors = opt.rule.tensors
        opt.rule = VariantDrop(opt.rule.seed, opt.rule.decay, accumulate, rescale, opt.estimator)
        opt.rule.tensors = tensors
    return opt


def n_muon_tensors() -> int:
    from specopt.registry import build, resolve
    from specopt.tasks import get_task
    task = get_task("char-gpt", size="tiny")
    opt = build("drop-muon", task.build_model(), task, resolve("drop-muon"))[0]
    return sum(1 for g in opt.param_groups if g["norm"] != "adamw" for _ in g["params"])


def run(seeds: list[int], names: list[str]) -> None:
    torch.set_num_threads(1)
    n = n_muon_tensors()
    done = set()
    if RESULTS.is_file():
        with open(RESULTS) as f:
            done = {(r["variant"], int(r["seed"])) for r in csv.DictReader(f)}
    for seed in seeds:
        for name in names:
            if (name, seed) in done:
                continue
            args = dict(VARIANTS[name] or {})
            lr = args.pop("lr", 0.02)
            cfg = RunConfig(task="char-gpt", optimizer="muon" if VARIANTS[name] is None else "drop-muon", steps=600,
                            seed=seed, task_options={"size": "tiny"}, hparams={"lr": lr}, val_every=100,
                            checkpoint_every=600)
            final, seconds = final_val(cfg, {"DropMuon": functools.partial(drop_muon, **args)})
            decay = "" if VARIANTS[name] is None else args.get("decay", 1.0)
            row = {"variant": name, "decay": decay, "rescale": args.get("rescale", False),
                   "accumulate": args.get("accumulate", False), "lr": lr, "seed": seed,
                   "lmo_fraction": 1.0 if decay == "" else round(expected_lmo_fraction(n, decay), 4),
                   "final_val": final, "seconds": seconds}
            append_row(RESULTS, list(FIELDS), row)
            print(f"{name}, seed {seed}: lmo fraction {row['lmo_fraction']}, final val {final:.4f} "
                  f"({row['seconds']} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [x for x in names if x not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; variants: {', '.join(VARIANTS)}")
    run([int(s) for s in args.seeds.split(",")], names)


if __name__ == "__main__":
    main()
