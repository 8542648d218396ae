"""The `batch-size` experiment's parts: its vectorised runs take specopt.Scion's step, its problems' gradients and
excess losses are right, and the critical batch is read off a curve as defined."""

import math

import numpy as np
import pytest
import torch

import specopt
from specopt.experiments.batch_problems import LinearRegression, ScionRuns, TeacherStudent
from specopt.experiments.batch_size import MIN_STEPS, Setting, Table, crossing, estimate, slope


@pytest.mark.parametrize("problem_cls", [LinearRegression, TeacherStudent])
def test_vectorised_runs_take_scions_step(problem_cls):
    """Each (seed, config) of the stack follows specopt.Scion with that config's lr and momentum."""
    problem = problem_cls(2, **({"eval_size": 64} if problem_cls is TeacherStudent else {}))
    lr, beta = torch.tensor([0.05, 0.2, 0.01]), torch.tensor([0.0, 0.9, 0.5])
    stack = problem.init(3)
    runs = ScionRuns(stack, problem.norms, problem.radii, lr, beta)
    gen = torch.Generator().manual_seed(0)
    grads = [problem.grads(stack, 8, gen) for _ in range(4)]
    singles = {}
    for s in range(2):
        for c in range(3):
            weights = [torch.nn.Parameter(p[s, c].clone()) for p in stack]
            groups = [{"params": [w], "norm": n, "radius": r}
                      for w, n, r in zip(weights, problem.norms, problem.radii, strict=True)]
            singles[s, c] = (weights, specopt.Scion(groups, lr=float(lr[c]), momentum=float(beta[c])))
    for g in grads:
        runs.step(g)
        for (s, c), (weights, opt) in singles.items():
            for w, gi in zip(weights, g, strict=True):
                w.grad = gi[s, c].clone()
            opt.step()
    for (s, c), (weights, _) in singles.items():
        for w, p in zip(weights, stack, strict=True):
            torch.testing.assert_close(p[s, c], w.detach(), atol=1e-5, rtol=1e-5)


def test_linear_regression_gradient_and_excess():
    problem = LinearRegression(2, dim=8, noise=0.3)
    x = [torch.randn(2, 3, 8)]
    gen = torch.Generator().manual_seed(1)
    (g,) = problem.grads(x, 5, gen)
    gen = torch.Generator().manual_seed(1)  # the same batch again, by autograd
    a = torch.randn(2, 5, 8, generator=gen) * problem.scale
    y = a @ problem.x_star.unsqueeze(-1) + 0.3 * torch.randn(2, 5, 1, generator=gen)
    leaf = x[0].clone().requires_grad_(True)
    loss = 0.5 * ((a @ leaf.transpose(1, 2) - y) ** 2).mean(1).sum()
    torch.testing.assert_close(g, torch.autograd.grad(loss, leaf)[0])
    # excess = population loss − noise²/2, by Monte Carlo over many samples
    a = torch.randn(2, 200_000, 8, generator=gen) * problem.scale
    y = a @ problem.x_star.unsqueeze(-1) + 0.3 * torch.randn(2, 200_000, 1, generator=gen)
    population = 0.5 * ((a @ x[0].transpose(1, 2) - y) ** 2).mean(1)
    torch.testing.assert_close(population - 0.045, problem.excess(x), rtol=0.02, atol=1e-3)


def test_teacher_student_excess_is_zero_at_the_embedded_teacher_and_inside_the_ball():
    problem = TeacherStudent(2, eval_size=256)
    w1, w2 = (p.clone() for p in problem.init(1))
    w1.zero_()
    w2.zero_()
    h = problem.teacher[0].shape[1]
    w1[:, 0, :h] = problem.teacher[0]
    w2[:, 0, :, :h] = problem.teacher[1]
    assert problem.excess([w1, w2]).abs().max() < 1e-10
    for w, norm, radius in zip([w1, w2], problem.norms, problem.radii, strict=True):
        assert float(norm.norm(w).max()) <= radius / 2 + 1e-5  # ρ = 2·‖teacher‖: the solution is inside
    for start, norm, radius in zip(problem.start, problem.norms, problem.radii, strict=True):
        assert float(norm.norm(start).max()) <= radius / 2 + 1e-5  # the theory's ‖x₀‖ ≤ R*


