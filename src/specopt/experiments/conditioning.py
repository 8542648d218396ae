"""`muon-conditioning`: iterations to a fixed accuracy against the condition number κ for simplified Muon, gradient
descent and Adam, on matrix factorisation and on in-context linear regression, from the paper's aligned start and
from a random one (Ma, Huang, Chi & Chen 2026, *Preconditioning Benefits of Spectral Orthogonalization in Muon*,
arXiv:2601.13474).

Claim: simplified Muon ``X ← X − η_t·polar(∇f)``, ``η_t = η₀qᵗ``, reaches a given accuracy in a number of
iterations that does not grow with κ; gradient descent's count grows with κ; so does Adam's.

Problems (float64, numpy; 5 seeds at every κ, each drawing the problem's eigenvectors and the random start):

* MF: ``f(X) = ¼‖XXᵀ − M*‖_F²``, ``M* = U diag(λ) Uᵀ``, n = 50, r = 5, λ log-spaced from 1 to 1/κ;
  accuracy ``‖XXᵀ − M*‖_F ≤ δ·λ_r`` (every eigenvalue of M* fitted to a relative δ).
* ICL: ``L(Γ) = ½[tr(ΓᵀΛΓΦ) − 2tr(ΛΓΛ) + trΛ]``, ``Φ = ((N+1)/N)Λ² + (trΛ/N)Λ``, d = 10, N = 20,
  ``Λ = Q diag(λ) Qᵀ``, λ log-spaced from 1 to 1/κ, ``Γ* = Φ⁻¹Λ`` by a direct solve; accuracy
  ``‖Γ − Γ*‖_F ≤ δ·σ_min(Γ*)``.

δ = 1e-3 (the table also gives δ = 1e-1 and 1e-2). The accuracy is measured against the *smallest* scale of the
solution, so that it asks the same thing at every κ. On MF this costs every method about log κ more iterations:
Muon's step, common to all singular values, must shrink to ~δ√λ_r = δ/√κ, i.e. ``log(√κ/δ)/log(1/q)``
iterations of the schedule (+11 per decade of κ at q = 0.9); the paper's κ-independence is for an accuracy
relative to λ₁. A relative loss tolerance does not: ``(f − f*)/(f₀ − f*)
≤ 1e-4`` ignores every eigenvalue of M* below 1e-2·λ₁, so beyond κ = 100 it no longer sees the hard directions
(column ``rel_loss_1e-4``, for comparison).

Starts: *aligned*, the paper's: ``X₀ = 1e-3·U`` (MF), ``Γ₀ = 0`` (ICL); from these every iterate keeps the
problem's singular vectors, and Muon's dynamics split into one scalar sequence per singular value (the paper's
analysis); *random*: ``1e-3·R``, R a Haar-random matrix with orthonormal columns, unrelated to U or Q, so they
do not split.

Methods:
* Muon, the paper's schedule: ``q = 0.9``, ``η₀ = 0.1√λ₁`` (MF), ``η₀ = 0.2‖Γ*‖_op`` (ICL), one setting for
  every κ and start;
* Muon, tuned: its most favourable ``(c·η₀, q)`` per κ and start, c ∈ {0.1, 0.3, 1, 3}, q ∈ {0.8, …, 0.995};
* GD: step ``1/L``, L the largest Hessian eigenvalue at the solution (MF: 3λ₁; ICL: λ₁·λ_max(Φ)); on ICL, a
  quadratic, the count is exact in closed form, ``Γ_t − Γ* = (I − H/L)ᵗ(Γ₀ − Γ*)`` with H the Hessian;
* Adam: β = (0.9, 0.999), lr ``c·η₀·qᵗ``, its most favourable setting per κ and start, c ∈ {0.1, 0.3, 1, 3, 10},
  q ∈ {0.9, …, 0.99995}. (The first full run stopped Adam's grid at c = 1 and q = 0.98, and Muon's at q = 0.9: Adam
  chose its largest step in 15 of 20 cells and Muon its fastest decay in 23 of 28, so both grids were widened.)

"Most favourable" is the setting with the fewest censored seeds, then the smallest median count, then the smallest
maximum, chosen separately for each accuracy. A run stops when it reaches the accuracy, when its schedule has ended (the
path left, ``η₀qᵗ/(1−q)``, is below 1e-12 of the whole, so it can no longer move), when its loss is not finite,
or at the cap (Muon 6,000, Adam 60,000, GD 300,000 iterations); the last three are *censored*: not reached.

Refutation: Muon's claim is refuted if, from either start, its median count at κ = 10⁴ exceeds 2× its count at
κ = 10, or it is censored at some κ. GD's and Adam's dependence on κ is refuted if their median counts grow by
less than 2× over κ = 10…10⁴ (a count censored at the cap counts as growth only if it was measured at κ = 10;
one censored already at κ = 10 is not measurable).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from specopt.experiments.common import progress_bar, pyplot, write_report

KAPPAS = tuple(float(k) for k in np.logspace(1, 4, 7))  # 10 … 10⁴ in half decades
DELTAS = (1e-1, 1e-2, 1e-3)  # accuracies recorded; the last is the one plotted
COLUMNS = {
    "problem": "matrix factorization or in-context regression", "start": "aligned (the paper's) or random",
    "kappa": "the condition number κ", "method": "muon (the paper's schedule), muon_tuned, gd or adam",
    "setting": "the schedule used (the most favourable of the grid for the tuned methods)",
    "iterations_median": "median over the seeds of the iterations to δ = 1e-3 (censored: not reached)",
    "iterations_min": "the fewest", "iterations_max": "the most", "reached": "seeds that reached δ",
    "delta_0.1_median": "median iterations to δ = 0.1", "delta_0.01_median": "to δ = 0.01",
    "rel_loss_0.0001_median": "to a relative loss (f − f*)/(f₀ − f*) ≤ 1e-4, for comparison"}
"""What each column of ``results.csv`` holds."""
DELTA = DELTAS[-1]
REL_LOSS = 1e-4  # the relative loss tolerance shown for comparison (blind to small eigenvalues)
SEEDS = 5
START_SCALE = 1e-3
ENDED = 1e-12  # a run whose remaining path is below this fraction of its whole path can no longer move
MUON = (1.0, 0.9)  # (c, q): the paper's schedule
MUON_GRID = {"c": (0.1, 0.3, 1.0, 3.0), "q": (0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995)}
ADAM_GRID = {"c": (0.1, 0.3, 1.0, 3.0, 10.0),
             "q": (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995)}
CAPS = {"muon": 6000, "muon_tuned": 6000, "gd": 300_000, "adam": 60_000}
METHODS = ("muon", "muon_tuned", "gd", "adam")
LABELS = {"muon": "Muon, paper's schedule", "muon_tuned": "Muon, tuned schedule", "gd": "GD, step 1/L",
          "adam": "Adam, tuned schedule"}
STARTS = ("aligned", "random")


def _haar(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """A random n×r matrix with orthonormal columns (Haar-distributed)."""
    Q, R = np.linalg.qr(rng.standard_normal((n, r)))
    return Q * np.sign(np.diag(R))


class _Runs:
    """A batch of problem instances, one per run along axis 0; ``subset``/``repeat`` select and copy runs."""

    batched: tuple[str, ...] = ()

    def subset(self, index: np.ndarray):
        new = copy.copy(self)
        for name in self.batched:
            setattr(new, name, getattr(self, name)[index])
        return new

    def repeat(self, times: int):
        return self.subset(np.repeat(np.arange(len(self.eta0)), times))


class MatrixFactorization(_Runs):
    """``f(X) = ¼‖XXᵀ − M*‖_F²``, ``∇f = (XXᵀ − M*)X``, ``M* = U diag(λ) Uᵀ``; one instance per (κ, seed).

    Everything is computed in r×r blocks: with ``A = UᵀX`` and ``B = X − UA`` (orthogonal to U),
    ``‖XXᵀ − M*‖_F² = ‖AAᵀ − Λ‖_F² + 2‖ABᵀ‖_F² + ‖BᵀB‖_F²`` (no cancellation near the solution)."""

    name = "matrix factorization"
    batched = ("lam", "U", "random", "L", "eta0")

    def __init__(self, kappas, seeds: int, n: int = 50, r: int = 5):
        pairs = [(k, s) for k in kappas for s in range(seeds)]
        self.lam = np.array([np.geomspace(1.0, 1.0 / k, r) for k, _ in pairs])
        self.U = np.stack([_haar(np.random.default_rng(s), n, r) for _, s in pairs])
        self.random = np.stack([_haar(np.random.default_rng(1000 + s), n, r) for _, s in pairs])
        self.L = 3.0 * self.lam[:, 0]
        self.eta0 = 0.1 * np.sqrt(self.lam[:, 0])

    def start(self, kind: str) -> np.ndarray:
        return START_SCALE * (self.U if kind == "aligned" else self.random)

    def grad(self, X: np.ndarray) -> np.ndarray:
        A = np.swapaxes(self.U, 1, 2) @ X
        return X @ (np.swapaxes(X, 1, 2) @ X) - self.U @ (self.lam[:, :, None] * A)

    def errors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(‖XXᵀ − M*‖_F/λ_r, f(X)) per run; f* = 0."""
        A = np.swapaxes(self.U, 1, 2) @ X
        B = X - self.U @ A
        BtB = np.swapaxes(B, 1, 2) @ B
        inner = A @ np.swapaxes(A, 1, 2)
        idx = np.arange(A.shape[1])
        inner[:, idx, idx] -= self.lam
        sq = np.sum(inner**2, axis=(1, 2)) + 2 * np.sum((A @ BtB) * A, axis=(1, 2)) + np.sum(BtB**2, axis=(1, 2))
        res = np.sqrt(np.maximum(sq, 0.0))
        return res / self.lam[:, -1], 0.25 * sq


