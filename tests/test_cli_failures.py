"""What a newcomer meets: every misuse of the `specopt` command is one line naming the file and the problem,
exit code 2, no traceback, and nothing in the run directory changed; a run is never resumed from files that are
not its own; a diverged run exits non-zero; `python -m specopt` and the listings in --help."""

import functools
import json
import math
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import specopt
from specopt import cli, compare
from specopt.cli import app
from specopt.tasks.synthetic import HeavyTailedRegression
from specopt.training import read_metrics

runner = CliRunner()
# a one-matrix regression: building and stepping it takes milliseconds
HT = ["--task", "heavy-tailed", "--steps", "4", "--val-every", "2", "--checkpoint-every", "2", "--no-progress"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(directory):
    """Every file under ``directory`` with its bytes (a directory that does not exist: empty)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refused(result, *fragments):
    """Exit code 2, one line on stderr starting with ``error:``, holding every fragment; no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished 4-step runs (checkpoints at steps 2 and 4), made once; tests work on copies."""
    base = tmp_path_factory.mktemp("runs")
    made = {"scion": [*HT, "--optimizer", "scion"], "scion-again": [*HT, "--optimizer", "scion"],
            "muon": [*HT, "--optimizer", "muon"],
            "mf": [*HT[2:], "--task", "matrix-factorization", "--optimizer", "scion"]}
    for name, args in made.items():
        result = invoke("train", *args, "--out", base / name)
        assert result.exit_code == 0, result.output
    return base


@pytest.fixture
def run(runs, tmp_path):
    """A copy of the finished scion run."""
    return shutil.copytree(runs / "scion", tmp_path / "run")


def legacy(directory):
    """Make ``directory`` look written by specopt before runs recorded themselves: no run id, no run record."""
    config = json.loads((directory / "config.json").read_text())
    del config["run_id"]
    (directory / "config.json").write_text(json.dumps(config))
    ckpt = torch.load(directory / "checkpoint.pt", weights_only=True)
    del ckpt["run"]
    torch.save(ckpt, directory / "checkpoint.pt")


# --- 0. no silently wrong run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["run", "unrelated file"])
def test_a_new_run_into_a_non_empty_folder_is_refused_and_leaves_it_intact(run, tmp_path, content):
    if content == "unrelated file":
        run = tmp_path / "notes"
        run.mkdir()
        (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    line = refused(invoke("train", *HT, "--optimizer", "muon", "--out", run), run, "not empty", "--overwrite")
    assert ("checkpoint.pt" in line) == ("--resume" in line) == (content == "run")  # only a run can be resumed
    assert snapshot(run) == before


def test_a_run_stopped_before_its_first_checkpoint_is_not_offered_for_resume(run):
    (run / "checkpoint.pt").unlink()
    line = refused(invoke("train", *HT, "--optimizer", "muon", "--out", run), "nothing to resume", "--overwrite")
    assert "--resume" not in line


def test_overwrite_starts_afresh_so_a_crash_before_the_first_checkpoint_leaves_nothing_to_resume(
        runs, tmp_path, monkeypatch):
    run = shutil.copytree(runs / "muon", tmp_path / "run")
    (run / "notes.txt").write_text("mine")

    def killed(self, step):
        raise KeyboardInterrupt  # the new run is stopped in its first step

    with monkeypatch.context() as patch:  # undoes this patch alone (undo() would undo the fixtures' too)
        patch.setattr(HeavyTailedRegression, "batch", killed)
        result = invoke("train", *HT, "--optimizer", "scion", "--out", run, "--overwrite")
    assert result.exit_code != 0
    assert not (run / "checkpoint.pt").exists()  # the muon run's checkpoint went with the muon run
    assert json.loads((run / "config.json").read_text())["optimizer"] == "scion"
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite removes run files only
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--no-progress"), run / "checkpoint.pt", "does not exist")
    assert snapshot(run) == before


def test_a_checkpoint_of_another_optimizer_is_not_resumed(runs, run):
    shutil.copy(runs / "muon" / "checkpoint.pt", run / "checkpoint.pt")
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt", "'muon'",
            "'scion'")
    assert snapshot(run) == before


def test_a_checkpoint_of_another_optimizer_class_is_not_resumed(run):
    """The class the state was saved from is checked too: one optimizer's state is never loaded into another."""
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["run"]["optimizer_classes"] == ["specopt.optimizers.Scion"]
    ckpt["run"]["optimizer_classes"] = ["specopt.optimizers.Muon"]
    torch.save(ckpt, run / "checkpoint.pt")
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt",
            "holds the state of Muon, but this run builds Scion")
    assert snapshot(run) == before


