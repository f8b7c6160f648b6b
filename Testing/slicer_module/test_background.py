"""MRtoCTSynthesisLib.background: the child process the Slicer panel follows (real subprocesses, no Slicer needed)."""
from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from MRtoCTSynthesisLib.background import STAGING_PREFIX, BackgroundSynthesis, quality_outputs

# A stand-in for `mrtoct synthesize --progress-json` whose behaviour the --model argument picks:
# "fast" writes outputs and a result; "slow" starts a grandchild, writes a partial file and hangs; "crash" fails.
FAKE_CLI = textwrap.dedent('''
    import argparse, json, os, subprocess, sys, time
    from pathlib import Path

    def main():
        parser = argparse.ArgumentParser()
        parser.add_argument("command")
        parser.add_argument("inputs", nargs="+")
        parser.add_argument("--model"); parser.add_argument("--out"); parser.add_argument("--device")
        parser.add_argument("--dicom-out"); parser.add_argument("--precision"); parser.add_argument("--batch-size")
        parser.add_argument("--quality-map", action="store_true")
        parser.add_argument("--progress-json", action="store_true")
        args = parser.parse_args()
        out = Path(args.out)
        if args.model == "crash":
            print("Traceback (most recent call last):", file=sys.stderr)
            print("ValueError: boom: the model cannot be honoured", file=sys.stderr)
            return 2
        if args.model == "slow":
            print(json.dumps({"progress": 0.1, "message": "warming up"}), flush=True)
            (out / "partial_sct.nii.gz").write_bytes(b"half")
            grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            Path(args.inputs[0]).with_name("grandchild.pid").write_text(str(grandchild.pid), encoding="utf-8")
            time.sleep(120)
            return 0
        print("a line that is not JSON", flush=True)
        print("WARNING: something to keep in the log", file=sys.stderr, flush=True)
        for fraction in (0.25, 0.5, 1.0):
            print(json.dumps({"progress": fraction, "message": f"step {fraction}"}), flush=True)
        records = []
        for source in map(Path, args.inputs):
            stem = source.name.split(".")[0]
            sct = out / f"{stem}_sct.nii.gz"
            sct.write_bytes(b"sct")
            extra = []
            if args.quality_map:
                extra.append(out / f"{stem}_cycle_residual.nii.gz")
                extra[-1].write_bytes(b"map")
            if args.dicom_out:
                folder = Path(args.dicom_out) / stem
                folder.mkdir(parents=True)
                (folder / "CT0001.dcm").write_bytes(b"dcm")
                extra.append(folder)
            records.append({"input": str(source), "output": str(sct), "error": None, "seconds": 0.1,
                            "extra_outputs": [str(p) for p in extra]})
        print(json.dumps({"result": records}), flush=True)
        return 0

    if __name__ == "__main__":
        sys.exit(main())
''')


@pytest.fixture
def fake_cli(tmp_path) -> dict:
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "fake_mrtoct_cli.py").write_text(FAKE_CLI, encoding="utf-8")
    return {"module": "fake_mrtoct_cli", "extra_pythonpath": [folder]}


@pytest.fixture
def mr_file(tmp_path) -> Path:
    path = tmp_path / "in" / "mr.nii.gz"
    path.parent.mkdir()
    path.write_bytes(b"mr")
    return path