class InContextRegression(_Runs):
    """``L(Γ) = ½[tr(ΓᵀΛΓΦ) − 2tr(ΛΓΛ) + trΛ]``, ``∇L = ΛΓΦ − Λ²``; one instance per (κ, seed)."""

    name = "in-context regression"
    batched = ("lam", "phi", "Q", "Lam", "Phi", "G_star", "sigma_min", "random", "L", "eta0")

    def __init__(self, kappas, seeds: int, d: int = 10, N: int = 20):
        pairs = [(k, s) for k in kappas for s in range(seeds)]
        self.lam = np.array([np.geomspace(1.0, 1.0 / k, d) for k, _ in pairs])
        self.phi = (N + 1) / N * self.lam**2 + self.lam.sum(axis=1, keepdims=True) / N * self.lam
        self.Q = np.stack([_haar(np.random.default_rng(s), d, d) for _, s in pairs])
        Qt = np.swapaxes(self.Q, 1, 2)
        self.Lam = (self.Q * self.lam[:, None, :]) @ Qt
        self.Phi = (self.Q * self.phi[:, None, :]) @ Qt
        self.G_star = np.linalg.solve(self.Phi, self.Lam)  # Γ* = Φ⁻¹Λ (= ΛΦ⁻¹: they commute)
        sv = np.linalg.svd(self.G_star, compute_uv=False)
        self.sigma_min = sv[:, -1]
        self.random = np.stack([_haar(np.random.default_rng(1000 + s), d, d) for _, s in pairs])
        self.L = self.lam[:, 0] * self.phi.max(axis=1)
        self.eta0 = 0.2 * sv[:, 0]

    def start(self, kind: str) -> np.ndarray:
        return np.zeros_like(self.Q) if kind == "aligned" else START_SCALE * self.random

    def grad(self, G: np.ndarray) -> np.ndarray:
        return self.Lam @ G @ self.Phi - self.Lam @ self.Lam

    def errors(self, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(‖Γ − Γ*‖_F/σ_min(Γ*), L(Γ) − L*) per run; the excess loss is ``½tr(EᵀΛEΦ)``, E = Γ − Γ*."""
        E = G - self.G_star
        return (np.linalg.norm(E, axis=(1, 2)) / self.sigma_min,
                0.5 * np.sum(E * (self.Lam @ E @ self.Phi), axis=(1, 2)))

    def gd_first_hits(self, G0: np.ndarray, cap: int) -> np.ndarray:
        """GD's exact first hits (as :func:`first_hits`): in Q's basis ``E_ij(t) = (1 − h_ij/L)ᵗ E_ij(0)`` with
        ``h_ij = λ_iφ_j`` the Hessian's eigenvalues; both errors decrease in t, so bisection finds them."""
        Qt = np.swapaxes(self.Q, 1, 2)
        E0 = (Qt @ (G0 - self.G_star) @ self.Q) ** 2  # squared entries in the eigenbasis
        hits = np.full((len(G0), len(DELTAS) + 1), math.inf)
        for i, e0 in enumerate(E0):
            h = np.outer(self.lam[i], self.phi[i])
            rate = (1.0 - h / self.L[i]) ** 2
            dist = lambda t, e0=e0, rate=rate: math.sqrt(np.sum(rate**t * e0))  # noqa: E731
            loss = lambda t, e0=e0, rate=rate, h=h: 0.5 * np.sum(h * rate**t * e0)  # noqa: E731
            targets = [(dist, d * self.sigma_min[i]) for d in DELTAS] + [(loss, REL_LOSS * loss(0))]
            for k, (value, target) in enumerate(targets):
                hits[i, k] = _first_below(value, target, cap)
        return hits


def _first_below(value, target: float, cap: int) -> float:
    """The smallest t ≥ 1 with ``value(t) ≤ target`` for a non-increasing ``value``; ``inf`` if t > cap."""
    if value(cap) > target:
        return math.inf
    lo, hi = 0, cap  # value(hi) ≤ target; lo is below the answer
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if value(mid) <= target else (mid, hi)
    return float(hi)


PROBLEMS = (MatrixFactorization, InContextRegression)


def polar(G: np.ndarray) -> np.ndarray:
    """``polar(G) = UVᵀ`` for ``G = UΣVᵀ`` (batched over the leading axis)."""
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    return U @ Vt


def first_hits(problem, method: str, X0: np.ndarray, lr0: np.ndarray, q: np.ndarray, cap: int) -> np.ndarray:
    """Iterate ``method`` ('muon', 'gd' or 'adam') on every run of ``problem`` from ``X0`` with lr ``lr0·qᵗ``
    (per run; GD ignores them and steps 1/L) and return, per run, the first iteration at which the error is
    ≤ each of DELTAS and the relative excess loss ≤ REL_LOSS; ``inf`` where censored (cap, end of the schedule,
    non-finite loss). Finished runs are dropped from the batch as they finish."""
    X = np.array(X0, dtype=float)
    hits = np.full((len(X), len(DELTAS) + 1), math.inf)
    deltas = np.array(DELTAS)
    _, loss0 = problem.errors(X)
    alive = np.arange(len(X))
    runs, lr0, q, loss0 = problem, np.asarray(lr0, float), np.asarray(q, float), loss0
    m, v = np.zeros_like(X), np.zeros_like(X)
    for t in range(1, cap + 1):
        g = runs.grad(X)
        lr = (lr0 * q ** (t - 1))[:, None, None]
        if method == "muon":
            X = X - lr * polar(g)
        elif method == "gd":
            X = X - g / runs.L[:, None, None]
        else:  # adam
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            X = X - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-300)
        dist, loss = runs.errors(X)
        reached = np.concatenate([dist[:, None] <= deltas, (loss <= REL_LOSS * loss0)[:, None]], axis=1)
        block = hits[alive]
        block[reached & np.isinf(block)] = t
        hits[alive] = block
        keep = np.isinf(block).any(axis=1) & np.isfinite(loss) & (q**t > ENDED)  # GD: q = 1
        if not keep.any():
            break
        if keep.sum() <= 0.75 * len(keep):  # compact the batch
            alive, X, m, v, lr0, q, loss0 = (a[keep] for a in (alive, X, m, v, lr0, q, loss0))
            runs = runs.subset(keep)
    return hits