def test_crossing_interpolates_the_plateaus_right_edge_and_flags_censoring():
    batches = np.array([1, 2, 4, 8, 16, 32])
    loss = np.array([1.1, 1.0, 1.05, 1.2, 2.0, 4.0])  # plateau up to 8, 1.5 crossed between 8 and 16
    b, censored, i = crossing(loss, batches, factor=1.5)
    assert not censored and i == 3
    assert b == pytest.approx(8 * 2 ** (math.log(1.5 / 1.2) / math.log(2.0 / 1.2)))
    b, censored, _ = crossing(np.array([1.0, 1.1, 1.2, np.nan, np.nan, np.nan]), batches, factor=1.5)
    assert censored and b == 4
    b, _, _ = crossing(np.array([1.0, 2.0, 1.2, 3.0, np.nan, np.nan]), batches, factor=1.5)
    assert 4 < b < 8  # the *largest* batch within the factor, not the first crossing


def test_estimate_recovers_a_planted_exponent():
    """A synthetic sweep whose plateau ends at B* = T^{2/3}: the fitted exponent is 2/3, the tuned lr is read."""
    budgets = np.array([2.0**k for k in range(8, 17, 2)])
    batches = np.array([2.0**k for k in range(0, 15)])
    excess = np.full((2, len(budgets), len(batches), 2), np.nan)
    lr = np.full((len(budgets), len(batches), 2), np.nan)
    for t, T in enumerate(budgets):
        edge = T ** (2 / 3)
        for b, B in enumerate(batches):
            if T / B >= 4:
                curve = 1 / T + np.maximum(B / edge, 1) ** 2 / T  # 2/T at B = √2·edge
                excess[:, t, b] = [curve, 1.5 * curve]
                lr[t, b] = B / T
    table = Table(budgets, batches, lr, np.array([0.0, 0.9]), excess)
    est = estimate(table, np.ones(2))
    assert est["batch_exponent"] == pytest.approx(2 / 3, abs=0.01)
    assert est["step_exponent"] == pytest.approx(-1 / 3, abs=0.01)
    assert est["loss_exponent"] == pytest.approx(-1, abs=1e-6)
    assert math.isnan(slope(np.array([1.0, 2.0]), np.array([1.0, 2.0])))  # fewer than 3 points: no fit