def test_a_distributed_checkpoint_refuses_another_optimizer_class_before_loading_anything(tmp_path):
    from specopt import checkpoint

    model = torch.nn.Linear(4, 3)
    adamw = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    adamw.step()
    checkpoint.save(tmp_path / "ckpt", model, adamw)
    fresh = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="optimizer 0 is a torch.optim.adamw.AdamW, not a SGD"):
        checkpoint.load(tmp_path / "ckpt", fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # the model was not touched
    checkpoint.load(tmp_path / "ckpt", fresh, torch.optim.AdamW(fresh.parameters()))
    assert torch.equal(fresh.weight, model.weight)


def saved_muon(tmp_path, groups):
    """A Muon checkpoint of a 2-layer MLP whose groups are ``groups(model)``; returns the model and the path."""
    from specopt import checkpoint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = specopt.Muon(groups(model))
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    return model, checkpoint.save(tmp_path / "ckpt", model, opt)


def test_a_distributed_checkpoint_refuses_groups_of_other_tensors_and_another_estimator(tmp_path):
    """Group hyperparameters load by position: groups listed in another order, or regrouped, would take each other's
    lr and norm silently; another estimator's state would change the momentum schedule."""
    from specopt import checkpoint

    model, path = saved_muon(tmp_path, lambda m: [{"params": [m[0].weight], "lr": 0.05},
                                                  {"params": [m[2].weight], "lr": 0.001}])
    swapped = specopt.Muon([{"params": [model[2].weight], "lr": 0.001}, {"params": [model[0].weight], "lr": 0.05}])
    with pytest.raises(ValueError, match=r"param group 0 of the checkpoint's optimizer 0 holds \['0.weight'\], this "
                                         r"optimizer's \['2.weight'\]"):
        checkpoint.load(path, model, swapped)
    storm = specopt.Muon([{"params": [model[0].weight], "lr": 0.05}, {"params": [model[2].weight], "lr": 0.001}],
                         estimator="storm")
    with pytest.raises(ValueError, match="steps with estimator 'momentum', this one with 'storm'"):
        checkpoint.load(path, model, storm)
    same = specopt.Muon([{"params": [model[0].weight], "lr": 0.05}, {"params": [model[2].weight], "lr": 0.001}])
    checkpoint.load(path, model, same)
    assert [g["lr"] for g in same.param_groups[:2]] == [0.05, 0.001]


def test_a_distributed_checkpoint_refuses_other_settings_of_the_rule_as_load_state_dict_does(tmp_path):
    """DoG's state belongs to its r_rel (the distance it starts from): load_state_dict refused another, DCP took it."""
    from specopt import checkpoint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    dog = specopt.DoG(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    dog.step()
    path = checkpoint.save(tmp_path / "ckpt", model, dog)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"saved with the rule 'dog' set to r_rel=1e-06 \(here 0.001\)"):
        checkpoint.load(path, other, specopt.DoG(other.parameters(), r_rel=1e-3))
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    same = specopt.DoG(other.parameters())
    checkpoint.load(path, other, same)
    assert torch.equal(other[0].weight, model[0].weight)


def test_a_damaged_distributed_checkpoint_is_a_value_error_naming_it(tmp_path):
    """torch.distributed.checkpoint raises CheckpointException, a BaseException (past every ``except Exception``)."""
    from specopt import checkpoint

    model, path = saved_muon(tmp_path, lambda m: m.parameters())
    (next(path.glob("*.distcp"))).unlink()
    with pytest.raises(ValueError, match=r"cannot be read as a checkpoint: its shard __0_0\.distcp is missing"):
        checkpoint.load(path, model, specopt.Muon(model.parameters()))


def _cut(file):
    os.truncate(file, file.stat().st_size * 6 // 10)


def _flip(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 1
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, checksums, message", [
    ("cut", True, "is cut short"), ("cut", False, "is cut short"),
    ("flip", True, "fails its CRC-32 check"), ("metadata", True, "UnpicklingError")])
def test_a_damaged_shard_is_refused_before_anything_is_loaded(tmp_path, damage, checksums, message):
    """DCP reads into the model's own tensors: a shard cut short left the model half loaded before the error, and a
    flipped byte loaded as a changed weight. Checkpoints without the checksums (saved before them) are checked for
    shards cut short against their metadata."""
    from specopt import checkpoint

    model, path = saved_muon(tmp_path, lambda m: m.parameters())
    if not checksums:
        (path / checkpoint.CHECKSUMS).unlink()
    shard = next(path.glob("*.distcp"))
    {"cut": _cut, "flip": _flip, "metadata": lambda _: _cut(path / ".metadata")}[damage](shard)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(checkpoint.UnreadableCheckpoint, match=message):
        checkpoint.load(path, other, specopt.Muon(other.parameters()))
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_a_checkpoint_of_another_task_is_not_resumed(runs, run):
    shutil.copy(runs / "mf" / "checkpoint.pt", run / "checkpoint.pt")
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt",
            "'matrix-factorization' run", "'heavy-tailed' run")
    assert snapshot(run) == before


def test_a_checkpoint_of_another_run_with_the_same_settings_is_not_resumed(runs, run):
    shutil.copy(runs / "scion-again" / "checkpoint.pt", run / "checkpoint.pt")
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt",
            "belongs to run", "another run")
    assert snapshot(run) == before


def test_a_checkpoint_without_a_record_in_a_run_that_has_one_is_not_resumed(run):
    legacy(run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "run_id": "0123456789abcdef"}))
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt", "records no run",
            "earlier run")
    assert snapshot(run) == before


