"""specopt.scaling and `specopt scale`: the batch-size / step-size transfer rule (Silveti-Falls et al.,
*Spectral optimizers for deep learning*, lectures 2026)."""

import pytest
from typer.testing import CliRunner

from specopt.cli import app
from specopt.scaling import power_of_two, tokens_per_step_schedule, transfer


def test_reproduces_the_seed_worked_example():
    t = transfer(1.3e9, 256, 1024, 3.6e-4, 10.6e9)
    assert t.ratio == pytest.approx(8.15, abs=0.01)
    assert t.tokens_factor == pytest.approx(4.05, abs=0.01)
    assert t.step_size == pytest.approx(1.8e-4, rel=0.01)
    assert t.tokens_per_step / 1024 == pytest.approx(1037, abs=1)
    assert (1024, 1024) in t.choices and (512, 2048) in t.choices


def test_exponents_compose():
    a = transfer(1e6, 8, 64, 0.01, 8e6)
    b = transfer(8e6, 32, 64, a.step_size, 64e6)
    direct = transfer(1e6, 8, 64, 0.01, 64e6)
    assert b.step_size == pytest.approx(direct.step_size)
    assert a.tokens_factor * b.tokens_factor == pytest.approx(direct.tokens_factor)
    assert transfer(1e6, 8, 64, 0.01, 1e6).tokens_factor == pytest.approx(1.0)


def test_schedule_grows_as_two_thirds_power():
    assert tokens_per_step_schedule(0, 1e6, 512) == 512
    assert tokens_per_step_schedule(8e6, 1e6, 512) == pytest.approx(512 * 4)
    assert tokens_per_step_schedule(27e6, 1e6, 512) == pytest.approx(512 * 9)


def test_power_of_two_rounding():
    assert [power_of_two(x) for x in (1037, 1400, 1500, 518, 3)] == [1024, 1024, 2048, 512, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"tokens": 0}, "tokens"), ({"batch": 0}, "batch"), ({"seq": -4}, "seq"), ({"lr": -1.0}, "lr"),
     ({"target_tokens": 1e5}, "smaller than the base")],
)
def test_bad_values_get_clear_errors(kwargs, match):
    args = {"tokens": 1e6, "batch": 8, "seq": 64, "lr": 0.01, "target_tokens": 4e6, **kwargs}
    with pytest.raises(ValueError, match=match):
        transfer(**args)
    assert transfer(1e6, 8, 64, 0.01, 1e5, allow_smaller=True).tokens_factor < 1


def test_scale_command_prints_the_worked_example():
    result = CliRunner().invoke(app, ["scale", "--tokens", "1.3e9", "--batch", "256", "--seq", "1024", "--lr",
                                      "3.6e-4", "--target-tokens", "10.6e9"])
    assert result.exit_code == 0, result.output
    assert "B =   1024, S =   1024" in result.output and "0.000179" in result.output
    bad = CliRunner().invoke(app, ["scale", "--tokens", "1e9", "--batch", "256", "--seq", "1024", "--lr", "3e-4",
                                   "--target-tokens", "1e8"])
    assert bad.exit_code == 2 and "smaller than the base" in bad.output and "pass --allow-smaller" in bad.output
    tiny = CliRunner().invoke(app, ["scale", "--tokens", "1e3", "--batch", "256", "--seq", "1024", "--lr", "3e-4",
                                    "--target-tokens", "1e9"])
    assert tiny.exit_code == 2 and "less than one step of the base batch (256 × 1024 = 262144 tokens)" in tiny.output
    negative = CliRunner().invoke(app, ["scale", "--tokens", "-5", "--batch", "8", "--seq", "128", "--lr", "1e-3",
                                        "--target-tokens", "1e9"])
    assert negative.exit_code == 2 and "error: --tokens must be a finite number" in negative.output  # the flag's name


