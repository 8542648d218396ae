"""Distributed runs on 2 gloo ranks (one thread each): every preset under DDP and FSDP2 equals the single-process
run on the same global batch, replicas stay identical, and a checkpoint saved at world size 2 resumes at 1."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
import distributed_worker  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _run(mode: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(WORKER), mode, str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    _run("dist", out)
    _run("single", out)
    _run("resume", out)
    load = lambda name: torch.load(out / name, weights_only=True)  # noqa: E731
    return {"single": load("single.pt"), "rank0": load("rank0.pt"), "rank1": load("rank1.pt"),
            "resumed": load("resumed.pt"), "out": out}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


PRESETS = list(distributed_worker.PRESETS)
KIND_AND_NAME = [(kind, name) for kind in ("ddp", "fsdp") for name in distributed_worker.presets(kind)]


@pytest.mark.parametrize("kind, name", KIND_AND_NAME)
def test_five_distributed_steps_equal_five_single_process_steps(runs, kind, name):
    assert _max_diff(runs["rank0"][f"{kind}/{name}"], runs["single"][name]) <= 1e-6


@pytest.mark.parametrize("name", distributed_worker.presets("ddp"))
def test_ddp_replicas_hold_identical_parameters(runs, name):
    assert _max_diff(runs["rank0"][f"replica/{name}"], runs["rank1"][f"replica/{name}"]) == 0.0


@pytest.mark.parametrize("name", ["gluon", "prox-storm", "gluon-mvr"])
def test_an_evaluation_between_steps_does_not_change_a_probing_presets_fsdp2_run(runs, name):
    """Gluon and STORM evaluate the batch again at other weights; after an evaluation forward a root-only FSDP2 shard
    keeps its unsharded weights, which the probe's forward reused (the current weights, not the probe's: 7e-3 off)."""
    assert _max_diff(runs["rank0"][f"root-eval/{name}"], runs["single"][name]) <= 1e-6


@pytest.mark.parametrize("name", PRESETS)
def test_fsdp2_equals_ddp(runs, name):
    assert _max_diff(runs["rank0"][f"fsdp/{name}"], runs["rank0"][f"ddp/{name}"]) <= 1e-6


@pytest.mark.parametrize("kind, name", KIND_AND_NAME)
def test_checkpoint_saved_at_world_size_2_resumes_at_1_identically(runs, kind, name):
    assert (runs["out"] / f"ckpt-{kind}-{name}" / ".metadata").exists()
    assert _max_diff(runs["resumed"][f"{kind}/{name}"], runs["single"][name]) <= 1e-6


@pytest.mark.parametrize("name", PRESETS)
def test_torchs_dcp_flow_saved_sharded_at_world_size_2_resumes_at_1(runs, name):
    """torch's get_state_dict → dcp.save under FSDP2 on 2 ranks, dcp.load → set_state_dict into one process's plain
    model and optimizer: the ranks' rows assembled into whole tensors."""
    assert _max_diff(runs["resumed"][f"torch-flow/{name}"], runs["single"][name]) <= 1e-6


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("flow", ["torch-flow", "full-state-dict"])
def test_torchs_own_checkpoint_flows_under_fsdp2_resume_bit_for_bit(runs, flow, name):
    """At step 3 on 2 ranks, get_state_dict → dcp.save (torchtitan's flow), or get_state_dict with
    full_state_dict=True (Accelerate's FULL_STATE_DICT); then a new sharded model and optimizer resumed by dcp.load
    and set_state_dict, or set_state_dict of the full dicts: every rank's rows of every state tensor come back (plain
    local tensors would be saved once, as if replicated, and every rank would resume from rank 0's rows)."""
    assert _max_diff(runs["rank0"][f"{flow}/{name}"], runs["rank0"][f"fsdp/{name}"]) == 0.0


def test_muonbp_block_steps_under_fsdp2_post_no_collective_for_the_lmo(runs):
    """Updates 0 and 3 (P = 3) are full: each matrix travels to its owner and back (all_to_all). The others are
    block steps on each rank's own rows: the only collective is the engine's one-scalar non-finite check."""
    for rank in ("rank0", "rank1"):
        counts = runs[rank]["muonbp_collectives"]
        for k, calls in enumerate(counts):
            if k % 3 == 0:
                assert calls.get("all_to_all_single", 0) > 0
            else:
                assert calls == {"all_reduce": 1}