def test_a_run_written_before_run_records_still_resumes_and_gets_a_record(run):
    legacy(run)
    result = invoke("train", "--resume", run, "--steps", 6, "--no-progress")
    assert result.exit_code == 0, result.output
    run_id = json.loads((run / "config.json").read_text())["run_id"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["run"]["id"] == run_id
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 7))


@pytest.mark.parametrize("other, message", [
    ("muon", "base learning rates"), ("mf", "holds a model that does not fit this run's heavy-tailed model")])
def test_without_run_records_a_foreign_checkpoint_is_still_caught_by_its_contents(runs, run, tmp_path, other,
                                                                                     message):
    """Old runs carry no record: the learning rates (another optimizer) and the model's shapes (another task)
    give a foreign checkpoint away."""
    foreign = shutil.copytree(runs / other, tmp_path / "foreign")
    legacy(run)
    legacy(foreign)
    shutil.copy(foreign / "checkpoint.pt", run / "checkpoint.pt")
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt", message)
    assert snapshot(run) == before


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "muon"], "--optimizer muon (the run's optimizer is scion)"),
    (["--task", "matrix-factorization"], "--task matrix-factorization (the run's task is heavy-tailed)"),
    (["--lr", "0.5"], "--lr 0.5"),
    (["--seed", "3"], "--seed 3"),
    (["--schedule", "constant"], "--schedule constant"),
    (["--no-closure"], "--no-closure"),
    (["--overwrite"], "--overwrite starts a new run"),
    (["--out", "elsewhere"], "name different directories"),
])
def test_resume_refuses_flags_that_would_change_the_run(run, flags, message):
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, *flags, "--no-progress"), message)
    assert snapshot(run) == before


def test_resume_accepts_flags_that_repeat_the_run_and_a_complete_run_is_left_alone(run):
    before = snapshot(run)
    result = invoke("train", "--resume", run, "--task", "heavy-tailed", "--optimizer", "scion", "--seed", 0,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output and "--steps N" in result.output
    assert snapshot(run) == before


def test_resume_may_change_the_validation_and_checkpoint_intervals(run):
    result = invoke("train", "--resume", run, "--steps", 7, "--val-every", 1, "--checkpoint-every", 3,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(run) if "val_loss" in r] == [2, 4, 5, 6, 7]
    config = json.loads((run / "config.json").read_text())
    assert (config["steps"], config["val_every"], config["checkpoint_every"]) == (7, 1, 3)


def test_resume_steps_below_the_checkpoint_is_refused(run):
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 3, "--no-progress"), run / "checkpoint.pt", "step 4",
            "N ≥ 4")
    assert snapshot(run) == before


def test_extending_an_interrupted_run_equals_a_run_planned_that_long(tmp_path, monkeypatch):
    """Stopped at step 6 of 10 (checkpoint at 5, before the 10-step schedule's decay), then --steps 20: the same
    losses and weights as 20 steps in one go."""
    flags = ["--task", "heavy-tailed", "--optimizer", "scion", "--val-every", 5, "--checkpoint-every", 5,
             "--no-progress"]
    assert invoke("train", *flags, "--steps", 20, "--out", tmp_path / "straight").exit_code == 0
    real = HeavyTailedRegression.batch

    def stopped_at_step_6(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return real(self, step)

    with monkeypatch.context() as patch:  # not monkeypatch.undo(): it would lift conftest's fp32 msign pin too
        patch.setattr(HeavyTailedRegression, "batch", stopped_at_step_6)
        stopped = invoke("train", *flags, "--steps", 10, "--out", tmp_path / "run")
    assert stopped.exit_code == 130 and f"specopt train --resume {tmp_path / 'run'}` continues" in stopped.output
    result = invoke("train", "--resume", tmp_path / "run", "--steps", 20, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "steps 10 → 20" in result.output and "those of a 20-step run" in result.output
    straight, extended = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "run")
    assert [r["step"] for r in extended] == list(range(1, 21))
    assert [(r["loss"], r["lr"]) for r in extended] == [(r["loss"], r["lr"]) for r in straight]
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["steps"] == 20 and config["changes"] == [{"at_step": 5, "steps": [10, 20]}]


def test_extending_a_finished_run_recomputes_the_lr_schedule(runs, run, tmp_path):
    """The finished run's lr had decayed to 0; extended to 8 steps, steps 5–8 follow the 8-step schedule."""
    own = read_metrics(run)
    result = invoke("train", "--resume", run, "--steps", 8, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "step 5 runs at 1× the base lr (the 4-step schedule had reached 0×)" in result.output
    assert invoke("train", *HT, "--optimizer", "scion", "--steps", 8, "--out", tmp_path / "eight").exit_code == 0
    eight, extended = read_metrics(tmp_path / "eight"), read_metrics(run)
    assert [r["step"] for r in extended] == list(range(1, 9))
    assert [r["lr"] for r in extended[4:]] == [r["lr"] for r in eight[4:]]
    assert extended[:4] == own  # the 4-step run's own records are kept
    assert json.loads((run / "config.json").read_text())["steps"] == 8
    # step 5 itself takes the recomputed lr (the 4-step schedule's 0 would leave the weights where they were)
    five = shutil.copytree(runs / "scion", tmp_path / "five")
    assert invoke("train", "--resume", five, "--steps", 5, "--no-progress").exit_code == 0
    w4 = torch.load(runs / "scion" / "checkpoint.pt", weights_only=True)["model"]["weight"]
    w5 = torch.load(five / "checkpoint.pt", weights_only=True)["model"]["weight"]
    assert not torch.equal(w4, w5)


def test_a_diverged_run_exits_non_zero(tmp_path):
    result = invoke("train", "--task", "matrix-factorization", "--optimizer", "sgd", "--lr", "1e8", "--steps", 20,
                    "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "diverged" in result.stderr and "NaN or Inf at step" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing saved past the last finite step
    strict = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1],
                        parse_constant=lambda name: pytest.fail(f"metrics.jsonl holds {name}, which JSON has not"))
    assert strict["loss"] is None and math.isnan(read_metrics(tmp_path / "run")[-1]["loss"])  # null: NaN again


# --- the run is its own: its data, its settings, its disk ---------------------------------------------------------


def test_a_relative_data_path_resumes_from_anywhere_and_changed_data_is_refused(tmp_path, monkeypatch):
    """config.json holds the data's absolute path and its SHA-256: resumed from another directory (where a file
    of the same name held other text), the run read that file; now it reads its own, and refuses it once edited."""
    text = "".join(chr(97 + (i * 7919) % 23) for i in range(3000))
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "corpus.txt").write_text(text[::-1])
    monkeypatch.chdir(tmp_path)
    args = ["--task", "char-gpt", "--size", "tiny", "--data", "corpus.txt", "--val-every", 2, "--no-progress"]
    assert invoke("train", *args, "--steps", 4, "--checkpoint-every", 2, "--out", "whole").exit_code == 0
    assert invoke("train", *args, "--steps", 2, "--checkpoint-every", 2, "--out", "part").exit_code == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert invoke("train", "--resume", "../part", "--steps", 4, "--no-progress").exit_code == 0
    rows = lambda name: [(r["step"], r["loss"]) for r in read_metrics(tmp_path / name)]  # noqa: E731
    assert rows("part") == rows("whole")
    (tmp_path / "corpus.txt").write_text(text.upper())
    before = snapshot(tmp_path / "part")
    refused(invoke("train", "--resume", "../part", "--steps", 6, "--no-progress"), tmp_path / "corpus.txt",
            "is not the data this run started on")
    assert snapshot(tmp_path / "part") == before


