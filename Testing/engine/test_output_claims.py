"""Runs that write into the same output folder never replace each other's results (issue 20): real processes."""
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk

from helpers import make_volume, tiny_model
from MRtoCTSynthesisLib import synthesis as S
from MRtoCTSynthesisLib.claim import OutputInUseError, claim_file, claimed

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="claims use fcntl.flock (POSIX)")

HOLD = ("import sys, time; from MRtoCTSynthesisLib.claim import claimed\n"
        "with claimed(sys.argv[1:]):\n    print('held', flush=True)\n    time.sleep(60)\n")


@pytest.fixture
def holder(tmp_path):
    """A real process holding the claim on tmp_path/out (the state of a run in progress)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_into_the_same_folder_is_refused_and_loses_nothing(tmp_path, holder):
    model = tiny_model(tmp_path / "m.mrtoct.safetensors")
    sitk.WriteImage(make_volume(size=(20, 18, 7)), str(tmp_path / "mr.nii.gz"))
    cli = [sys.executable, "-m", "MRtoCTSynthesisLib.cli", "synthesize", str(tmp_path / "mr.nii.gz"), "--model",
           str(model), "--device", "cpu"]
    refused = subprocess.run([*cli, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "is being written by" in refused.stderr and f"pid {holder.pid}" in refused.stderr
    assert not (tmp_path / "out" / "mr_sct.nii.gz").exists()
    elsewhere = subprocess.run([*cli, "--out", str(tmp_path / "other")], capture_output=True, text=True, timeout=120)
    assert elsewhere.returncode == 0, elsewhere.stderr                      # other folders are free
    holder.kill()
    holder.wait()                                                           # a killed holder releases its claim
    again = subprocess.run([*cli, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out" / "mr_sct.nii.gz").exists()


def test_the_dicom_folder_is_claimed_too(tmp_path, holder):
    model = tiny_model(tmp_path / "m.mrtoct.safetensors")
    sitk.WriteImage(make_volume(size=(20, 18, 7)), str(tmp_path / "mr.nii.gz"))
    with pytest.raises(OutputInUseError, match="being written"):
        S.synthesize_files([tmp_path / "mr.nii.gz"], tmp_path / "nifti", model, device="cpu",
                           dicom_out=tmp_path / "out")
    assert not (tmp_path / "nifti").exists()


def test_claims_are_per_resolved_folder_and_released(tmp_path):
    assert claim_file(tmp_path / "a") == claim_file(tmp_path / "x" / ".." / "a") != claim_file(tmp_path / "b")
    with claimed([tmp_path / "a"]):
        began = time.time()
        with pytest.raises(OutputInUseError):
            with claimed([tmp_path / "b", tmp_path / "a"]):
                pass
        with claimed([tmp_path / "b"]):                  # b was released when the second claim failed
            pass
        assert time.time() - began < 5                   # refused at once, never waiting
    with claimed([tmp_path / "a"]):                      # released at the end of the block
        pass
