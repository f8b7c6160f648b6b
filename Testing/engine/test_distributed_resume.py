"""Multi-process training (torchrun, gloo on CPU) killed by SIGKILL and resumed ends exactly where an uninterrupted run
does: every rank's RNG states and image pools travel in the one checkpoint."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY_TRAIN_ARGS
from MRtoCTSynthesisLib.events import iter_events
from MRtoCTSynthesisLib.modelfile import load_model
from MRtoCTSynthesisLib.train import CHECKPOINT, MODEL

ITERATIONS, EVERY = 30, 5
COMMON = ["--preset", "cyclegan", "--iterations", str(ITERATIONS), "--checkpoint-every", str(EVERY), "--seed", "5",
          "--pool-size", "3", "--n4", "false", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(phantoms, cache, tmp_path_factory):
    """An uninterrupted two-process run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    finish(torchrun(phantoms, run, cache))
    return run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(phantoms, run, cache, *extra) -> subprocess.Popen:
    """Two gloo processes in their own session (SIGKILL then reaches the launcher and both workers)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "MRtoCTSynthesisLib.train", "--mr", str(phantoms / "mr"), "--ct", str(phantoms / "ct"),
               "--out", str(run), "--cache", str(cache), *TINY_TRAIN_ARGS, *COMMON, *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr[-3000:]


def checkpoint_iterations(run) -> list:
    events = run / "events.jsonl"
    return [e["iteration"] for e in iter_events(events) if e["event"] == "checkpoint"] if events.exists() else []


def test_two_process_run_killed_and_resumed_equals_uninterrupted(phantoms, cache, reference, tmp_path):
    run = tmp_path / "killed"
    process = torchrun(phantoms, run, cache)
    deadline = time.time() + 300
    while time.time() < deadline and not checkpoint_iterations(run) and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert EVERY <= state["iteration"] < ITERATIONS, "the run must be killed after its first checkpoint, mid-way"
    assert len(state["ranks"]) == 2, "the checkpoint holds both ranks' RNG states and pools"
    assert not (run / MODEL).exists()

    finish(torchrun(phantoms, run, cache, "--resume"))
    a, b = torch.load(reference / CHECKPOINT, weights_only=True), torch.load(run / CHECKPOINT, weights_only=True)
    assert a["iteration"] == b["iteration"] == ITERATIONS
    for part in ("generators", "discriminators"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after the resume"
    for rank_a, rank_b in zip(a["ranks"], b["ranks"]):
        assert rank_a["rng"] == rank_b["rng"]
        assert torch.equal(rank_a["pool_ct"], rank_b["pool_ct"]) and torch.equal(rank_a["pool_mr"], rank_b["pool_mr"])
    assert a["ranks"][0]["rng"] != a["ranks"][1]["rng"], "ranks draw from different streams"
    load_model(run / MODEL)


def test_resume_with_another_process_count_continues_with_a_warning(phantoms, cache, reference, tmp_path, caplog):
    from MRtoCTSynthesisLib.train import main as train_main

    run = tmp_path / "ddp"
    shutil.copytree(reference, run)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    state["iteration"] = ITERATIONS - EVERY  # as if killed at its last checkpoint but one
    torch.save(state, run / CHECKPOINT)
    (run / MODEL).unlink()
    assert train_main(["--mr", str(phantoms / "mr"), "--ct", str(phantoms / "ct"), "--out", str(run), "--cache",
                       str(cache), *TINY_TRAIN_ARGS, *COMMON, "--resume"]) == 0
    assert "written by 2 training process(es) and this run has 1" in caplog.text and "not exactly" in caplog.text
    load_model(run / MODEL)