@pytest.mark.parametrize("key, value", [("seed", 7), ("decay_fraction", 0.5), ("schedule", "constant")])
def test_a_config_edited_after_its_checkpoint_is_refused_and_kept(run, key, value):
    """The checkpoint records the settings it trained under; config.json edited by hand would resume under others
    (another data order, another schedule) without a word."""
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, key: value}))
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), "was edited after", f"{key} ")
    assert snapshot(run) == before


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(run, monkeypatch):
    """torch.save reports a full disk as a RuntimeError; the half-written file goes, the last checkpoint stays, and
    the run resumes from it."""
    from specopt import training

    real_save = torch.save

    def full(payload, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 599744 vs 599636")

    last = (run / "checkpoint.pt").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(training.torch, "save", full)
        refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt",
                "unexpected pos", "its last checkpoint is kept")
    assert torch.save is real_save
    assert (run / "checkpoint.pt").read_bytes() == last and not (run / "checkpoint.pt.tmp").exists()
    assert invoke("train", "--resume", run, "--steps", 6, "--no-progress").exit_code == 0
    assert read_metrics(run)[-1]["step"] == 6


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_once_before_launching(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "launch", lambda *a: pytest.fail("launched"))
    refused(invoke("train", "--task", "mlp", "--nproc", 3, "--steps", 2, "--no-progress", "--out", tmp_path / "r"),
            "the batch of 128 examples does not split evenly over 3 ranks; this run's batches split over --nproc 1, "
            "2, 4, 8, 16")
    assert not (tmp_path / "r").exists()


# --- 1. no traceback, ever ---------------------------------------------------------------------------------------


def _unwritable(tmp_path):
    """A directory this process cannot create a run in (root ignores permissions: then a read-only system path)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "run"
    for candidate in ("/sys/specopt-test-run", "/proc/specopt-test-run"):
        try:
            os.mkdir(candidate)
        except OSError:
            return candidate
        os.rmdir(candidate)
    pytest.skip("no unwritable place found")


@pytest.mark.parametrize("where, message", [("file", "is not a directory"), ("under a file", "is a file"),
                                            ("unwritable", "run directory")])
def test_out_that_cannot_hold_a_run_is_refused(tmp_path, where, message):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    out = {"file": afile, "under a file": afile / "sub" / "run"}.get(where) or _unwritable(tmp_path)
    refused(invoke("train", *HT, "--out", out), out, message)
    assert afile.read_text() == "keep me"
    if where == "unwritable":
        refused(invoke("compare", "--task", "heavy-tailed", "--optimizers", "sgd", "--steps", 2, "--out", out,
                       "--no-progress"), out)


def _truncated(b):
    return b[:len(b) // 2]


def _flipped_record(b):
    """One byte inside a stored tensor record flipped: the archive still opens, only the record's CRC tells."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(b)) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 8)
    at = info.header_offset
    start = at + 30 + int.from_bytes(b[at + 26:at + 28], "little") + int.from_bytes(b[at + 28:at + 30], "little")
    mid = start + info.file_size // 2
    return b[:mid] + bytes([b[mid] ^ 0xFF]) + b[mid + 1:]