def measure(problem, start: str, method: str, kappas, seeds: int, grids: dict) -> list[dict]:
    """Run ``method`` from ``start`` on every (κ, seed) of ``problem`` (tuned methods: every setting of their
    grid) and return per κ the counts per seed ``hits`` (seeds × accuracies; tuned: each accuracy at its most
    favourable setting) and the setting chosen for δ."""
    X0 = problem.start(start)
    if method == "gd":
        hits = (problem.gd_first_hits(X0, 10**13) if isinstance(problem, InContextRegression)
                else first_hits(problem, "gd", X0, np.ones(len(X0)), np.ones(len(X0)), CAPS["gd"]))
        settings, hits = ["1/L"], hits.reshape(len(kappas), seeds, 1, -1)
    else:
        grid = [MUON] if method == "muon" else [(c, q) for c in grids[method]["c"] for q in grids[method]["q"]]
        runs = problem.repeat(len(grid))
        X = np.repeat(X0, len(grid), axis=0)
        lr0 = runs.eta0 * np.tile([c for c, _ in grid], len(X0))
        q = np.tile([q for _, q in grid], len(X0))
        solver = "adam" if method == "adam" else "muon"
        hits = first_hits(runs, solver, X, lr0, q, CAPS[method]).reshape(len(kappas), seeds, len(grid), -1)
        settings = [f"c={c:g}, q={q:g}" for c, q in grid]
    out = []
    for i in range(len(kappas)):
        best = [min(range(len(settings)), key=lambda j, k=k: _rank(hits[i, :, j, k])) for k in range(hits.shape[-1])]
        out.append({"hits": np.stack([hits[i, :, best[k], k] for k in range(hits.shape[-1])], axis=1),
                    "setting": settings[best[len(DELTAS) - 1]]})
    return out


