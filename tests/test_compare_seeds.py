"""The spread over seeds (`specopt compare --seeds`): statistics over the seeds that did not diverge, ratios over
the seeds that reached AdamW's best, and a report that says how many did."""

import csv
import math
import re
import statistics

import pytest

from specopt.compare_seeds import check_seeds, summarise, table, write
from specopt.training import RunConfig


def run(final, steps=None, ratio=None):
    return {"final_val": final, "steps_to_ref": steps, "steps_ratio": ratio}


def test_mean_and_sd_leave_a_diverged_seed_out_and_count_it():
    row = summarise("gluon-mvr", [run(2.0, 300, 0.5), run(math.nan), run(2.2, 400, 0.7)])
    assert row["final_val_mean"] == pytest.approx(2.1) and row["final_val_sd"] == pytest.approx(statistics.stdev(
        [2.0, 2.2]))
    assert row["diverged"] == 1 and row["reached"] == 2
    assert row["ratio_mean"] == pytest.approx(0.6) and row["ratio_sd"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    line = table([row]).splitlines()[-1]
    assert "diverged" in line and "(2 of 3 seeds)" in line and line.split("|")[5].strip().startswith("0.60 ± 0.14")


def test_one_seed_reaching_the_reference_has_no_spread_to_show():
    row = summarise("dog", [run(2.1, 600, 1.0), run(2.2), run(2.3)])
    assert row["reached"] == 1 and math.isnan(row["ratio_sd"])
    assert "1.00 (1 of 3 seeds)" in table([row]) and "nan" not in table([row])


def test_summary_csv_keeps_the_seed_order_and_the_missing_steps(tmp_path):
    rows = [summarise("adamw", [run(2.1, 600, 1.0), run(2.2, 590, 1.0)]),
            summarise("sgd", [run(2.5), run(2.4, 600, 1.02)])]
    write(rows, RunConfig(task="char-gpt", steps=600), [0, 1], tmp_path)
    with open(tmp_path / "summary.csv") as f:
        csv_rows = {r["optimizer"]: r for r in csv.DictReader(f)}
    assert csv_rows["sgd"]["steps_to_adamw_best"] == "NA 600" and csv_rows["sgd"]["reached"] == "1"
    assert csv_rows["adamw"]["final_val_seeds"] == "2.1000 2.2000"
    assert (tmp_path / "spread.png").stat().st_size > 5_000 and "| sgd |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("seeds, message", [([0], "at least two seeds"), ([1, 1], "1 listed more than once"),
                                           ([0, -1], "seed must be an integer in"), ([0, True], "got True"),
                                           ([0, 2**32], "got 4294967296")])
def test_seeds_must_be_two_different_valid_seeds(seeds, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_seeds(seeds)
