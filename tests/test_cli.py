"""The `specopt` command end to end on tiny configurations, in temporary directories."""

import csv
import json
import statistics

import pytest
import torch
from typer.testing import CliRunner

from specopt.cli import app
from specopt.training import RunConfig, lr_factor, read_metrics, train

runner = CliRunner()
TINY = ["--task", "char-gpt", "--size", "tiny", "--no-progress"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_writes_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", *TINY, "--optimizer", "scion", "--steps", 12, "--val-every", 4,
                    "--checkpoint-every", 5, "--out", out)
    assert result.exit_code == 0, result.output
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8, 12]
    with open(out / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
    assert (out / "checkpoint.pt").is_file() and not (out / "checkpoint.pt.tmp").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 12
    assert "final validation loss" in result.output


def test_the_metrics_lr_is_the_lr_each_step_ran_at_as_the_run_states_it(tmp_path):
    """Row k holds the lr of step k (read before the schedule moves on: the last step of a decaying run is not at
    0), and for Muon the lr of its matrices, config.json's, not its AdamW tensors' adamw_lr."""
    out = tmp_path / "run"
    result = invoke("train", *TINY, "--optimizer", "muon", "--steps", 8, "--schedule", "linear-decay", "--out", out)
    assert result.exit_code == 0, result.output
    cfg = RunConfig(task="char-gpt", optimizer="muon", steps=8, schedule="linear-decay")
    base = json.loads((out / "config.json").read_text())["hparams"]["lr"]
    assert [r["lr"] for r in read_metrics(out)] == pytest.approx([base * lr_factor(k, cfg) for k in range(8)])
    assert read_metrics(out)[-1]["lr"] > 0


@pytest.mark.parametrize("optimizer", ["scion", "muon", "torch-muon", "gluon", "adamw", "prox-spectral", "gluon-mvr"])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, optimizer):
    cfg = RunConfig(task="char-gpt", optimizer=optimizer, steps=10, task_options={"size": "tiny"}, val_every=5,
                    checkpoint_every=4)
    straight = train(cfg, tmp_path / "straight", progress=False)

    from specopt.tasks.text import CharGPT

    real_batch = CharGPT.batch

    def killed_at_step_6(self, step):
        if step == 6:
            raise KeyboardInterrupt  # as if the process were stopped in the middle of step 7
        return real_batch(self, step)

    monkeypatch.setattr(CharGPT, "batch", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(CharGPT, "batch", real_batch)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 4  # intact
    resumed = train(RunConfig(), tmp_path / "resumed", resume=True, progress=False)
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in straight.rows]
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == list(range(1, 11))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_resume_continues_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--optimizer", "uscion", "--steps", 8, "--checkpoint-every", 3,
                  "--out", out).exit_code == 0
    result = invoke("train", "--resume", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 9))


def test_compare_writes_report_plot_and_csv(tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", *TINY, "--optimizers", "adamw,muon,scion", "--steps", 8, "--val-every", 4,
                    "--out", out)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| adamw |" in report and "| muon |" in report and "steps to AdamW best" in report
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    from matplotlib.image import imread

    image = imread(out / "loss.png")
    assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.01  # a real picture, not blank
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["optimizer"] for r in rows} == {"adamw", "muon", "scion"} and len(rows) == 24
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adamw"]["steps_ratio"] == 1.0
    assert "report:" in result.output and "| scion |" in result.output


def test_compare_sweep_picks_the_best_lr(tmp_path):
    out = tmp_path / "sweep"
    result = invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 4, "--val-every", 4, "--sweep",
                    "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["adamw"]
    assert len(summary["sweep"]) == 5
    assert summary["final_val"] == min(s["final_val"] for s in summary["sweep"])