def _rank(hits: np.ndarray) -> tuple:
    """A setting's rank on one accuracy: fewest censored seeds, then smallest median, then smallest maximum."""
    return int(np.isinf(hits).sum()), float(np.median(hits)), float(hits.max())


def _fmt(count: float) -> str:
    return str(int(count)) if math.isfinite(count) else "censored"


def run(out: Path, quick: bool = False, progress: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    kappas = (KAPPAS[0], KAPPAS[2]) if quick else KAPPAS
    seeds = 2 if quick else SEEDS
    grids = ({"muon_tuned": {"c": (0.3, 1.0), "q": (0.9, 0.95)}, "adam": {"c": (1.0,), "q": (0.99, 0.995)}}
             if quick else {"muon_tuned": MUON_GRID, "adam": ADAM_GRID})
    rows = []
    bar = progress_bar(len(PROBLEMS) * len(STARTS) * len(METHODS), "muon-conditioning", progress)
    for make in PROBLEMS:
        problem = make(kappas, seeds)
        for start in STARTS:
            for method in METHODS:
                for kappa, result in zip(kappas, measure(problem, start, method, kappas, seeds, grids), strict=True):
                    hits = result["hits"]
                    main = hits[:, len(DELTAS) - 1]
                    row = {"problem": problem.name, "start": start, "kappa": kappa, "method": method,
                           "setting": result["setting"], "iterations_median": _fmt(np.median(main)),
                           "iterations_min": _fmt(main.min()), "iterations_max": _fmt(main.max()),
                           "reached": f"{int(np.isfinite(main).sum())}/{seeds}"}
                    for k, d in enumerate(DELTAS[:-1]):
                        row[f"delta_{d:g}_median"] = _fmt(np.median(hits[:, k]))
                    row[f"rel_loss_{REL_LOSS:g}_median"] = _fmt(np.median(hits[:, -1]))
                    rows.append(row)
                bar.update(1)
    bar.close()
    _plot(rows, kappas, out / "plot.png")
    body = [__doc__.split("\n\n", 1)[1].strip(), "", "## Result", "", *_summary(rows, kappas, seeds, grids)]
    return write_report(out, "Iterations to accuracy δ against κ: Muon, GD and Adam", body, rows, glossary=COLUMNS)


def counts(rows, problem: str, start: str, method: str, field: str = "iterations_median") -> list[float]:
    """The column ``field`` of the rows of (problem, start, method) in κ order, censored as ``inf``."""
    return [math.inf if r[field] == "censored" else float(r[field])
            for r in rows if (r["problem"], r["start"], r["method"]) == (problem, start, method)]


def _summary(rows, kappas, seeds: int, grids: dict) -> list[str]:
    lines = [f"Median iterations to δ = {DELTA:g} over {seeds} seeds (min and max in the table), "
             f"κ = {kappas[0]:g}…{kappas[-1]:g}:", ""]
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for start in STARTS:
            parts = []
            for method in METHODS:
                c = counts(rows, problem, start, method)
                shown = ", ".join(f"{x:g}" if math.isfinite(x) else "censored" for x in c)
                ratio = f" (×{c[-1] / c[0]:.3g})" if math.isfinite(c[0]) and math.isfinite(c[-1]) else ""
                parts.append(f"{LABELS[method]} [{shown}]{ratio}")
            lines.append(f"- {problem}, {start} start: " + "; ".join(parts) + ".")
    lines += ["", *_notes(rows, kappas, seeds)]
    lines += ["", "Verdicts (the refutation rule above):", "", *verdicts(rows)]
    lines += ["", *grid_edges(rows, grids)]
    return lines


AXES = {"c": ("c", "smallest c (smallest step)", "largest c (largest step)"),
        "q": ("q", "smallest q (fastest decay)", "largest q (slowest decay)")}


def grid_edges(rows, grids: dict) -> list[str]:
    """How often each tuned method's chosen setting (where δ was reached) sits on an edge of its grid, per axis and
    end: a setting beyond that edge might do better, so its count is an upper bound there."""
    lines = ["Tuned settings on an edge of their grid (a setting beyond it might do better; counted over the cells "
             "where the median reached δ):", ""]
    for method, grid in grids.items():
        chosen = [dict(part.split("=") for part in r["setting"].split(", ")) for r in rows
                  if r["method"] == method and r["iterations_median"] != "censored"]
        edges = []
        for axis, (key, low, high) in AXES.items():
            values = [float(c[key]) for c in chosen]
            for label, end in ((low, min(grid[axis])), (high, max(grid[axis]))):
                if hits := sum(v == end for v in values):
                    edges.append(f"{label}, {end:g}, in {hits} of {len(values)}")
        lines.append(f"- {LABELS[method]}: " + ("; ".join(edges) if edges else "none") + ".")
    return lines


def _notes(rows, kappas, seeds: int) -> list[str]:
    """Muon's growth per decade of κ against its seed spread, where it is censored, and Adam's measured range."""
    decades = math.log10(kappas[-1] / kappas[0])
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for start in STARTS:
            sel = [r for r in rows if (r["problem"], r["start"], r["method"]) == (problem, start, "muon")]
            c = counts(rows, problem, start, "muon")
            if all(map(math.isfinite, c)):
                spread = max(counts(rows, problem, start, "muon", "iterations_max")[n]
                             - counts(rows, problem, start, "muon", "iterations_min")[n] for n in range(len(c)))
                out.append(f"- Muon (paper's schedule), {problem}, {start} start: {c[0]:g} → {c[-1]:g} iterations, "
                           f"+{(c[-1] - c[0]) / decades:.0f} per decade of κ; largest seed spread at one κ: "
                           f"{spread:g}.")
            else:
                reached = ", ".join(f"κ = {r['kappa']:.3g}: {r['reached']}" for r in sel)
                out.append(f"- Muon (paper's schedule), {problem}, {start} start: seeds reaching δ — {reached}.")
            adam = counts(rows, problem, start, "adam")
            measured = [k for k, x in zip(kappas, adam, strict=True) if math.isfinite(x)]
            if len(measured) < len(kappas):
                out.append(f"- Adam, {problem}, {start} start: measured up to κ = {max(measured):.3g} "
                           f"({adam[0]:g} → {adam[len(measured) - 1]:g} iterations), censored beyond "
                           f"(cap {CAPS['adam']:,}).")
    return out


def verdicts(rows) -> list[str]:
    """One line per (method, problem, start): the growth of the median count over the κ range and the verdict of
    the refutation rule (Muon, either schedule: grows < 2× and is never censored; GD and Adam: grow ≥ 2×, or are
    measured at the smallest κ and censored at the largest)."""
    out = []
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        for problem in dict.fromkeys(r["problem"] for r in rows):
            for start in STARTS:
                c = counts(rows, problem, start, method)
                ratio = c[-1] / c[0] if math.isfinite(c[0]) else math.nan
                grows = ratio >= 2 or (math.isfinite(c[0]) and math.isinf(c[-1]))
                if method.startswith("muon"):
                    ok = all(math.isfinite(x) for x in c) and not grows
                    verdict = "κ-independent within 2×" if ok else ("refuted: censored at some κ"
                                                                     if not all(map(math.isfinite, c))
                                                                     else "refuted: grows more than 2×")
                elif not math.isfinite(c[0]):
                    verdict = "not measurable: censored at the smallest κ"
                else:
                    verdict = "grows with κ" if grows else "refuted: grows less than 2×"
                shown = (f"×{ratio:.3g} over the κ range" if math.isfinite(ratio)
                         else "measured at the smallest κ, censored at the largest" if math.isfinite(c[0])
                         else "censored at the smallest κ")
                out.append(f"- {LABELS[method]}, {problem}, {start} start: {shown} — {verdict}.")
    return out


COLORS = {"muon": "tab:blue", "muon_tuned": "tab:purple", "gd": "tab:orange", "adam": "tab:green"}
STYLES = {"muon": ("o", "-"), "muon_tuned": ("D", "--"), "gd": ("s", "-"), "adam": ("^", "-")}


def _plot(rows, kappas, path: Path) -> None:
    plt = pyplot()
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(len(problems), len(STARTS), figsize=(11.5, 8.8), sharex=True, squeeze=False)
    for i, problem in enumerate(problems):
        for j, start in enumerate(STARTS):
            ax = axes[i, j]
            for method in METHODS:
                med, lo, hi = (np.array(counts(rows, problem, start, method, f))
                               for f in ("iterations_median", "iterations_min", "iterations_max"))
                shown = np.where(np.isfinite(med), med, np.nan)  # NaN: the line breaks at a censored median
                hi = np.where(np.isfinite(hi), hi, shown)  # a censored seed: no upper bar
                marker, line = STYLES[method]
                ax.errorbar(kappas, shown, yerr=[shown - lo, hi - shown], capsize=3, color=COLORS[method],
                            marker=marker, linestyle=line, mfc="none" if method == "muon_tuned" else None, ms=7,
                            zorder=3 if method == "muon" else 2)
            ax.set_xscale("log")
            ax.set_yscale("log")
            top = ax.get_ylim()[1]
            for m, method in enumerate(METHODS):  # censored medians: ×, one row per method below the top
                ks = [k for k, c in zip(kappas, counts(rows, problem, start, method), strict=True) if math.isinf(c)]
                ax.scatter(ks, [top / 2.5 ** (m + 0.5)] * len(ks), marker="x", s=70, color=COLORS[method], zorder=4)
            ax.set_ylim(top=top)
            ax.set_title(f"{problem}, {start} start")
            ax.set_xlabel("condition number κ")
            ax.set_ylabel(f"iterations to δ = {DELTA:g}")
            ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color=COLORS[m], marker=STYLES[m][0], linestyle=STYLES[m][1],
                          mfc="none" if m == "muon_tuned" else COLORS[m], label=LABELS[m]) for m in METHODS]
    handles.append(plt.Line2D([], [], color="gray", marker="x", linestyle="none", ms=8,
                              label="× near the top, in the method's colour: median not reached (censored)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"Iterations to accuracy δ = {DELTA:g} against κ: median of the seeds, bars min–max")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