def _foreign_torch_file(tmp_path):
    torch.save({"weights": torch.ones(3)}, tmp_path / "foreign.pt")
    return (tmp_path / "foreign.pt").read_bytes()


@pytest.mark.parametrize("make, message", [
    (_truncated, "truncated or corrupt"),
    (_flipped_record, "fails its CRC check"),
    (lambda b: b"", "is empty (0 bytes)"),
    (lambda b: bytes(range(256)) * 4, "unrecognised bytes"),
    (lambda b: pickle.dumps({"model": {}, "step": 4}), "plain pickle"),
    ("foreign", "not a specopt run checkpoint (it lacks model"),
])
def test_a_damaged_checkpoint_is_refused_and_kept(run, tmp_path, make, message):
    data = (run / "checkpoint.pt").read_bytes()
    data = _foreign_torch_file(tmp_path) if make == "foreign" else make(data)
    (run / "checkpoint.pt").write_bytes(data)
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "checkpoint.pt", message)
    assert snapshot(run) == before


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "holds an array, not the JSON object"),
    ('"scion"', "holds a string, not the JSON object"),
    ("3", "holds an integer, not the JSON object"),
    ("null", "holds null"),
    ("{not json", "is not valid JSON"),
    ("{}", "lacks the run's task, optimizer, steps"),
    ("STEPS", 'steps must be an integer, got "many"'),
    ("HPARAM", 'hyperparameter lr must be a number, got "fast"'),
    ("TASK", "unknown task 'imagenet'"),
])
def test_a_damaged_config_is_refused_and_kept(run, text, message):
    config = json.loads((run / "config.json").read_text())
    text = {"STEPS": json.dumps({**config, "steps": "many"}),
            "HPARAM": json.dumps({**config, "hparams": {**config["hparams"], "lr": "fast"}}),
            "TASK": json.dumps({**config, "task": "imagenet"})}.get(text, text)
    (run / "config.json").write_text(text)
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--no-progress"), run / "config.json", message)
    assert snapshot(run) == before


def test_damaged_metrics_are_refused_and_kept(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), run / "metrics.jsonl", "line 2")
    assert snapshot(run) == before


def test_resume_of_a_file_is_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    refused(invoke("train", "--resume", afile, "--no-progress"), afile, "is a file, not a run directory")
    assert afile.read_text() == "keep me"


def _csv(path, labels, pixel=0):
    path.write_text("".join(",".join([str(pixel)] * 784 + [str(label)]) + "\n" for label in labels))
    return path


@pytest.mark.parametrize("rows, message", [
    ({"labels": [3, -1, 4] * 250}, "row 2 has label -1; labels must be classes 0–9 (250 out-of-range"),
    ({"labels": [3, 4, 10] * 250}, "row 3 has label 10"),
    ({"labels": [1, 2] * 10}, "has 20 rows; training needs at least 628: 500 held out for validation and one batch"),
    ({"labels": [1, 2] * 350, "pixel": 256}, "row 1 has a pixel outside 0–255"),
    ({"labels": []}, "holds no rows"),
])
def test_a_bad_data_csv_is_refused(tmp_path, rows, message):
    data = _csv(tmp_path / "digits.csv", **rows)
    out = tmp_path / "run"
    refused(invoke("train", "--task", "mlp", "--width", 8, "--steps", 2, "--out", out, "--data", data,
                   "--no-progress"), data, message)
    assert not out.exists()


