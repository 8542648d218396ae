"""specopt.scaling and `specopt scale`: the batch-size / step-size transfer rule (ALGORITHMS.md §6)."""

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
    assert bad.exit_code == 2 and "smaller than the base" in bad.output
