"""The measurements behind docs/integrations.md, on tiny random-init causal LMs (CPU, about a minute each).

``clipping``: what the trainers' global gradient-norm clipping does to each optimizer. HF's Trainer clips with
``max_grad_norm=1.0`` by default, Lightning with ``gradient_clip_val`` when set; both call
``torch.nn.utils.clip_grad_norm_``: every gradient times one factor ``c = min(1, max_norm/‖g‖₂)``. Along an unclipped
run, a twin optimizer of the same kind steps at every step from the same weights on the clipped gradients (so its
momentum holds clipped gradients only, as in a clipped run; its update is recorded, then undone), and the unclipped
optimizer takes the step. Printed: the number of steps where ``c < 1`` and the smallest ``c``; the step length in
each hidden matrix's own norm, twin / unclipped (mean and range over steps, matrices and seeds); the cosine between
the two updates; and the final training loss of separate unclipped and clipped runs (mean over seeds).

``closure``: Gluon's online smoothness estimate and STORM with and without ``step(closure)`` (HF's Trainer passes
none, Lightning does) and with and without dropout (the closure re-evaluates the batch, and dropout draws new masks).

Run: ``OMP_NUM_THREADS=1 python docs/trainer_measurements.py clipping [--model llama]`` and ``... closure``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from specopt.integrations import create_optimizer

CLIPPING = {
    "muon": {"name": "muon"},
    "scion": {"name": "scion"},
    "uscion": {"name": "uscion"},
    "clipped-scion (ρ_c 60)": {"name": "clipped-scion", "clip_radius": 60.0},
    "clipped-scion (ρ_c 600)": {"name": "clipped-scion", "clip_radius": 600.0},
    "gluon L0=0 L1=50": {"name": "gluon", "L0": 0.0, "L1": 50.0},
    "gluon L0=1 L1=20": {"name": "gluon", "L0": 1.0, "L1": 20.0},
    "gluon online (closure)": {"name": "gluon"},
}
"""``specopt.registry.DEFAULTS`` unless stated; Gluon with fixed L0/L1 as under HF's Trainer, online as under
Lightning (whose closure re-evaluates the batch)."""


def tiny_lm(kind: str, seed: int = 0, dropout: float = 0.0, vocab: int = 64):
    import transformers

    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=32,
                                      bos_token_id=0, eos_token_id=0, resid_pdrop=dropout, embd_pdrop=dropout,
                                      attn_pdrop=dropout)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=32,
                                   attention_dropout=dropout)
    return transformers.LlamaForCausalLM(cfg)


def chain(n: int = 64, seq: int = 32, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    """Sequences of one fixed random permutation chain: learnable in a few dozen steps, from loss ln(vocab)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab, generator=g)
    x = torch.empty(n, seq, dtype=torch.long)
    x[:, 0] = torch.randint(vocab, (n,), generator=g)
    for t in range(1, seq):
        x[:, t] = perm[x[:, t - 1]]
    return x


def _closure(model, opt, batch, max_norm: float = 0.0):
    def closure():
        opt.zero_grad()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if max_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return loss
    return closure


def _batches(data, steps: int, batch: int = 8):
    return [data[(batch * k) % len(data):][:batch] for k in range(steps)]


def _final_loss(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(input_ids=data, labels=data).loss)


def clipping_run(kind: str, spec: dict, steps: int, max_norm: float, seed: int, twin: bool):
    """One run, clipped at ``max_norm`` unless ``twin``; with ``twin``, the paired twin measurement (module doc).
    Returns the final loss, the clip factors, the per-matrix step-length ratios and the per-step cosines."""
    options = dict(spec)
    name = options.pop("name")
    data = chain(seed=seed)
    model = tiny_lm(kind, seed)
    opt = create_optimizer(model, name, **options)
    shadow = create_optimizer(model, name, **options) if twin else None
    params = list(model.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    hidden = [(index[id(p)], g["norm"]) for g in opt.param_groups if g.get("role") == "hidden" for p in g["params"]]
    factors, ratios, cosines = [], [], []
    for batch in _batches(data, steps):
        if shadow is None:
            opt.step(_closure(model, opt, batch, max_norm))
            continue
        model.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        factors.append(min(1.0, max_norm / float(torch.nn.utils.clip_grad_norm_(params, float("inf")))))
        weights = [p.detach().clone() for p in params]
        shadow.step(_closure(model, shadow, batch, max_norm))
        clipped = [params[i].detach() - weights[i] for i, _ in hidden]
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)
        opt.step(_closure(model, opt, batch))
        plain = [params[i].detach() - weights[i] for i, _ in hidden]
        ratios += [float(norm.norm(c) / norm.norm(u)) for (_, norm), c, u in zip(hidden, clipped, plain, strict=True)]
        c, u = torch.cat([x.flatten() for x in clipped]), torch.cat([x.flatten() for x in plain])
        cosines.append(float(c @ u / (c.norm() * u.norm())))
    return _final_loss(model, data), factors, ratios, cosines