def test_a_short_text_names_the_file(tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("to be or not to be " * 60)
    refused(invoke("train", "--task", "char-gpt", "--size", "small", "--steps", 2, "--out", tmp_path / "run",
                   "--data", data, "--no-progress"), data, "too short")


def test_an_unforeseen_failure_is_one_line_too(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(cli, "app", broken)
    monkeypatch.delenv("SPECOPT_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == ("error: RuntimeError: something nobody foresaw (an unexpected failure; "
                           "SPECOPT_TRACEBACK=1 shows where)")


def test_running_out_of_memory_is_named_as_such(monkeypatch, capsys):
    def huge(*args, **kwargs):
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses: "can't allocate memory"

    monkeypatch.setattr(cli, "app", huge)
    monkeypatch.delenv("SPECOPT_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and err.startswith("error: out of memory (") and "a smaller model" in err


# --- 2. python -m specopt, and the listings in --help -------------------------------------------------------------


def test_python_m_specopt_is_the_specopt_command(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "specopt", "train", "--task", "heavy-tailed", "--out", str(afile),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: run directory {afile} exists and is not a directory; choose another --out"
    done = subprocess.run([sys.executable, "-m", "specopt", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and "python -m specopt" in done.stdout
    assert all(command in done.stdout for command in ("train", "compare", "experiment", "scale"))


@pytest.mark.parametrize("args, message", [
    (["train", "--stepz", "3"], "error: No such option: --stepz (Possible options: --seed, --size, --steps) "
                                "(see `specopt train --help`)"),
    (["train", "--steps", "1e23"], "error: Invalid value for '--steps': Input should be a valid integer"),
    (["train", "--lr", "-1"], "error: Invalid value for '--lr': must be a positive finite number, got -1.0 "
                              "(see `specopt train --help`)"),
    (["bogus"], "error: No such command 'bogus'. (see `specopt --help`)")])
def test_an_error_in_the_options_is_one_line_like_the_commands_own(args, message):
    """click's own parsing errors (a misspelt option, a value of the wrong type, a callback's check) came as a boxed
    panel under a usage line, unlike every other error of the command."""
    done = subprocess.run([sys.executable, "-m", "specopt", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    assert done.returncode == 2 and done.stdout == ""
    message = message.replace("(see `specopt", "(see `python -m specopt")  # the name it was called by
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(message), done.stderr
    bare = subprocess.run([sys.executable, "-m", "specopt"], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "Commands" in bare.stdout + bare.stderr  # no command: the help, as before


def _entries(output, title):
    """``{name: description}`` of the help block under ``title``."""
    block = re.split(r"\n[ \t]*\n", output.split(title + ":", 1)[1], maxsplit=1)[0]
    return dict(re.findall(r"^ *(\S+) {2,}(\S.*?) *$", block, flags=re.M))


def test_experiment_help_lists_every_experiment_with_a_line_of_description():
    from specopt.experiments import EXPERIMENTS

    result = invoke("experiment", "--help")
    assert result.exit_code == 0
    entries = _entries(result.output, "Experiments")
    assert list(entries) == list(EXPERIMENTS)
    assert all(len(text.split()) >= 3 for text in entries.values())
    assert entries["clipping"] == "Clipped Scion against UScion on two tasks."
    assert "see `specopt experiment --help`" not in result.output


def test_compare_help_lists_the_optimizers_and_tasks():
    from specopt import registry
    from specopt.tasks import TASKS

    result = invoke("compare", "--help")
    assert result.exit_code == 0
    optimizers = _entries(result.output, "Optimizers (--optimizers a,b,c)")
    tasks = _entries(result.output, "Tasks (--task)")
    assert list(optimizers) == registry.optimizer_names() and list(tasks) == list(TASKS)
    assert all(text for text in [*optimizers.values(), *tasks.values()])


@pytest.mark.parametrize("command", [[], ["train"], ["compare"], ["experiment"], ["scale"]])
def test_the_help_fits_an_80_column_terminal_without_boxes(command):
    """The help was drawn in rich's boxed panels, whose option table squeezed each description into a column of
    18 characters at 80 columns; it is click's plain layout now, every line within the terminal."""
    done = subprocess.run([sys.executable, "-m", "specopt", *command, "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"})
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Usage:") and max(map(len, lines)) <= 80, done.stdout
    assert not set(done.stdout) & set("╭╰│─"), done.stdout
    if not command:
        commands = _entries(done.stdout, "Commands")
        assert list(commands) == ["train", "compare", "experiment", "scale"]
        assert not any(text.endswith("...") for text in commands.values()), commands


def _killed():
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("target, how", [(_killed, "was killed by signal SIGKILL"),
                                         (functools.partial(os._exit, 3), "exited with code 3")])
def test_a_compare_run_whose_process_ends_without_a_result_is_an_error_not_a_hang(target, how):
    """An OOM-killed or crashed run process never reports: compare waited on its queue forever."""
    ctx = multiprocessing.get_context("fork")
    queue, proc = ctx.Queue(), ctx.Process(target=target)
    proc.start()
    with pytest.raises(RuntimeError, match=f"run adamw {how} without a result"):
        compare._result(queue, proc, "adamw")
    proc.join()


@pytest.mark.parametrize("flags, message", [
    (["--task", "heavy-tailed", "--batch-schedule", "bst"], "task 'heavy-tailed' has a fixed batch"),
    (["--task", "heavy-tailed", "--optimizer", "gluon-mvr", "--no-closure"], "gluon-mvr needs step(closure)"),
])
def test_a_run_refused_before_its_first_step_writes_nothing(tmp_path, flags, message):
    """Found after the run directory was written, these left config.json behind: the same command was then refused
    as "not empty" and --resume found no checkpoint."""
    refused(invoke("train", *flags, "--steps", 3, "--no-progress", "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


def test_compare_checks_every_run_before_the_first_starts(tmp_path):
    out = tmp_path / "cmp"
    refused(invoke("compare", "--task", "heavy-tailed", "--optimizers", "adamw,gluon-mvr", "--no-closure",
                   "--steps", 3, "--no-progress", "--out", out), "gluon-mvr needs step(closure)")
    assert not (out / "adamw").exists()
    refused(invoke("compare", "--task", "heavy-tailed", "--optimizers", "adamw,muon,adamw", "--steps", 3,
                   "--no-progress", "--out", out), "adamw listed more than once")


def test_the_plotted_training_curve_follows_the_loss_without_lag():
    """loss.png's faint curve: a centred mean, which follows a falling loss (a trailing mean sat 0.4 above it)."""
    falling = [10.0 - k for k in range(10)]
    assert compare.smooth(falling, k=3) == pytest.approx([9.5] + falling[1:-1] + [1.5])
    assert compare.smooth([1.0, 3.0] * 10, k=11)[10] == pytest.approx(23 / 11)  # six 3s, five 1s around index 10


def test_a_resume_with_more_steps_interrupted_before_its_checkpoint_resumes_on_the_new_schedule(runs, tmp_path,
                                                                                                  monkeypatch):
    """``--resume --steps 8`` wrote steps 8 into config.json; stopped before its first checkpoint, the plain
    ``--resume`` that follows ran step 5 at the 4-step schedule's lr, 0 (a linear decay's end), silently. It now
    equals the uninterrupted extension."""
    straight, stopped = (shutil.copytree(runs / "scion", tmp_path / name) for name in ("straight", "stopped"))
    assert invoke("train", "--resume", straight, "--steps", 8, "--no-progress").exit_code == 0
    real_batch = HeavyTailedRegression.batch

    def stopped_in_step_6(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return real_batch(self, step)

    monkeypatch.setattr(HeavyTailedRegression, "batch", stopped_in_step_6)
    assert invoke("train", "--resume", stopped, "--steps", 8, "--checkpoint-every", 4, "--no-progress").exit_code \
        == 130
    monkeypatch.setattr(HeavyTailedRegression, "batch", real_batch)
    assert invoke("train", "--resume", stopped, "--no-progress").exit_code == 0
    a, b = read_metrics(straight), read_metrics(stopped)
    assert [r["lr"] for r in b] == [r["lr"] for r in a] and b[4]["lr"] > 0
    assert [r["loss"] for r in b] == [r["loss"] for r in a]


@pytest.mark.parametrize("damage", ["read-only", "directory"])
def test_a_resume_that_cannot_write_its_metrics_changes_nothing(run, damage):
    """A read-only metrics.csv (or a directory in its place) failed the resume after metrics.jsonl had been emptied
    and config.json rewritten: the run's record was lost."""
    if damage == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    target = run / "metrics.csv"
    if damage == "directory":
        target.unlink()
        target.mkdir()
    else:
        target.chmod(0o444)
    before = snapshot(run)
    refused(invoke("train", "--resume", run, "--steps", 6, "--no-progress"), "metrics.csv", "nothing was changed")
    assert snapshot(run) == before


def test_a_run_whose_gradients_become_non_finite_has_diverged_not_bad_input(tmp_path):
    """A NaN gradient raised the engine's ValueError, reported as bad input (exit 2) with advice about a Python
    keyword the command has no flag for; it is a divergence: exit 1, the metrics up to it kept."""
    result = invoke("train", "--task", "mlp", "--optimizer", "muon", "--lr", "1e30", "--steps", 20, "--no-progress",
                    "--out", tmp_path / "run")
    assert result.exit_code == 1 and "diverged" in result.stderr and "Traceback" not in result.output
    rows = read_metrics(tmp_path / "run")
    assert rows and math.isnan(rows[-1]["loss"])


def test_data_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    """A FIFO as --data waited forever for a writer; /dev/zero read until memory ran out (exit 1)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(invoke("train", "--task", "char-gpt", "--size", "tiny", "--data", fifo, "--steps", 2, "--no-progress",
                   "--out", tmp_path / "run"), "is not a regular file or a directory")
    refused(invoke("train", "--task", "mlp", "--data", "/dev/zero", "--steps", 2, "--no-progress",
                   "--out", tmp_path / "run2"), "/dev/zero", "not a regular file")


def test_a_negative_radius_is_named_as_given(tmp_path):
    """--radius -1 was reported as the scaled radius of some role (-3.33 or -0.333), a number never typed."""
    refused(invoke("train", "--task", "logreg", "--optimizer", "scion", "--radius", -1, "--steps", 2,
                   "--no-progress", "--out", tmp_path / "run"), "radius", "got -1.0")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_multi_process_run_exits_130_with_how_to_resume(tmp_path, sig):
    """Ctrl-C or SIGTERM at the launcher of `--nproc 2` was "an unexpected failure" (exit 1, SignalException)."""
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "specopt", "train", "--nproc", "2", "--task", "mlp", "--steps",
                             "100000", "--checkpoint-every", "5", "--no-progress", "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and len(read_metrics(out) if out.exists() else []) < 3:
        time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"`specopt train --resume {out}` continues the run" in err and "unexpected failure" not in err


def test_overwrite_replaces_a_runs_files_not_files_of_ones_own_by_the_same_names(tmp_path):
    """A directory with one's own config.json and metrics.csv was called a run "stopped before its first
    checkpoint", and --overwrite, as the message advised, replaced both files."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "metrics.csv").write_text("my,numbers\n")
    before = snapshot(out)
    line = refused(invoke("train", *HT, "--optimizer", "scion", "--out", out), "is not empty")
    assert "stopped before its first checkpoint" not in line
    refused(invoke("train", *HT, "--optimizer", "scion", "--out", out, "--overwrite"),
            "is not a specopt run's config.json")
    assert snapshot(out) == before


def test_overwrite_refuses_a_directory_with_run_file_names_but_no_run(tmp_path):
    """A directory of one's own with a ``checkpoint/`` folder and a ``metrics.csv`` but no config.json was wiped by
    --overwrite: the names are a run's, the files were not."""
    out = tmp_path / "project"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "weights.bin").write_bytes(b"precious")
    (out / "metrics.csv").write_text("my,numbers\n")
    before = snapshot(out)
    refused(invoke("train", *HT, "--optimizer", "scion", "--out", out, "--overwrite"),
            "holds checkpoint, metrics.csv but no specopt run")
    assert snapshot(out) == before


def test_a_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(tmp_path):
    """The console script imports specopt (and torch, 1–3 s) before any of the command's code runs: a Ctrl-C then
    printed a KeyboardInterrupt traceback from inside torch's import. Run as the installed entry point, interrupted
    0.3 s in (inside the import on any machine this runs on; later, the run's own handler answers)."""
    import time
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "specopt"]
    module, function = script.value.split(":")
    proc = subprocess.Popen([sys.executable, "-c", f"import {module}; {module}.{function}()", "train", "--task",
                             "logreg", "--steps", "100000", "--no-progress", "--out", str(tmp_path / "run")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err


def test_torch_muon_on_a_model_with_no_hidden_matrix_says_so(tmp_path):
    """logreg's one matrix is its output layer: torch-muon said "optimizer got an empty parameter list"."""
    refused(invoke("train", "--task", "logreg", "--optimizer", "torch-muon", "--steps", 2, "--no-progress",
                   "--out", tmp_path / "run"), "no hidden matrix for torch.optim.Muon", "use adamw, or muon")


def test_a_resume_whose_metrics_were_deleted_says_the_record_lacks_them(tmp_path):
    """With metrics.jsonl deleted, a resume went on silently: the record then started at the checkpoint's step."""
    out = tmp_path / "run"
    assert invoke("train", *HT, "--optimizer", "scion", "--out", out).exit_code == 0
    for name in ("metrics.jsonl", "metrics.csv"):
        (out / name).unlink()
    result = invoke("train", "--resume", out, "--steps", 6, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "lacks the rows of 4 of steps 1–4 (first: 1" in result.output
    assert [r["step"] for r in read_metrics(out)] == [5, 6]


KILLED_WHILE_REPLACING = """
import os, signal, sys
from pathlib import Path
from specopt.training import output_dir
with output_dir(Path(sys.argv[1]), "compare") as out:
    (out / "summary.csv").write_text("new, unfinished")
    os.kill(os.getpid(), signal.SIGKILL)  # no handler runs: the earlier output stays aside
"""


def _finished_output(out):
    from specopt.training import output_dir

    with output_dir(out, "compare") as o:
        (o / "summary.csv").write_text("earlier")


def test_an_output_whose_replacement_was_killed_is_refused_with_both_ways_out(tmp_path):
    """A SIGKILL while a command replaced its earlier output left that output under a hidden name, which every
    later run ignored (and kept, forever): now the next run names it and how to keep either."""
    out = tmp_path / "cmp"
    _finished_output(out)
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_REPLACING, str(out)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    (aside,) = tmp_path.glob(".cmp.replaced-*")
    assert (aside / "summary.csv").read_text() == "earlier"
    before, before_aside = snapshot(out), snapshot(aside)
    line = refused(invoke("compare", "--task", "heavy-tailed", "--optimizers", "scion", "--steps", 2, "--out", out),
                   "was being replaced when the command was killed", str(aside), f"mv {aside} {out}")
    assert f"rm -rf {aside}" in line
    assert snapshot(out) == before and snapshot(aside) == before_aside
    # the user keeps the earlier one, as the message says; the command then replaces it as usual
    shutil.rmtree(out)
    aside.rename(out)
    _finished_output(out)
    assert not list(tmp_path.glob(".cmp.replaced-*"))


def test_an_earlier_output_left_aside_after_its_replacement_finished_is_removed(tmp_path):
    """Killed after the new output was marked finished, before the earlier one was deleted: the next run deletes it
    (the step the command did not reach), keeping the finished output."""
    out = tmp_path / "cmp"
    _finished_output(out)
    shutil.copytree(out, tmp_path / ".cmp.replaced-0123abcd")
    _finished_output(out)
    assert not list(tmp_path.glob(".cmp.replaced-*")) and (out / "summary.csv").read_text() == "earlier"


def test_the_progress_bar_is_shown_on_a_terminal_only_unless_asked_for(tmp_path):
    """Piped to a file, `specopt compare` wrote hundreds of KB of progress-bar carriage returns."""
    def stderr_of(*flags):
        out = tmp_path / f"run{len(flags)}"
        done = subprocess.run([sys.executable, "-m", "specopt", "train", "--task", "logreg", "--steps", "20",
                               "--out", str(out), *flags], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "step/s" not in stderr_of() and "step/s" not in stderr_of("--no-progress")  # (text mode reads \r as \n)
    assert "step/s" in stderr_of("--progress", "--seed", "0")