@pytest.mark.parametrize("name", distributed_worker.EXPERT_PRESETS)
def test_an_expert_stack_under_fsdp2_is_orthogonalised_where_it_lies(runs, name):
    """FSDP2 shards an (E, d_out, d_in) stack by experts, so each rank holds whole maps: its lmo runs on the rank's
    own experts, with no gather (Muon: the only collective after the first step's checks is the one-scalar
    non-finite check), and every preset's run equals one process's."""
    for rank in ("rank0", "rank1"):
        first, second = runs[rank]["experts_collectives"]
        assert "all_to_all_single" not in first and second == {"all_reduce": 1}  # the first: the ranks' agreement
    assert _max_diff(runs["rank0"][f"fsdp/experts/{name}"], runs["single"][f"experts/{name}"]) <= 1e-6


def test_replicas_that_differ_are_refused(runs):
    for rank in ("rank0", "rank1"):
        assert "parameters differ across ranks" in runs[rank]["replica_error"]
        assert "the same parameter order" in runs[rank]["replica_error"]


def test_dog_refuses_fsdp2_sharded_tensors_clearly_on_every_rank(runs):
    for rank in ("rank0", "rank1"):
        assert "DoG" in runs[rank]["dog_fsdp_error"] and "DDP" in runs[rank]["dog_fsdp_error"]


def test_zero_redundancy_optimizer_is_refused_clearly_and_runs_with_per_rank_optimizers(runs):
    """ZeroRedundancyOptimizer gives each rank's optimizer other parameters (a share of the 10): the replica check
    must refuse it on every rank, not hang in a collective the ranks call with different sizes; with
    process_group=None each rank steps its share, and the run equals the single-process one."""
    for rank in ("rank0", "rank1"):
        assert "ZeroRedundancyOptimizer" in runs[rank]["zero_error"]
    assert isinstance(runs["rank0"]["zero"], dict), runs["rank0"]["zero"]  # not an error's text
    assert _max_diff(runs["rank0"]["zero"], runs["single"]["scion"]) <= 1e-6


def test_a_nan_in_one_ranks_gradient_shard_skips_the_step_on_every_rank(runs):
    for rank in ("rank0", "rank1"):
        assert runs[rank]["nan_skipped"] == 1 and runs[rank]["nan_unchanged"]


def test_a_nan_in_one_ranks_replicated_gradient_skips_the_step_on_every_rank(runs):
    """Under DDP the rank that saw the NaN skipped alone, and the other waited in the lmo's all_gather."""
    for rank in ("rank0", "rank1"):
        assert runs[rank]["ddp_nan_skipped"] == 1 and runs[rank]["ddp_nan_unchanged"]


def test_a_rank_whose_gradients_are_missing_under_fsdp2_is_refused_on_every_rank_not_left_waiting(runs):
    for rank, mine in (("rank0", 10), ("rank1", 0)):
        error = runs[rank]["missing_grads_error"]
        assert "sharded (FSDP2) parameters this step updates differ across ranks" in error
        assert f"between 0 and 10 tensors with a gradient per rank (this rank: {mine})" in error


def test_dtensor_parameters_not_sharded_on_dim_0_are_refused(runs):
    assert "sharded on dim 0 over a 1-D mesh" in runs["rank0"]["placement_error"]
    assert "Replicate" in runs["rank0"]["placement_error"]