def clipping(kind: str, steps: int, max_norm: float, seeds: int) -> None:
    print(f"tiny {kind}, {steps} steps, {seeds} seeds, clip_grad_norm_ at max_norm={max_norm}\n")
    print("| optimizer | steps with c < 1, min c | step length clipped/unclipped: mean (min–max) | update cosine: mean "
          f"(min) | final loss, no clipping | final loss, clipped at {max_norm} |")
    print("|---|---|---|---|---|---|")
    for label, spec in CLIPPING.items():
        factors, ratios, cosines, plain, clipped = [], [], [], [], []
        for seed in range(seeds):
            loss, f, r, c = clipping_run(kind, spec, steps, max_norm, seed, twin=True)
            factors += f
            ratios += r
            cosines += c
            plain.append(loss)
            clipped.append(clipping_run(kind, spec, steps, max_norm, seed, twin=False)[0])
        active = sum(f < 1 for f in factors)
        print(f"| {label} | {active}/{len(factors)}, {min(factors):.2f} | {statistics.mean(ratios):.3f} "
              f"({min(ratios):.3f}–{max(ratios):.3f}) | {statistics.mean(cosines):.3f} ({min(cosines):.3f}) | "
              f"{statistics.mean(plain):.3f} | {statistics.mean(clipped):.3f} |", flush=True)


def closure(kind: str, steps: int, seeds: int) -> None:
    import transformers

    from specopt.integrations import warmup_schedule

    print(f"tiny {kind}, {steps} steps, {seeds} seeds: final training loss (mean), initial ≈ 4.16\n")
    print("| optimizer, lr schedule | step() without closure (as HF's Trainer), dropout 0.1 | step(closure), "
          "dropout 0.1 | step(closure), dropout 0 |")
    print("|---|---|---|---|")
    rows = (("gluon (online L0/L1), constant", "gluon", {}, None),
            ("gluon (online L0/L1), transformers' linear warm-up (2 steps, from lr 0)", "gluon", {}, "hf"),
            ("gluon (online L0/L1), warmup_schedule (2 steps, from lr/3)", "gluon", {}, "ours"),
            ("muon, estimator='storm', constant", "muon", {"estimator": "storm"}, None),
            ("muon, constant", "muon", {}, None))
    for label, name, options, schedule in rows:
        cells = []
        for use_closure, dropout in ((False, 0.1), (True, 0.1), (True, 0.0)):
            if not use_closure and options:
                cells.append("refused (needs a closure)")
                continue
            losses = []
            for seed in range(seeds):
                data = chain(seed=seed)
                model = tiny_lm(kind, seed, dropout)
                opt = create_optimizer(model, name, **options)
                scheduler = None
                if schedule == "hf":
                    scheduler = transformers.get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=steps)
                elif schedule == "ours":
                    scheduler = warmup_schedule(opt, steps, 2, "linear")
                for batch in _batches(data, steps):
                    step = _closure(model, opt, batch)
                    if use_closure:
                        opt.step(step)
                    else:
                        step()
                        opt.step()
                    if scheduler is not None:
                        scheduler.step()
                losses.append(_final_loss(model, data))
            cells.append(f"{statistics.mean(losses):.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("clipping", "closure"))
    parser.add_argument("--model", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--steps", type=int, default=None, help="default: 30 (clipping), 60 (closure)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "clipping":
        clipping(args.model, args.steps or 30, args.max_grad_norm, args.seeds)
    else:
        closure(args.model, args.steps or 60, args.seeds)


if __name__ == "__main__":
    main()