def test_compare_over_seeds_reports_each_seed_and_the_spread(tmp_path):
    out = tmp_path / "seeds"
    result = invoke("compare", *TINY, "--optimizers", "adamw,muon", "--steps", 6, "--val-every", 3,
                    "--seeds", "0,1,2", "--out", out)
    assert result.exit_code == 0, result.output
    finals = {}
    for seed in (0, 1, 2):
        summary = json.loads((out / f"seed{seed}" / "summary.json").read_text())
        finals[seed] = {name: summary[name]["final_val"] for name in ("adamw", "muon")}
    assert finals[0] != finals[1]  # the seeds are different runs
    with open(out / "summary.csv") as f:
        rows = {r["optimizer"]: r for r in csv.DictReader(f)}
    for name in ("adamw", "muon"):
        values = [finals[s][name] for s in (0, 1, 2)]
        assert float(rows[name]["final_val_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert float(rows[name]["final_val_sd"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
    assert float(rows["adamw"]["ratio_mean"]) == 1.0
    muon_ratios = [json.loads((out / f"seed{s}" / "summary.json").read_text())["muon"]["steps_ratio"]
                   for s in (0, 1, 2)]
    reached = [r for r in muon_ratios if r]
    if len(reached) > 1:
        assert float(rows["muon"]["ratio_mean"]) == pytest.approx(statistics.fmean(reached), abs=1e-3)
    report = (out / "report.md").read_text()
    assert "mean ± sd" in report and "| muon |" in report
    assert (out / "spread.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra", [["--seeds", "0"], ["--seeds", "1,1"], ["--seeds", "0,x"], ["--seeds", "-1,2"],
                                   ["--seeds", "0,1", "--seed", "3"], ["--seeds", "0,1", "--sweep"]])
def test_compare_seeds_refuses_what_it_cannot_run(tmp_path, extra):
    result = invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, *extra, "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "--seeds" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bad").exists()


def test_compare_seeds_and_a_one_seed_comparison_keep_to_their_own_directories(tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    assert invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, "--out", one).exit_code == 0
    assert invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, "--seeds", "0,1", "--out",
                  many).exit_code == 0
    before = {p: p.read_bytes() for d in (one, many) for p in d.rglob("*") if p.is_file()}
    result = invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, "--seeds", "0,1", "--out", one)
    assert result.exit_code == 2 and "holds the output of `specopt compare`" in result.output
    result = invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, "--out", many)
    assert result.exit_code == 2 and "holds the output of `specopt compare --seeds`" in result.output
    assert {p: p.read_bytes() for d in (one, many) for p in d.rglob("*") if p.is_file()} == before


def test_compare_replaces_its_own_earlier_report_and_nothing_else(tmp_path):
    """The same command into its own output replaces it (no file of the earlier report is left to mix in); a
    directory holding a training run, files of one's own or an experiment is refused and left as it was."""
    out = tmp_path / "report"
    assert invoke("compare", *TINY, "--optimizers", "adamw,scion", "--steps", 2, "--out", out).exit_code == 0
    assert invoke("compare", *TINY, "--optimizers", "muon", "--steps", 2, "--out", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["muon"]
    assert set(json.loads((out / "summary.json").read_text())) == {"muon"}
    run = tmp_path / "run"
    assert invoke("train", *TINY, "--steps", 2, "--out", run).exit_code == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    experiment = tmp_path / "experiment"
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", experiment).exit_code == 0
    for directory in (run, mine, experiment):
        before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
        result = invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, "--out", directory)
        assert result.exit_code == 2 and "choose another --out" in result.output, result.output
        assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
    result = invoke("experiment", "bpm", "--quick", "--no-progress", "--out", experiment)
    assert result.exit_code == 2 and "holds the output of `specopt experiment msign --quick`" in result.output
    result = invoke("train", *TINY, "--steps", 2, "--overwrite", "--out", out)
    assert result.exit_code == 2 and "holds the output of `specopt compare`, not a run" in result.output
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_an_experiment_that_fails_or_is_interrupted_leaves_the_earlier_output_as_it_was(tmp_path, monkeypatch,
                                                                                        stop):
    from specopt.experiments import EXPERIMENTS

    out = tmp_path / "msign"
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", out).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def stopped(out, quick, progress):
        (out / "plot.png").write_bytes(b"half a plot")
        raise stop

    monkeypatch.setitem(EXPERIMENTS, "msign", stopped)
    result = invoke("experiment", "msign", "--quick", "--no-progress", "--out", out)
    assert result.exit_code == (130 if stop is KeyboardInterrupt else 2), result.output
    assert f"the earlier output in {out} is kept" in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["msign"]  # nothing left beside it


STOPPED_EXPERIMENT = """
import sys, time
from pathlib import Path
from specopt import cli
from specopt.experiments import EXPERIMENTS

def slow(out, quick, progress):
    (out / "report.md").write_text("half a report")
    Path(sys.argv[-1] + ".started").touch()
    time.sleep(60)

EXPERIMENTS["bpm"] = slow
sys.argv = ["specopt", "experiment", "bpm", "--no-progress", "--out", sys.argv[-1]]
cli.main()
"""


