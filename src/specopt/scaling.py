"""Batch size and step size across token budgets (Silveti-Falls et al., *Spectral optimizers for deep learning:
Muon, Scion and so on*, lectures 2026).

For momentum SCG under a μ-KL condition, the best tokens per step and step size for a budget of T tokens
scale as ``B·S ∝ T^{2/3}`` and ``β ∝ T^{-1/3}``. From a tuned base run (T0, B0, S0, β0), a budget
``T1 = r·T0`` gets ``B1·S1 = r^{2/3}·B0·S0`` and ``β1 = r^{-1/3}·β0``.

The lectures' worked example (Silveti-Falls et al. 2026): T0 = 1.3B, B0 = 256, S0 = 1024, β0 = 3.6e-4 and
T1 ≈ 10.6B give r ≈ 8.15, B1·S1 ≈ 4.05·B0·S0, β1 ≈ 1.8e-4, B ≈ 1037 → 1024 at S = 1024 (or B = 512 at S = 2048).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from specopt._checks import check_number

TOKENS_EXPONENT = 2.0 / 3.0
STEP_EXPONENT = -1.0 / 3.0


@dataclass(frozen=True)
class Transfer:
    """The transferred configuration: ratio r, tokens per step B1·S1, step size β1 and (B, S) choices."""

    ratio: float
    tokens_per_step: float
    tokens_factor: float
    step_size: float
    choices: tuple[tuple[int, int], ...]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:  # numpy's ints too
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def power_of_two(x: float) -> float:
    """The power of two nearest to ``x`` in log scale, ties going up (an int from 1 up, a float below 1)."""
    check_number(x, "x", low_open=True)
    return 2 ** math.floor(math.log2(x) + 0.5)


def transfer(tokens: float, batch: int, seq: int, lr: float, target_tokens: float, *,
             allow_smaller: bool = False, seq_choices: tuple[int, ...] | None = None) -> Transfer:
    """Transfer (B0, S0, β0) tuned at ``tokens`` to ``target_tokens`` by ``B·S ∝ T^{2/3}``, ``β ∝ T^{-1/3}``.

    ``choices`` pair a sequence length (S0 and its neighbouring powers of two, or ``seq_choices``) with the
    power-of-two batch size nearest to ``B1·S1 / S``.
    """
    check_number(tokens, "tokens", low_open=True)
    check_number(target_tokens, "target_tokens", low_open=True)
    check_number(lr, "lr", low_open=True)
    batch, seq = _positive_int(batch, "batch"), _positive_int(seq, "seq")
    if tokens < batch * seq:
        raise ValueError(f"the base budget of {tokens:g} tokens is less than one step of the base batch ({batch} × "
                         f"{seq} = {batch * seq} tokens): give the tokens the tuned run trained on")
    if target_tokens < tokens and not allow_smaller:
        raise ValueError(f"target_tokens ({target_tokens:g}) is smaller than the base budget ({tokens:g}); "
                         "pass allow_smaller=True to scale down")
    r = target_tokens / tokens
    factor = r**TOKENS_EXPONENT
    per_step = factor * batch * seq
    if per_step < 1:
        raise ValueError(f"the transferred batch holds less than one token per step (B1·S1 = {per_step:.3g}): "
                         f"target_tokens ({target_tokens:g}) is too far below the base budget ({tokens:g})")
    if seq_choices is not None:
        seq_choices = tuple(_positive_int(s, "each of seq_choices") for s in seq_choices)
        if not seq_choices:
            raise ValueError("seq_choices is empty: give at least one sequence length, or None for S0's neighbours")
    seqs = seq_choices or tuple(s for s in (seq // 2, seq, seq * 2) if s >= 1)
    choices = tuple((power_of_two(per_step / s), s) for s in seqs if power_of_two(per_step / s) >= 1)
    if not choices:
        raise ValueError(f"the transferred {per_step:,.0f} tokens per step are less than one sequence of any length "
                         f"offered ({', '.join(map(str, seqs))}): target_tokens ({target_tokens:g}) is too far below "
                         f"the base budget ({tokens:g}) for batches of whole sequences")
    return Transfer(ratio=r, tokens_per_step=per_step, tokens_factor=factor, step_size=lr * r**STEP_EXPONENT,
                    choices=choices)


def tokens_per_step_schedule(tokens_seen: float, base_tokens: float, base_tokens_per_step: int) -> float:
    """Tokens per step after ``tokens_seen`` tokens, growing as ``(tokens_seen/base_tokens)^{2/3}`` from
    ``base_tokens_per_step`` (never below it): the adaptive schedule of the lectures."""
    check_number(tokens_seen, "tokens_seen")
    check_number(base_tokens, "base_tokens", low_open=True)
    _positive_int(base_tokens_per_step, "base_tokens_per_step")
    grow = max(1.0, tokens_seen / base_tokens) ** TOKENS_EXPONENT
    return base_tokens_per_step * grow


def _count(n: float, separator: str = ",") -> str:
    """A count in digits (thousands separated by ``separator``), or, past 10^15 (a budget ratio of astronomical
    size), as 1.2e+20: 200 digits help nobody."""
    return f"{n:{separator}.0f}" if n < 1e15 else f"{n:.4g}"


def format_transfer(t: Transfer, batch: int, seq: int, lr: float) -> str:
    lines = [f"budget ratio r = {t.ratio:.4g}",
             f"tokens per step B1·S1 = r^(2/3)·B0·S0 = {t.tokens_factor:.4g} × {batch * seq:,} = "
             f"{_count(t.tokens_per_step)}",
             f"step size β1 = r^(-1/3)·β0 = {t.step_size:.3g} (from {lr:.3g})",
             "batch choices (B1, S1), B rounded to a power of two:"]
    lines += [f"  B = {_count(b, separator=''):>6}, S = {s:>6}  (B·S = {_count(b * s)})" for b, s in t.choices]
    return "\n".join(lines)


def batch_size_schedule(steps: int, base_batch: int, units_per_example: int, base_steps: int,
                        max_factor: float = 8.0) -> list[int]:
    """Batch size of every step so that tokens per step grow as ``(tokens seen)^{2/3}``: ``B_k = B0`` for the
    first ``base_steps`` steps' worth of tokens ``T_base = B0·S·base_steps``, then
    ``B_k = round(B0·(T_k/T_base)^{2/3})`` with ``T_k`` the tokens seen before step k, capped at
    ``max_factor·B0`` (with T growing as Σ B the uncapped batch grows like k², so a run of fixed length needs
    a cap). Deterministic, so runs with the schedule resume exactly."""
    _positive_int(steps, "steps")
    _positive_int(base_batch, "base_batch")
    _positive_int(units_per_example, "units_per_example")
    _positive_int(base_steps, "base_steps")
    check_number(max_factor, "max_factor", low=1.0)  # the cap is at least the base batch
    base_tokens = base_batch * units_per_example * base_steps
    seen, sizes = 0, []
    for _ in range(steps):
        grown = tokens_per_step_schedule(seen, base_tokens, base_batch * units_per_example) / units_per_example
        size = min(max(base_batch, round(grown)), int(max_factor * base_batch))
        sizes.append(size)
        seen += size * units_per_example
    return sizes