def test_batch_size_schedule_keeps_tokens_per_step_at_two_thirds_power():
    from specopt.scaling import batch_size_schedule

    sizes = batch_size_schedule(200, 8, 64, 10, max_factor=1e9)
    assert sizes[:10] == [8] * 10 and sizes == sorted(sizes)
    seen = 0
    for k, b in enumerate(sizes):
        if k >= 10:  # B_k·S = B0·S·(T_k/T_base)^{2/3}, the batch rounded to an integer
            assert abs(b - 8 * (seen / (8 * 64 * 10)) ** (2 / 3)) <= 0.5 + 1e-9
        seen += b * 64
    capped = batch_size_schedule(200, 8, 64, 10)
    assert max(capped) == 64 and capped[:10] == [8] * 10


def test_the_scaling_helpers_refuse_bad_input_by_name():
    import numpy as np

    from specopt.scaling import batch_size_schedule, power_of_two, tokens_per_step_schedule, transfer

    for factor in (0, -1, 0.5, float("nan")):  # a cap below the base batch
        with pytest.raises(ValueError, match="max_factor must be a finite number in \\[1.0, ∞\\)"):
            batch_size_schedule(5, 8, 16, 2, max_factor=factor)
    for choices in ((0,), (1.5,)):
        with pytest.raises(ValueError, match="each of seq_choices must be a positive integer"):
            transfer(1e6, 8, 128, 1e-3, 1e8, seq_choices=choices)
    with pytest.raises(ValueError, match="seq_choices is empty"):  # it fell back to S0's neighbours silently
        transfer(1e6, 8, 128, 1e-3, 1e8, seq_choices=())
    with pytest.raises(ValueError, match="x must be a finite number"):
        power_of_two(float("inf"))
    for seen in (float("nan"), -1.0):  # returned the base value before
        with pytest.raises(ValueError, match="tokens_seen must be a finite number in \\[0.0, ∞\\)"):
            tokens_per_step_schedule(seen, 1e6, 1024)
    assert [power_of_two(2**e) for e in (1.5, 2.5, 3.2, -2)] == [4, 8, 8, 0.25]  # ties go up
    assert transfer(1e6, np.int64(8), 128, 1e-3, 1e8) == transfer(1e6, 8, 128, 1e-3, 1e8)


def test_train_with_batch_schedule_grows_the_batch_and_resumes_exactly(tmp_path):
    from specopt.training import RunConfig, read_metrics, train

    cfg = RunConfig(task="char-gpt", optimizer="uscion", steps=12, task_options={"size": "tiny"}, val_every=6,
                    checkpoint_every=5, batch_schedule="bst")
    first = train(cfg, tmp_path / "a", progress=False)
    sizes = [r["batch_size"] for r in first.rows]
    assert sizes[0] == 16 and sizes[-1] > sizes[0]
    again = train(RunConfig(), tmp_path / "a", resume=True, progress=False)  # from the step-12 checkpoint: no-op
    assert [r["loss"] for r in again.rows] == [r["loss"] for r in first.rows]
    assert len(read_metrics(tmp_path / "a")) == 12
    with pytest.raises(ValueError, match="fixed batch"):
        train(RunConfig(task="matrix-factorization", optimizer="uscion", steps=3, batch_schedule="bst"),
              tmp_path / "b", progress=False)


@pytest.mark.parametrize("target, message", [(1e3, "less than one token per step"),
                                             (1e5, "less than one sequence of any length offered")])
def test_a_target_budget_below_one_step_is_refused(target, message):
    """Scaling 1e9 tokens down to 1e3 gave B·S = 0.4 tokens per step and offered batches of 512 tokens for a
    1,000-token budget; to 1e5, 9 tokens per step and the same batches of whole sequences."""
    with pytest.raises(ValueError, match=message):
        transfer(1e9, 4, 1024, 1e-3, target, allow_smaller=True)


def test_an_astronomical_budget_prints_its_counts_in_scientific_notation():
    """--target-tokens 1e300 printed batch sizes of 196 digits; the numbers themselves are right (r^(2/3)·B0·S0)."""
    result = CliRunner().invoke(app, ["scale", "--tokens", "1e9", "--batch", "32", "--seq", "1024", "--lr", "0.02",
                                      "--target-tokens", "1e300"])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) < 100, result.output
    assert "= 3.277e+198" in result.output and "B = 4.672e+195, S =    512" in result.output