def test_a_terminated_experiment_puts_the_earlier_output_back(tmp_path):
    """SIGTERM (a scheduler's stop, `timeout`) is handled as Ctrl-C: the earlier report is put back, not left
    under a hidden name beside a half-written one."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "bpm"
    out.mkdir()
    (out / ".specopt-output").write_text("experiment bpm\n")
    (out / "report.md").write_text("the earlier report")
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_EXPERIMENT, str(out)], stderr=subprocess.PIPE, text=True)
    started = tmp_path / "bpm.started"
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"interrupted: no report written; the earlier output in {out} is kept" in err
    assert (out / "report.md").read_text() == "the earlier report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpm", "bpm.started"]  # nothing left aside


def test_a_quick_experiment_does_not_replace_a_full_one_and_a_full_one_replaces_a_quick_one(tmp_path, monkeypatch):
    """The committed experiments/* hold full runs: `specopt experiment NAME --quick --out` onto one must not swap
    a 20-minute result for a seconds-long one without a word."""
    from specopt.experiments import EXPERIMENTS

    def fake(out, quick, progress):
        (out / "report.md").write_text("quick" if quick else "full")
        return out / "report.md"

    monkeypatch.setitem(EXPERIMENTS, "bpm", fake)
    out = tmp_path / "bpm"
    assert invoke("experiment", "bpm", "--no-progress", "--out", out).exit_code == 0
    result = invoke("experiment", "bpm", "--quick", "--no-progress", "--out", out)
    assert result.exit_code == 2, result.output
    assert "holds the output of `specopt experiment bpm` (a --quick run does not replace a full one)" in result.output
    assert (out / "report.md").read_text() == "full"
    quick = tmp_path / "quick"
    assert invoke("experiment", "bpm", "--quick", "--no-progress", "--out", quick).exit_code == 0
    assert invoke("experiment", "bpm", "--quick", "--no-progress", "--out", quick).exit_code == 0  # quick over quick
    assert invoke("experiment", "bpm", "--no-progress", "--out", quick).exit_code == 0
    assert (quick / "report.md").read_text() == "full"


def test_an_interrupted_comparison_resumes_keeping_the_runs_it_finished(tmp_path, monkeypatch):
    """A family comparison over seeds runs for half an hour: Ctrl-C in its last run must not cost the others. The
    same command with --resume keeps every finished run of the same configuration, runs the rest, and writes the
    report the uninterrupted command writes."""
    from specopt import compare

    args = ["compare", *TINY, "--optimizers", "adamw,scion,muon", "--steps", 3, "--val-every", 3]
    assert invoke(*args, "--out", tmp_path / "straight").exit_code == 0
    real, ran = compare.run_isolated, []

    def interrupted_at_muon(cfg, out, progress=True):
        ran.append(cfg.optimizer)
        if cfg.optimizer == "muon" and len(ran) == 3:
            raise KeyboardInterrupt
        return real(cfg, out, progress)

    monkeypatch.setattr(compare, "run_isolated", interrupted_at_muon)
    result = invoke(*args, "--out", tmp_path / "cut")
    assert result.exit_code == 130 and "the same command with --resume continues it" in result.output
    result = invoke(*args, "--out", tmp_path / "cut", "--resume")
    assert result.exit_code == 0, result.output
    assert ran == ["adamw", "scion", "muon", "muon"] and "(finished before: kept)" in result.output
    final = {name: json.loads((tmp_path / d / "summary.json").read_text())
             for name, d in (("straight", "straight"), ("cut", "cut"))}
    for optimizer in ("adamw", "scion", "muon"):
        assert final["cut"][optimizer]["final_val"] == final["straight"][optimizer]["final_val"]
    result = invoke(*args, "--steps", 4, "--out", tmp_path / "cut", "--resume")  # another configuration: all run
    assert result.exit_code == 0 and "(finished before: kept)" not in result.output
    result = invoke(*args, "--out", tmp_path / "nothing", "--resume")
    assert result.exit_code == 2 and "holds none" in result.output


def test_a_comparison_written_before_the_marker_is_still_replaced_by_the_same_command(tmp_path):
    """README's main job writes runs/compare; one written by an earlier version (no .specopt-output) is known by its
    report's title and summary, so running the main job again replaces it rather than refusing the directory; an
    experiment's in its default place by its report and table."""
    out = tmp_path / "compare"
    assert invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, "--out", out).exit_code == 0
    (out / ".specopt-output").unlink()
    assert invoke("compare", *TINY, "--optimizers", "scion", "--steps", 2, "--out", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["scion"]
    experiment = tmp_path / "experiments" / "msign"  # an experiment in its default place, runs/experiments/NAME
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", experiment).exit_code == 0
    (experiment / ".specopt-output").unlink()
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", experiment).exit_code == 0


def test_a_report_is_kept_when_the_comparison_replacing_it_is_refused(tmp_path):
    out = tmp_path / "report"
    assert invoke("compare", *TINY, "--optimizers", "adamw", "--steps", 2, "--out", out).exit_code == 0
    result = invoke("compare", *TINY, "--optimizers", "adamw,gluon-mvr", "--no-closure", "--steps", 2, "--out", out)
    assert result.exit_code == 2 and "needs step(closure)" in result.output
    assert (out / "adamw" / "checkpoint.pt").exists() and (out / "report.md").exists()


@pytest.mark.parametrize(
    "args, message",
    [(["train", "--task", "imagenet"], "unknown task 'imagenet'"),
     (["train", *TINY, "--optimizer", "lion"], "unknown optimizer 'lion'"),
     (["compare", *TINY, "--optimizers", "adamw,lion"], "unknown optimizer"),
     (["train", *TINY, "--data", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
     (["train", *TINY, "--radius", "0"], "radius"),
     (["train", *TINY, "--momentum", "1.0"], "momentum"),
     (["train", *TINY, "--optimizer", "adamw", "--momentum", "0.5"], "adamw does not use momentum"),
     (["train", *TINY, "--optimizer", "gluon", "--radius", "3"], "gluon does not use radius"),
     (["train", *TINY, "--optimizer", "muon", "--lr", "1e300"], "lr must be a finite number in [0.0, 3.4"),
     (["train", *TINY, "--optimizer", "adamw", "--lr", "inf"], "must be a positive finite number, got inf"),
     (["train", *TINY, "--lr", "nan"], "must be a positive finite number, got nan"),
     (["train", *TINY, "--lr", "0"], "must be a positive finite number, got 0.0"),
     (["train", *TINY, "--seed", str(2**32)], "--seed"),
     (["compare", *TINY, "--optimizers", ","], "has an empty name"),
     (["compare", *TINY, "--seeds", "0,,1"], "--seeds takes comma-separated integers"),
     (["compare", *TINY, "--seeds", "1,0,1"], "seed(s) 1 listed more than once"),
     (["compare", *TINY, "--seeds", f"0,{2**32}"], "seed must be an integer in [0, 4294967295]"),
     (["train", "--task", "mlp", "--data", __file__], "is a file, but not an MNIST CSV"),
     (["train", "--resume", "/nonexistent/run"], "/nonexistent/run"),
     (["experiment", "nope"], "unknown experiment 'nope'"),
     (["train", "--task", "mlp", "--size", "tiny"], "--size applies to the char-gpt task only"),
     (["train", "--task", "mlp", "--parallel", "zero"], "unknown parallel mode 'zero'"),
     (["train", "--nproc", "2", "--parallel", "fsdp", "--optimizer", "torch-muon"], "use --optimizer muon"),
     (["train", "--nproc", "2", "--parallel", "fsdp", "--optimizer", "dog"], "use --parallel ddp"),
     (["train", "--nproc", "2", "--task", "imagenet"], "unknown task 'imagenet'")],
)
def test_bad_input_gets_a_clear_message(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("args", [["train", "--steps", "0"], ["train", "--steps", "many"], ["train", "--lr", "-1"]])
def test_bad_flag_values_are_rejected_by_the_cli(args):
    result = invoke(*args)
    assert result.exit_code == 2 and ("Invalid value" in result.output or "is not in the range" in result.output)


@pytest.mark.parametrize("flag, expected", [("--gram", True), ("--no-gram", False)])
def test_gram_flag_reaches_the_spectral_norms(tmp_path, flag, expected):
    from specopt import registry
    from specopt.norms import Spectral
    from specopt.tasks import get_task

    out = tmp_path / "run"
    result = invoke("train", *TINY, "--optimizer", "uscion", "--steps", 2, "--val-every", 2, flag, "--out", out)
    assert result.exit_code == 0, result.output
    hp = json.loads((out / "config.json").read_text())["hparams"]
    assert hp["gram"] is expected
    task = get_task("char-gpt", size="tiny")
    for name in ("muon", "scion"):
        (opt,) = registry.build(name, task.build_model(), task, registry.resolve(name, {"gram": expected}))
        norms = [g["norm"] for g in opt.param_groups if isinstance(g["norm"], Spectral)]
        assert norms and all(n.gram is expected for n in norms)


def test_launch_passes_boolean_flags_to_the_workers(monkeypatch):
    import torch.distributed.launcher.api as launcher

    from specopt import cli

    seen = {}

    def fake_launch(config, entrypoint):
        seen["nproc"] = config.nproc_per_node
        return lambda *args: seen.setdefault("args", list(args))

    monkeypatch.setattr(launcher, "elastic_launch", fake_launch)
    assert cli.launch(2, {"optimizer": "muon", "gram": False, "lr": None, "steps": 3}, progress=False) == 0
    args = seen["args"][seen["args"].index("specopt.cli") + 1:]
    assert seen["nproc"] == 2
    assert args == ["train", "--optimizer", "muon", "--no-gram", "--steps", "3", "--no-progress"]


def test_rerunning_an_experiment_refuses_to_delete_files_added_to_its_output(tmp_path):
    """The same command replaced its earlier output whole, with the notes and the run a user had added to it since
    (deleted, exit 0): the finished output's marker lists what the command wrote, and anything else is refused."""
    out = tmp_path / "msign"
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", out).exit_code == 0
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", out).exit_code == 0  # its own: replaced
    (out / "notes.txt").write_text("mine")
    result = invoke("experiment", "msign", "--quick", "--no-progress", "--out", out)
    assert result.exit_code == 2 and "files it did not write (notes.txt)" in result.output, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.md").exists()


def test_a_comparison_refused_before_any_run_leaves_no_output_and_no_resume_advice(tmp_path):
    """`--optimizers muon,muon` was refused with "the runs it finished are in OUT: the same command with --resume
    continues it" — there were none, and the advice failed the same way — and left OUT holding only the marker."""
    out = tmp_path / "dup"
    result = invoke("compare", "--task", "logreg", "--optimizers", "muon,muon", "--steps", 3, "--no-progress",
                    "--out", out)
    assert result.exit_code == 2 and "listed more than once" in result.output and "--resume" not in result.output
    assert not out.exists()


def test_an_output_given_as_a_link_is_replaced_where_it_points(tmp_path):
    """A rerun with --out a symlink to the earlier output replaced the link by a directory, left the old output
    behind it and a hidden `.link.replaced-*` link beside it."""
    target = tmp_path / "target"
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", target).exit_code == 0
    (tmp_path / "link").symlink_to(target)
    assert invoke("experiment", "msign", "--quick", "--no-progress", "--out", tmp_path / "link").exit_code == 0
    assert (tmp_path / "link").is_symlink() and (target / "report.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_a_full_disk_names_the_output_it_could_not_write(tmp_path, monkeypatch):
    """A full disk was "[Errno 28] No space left on device" (no file named) from an experiment, and torch's
    inline_container internals from a comparison's checkpoint."""
    import specopt.compare
    from specopt.experiments import EXPERIMENTS

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def cut_short(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2560 vs 2454")

    monkeypatch.setitem(EXPERIMENTS, "bpm", full)
    out = tmp_path / "bpm"
    result = invoke("experiment", "bpm", "--no-progress", "--out", out)
    assert result.exit_code == 2 and f"cannot write the output in {out}: No space left on device" in result.output
    monkeypatch.setitem(EXPERIMENTS, "bpm", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("no bpm data")))
    result = invoke("experiment", "bpm", "--no-progress", "--out", tmp_path / "bpm2")
    assert result.exit_code == 2 and "error: no bpm data" in result.output  # its own message, not "cannot write"
    monkeypatch.setattr(specopt.compare, "compare", cut_short)
    out = tmp_path / "cmp"
    result = invoke("compare", "--task", "logreg", "--optimizers", "muon", "--steps", 2, "--no-progress", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"cannot write a checkpoint in {out}: the file was cut short (is the disk full?)" in result.output


@pytest.mark.parametrize("task", ["heavy-tailed", "matrix-factorization", "icl-regression"])
def test_the_synthetic_tasks_declare_their_matrix_and_train_without_a_layout_warning(tmp_path, task):
    """Their one raw matrix had been named in param_groups' F.linear warning on every run, an advice the command's
    user cannot act on: the task declares it (Task.layouts)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = invoke("train", "--task", task, "--optimizer", "muon", "--steps", "1", "--out",
                        str(tmp_path / task), "--no-progress")
    assert result.exit_code == 0, result.output