def alive(pid: int) -> bool:
    """True while a process exists and is not a zombie."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_progress_is_parsed_and_outputs_are_published(tmp_path, fake_cli, mr_file):
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    job = BackgroundSynthesis([mr_file], out, model="fast", quality_map=True, dicom_out=dicom, **fake_cli).start()
    updates = job.wait(timeout=300)

    assert [u["progress"] for u in updates] == [0.25, 0.5, 1.0]
    assert [u["message"] for u in updates] == ["step 0.25", "step 0.5", "step 1.0"]
    assert updates[0]["eta_seconds"] is not None and updates[-1]["eta_seconds"] == 0.0
    assert job.finished and job.succeeded and job.returncode == 0 and job.error is None
    record = job.results[0]
    assert record["output"] == str(out / "mr_sct.nii.gz") and Path(record["output"]).read_bytes() == b"sct"
    assert quality_outputs(record) == {"cycle_residual": out / "mr_cycle_residual.nii.gz"}
    assert (dicom / "mr" / "CT0001.dcm").read_bytes() == b"dcm"
    assert str(dicom / "mr") in record["extra_outputs"]
    assert sorted(p.name for p in out.iterdir()) == ["mr_cycle_residual.nii.gz", "mr_sct.nii.gz"]  # staging gone
    assert "a line that is not JSON" in job.log and "WARNING: something to keep in the log" in job.log


def test_command_line_passes_every_option(tmp_path, mr_file):
    job = BackgroundSynthesis([mr_file], tmp_path / "out", model="m", device="cuda:1", quality_map=True,
                              precision="float32", batch_size=4, python="/opt/PythonSlicer")
    command = job.command()
    assert command[:2] == ["/opt/PythonSlicer", "-c"] and "MRtoCTSynthesisLib.cli" in command[2]
    assert command[3:5] == ["synthesize", str(mr_file)]
    for option in (["--model", "m"], ["--device", "cuda:1"], ["--precision", "float32"], ["--batch-size", "4"]):
        index = command.index(option[0])
        assert command[index:index + 2] == option
    assert "--quality-map" in command and "--progress-json" in command
    assert command[command.index("--out") + 1].startswith(str(tmp_path / "out" / STAGING_PREFIX))


def test_cancel_kills_the_process_tree_and_leaves_no_output(tmp_path, fake_cli, mr_file):
    out = tmp_path / "out"
    job = BackgroundSynthesis([mr_file], out, model="slow", **fake_cli).start()
    updates = []
    assert wait_for(lambda: bool(updates.extend(job.poll()) or updates)), "no progress from the child"
    assert updates[0]["message"] == "warming up" and job.running
    started = time.time()
    assert job.poll() == [] and time.time() - started < 0.5  # poll never waits for the child
    pid_file = mr_file.with_name("grandchild.pid")
    assert wait_for(pid_file.exists)
    grandchild = int(pid_file.read_text(encoding="utf-8"))
    assert alive(grandchild)

    job.cancel()

    assert job.cancelled and job.finished and not job.succeeded and job.error == "cancelled"
    assert job.results is None
    assert not alive(job._process.pid)
    assert wait_for(lambda: not alive(grandchild), timeout=5), "the grandchild survived the cancel"
    assert list(out.iterdir()) == []  # the partial file went with the staging folder
    job.cancel()  # a second cancel is harmless


def test_a_failing_child_reports_its_output(tmp_path, fake_cli, mr_file):
    out = tmp_path / "out"
    job = BackgroundSynthesis([mr_file], out, model="crash", **fake_cli).start()
    job.wait(timeout=300)
    assert job.finished and job.returncode == 2 and not job.succeeded
    assert "exited with code 2" in job.error and "boom" in job.error
    assert list(out.iterdir()) == []


def test_a_non_empty_dicom_folder_is_refused(tmp_path, mr_file):
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    (dicom / "other.dcm").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        BackgroundSynthesis([mr_file], tmp_path / "out", model="m", dicom_out=dicom)


# ------------------------------------------------------------------------------------------------ the real CLI


@pytest.fixture
def phantom_file(tmp_path, phantom_mr) -> Path:
    path = tmp_path / "in" / "head.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(phantom_mr, str(path))
    return path


def test_real_cli_synthesizes_with_progress_and_quality_maps(tmp_path, phantom_file, phantom_mr, tiny_model):
    out = tmp_path / "out"
    job = BackgroundSynthesis([phantom_file], out, model=tiny_model, device="cpu", quality_map=True).start()
    updates = job.wait(timeout=600)
    assert job.succeeded, job.error
    progress = [u["progress"] for u in updates]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 3
    record = job.results[0]
    assert sitk.ReadImage(record["output"]).GetSize() == phantom_mr.GetSize()
    assert set(quality_outputs(record)) == {"cycle_residual", "structure_discrepancy"}
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_real_cli_cancel_kills_it_and_leaves_no_output(tmp_path, phantom_file, tiny_model):
    out = tmp_path / "out"
    job = BackgroundSynthesis([phantom_file], out, model=tiny_model, device="cpu").start()
    time.sleep(0.3)  # the child is importing torch
    job.cancel()
    assert job.cancelled and list(out.iterdir()) == []
    if os.name != "nt":
        assert job.returncode == -9  # SIGKILL to the process group
