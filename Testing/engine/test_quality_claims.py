"""Several invocations of one quality benchmark share its runs through claims (``quality/claims.py``): a run claimed
by a live process is left to it, a dead process's claim is taken over, and only the last invocation evaluates."""
import subprocess
import sys
import threading
import time

from MRtoCTSynthesisLib.cli import main as cli_main
from MRtoCTSynthesisLib.quality.claims import claimed, holder


def _live_process():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _claim_as(out, name, pid):
    path = out / "claims" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    import json
    import socket
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}), encoding="utf-8")


def test_a_claim_is_exclusive_and_released_after_its_block(tmp_path):
    with claimed(tmp_path, "run") as mine:
        assert mine
        assert holder(tmp_path, "run") is None  # this process: not "another" holder
    assert not (tmp_path / "claims" / "run.json").exists()


def test_a_live_process_keeps_its_claim_and_a_dead_ones_is_taken_over(tmp_path):
    other = _live_process()
    try:
        _claim_as(tmp_path, "run", other.pid)
        assert holder(tmp_path, "run") == f"pid {other.pid} on " + __import__("socket").gethostname()
        with claimed(tmp_path, "run") as mine:
            assert not mine
        assert (tmp_path / "claims" / "run.json").exists()  # not removed by the loser
    finally:
        other.kill()
        other.wait()
    assert holder(tmp_path, "run") is None
    with claimed(tmp_path, "run") as mine:
        assert mine


def test_waiting_for_a_claim_takes_it_when_its_holder_ends(tmp_path):
    other = _live_process()
    _claim_as(tmp_path, "setup", other.pid)
    threading.Timer(0.5, lambda: (other.kill(), other.wait())).start()  # killed and reaped by its parent
    began = time.monotonic()
    with claimed(tmp_path, "setup", wait=True, poll_seconds=0.1) as mine:
        assert mine and time.monotonic() - began >= 0.4


def test_a_run_trained_elsewhere_is_skipped_and_the_last_invocation_evaluates(tmp_path, capsys):
    out = tmp_path / "quality"
    args = ["bench", "quality", "--out", str(out), "--tiny", "--iterations", "2", "--variants", "supervised",
            "--real-data", "none", "--no-progress", "--threads", "1"]
    other = _live_process()
    try:
        _claim_as(out, "train-head-supervised-seed0", other.pid)
        assert cli_main(args) == 0
        printed = capsys.readouterr().out
        assert "another process is training it" in printed and "the last invocation to finish evaluates" in printed
        assert not (out / "RESULTS.md").exists()
        assert not (out / "runs" / "head" / "supervised-seed0").exists()
    finally:
        other.kill()
        other.wait()
    assert cli_main(args) == 0  # the holder died: this invocation trains the run, then evaluates
    printed = capsys.readouterr().out
    assert "train head/supervised seed 0" in printed and (out / "RESULTS.md").exists()
    assert not list((out / "claims").iterdir())


def test_a_killed_process_not_yet_reaped_holds_no_claim(tmp_path):
    import os
    import pytest
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("zombies are recognised through Linux /proc only")
    other = _live_process()
    _claim_as(tmp_path, "run", other.pid)
    other.kill()
    while open(f"/proc/{other.pid}/stat", encoding="utf-8").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    try:
        assert holder(tmp_path, "run") is None  # a zombie until its parent waits: dead for the claim
    finally:
        other.wait()