def test_setting_batches_respect_the_step_limits():
    s = Setting("x", LinearRegression, {}, (1024,), 2, (1.0,), (1.0,), max_steps=64, min_batch=1)
    assert s.batches(1024) == [b for b in (16, 32, 64, 128, 256, 512) if 1024 // b >= MIN_STEPS]
    assert MIN_STEPS >= 2  # the theorem's T ≥ 2B
    lr, beta = s.grid(4)
    assert float(lr.max()) <= 1.0 and float(beta[0]) == 0.0


def test_a_large_batch_is_the_mean_of_its_chunks(monkeypatch):
    from specopt.experiments import batch_problems

    problem = LinearRegression(2, dim=4)
    x = problem.init(3)
    monkeypatch.setattr(batch_problems, "CHUNK", 4)
    chunked = problem.grads(x, 10, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    parts = [problem._grads(x, n, gen)[0] for n in (4, 4, 2)]
    torch.testing.assert_close(chunked[0], (4 * parts[0] + 4 * parts[1] + 2 * parts[2]) / 10)


def test_saved_runs_read_back_to_the_same_table(tmp_path):
    from specopt.experiments.batch_size import read_runs, sweep, write_runs

    class Bar:
        def update(self, n):
            pass

    setting = Setting("convex", LinearRegression, {"dim": 4}, (64,), 2, (0.5, 1.0), (1.0, 0.25), max_steps=8)
    records = sweep(setting, Bar())
    write_runs(tmp_path / "runs.csv.gz", records)
    again = read_runs(tmp_path / "runs.csv.gz")
    a, b = Table.of(records), Table.of(again)
    np.testing.assert_allclose(a.excess, b.excess, rtol=1e-6)
    np.testing.assert_allclose(a.lr, b.lr, rtol=1e-6)
    np.testing.assert_array_equal(a.momentum, b.momentum)
    assert a.excess.shape == (2, 1, 3, 4)  # seeds, budgets, B = 8, 16, 32 (8 ≥ T/B ≥ 2), 2 × 2 configurations


def _planted(curve, noise: float = 0.0) -> Table:
    """A sweep whose tuned excess at (T, B) is ``curve(T, B, index of B among the batches run at T)``, times a
    log-normal seed noise of ``noise`` (4 seeds)."""
    budgets = np.array([4.0**k for k in range(4, 9)])
    batches = np.array([2.0**k for k in range(0, 17)])
    rng = np.random.default_rng(1)
    excess = np.full((4, len(budgets), len(batches), 1), np.nan)
    lr = np.full((len(budgets), len(batches), 1), np.nan)
    for t, T in enumerate(budgets):
        for b, B in enumerate(batches):
            if T / B >= 2:
                excess[:, t, b, 0] = curve(T, B, b) * np.exp(noise * rng.standard_normal(4))
                lr[t, b, 0] = B / T
    return Table(budgets, batches, lr, np.array([0.9]), excess)


def _result(table: Table) -> tuple[dict, str]:
    from specopt.experiments.batch_size import _result_text, bootstrap

    est = bootstrap(table, np.random.default_rng(0), n=20)
    return est, "\n".join(_result_text({"planted": (None, table, est)}, {"planted": {}}, []))


def test_the_exponent_is_predicted_from_the_measured_rates_where_the_plateau_meets_the_starved_arm():
    """Plateau ∝ T^(−0.6), starved arm ∝ K^(−1.2): the edge moves as T^(1 − 0.6/1.2) = T^0.5, not T^(2/3)."""
    est, text = _result(_planted(lambda T, B, _: max(T**-0.6 * (1 + 0.1 / B), 0.5 * (T / B) ** -1.2), noise=0.05))
    assert est["starved_exponent"] == pytest.approx(1.2, abs=0.02)
    assert est["predicted_batch_exponent"] == pytest.approx(0.5, abs=0.02)
    assert est["batch_exponent"] == pytest.approx(0.5, abs=0.05)
    assert est["plateau"].all() and not est["best_at_smallest"].any()
    assert "a plateau (a batch besides the best within 1.5× it) at every budget" in text
    assert "the intervals overlap" in text and "the interval excludes the theory's value" in text


def test_no_plateau_and_an_edge_that_does_not_move_are_reported_as_refutations():
    est, text = _result(_planted(lambda T, B, b: T**-0.6 * 2.0**b))  # every batch twice the loss of the one before
    assert not est["plateau"].any() and est["best_at_smallest"].all()
    assert "**no plateau** at T = 256, 1,024, 4,096, 16,384, 65,536 (refutes the claim there)" in text
    assert "no growth resolved (interval ≤ 0)" in text
    assert "the plateau's left end is not resolved" in text


def test_a_predicted_interval_that_is_not_measurable_is_not_reported_as_disagreeing():
    """A NaN interval compared False, and the report said "the intervals do not overlap" for it (the quick run)."""
    from specopt.experiments.batch_size import overlap

    nan = float("nan")
    assert overlap((nan, nan), (0.4, 0.9)).startswith("not comparable")
    assert overlap((0.5, 0.7), (0.6, 0.9)).startswith("the intervals overlap")
    assert overlap((0.1, 0.2), (0.6, 0.9)) == "the intervals do not overlap"
