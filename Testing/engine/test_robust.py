"""Nothing lost, nothing silently wrong (issue 15): one test (or more) per numbered case of the issue.

The messages of the bad inputs (cases 5-10) are checked, and tabulated, in test_bad_inputs.py; here are the
behaviours: verified writes, collisions, reruns, interrupts with real signals, the checks' effects, progress to a
pipe, the DICOM series rule and the DICOM export under the dciodvfy validator.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from helpers import REAL_DATA, REPO, TINY_TRAIN_ARGS, make_volume, requires_real_data, tiny_model, tiny_phantom_dataset
from MRtoCTSynthesisLib import synthesis as S
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.atomic import write_atomically
from MRtoCTSynthesisLib.cli import main as cli_main
from MRtoCTSynthesisLib.dataset import DatasetError, check_folders
from MRtoCTSynthesisLib.modelfile import ModelFileError, load_model
from MRtoCTSynthesisLib.train import main as train_main

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "MRtoCTSynthesis"), str(REPO / "MRtoCTSegment")])}
STUDY, FRAME = "1.2.826.0.1.3680043.10.2", "1.2.826.0.1.3680043.10.3"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.mrtoct.safetensors", "axial")


def mr(size=(20, 18, 12), spacing=(2.0, 2.0, 2.0), seed=0) -> sitk.Image:
    return make_volume(size=size, spacing=spacing, direction=np.eye(3), origin=(0.0, 0.0, 0.0), seed=seed)


def temporaries(folder: Path) -> list[str]:
    """Hidden files and folders: the temporaries of a write in progress (or left behind)."""
    return sorted(str(p) for p in Path(folder).rglob(".*")) if Path(folder).exists() else []


def write_mr_series(folder: Path, uid: str, number: int, n_slices: int, gap: float = 2.0, orientation: str = "axial",
                    image_type=("ORIGINAL", "PRIMARY"), size: int = 16, description: str = "") -> list[Path]:
    """An MR DICOM series (uint16, a bright disk in noise) of ``n_slices`` ``gap`` mm apart, axial or coronal."""
    folder.mkdir(parents=True, exist_ok=True)
    row, column = (1, 0, 0), ((0, 1, 0) if orientation == "axial" else (0, 0, -1))
    normal = np.cross(row, column)
    rng = np.random.default_rng(number)
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * 800
    files = []
    for k in range(n_slices):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, f"{uid}.{k + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY, uid, FRAME
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", number, k + 1
        ds.SeriesDescription = description or f"{orientation} {gap:g} mm"
        ds.ImageType = list(image_type)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "MR-0042", "19700101", "F"
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [float(v) for v in np.array([-8.0, -8.0, 0.0]) + k * gap * normal]
        ds.ImageOrientationPatient = [*row, *column]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], gap
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (disk + rng.integers(0, 40, (size, size))).astype("<u2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"s{number}_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# ------------------------------------------------------------------------------- 1. disk full, short writes

def test_1_a_short_write_is_an_error_and_nothing_is_published(model, tmp_path, monkeypatch):
    source = V.write_volume(mr(), tmp_path / "in" / "mr.nii.gz")
    real_write = sitk.WriteImage

    def short_write(image, name, *args):  # what ITK's NIfTI writer does on a full disk: a short file, no error
        real_write(image, name, *args)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    results = S.synthesize_files([source], tmp_path / "out", model, device="cpu", dicom_out=tmp_path / "dicom")
    assert results[0].error is not None and "does not read back as written" in results[0].error
    assert not (tmp_path / "out").exists() and not (tmp_path / "dicom").exists()  # no file, no empty folder


def test_1_a_model_file_written_short_is_not_published(model, tmp_path, monkeypatch):
    from MRtoCTSynthesisLib import modelfile

    real_save = modelfile.save_file

    def short_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) - 100])

    bundle = load_model(model)
    monkeypatch.setattr(modelfile, "save_file", short_save)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        modelfile.save_model(tmp_path / "m.mrtoct.safetensors", bundle.metadata, bundle.state_dicts)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs here (needs root and mount rights): {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_1_a_real_full_disk_is_reported_and_leaves_nothing(model, tmp_path, tiny_tmpfs):
    source = V.write_volume(mr(size=(80, 80, 48), spacing=(1.0, 1.0, 1.0)), tmp_path / "mr.nii.gz")  # > 1 MB out
    done = subprocess.run([sys.executable, "-m", "MRtoCTSynthesisLib.cli", "synthesize", str(source), "--model",
                           str(model), "--out", str(tiny_tmpfs / "out"), "--dicom-out", str(tiny_tmpfs / "dicom"),
                           "--device", "cpu", "--quality-map"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout and "0 of 1" in done.stdout
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == [], "no file, temporary or empty folder is left"


# ------------------------------------------------------------------------------- 2. name collisions

def test_2_colliding_outputs_are_refused_before_any_work(model, tmp_path):
    inputs = [V.write_volume(mr(seed=s), tmp_path / folder / name)
              for s, (folder, name) in enumerate([("p1", "T1.nii.gz"), ("p2", "T1.nii.gz"), ("p2", "T1.nrrd")])]
    code = cli_main(["synthesize", *map(str, inputs), "--model", str(model), "--out", str(tmp_path / "o"),
                     "--device", "cpu"])
    assert code == 2 and not (tmp_path / "o").exists()


def test_2_an_output_never_overwrites_an_input(model, tmp_path):
    first = V.write_volume(mr(seed=1), tmp_path / "ow" / "T1.nii.gz")
    second = V.write_volume(mr(seed=2), tmp_path / "ow" / "T1_sct.nii.gz")
    before = second.read_bytes()
    code = cli_main(["synthesize", str(first), str(second), "--model", str(model), "--out", str(tmp_path / "ow"),
                     "--device", "cpu"])
    assert code == 2 and second.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "ow").iterdir()) == ["T1.nii.gz", "T1_sct.nii.gz"]


# ------------------------------------------------------------------------------- 3. a second run, same --dicom-out

def test_3_a_second_run_into_the_same_dicom_out_is_refused_first_and_keeps_the_first_result(model, tmp_path):
    source = V.write_volume(mr(), tmp_path / "mr.nii.gz")
    argv = ["synthesize", str(source), "--model", str(model), "--out", str(tmp_path / "out"), "--device", "cpu",
            "--dicom-out", str(tmp_path / "dicom")]
    assert cli_main(argv) == 0
    sct, series = tmp_path / "out" / "mr_sct.nii.gz", tmp_path / "dicom" / "mr"
    kept = (sct.read_bytes(), sorted(p.name for p in series.iterdir()))
    assert cli_main(argv) == 2  # refused before synthesizing: the sCT is not even rewritten
    assert (sct.read_bytes(), sorted(p.name for p in series.iterdir())) == kept
    first_uid = pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    assert cli_main(argv + ["--overwrite"]) == 0
    assert pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID != first_uid
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------------------------- 4. interrupts

def ctrl_c_reaches_python() -> None:
    """SIGINT as a terminal's Ctrl-C delivers it. A runner started in the background of a non-interactive shell
    (``cmd &``) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt; these tests are about the
    user's Ctrl-C, so they must not depend on how the test runner itself was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def interruptible():
    """This process raises KeyboardInterrupt on SIGINT during the test (see ``ctrl_c_reaches_python``)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def start_batch(model, tmp_path, n=2):
    inputs = [V.write_volume(mr(size=(144, 144, 80), spacing=(1.0, 1.0, 1.0), seed=s), tmp_path / f"mr{s}.nii.gz")
              for s in range(n)]
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "MRtoCTSynthesisLib.cli", "synthesize", *map(str, inputs),
                                "--model", str(model), "--out", str(out), "--device", "cpu", "--quality-map"],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_reaches_python)
    return process, out


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_4_a_signal_during_writing_leaves_no_temporary_and_no_partial_set(model, tmp_path, signum, code):
    process, out = start_batch(model, tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not temporaries(out) and process.poll() is None:
        time.sleep(0.005)
    assert temporaries(out), "the signal must arrive while an output is being written"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("mrtoct synthesize: stopped by")
    assert temporaries(out) == []
    for sct in out.glob("*_sct.nii.gz"):
        stem = sct.name[: -len("_sct.nii.gz")]
        assert all((out / f"{stem}_{name}.nii.gz").is_file() for name in S.QUALITY_MAPS), "a complete set per input"


def test_4_stale_temporaries_of_a_killed_run_are_removed(model, tmp_path):
    from MRtoCTSynthesisLib.atomic import remove_stale_temporaries

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".mr_sct.nii.gz.partial-{dead.pid}-0123abcd.nii.gz"
    stale.write_bytes(b"x" * 1000)
    mine = out / f".other.partial-{os.getpid()}-0123abcd.part"  # this process is alive: not stale
    mine.write_bytes(b"y")
    assert remove_stale_temporaries(out) == [stale] and mine.exists()
    mine.unlink()
    stale.write_bytes(b"x")
    S.synthesize_files([V.write_volume(mr(), tmp_path / "mr.nii.gz")], out, model, device="cpu")
    assert not stale.exists()


def test_4_run_per_file_cleans_up_on_keyboard_interrupt(tmp_path):
    def process(index, source, progress, written):
        written.append(write_atomically(tmp_path / "first.txt", lambda p: p.write_text("x", encoding="utf-8")))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S.run_per_file([tmp_path / "a"], process, lambda s, e: None)
    assert not (tmp_path / "first.txt").exists()


# ------------------------------------------------------------------------------- 5. truncated and oversized files

@pytest.mark.parametrize("name", ["mr.nii", "mr.nii.gz"])
def test_5_a_truncated_nifti_is_refused_for_synthesis_and_training(tmp_path, name):
    full = tmp_path / "full" / name
    full.parent.mkdir()
    sitk.WriteImage(mr(), str(full), name.endswith(".gz"))
    data = full.read_bytes()
    tiny_phantom_dataset(tmp_path / "data", n=2)
    cut = tmp_path / "data" / "mr" / name
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(V.VolumeError, match="truncated"):
        V.read_volume(cut)
    with pytest.raises(DatasetError, match="truncated"):  # before any training starts
        check_folders(tmp_path / "data" / "mr", tmp_path / "data" / "ct")


# ------------------------------------------------------------------------------- 6. a CT given as the MR

def test_6_a_ct_given_as_the_mr_is_refused(model):
    ct = make_volume(size=(20, 18, 12), low=-1000, high=2000)
    with pytest.raises(V.VolumeError, match="like a CT in HU"):
        S.synthesize(ct, model, device="cpu")


# ------------------------------------------------------------------------------- 7. model files

def test_7_damaged_models_are_refused_at_load(model, tmp_path):
    data = bytearray(model.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in the last weights
    (tmp_path / "flipped.mrtoct.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "flipped.mrtoct.safetensors")
    bundle = load_model(model)
    bundle.state_dicts["G_CT"][next(iter(bundle.state_dicts["G_CT"]))].view(-1)[0] = float("inf")
    from MRtoCTSynthesisLib.modelfile import save_model
    with pytest.raises(ModelFileError, match="NaN or infinite weights"):
        load_model(save_model(tmp_path / "inf.mrtoct.safetensors", bundle.metadata, bundle.state_dicts))
    with pytest.raises(ModelFileError, match="'value' must be a finite number > 0"):
        save_model(tmp_path / "neg.mrtoct.safetensors",
                   dict(bundle.metadata, mr_normalization={"percentile": 99.5, "value": -1.0, "n4": False}),
                   bundle.state_dicts)


# ------------------------------------------------------------------------------- 8. resume, slabs, pixdim 0

def test_8_resume_honours_a_new_iteration_count_and_refuses_other_changes(tmp_path):
    data = tiny_phantom_dataset(tmp_path / "data", n=2)
    run = tmp_path / "run"
    args = ["--mr", str(data / "mr"), "--ct", str(data / "ct"), "--out", str(run), *TINY_TRAIN_ARGS,
            "--preset", "cyclegan", "--checkpoint-every", "1"]
    assert train_main(args + ["--iterations", "2"]) == 0
    assert train_main(args + ["--iterations", "4", "--resume"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iteration"] == 4
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["iterations"] == 4
    with pytest.raises(ValueError, match="these differ: lr"):
        train_main(args + ["--iterations", "6", "--lr", "0.001", "--resume"])
    with pytest.raises(ValueError, match="already at iteration 4"):
        train_main(args + ["--iterations", "3", "--resume"])


@pytest.mark.parametrize("slices", [1, 2])
def test_8_and_10_slabs_are_refused_clearly_and_the_mask_does_not_crash(model, slices):
    for spacing in (1.0, 0.5):
        image = mr(size=(20, 18, slices), spacing=(spacing,) * 3)
        with pytest.raises(V.VolumeError, match="slab only"):
            S.synthesize(image, model, device="cpu")
        masked = S.air_outside_body(sitk.Cast(image, sitk.sitkFloat32), image)  # what BinShrink crashed on
        assert masked.GetSize() == image.GetSize()


def test_8_nifti_pixdim_zero_is_refused(tmp_path):
    path = tmp_path / "mr.nii"
    sitk.WriteImage(mr(), str(path))
    data = bytearray(path.read_bytes())
    data[84:88] = np.float32(0).tobytes()  # pixdim[2]
    path.write_bytes(bytes(data))
    with pytest.raises(V.VolumeError, match=r"pixdim"):
        V.read_volume(path)


# ------------------------------------------------------------------------------- 9 and 10. messages

def test_9_and_10_zero_spacing_and_degenerate_direction_keep_itks_reason_and_nan_voxels_are_refused_by_the_api(model, tmp_path):
    sitk.WriteImage(mr(), str(tmp_path / "mr.nhdr"))
    header = (tmp_path / "mr.nhdr").read_text(encoding="utf-8")
    (tmp_path / "mr.nhdr").write_text(header.replace("(0,2,0)", "(0,0,0)"), encoding="utf-8")
    with pytest.raises(V.VolumeError, match="Zero-valued spacing is not supported"):
        V.read_volume(tmp_path / "mr.nhdr")
    (tmp_path / "mr.nhdr").write_text(header.replace("(0,2,0)", "(2,0,0)"), encoding="utf-8")
    with pytest.raises(V.VolumeError, match="Bad direction, determinant is 0"):  # ITK's reason, not its last line
        V.read_volume(tmp_path / "mr.nhdr")
    image = mr()
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    nan = sitk.GetImageFromArray(array)
    nan.CopyInformation(image)
    with pytest.raises(V.VolumeError, match="NaN"):
        S.synthesize(nan, model, device="cpu")  # an in-memory image (the Slicer path) is checked too


def test_10_checkpoint_every_zero_leaves_no_run_folder(tmp_path):
    data = tiny_phantom_dataset(tmp_path / "data", n=2)
    code = cli_main(["train", "--mr", str(data / "mr"), "--ct", str(data / "ct"), "--out", str(tmp_path / "run"),
                     "--checkpoint-every", "0", "--no-progress"])
    assert code == 2 and not (tmp_path / "run").exists()


def test_10_a_malicious_checkpoint_gives_one_line_without_torch_advice(tmp_path):
    from test_bad_inputs import malicious_checkpoint

    argv = malicious_checkpoint(tmp_path, None)
    done = subprocess.run([sys.executable, "-m", "MRtoCTSynthesisLib.cli", *argv], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "weights_only=False" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("mrtoct train: error:")


# ------------------------------------------------------------------------------- 11. progress to a pipe

def test_11_progress_to_a_pipe_prints_each_state_once(model, tmp_path):
    source = V.write_volume(mr(), tmp_path / "mr.nii.gz")
    done = subprocess.run([sys.executable, "-m", "MRtoCTSynthesisLib.cli", "synthesize", str(source), "--model",
                           str(model), "--out", str(tmp_path / "out"), "--device", "cpu"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    states = [line.strip() for line in done.stderr.replace("\r", "\n").splitlines()
              if "mr.nii.gz:" in line and line.strip()]
    assert states and len(states) == len(set(states)), states


def test_11_no_import_circle_between_the_segment_commands_and_the_cli():
    import ast

    def imported(path):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}

    assert "MRtoCTSynthesisLib.cli" not in imported(REPO / "MRtoCTSegment" / "MRtoCTSegmentLib" / "commands.py")
    assert "MRtoCTSynthesisLib.progress" in imported(REPO / "MRtoCTSegment" / "MRtoCTSegmentLib" / "commands.py")


# ------------------------------------------------------------------------------- 12. DICOM folders with several series

@pytest.fixture
def several_series(tmp_path):
    folder = tmp_path / "dicom"
    write_mr_series(folder, "1.2.826.0.1.3680043.10.1.3", 3, 8, gap=5.0)
    write_mr_series(folder, "1.2.826.0.1.3680043.10.1.4", 4, 16, gap=2.5)
    reformat = write_mr_series(folder, "1.2.826.0.1.3680043.10.1.5", 5, 20, gap=1.0, orientation="coronal",
                               image_type=("DERIVED", "SECONDARY", "REFORMATTED"), description="coronal MPR")
    stray = write_mr_series(tmp_path / "stray", "1.2.826.0.1.3680043.10.1.5", 5, 1, gap=1.0)[0]
    shutil.move(stray, folder / "s5_stray.dcm")  # an axial image inside the reformat's series
    return folder, reformat


def test_12_the_series_rule_picks_the_finest_original_volume_and_can_be_overridden(several_series, model, tmp_path,
                                                                                  capsys):
    from MRtoCTSynthesisLib.dicom_series import choose_series, list_series

    folder, _ = several_series
    assert [s.number for s in list_series(folder)] == [3, 4, 5]
    assert choose_series(folder).number == 4
    assert V.read_volume(folder).GetSize()[2] == 16
    assert V.read_volume(folder, series=3).GetSize()[2] == 8
    assert V.read_volume(folder, series="1.2.826.0.1.3680043.10.1.3").GetSize()[2] == 8
    with pytest.raises(V.VolumeError, match=r"(?s)no series with UID or number '9'.*#3.*#4.*#5"):
        V.read_volume(folder, series=9)
    assert cli_main(["series", str(folder)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line[:4] for line in listing[:3]] == ["  #3", "* #4", "  #5"] and "not a volume" in listing[2]
    assert cli_main(["synthesize", str(folder), "--series", "3", "--model", str(model), "--out",
                     str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert V.read_volume(tmp_path / "out" / "dicom_sct.nii.gz").GetSize()[2] == 8


# ------------------------------------------------------------------------------- 13. dciodvfy

def dciodvfy_errors(files) -> list[str]:
    errors = []
    for path in files:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors += [f"{path.name}: {line}" for line in (done.stdout + done.stderr).splitlines()
                   if line.startswith("Error")]
    return errors


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
def test_13_the_dicom_export_validates_under_dciodvfy(model, tmp_path):
    from MRtoCTSynthesisLib.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "phantom", "head", 1, seed=0, shape=(32, 32, 12), spacing=(4.0, 4.0, 4.0))
    phantom_mr = next((tmp_path / "phantom" / "mr").iterdir())
    dicom_mr = tmp_path / "mr_dicom"
    write_mr_series(dicom_mr, "1.2.826.0.1.3680043.10.1.6", 6, 6, gap=3.0)
    assert cli_main(["synthesize", str(phantom_mr), str(dicom_mr), "--model", str(model), "--out",
                     str(tmp_path / "out"), "--dicom-out", str(tmp_path / "dicom"), "--device", "cpu"]) == 0
    written = sorted((tmp_path / "dicom").rglob("*.dcm"))
    assert len(written) >= 12 + 6
    assert dciodvfy_errors(written) == []
    joined = pydicom.dcmread(next((tmp_path / "dicom" / "mr_dicom").iterdir()))
    assert joined.StudyInstanceUID == STUDY and joined.FrameOfReferenceUID == FRAME


@requires_real_data
def test_6_real_cts_are_refused_as_mr_and_real_mrs_are_accepted():
    for name in ("pelvis_ct.nii.gz", "head_ct_ge_dicom"):
        with pytest.raises(V.VolumeError, match="like a CT in HU"):
            S.check_mr_input(V.read_volume(REAL_DATA / name))
    for name in ("head_t1_rire001.mha", "head_t1gd_brain1.nrrd", "pelvis_mr_t2.nii.gz"):
        S.check_mr_input(V.read_volume(REAL_DATA / name))  # no false alarm on real MRs


@requires_real_data
@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
def test_13_an_export_joining_a_real_dicom_study_validates_under_dciodvfy(tmp_path):
    from MRtoCTSynthesisLib.dicom_export import write_ct_series

    reference = REAL_DATA / "head_ct_ge_dicom"
    small = sitk.Cast(V.read_volume(reference)[::8, ::8, :], sitk.sitkFloat32)
    files = write_ct_series(small, tmp_path / "sct", reference_dicom=reference)
    assert dciodvfy_errors(files) == []


def test_4_an_interrupt_during_publishing_waits_until_the_set_is_complete(tmp_path, monkeypatch, interruptible):
    from MRtoCTSynthesisLib.atomic import OutputSet

    outputs = OutputSet()
    for name in ("a.txt", "b.txt"):
        outputs.file(tmp_path / name, lambda p, name=name: p.write_text(name, encoding="utf-8"))
    real_replace, seen = os.replace, []

    def replace_then_signal(source, dest):  # SIGINT arrives between the two renames
        real_replace(source, dest)
        seen.append(dest)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_signal)
    with pytest.raises(KeyboardInterrupt):
        outputs.publish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
