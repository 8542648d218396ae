"""Distributed runs on 2 gloo ranks (one thread each): every preset under DDP and FSDP2 equals the single-process
run on the same global batch, replicas stay identical, and a checkpoint saved at world size 2 resumes at 1."""

import os
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


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_five_distributed_steps_equal_five_single_process_steps(runs, kind, name):
    assert _max_diff(runs["rank0"][f"{kind}/{name}"], runs["single"][name]) <= 1e-6


@pytest.mark.parametrize("name", PRESETS)
def test_ddp_replicas_hold_identical_parameters(runs, name):
    assert _max_diff(runs["rank0"][f"replica/{name}"], runs["rank1"][f"replica/{name}"]) == 0.0


@pytest.mark.parametrize("name", PRESETS)
def test_fsdp2_equals_ddp(runs, name):
    assert _max_diff(runs["rank0"][f"fsdp/{name}"], runs["rank0"][f"ddp/{name}"]) <= 1e-6


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_checkpoint_saved_at_world_size_2_resumes_at_1_identically(runs, kind, name):
    assert (runs["out"] / f"ckpt-{kind}-{name}" / ".metadata").exists()
    assert _max_diff(runs["resumed"][f"{kind}/{name}"], runs["single"][name]) <= 1e-6


def test_replicas_that_differ_are_refused(runs):
    for rank in ("rank0", "rank1"):
        assert "parameters differ across ranks" in runs[rank]["replica_error"]
