"""``scripts/gpu_session.sh --tiny``: the prepared GPU session, run end to end at tiny sizes on this machine's device
(the CPU in CI), so that a session lent a GPU runs a script that has already worked; and its iteration rule."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from MRtoCTSynthesisLib.quality.concurrency import iterations_for

ROOT = Path(__file__).resolve().parents[2]


def test_iterations_fit_the_budget_at_the_slowest_shared_rate():
    timing = {"slowest_seconds_per_iteration": 0.2}
    assert iterations_for(300, timing) == 1250                    # 300 * 0.85 / 0.2 = 1275, down to 50s
    assert iterations_for(10, timing) == 40                       # 42.5: below 500, down to 10s
    assert iterations_for(0.1, timing) == 10                      # never fewer than 10


def test_tiny_session_writes_speed_quality_and_models(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SESSION_SECONDS": "45", "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {"session.log", "acceleration.json", "speed.json", "speed.md", "quality.tar.gz"} <= set(os.listdir(out))
    speed = json.loads((out / "speed.json").read_text(encoding="utf-8"))
    paths = {row["path"] for row in speed["synthesis"]}
    assert {"reference", "chosen (auto)"} <= paths and all(row["s_per_270_slices"] > 0 for row in speed["synthesis"])
    with tarfile.open(out / "quality.tar.gz") as packed:
        names = set(packed.getnames())
        timing = json.load(packed.extractfile("concurrency.json"))
        report = packed.extractfile("RESULTS.md").read().decode()
    assert timing["processes"] == 2 and {job["variant"] for job in timing["jobs"]} == {"yang2018", "supervised"}
    for variant in ("yang2018", "supervised"):
        assert f"runs/head/{variant}-seed0/test_metrics.json" in names
    assert not any(n.endswith((".pt", ".npy", ".nii.gz")) for n in names)   # no checkpoints, caches or data
    assert "constant" in report and "mr-lookup" in report                    # baselines beside the models
    assert sorted(p.name for p in out.glob("model_head_*")) == [
        "model_head_supervised_seed0.mrtoct.safetensors", "model_head_yang2018_seed0.mrtoct.safetensors"]
    assert not list(tmp_path.glob("mrtoct-gpu-session.*"))                    # its scratch folder is gone


def test_tiny_head_mode_trains_the_shipped_model_further(tmp_path):
    from MRtoCTSynthesisLib.modelfile import read_metadata

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SESSION_SECONDS": "60", "TMPDIR": str(tmp_path),
           "MODE": "head", "REAL_DATA": str(tmp_path / "no-real-cts")}      # phantom anatomy only
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    training = read_metadata(out / "model_head_synth_gpu.mrtoct.safetensors")["training"]
    assert training["warm_start"]["model"] == "head-synth" and training["iterations"] >= 1
    with tarfile.open(out / "head_run.tar.gz") as packed:
        assert {"config.json", "events.jsonl", "losses.csv"} <= set(packed.getnames())
    assert not (out / "quality.tar.gz").exists()                            # the comparison did not run