def _specopt(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "specopt.cli", *args, "--no-progress"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_bad_input_found_by_the_workers_exits_2_without_the_launchers_traceback(tmp_path):
    """A batch that does not split over 3 ranks is refused by every worker: exit 2 (bad input, as with one process),
    one line per rank, not torchrun's exit 1 ("diverged") and its ChildFailedError traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "specopt.cli", "train", "--nproc", "3", "--task", "mlp", "--steps",
                           "2", "--out", str(tmp_path / "run"), "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "does not split evenly over 3 ranks" in done.stderr and "Traceback" not in done.stderr


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_train_nproc_2_then_resume_with_one_process_continues_the_run(tmp_path, parallel):
    """`specopt train --nproc 2` (torchrun) for 3 steps, resumed by a single process to 6, matches 6 steps at 2; the
    resume finds the checkpoint where a save killed between its two renames left it (``checkpoint.old``)."""
    common = ["--task", "mlp", "--optimizer", "muon", "--schedule", "constant", "--width", "16", "--val-every", "3"]
    _specopt("train", "--nproc", "2", "--parallel", parallel, "--steps", "6", "--out", "straight", *common,
             cwd=tmp_path)
    _specopt("train", "--nproc", "2", "--parallel", parallel, "--steps", "3", "--out", "resumed", *common,
             cwd=tmp_path)
    assert (tmp_path / "resumed" / "checkpoint" / ".metadata").exists()
    config = tmp_path / "resumed" / "config.json"
    config.write_text(config.read_text().replace('"steps": 3', '"steps": 6'))
    (tmp_path / "resumed" / "checkpoint").rename(tmp_path / "resumed" / "checkpoint.old")
    out = _specopt("train", "--resume", "resumed", cwd=tmp_path)
    assert "checkpoint.old holds the checkpoint before it" in out and "done: steps 3 → 6" in out
    assert (tmp_path / "resumed" / "checkpoint" / ".metadata").exists()
    assert not (tmp_path / "resumed" / "checkpoint.old").exists()  # the next save replaced it
    straight, resumed = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [str(i) for i in range(1, 7)]  # rank 0 alone wrote the metrics
    for a, b in zip(straight, resumed, strict=True):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert float(straight[-1]["val_loss"]) == pytest.approx(float(resumed[-1]["val_loss"]), rel=1e-5)
    if parallel == "ddp":  # a damaged checkpoint met by both ranks: one line, not one per rank
        damaged = shutil.copytree(tmp_path / "resumed", tmp_path / "damaged")
        os.truncate(next((damaged / "checkpoint").glob("*.distcp")), 100)
        done = subprocess.run([sys.executable, "-m", "specopt.cli", "train", "--resume", str(damaged), "--steps", "9",
                               "--nproc", "2", "--no-progress"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "is cut short" in done.stderr


def test_a_batch_that_does_not_split_over_the_ranks_is_a_clear_error():
    from specopt.training import _shard_batch

    x = torch.zeros(10, 3)
    assert _shard_batch((x, x), 1, 2)[0].shape == (5, 3)
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        _shard_batch((x, x), 0, 3)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (8, 3, 3, 3), (12, 4)])
def test_lmo_factor_is_the_factor_lmo_factored_returns(shape):
    """The distributed path asks a norm for its factor without computing; it must agree with the computation."""
    import specopt
    from specopt.engine import auto_norm

    g = torch.randn((2, *shape))
    norms = [auto_norm(shape), specopt.Blocked(specopt.Spectral(), 2) if len(shape) == 2 else auto_norm(shape)]
    for norm in norms:
        assert norm.lmo_factored(g, batch_dims=1)[1] == norm.lmo_factor(shape)


def test_a_step_whose_parameters_with_a_gradient_differ_across_ranks_is_refused_on_every_rank(monkeypatch):
    """Checked at every step, not only the first: DDP's find_unused_parameters leaves a layer that one rank did not
    use without a gradient on that rank, and the split lmo's collectives then mismatch (gloo: "Received data size
    doesn't match expected size" on one rank, a hang or a reset on the other). Simulated here: the other rank
    reports one parameter more."""
    from specopt import distributed

    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 2)

    def other_rank_has_one_more(out, inp, group, async_op=False):
        out.copy_(torch.cat([inp, inp + torch.tensor([1.0, 10.0], dtype=inp.dtype)]))

    monkeypatch.setattr(distributed, "_all_gather", other_rank_has_one_more)
    tensors = [torch.ones(3, 2), torch.ones(2)]
    with pytest.raises(ValueError, match=r"differ across ranks: 2 \(8 entries\), 3 \(18 entries\) per rank"):
        distributed.check_replicated(tensors, None, torch.device("cpu"), values=False)


def test_a_process_group_this_rank_is_not_in_is_a_clear_error(monkeypatch):
    from specopt import distributed

    monkeypatch.setattr(distributed.dist, "get_rank", lambda group=None: -1 if group is not None else 1)
    with pytest.raises(ValueError, match="rank 1 is not a member of the process_group"):
        distributed.replica_group(object())


def test_replica_values_are_compared_at_the_first_step_and_every_hundredth(monkeypatch):
    """A model left unwrapped (no DDP) whose replicas start equal drifts apart: compared only at the first step,
    it trained on with matrices stepped by lmo's of other ranks' momenta. Sizes every step, values every 100."""
    from specopt import distributed, lmo

    calls = []
    monkeypatch.setattr(distributed, "replica_group", lambda group: "a group")
    monkeypatch.setattr(distributed, "check_replicated", lambda tensors, group, device, values: calls.append(values))
    runner = lmo.LmoRunner()
    record = lmo.Record(torch.zeros(3, 2), torch.zeros(3, 2), {}, {}, "w")
    for _ in range(201):
        runner.check_replicas([record], torch.device("cpu"))
    assert [i for i, values in enumerate(calls) if values] == [0, 100, 200] and len(calls) == 201
