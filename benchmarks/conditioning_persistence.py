"""How the `muon-conditioning` experiment's count treats an error that dips below δ and comes back: Muon's
iteration count at δ = 1e-3 (the paper's schedule, q = 0.9, the experiment's 5 seeds) counted as the experiment
counts it — the first iteration at or below δ — and as the first iteration from which the error *stays* below δ
(until iteration 3,000, far past the schedule's end).

    python benchmarks/conditioning_persistence.py      # prints one line per problem, start and κ

Muon's error oscillates around δ before it settles (each step moves every singular value by the same η_t); GD's
decreases monotonically, so the two counts agree for GD, and the first-hit rule is the more lenient to Muon.
"""

from __future__ import annotations

import numpy as np

from specopt.experiments.conditioning import DELTA, KAPPAS, SEEDS, InContextRegression, MatrixFactorization, polar

HORIZON = 3000


def counts(problem, start: str) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: the first iteration at or below δ, and the first from which the error stays there (inf: never)."""
    X = problem.start(start).copy()
    below = []
    for t in range(1, HORIZON + 1):
        X = X - (problem.eta0 * 0.9 ** (t - 1))[:, None, None] * polar(problem.grad(X))
        below.append(problem.errors(X)[0] <= DELTA)  # errors are relative to the smallest scale already
    below = np.array(below)  # iterations × seeds
    first = np.where(below.any(0), below.argmax(0) + 1, np.inf)
    above = ~below
    last_above = np.where(above.any(0), HORIZON - above[::-1].argmax(0), 0)
    stays = np.where(below[-1], last_above + 1, np.inf)
    return first, stays


def main() -> None:
    print(f"Muon, paper's schedule, δ = {DELTA:g}, {SEEDS} seeds: median first hit / median iteration from which the "
          "error stays below δ")
    for cls in (MatrixFactorization, InContextRegression):
        problem = cls(KAPPAS, SEEDS)  # the experiment's problems: every κ's seeds drawn as it draws them
        for start in ("aligned", "random"):
            first, stays = (c.reshape(len(KAPPAS), SEEDS) for c in counts(problem, start))  # κ-major, as measured
            medians = {}
            for i in (0, len(KAPPAS) - 1):
                medians[i] = (np.median(first[i]), np.median(stays[i]))
                print(f"{cls.name:<22} {start:<8} κ = {KAPPAS[i]:>7g}: first {medians[i][0]:>6g}, "
                      f"stays {medians[i][1]:>6g}")
            last = len(KAPPAS) - 1
            print(f"{'':<31} growth κ 10 → 10⁴: first ×{medians[last][0] / medians[0][0]:.2f}, "
                  f"stays ×{medians[last][1] / medians[0][1]:.2f}")


if __name__ == "__main__":
    main()
