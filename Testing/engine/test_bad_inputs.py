"""What each bad input gets: the cases below run through the ``mrtoct`` command line, and docs/BAD_INPUTS.md is this
list's table (exit code and message), generated from these runs. Regenerate it after changing a message:

    MRTOCT_WRITE_BAD_INPUTS=1 python -m pytest -q Testing/engine/test_bad_inputs.py
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from helpers import REPO, make_volume, tiny_model, tiny_phantom_dataset
from MRtoCTSynthesisLib.cli import main as cli_main
from MRtoCTSynthesisLib.config import preset
from MRtoCTSynthesisLib.modelfile import METADATA_KEY, load_model, save_model
from MRtoCTSynthesisLib.synthesis import synthesize_files

TABLE = REPO / "docs" / "BAD_INPUTS.md"


def mr_image(size=(20, 18, 12), spacing=(2.0, 2.0, 2.0), low=0.0, high=1000.0) -> sitk.Image:
    return make_volume(size=size, spacing=spacing, direction=np.eye(3), origin=(0.0, 0.0, 0.0), low=low, high=high)


def mr_file(folder: Path, name: str = "mr.nii", **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mr_image(**kwargs), str(folder / name), name.endswith(".gz"))
    return folder / name


def synthesize(tmp: Path, model: Path, *inputs: Path, extra=(), out: str = "out") -> list[str]:
    return ["synthesize", *map(str, inputs), "--model", str(model), "--out", str(tmp / out), "--device", "cpu",
            "--progress-json", *extra]


# --------------------------------------------------------------------------------------------- input volumes

def empty_file(tmp, model):
    (tmp / "mr.nii.gz").write_bytes(b"")
    return synthesize(tmp, model, tmp / "mr.nii.gz")


def truncated(name):
    def setup(tmp, model):
        full = mr_file(tmp / "full", name)
        data = full.read_bytes()
        (tmp / name).write_bytes(data[: len(data) * 2 // 3])
        return synthesize(tmp, model, tmp / name)
    return setup


def header_declares_too_much(tmp, model):
    data = bytearray(mr_file(tmp / "full", "mr.nii").read_bytes()[:352])
    struct.pack_into("<8h", data, 40, 3, 32000, 32000, 32000, 1, 1, 1, 1)
    (tmp / "huge.nii").write_bytes(bytes(data))
    return synthesize(tmp, model, tmp / "huge.nii")


def pixdim_zero(tmp, model):
    data = bytearray(mr_file(tmp / "full", "mr.nii").read_bytes())
    struct.pack_into("<f", data, 80, 0.0)  # pixdim[1]
    (tmp / "mr.nii").write_bytes(bytes(data))
    return synthesize(tmp, model, tmp / "mr.nii")


def degenerate_direction(tmp, model):
    data = bytearray(mr_file(tmp / "full", "mr.nii").read_bytes())
    struct.pack_into("<hh", data, 252, 0, 1)  # qform_code 0, sform_code 1 with two equal rows
    for row, offset in enumerate((280, 296, 312)):
        struct.pack_into("<4f", data, offset, 2.0, 0.0, 0.0, 0.0)
    (tmp / "mr.nii").write_bytes(bytes(data))
    return synthesize(tmp, model, tmp / "mr.nii")


def zero_spacing_nrrd(tmp, model):
    sitk.WriteImage(mr_image(), str(tmp / "mr.nhdr"))
    header = (tmp / "mr.nhdr").read_text(encoding="utf-8")
    (tmp / "mr.nhdr").write_text(header.replace("(0,2,0)", "(0,0,0)"), encoding="utf-8")
    return synthesize(tmp, model, tmp / "mr.nhdr")


def degenerate_direction_nrrd(tmp, model):
    sitk.WriteImage(mr_image(), str(tmp / "mr.nhdr"))
    header = (tmp / "mr.nhdr").read_text(encoding="utf-8")
    (tmp / "mr.nhdr").write_text(header.replace("(0,2,0)", "(2,0,0)"), encoding="utf-8")  # two equal axes
    return synthesize(tmp, model, tmp / "mr.nhdr")


def with_voxel(value):
    def setup(tmp, model):
        image = mr_image()
        array = sitk.GetArrayFromImage(image)
        array[5, 5, 5:8] = value
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(image)
        sitk.WriteImage(bad, str(tmp / "mr.nii.gz"))
        return synthesize(tmp, model, tmp / "mr.nii.gz")
    return setup


def ct_as_mr(tmp, model):
    return synthesize(tmp, model, mr_file(tmp, "ct.nii.gz", low=-1000.0, high=2000.0))


def unrescaled_ct_as_mr(tmp, model):
    from MRtoCTSynthesisLib.phantom import make_phantom

    ct = make_phantom("head", 2, (32, 32, 24), (7.0, 7.0, 7.0)).ct
    tmp.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(sitk.Round(ct + 1024.0), sitk.sitkInt16), str(tmp / "ct_stored.nii.gz"))
    return synthesize(tmp, model, tmp / "ct_stored.nii.gz")


def mask_as_mr(tmp, model):
    mask = sitk.Cast(mr_image() > 300, sitk.sitkUInt8)
    tmp.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mask, str(tmp / "mask.nii.gz"))
    return synthesize(tmp, model, tmp / "mask.nii.gz")


def voxel_size(mm):
    def setup(tmp, model):
        return synthesize(tmp, model, mr_file(tmp, "mr.nii.gz", spacing=(mm,) * 3))
    return setup


def dicom_with_a_truncated_slice(tmp, model):
    from MRtoCTSynthesisLib.dicom_export import write_ct_series

    files = write_ct_series(mr_image(size=(20, 18, 8)), tmp / "series")   # a CT-typed series of MR values
    victim = sorted(files)[3]
    victim.write_bytes(victim.read_bytes()[:-300])       # header intact, pixel data cut short
    return synthesize(tmp, model, tmp / "series")


def dicom_with_a_slice_cut_in_its_header(keep_bytes):
    def setup(tmp, model):
        from MRtoCTSynthesisLib.dicom_export import write_ct_series

        files = write_ct_series(mr_image(size=(20, 18, 8)), tmp / "series")
        victim = sorted(files)[3]
        victim.write_bytes(victim.read_bytes()[:keep_bytes])   # pydicom reads the rest of it without an error
        return synthesize(tmp, model, tmp / "series")
    return setup


def fine_model_on_a_wide_field(tmp, model):
    fine = tiny_model(tmp / "fine.mrtoct.safetensors", pixel_spacing_mm=(0.05, 0.05))   # the sane range's finest
    return synthesize(tmp, fine, mr_file(tmp, "mr.nii.gz", size=(40, 40, 40), spacing=(40.0,) * 3))


def truncated_mha(tmp, model):
    path = mr_file(tmp, "mr.mha")
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return synthesize(tmp, model, path)


def slab(slices, spacing):
    def setup(tmp, model):
        return synthesize(tmp, model, mr_file(tmp, "mr.nii.gz", size=(20, 18, slices), spacing=(spacing,) * 3))
    return setup


def out_is_a_file(tmp, model):
    (tmp / "out").write_text("not a folder", encoding="utf-8")
    return synthesize(tmp, model, mr_file(tmp, "mr.nii.gz"))


def same_names(tmp, model):
    return synthesize(tmp, model, mr_file(tmp / "p1", "T1.nii.gz"), mr_file(tmp / "p2", "T1.nii.gz"),
                      mr_file(tmp / "p2", "T1.nrrd"))


def output_is_an_input(tmp, model):
    first, second = mr_file(tmp / "ow", "T1.nii.gz"), mr_file(tmp / "ow", "T1_sct.nii.gz")
    return synthesize(tmp, model, first, second, out="ow")


def dicom_out_used_before(tmp, model):
    mr = mr_file(tmp, "mr.nii.gz")
    synthesize_files([mr], tmp / "out", model, device="cpu", dicom_out=tmp / "dicom")
    return synthesize(tmp, model, mr, extra=["--dicom-out", str(tmp / "dicom")])


def two_series_and_unknown_choice(tmp, model):
    from test_robust import write_mr_series
    write_mr_series(tmp / "dicom", "1.2.826.0.1.3680043.10.1.1", 3, 4)
    write_mr_series(tmp / "dicom", "1.2.826.0.1.3680043.10.1.2", 4, 6)
    return synthesize(tmp, model, tmp / "dicom", extra=["--series", "7"])


# --------------------------------------------------------------------------------------------- model files

def model_copy(tmp, model, edit: Callable[[bytearray], None]) -> Path:
    data = bytearray(model.read_bytes())
    edit(data)
    (tmp / "bad.mrtoct.safetensors").write_bytes(bytes(data))
    return tmp / "bad.mrtoct.safetensors"


def model_header_corrupt(tmp, model):
    def edit(data):
        at = data.index(b"mrtoct-model")
        data[at:at + 12] = b"mrtoct-m:del"
    return synthesize(tmp, model_copy(tmp, model, edit), mr_file(tmp, "mr.nii.gz"))


def model_weights_flipped(tmp, model):
    def edit(data):
        data[-7] ^= 0x10
    return synthesize(tmp, model_copy(tmp, model, edit), mr_file(tmp, "mr.nii.gz"))


def model_nan_weights(tmp, model):
    bundle = load_model(model)
    first = next(iter(bundle.state_dicts["G_CT"]))
    bundle.state_dicts["G_CT"][first].view(-1)[0] = float("nan")
    path = save_model(tmp / "nan.mrtoct.safetensors", bundle.metadata, bundle.state_dicts)
    return synthesize(tmp, path, mr_file(tmp, "mr.nii.gz"))


def model_negative_normalisation(tmp, model):
    bundle = load_model(model)
    metadata = dict(bundle.metadata, mr_normalization={**bundle.metadata["mr_normalization"], "value": -3000.0})
    tensors = {f"{name}.{key}": value for name, sd in bundle.state_dicts.items() for key, value in sd.items()}
    save_file(tensors, str(tmp / "neg.mrtoct.safetensors"), metadata={METADATA_KEY: json.dumps(metadata)})
    return synthesize(tmp, tmp / "neg.mrtoct.safetensors", mr_file(tmp, "mr.nii.gz"))


# --------------------------------------------------------------------------------------------- training

def train_args(tmp, *extra):
    return ["train", "--mr", str(tmp / "data" / "mr"), "--ct", str(tmp / "data" / "ct"), "--out", str(tmp / "run"),
            "--no-progress", *extra]


def checkpoint_every_zero(tmp, model):
    return train_args(tmp, "--checkpoint-every", "0")


def train_out_is_a_file(tmp, model):
    (tmp / "run").write_text("a file", encoding="utf-8")
    return train_args(tmp)


def malicious_checkpoint(tmp, model):
    tiny_phantom_dataset(tmp / "data", n=2)
    (tmp / "run").mkdir()
    config = preset("cyclegan", image_size=(32, 32), augment_pad=(36, 36), ngf=4, n_blocks=1, ndf=4)
    (tmp / "run" / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    torch.save({"iteration": argparse.Namespace(payload="not a tensor")}, tmp / "run" / "checkpoint.pt")
    return train_args(tmp, "--resume")


@dataclass(frozen=True)
class Case:
    bad_input: str
    setup: Callable[[Path, Path], list]
    exit_code: int
    message: str            # a regular expression the message must match


CASES = [
    Case("empty file", empty_file, 1, r"the file is empty \(0 bytes\)"),
    Case("truncated .nii", truncated("mr.nii"), 1, r"the file is truncated"),
    Case("truncated .nii.gz", truncated("mr.nii.gz"), 1, r"the file is truncated.*compressed stream ends early"),
    Case("header declares 32000^3 voxels (352-byte file)", header_declares_too_much, 1, r"processing needs about"),
    Case("NIfTI pixdim 0", pixdim_zero, 1, r"voxel spacing \(pixdim\) \[0\.0"),
    Case("NRRD spacing 0", zero_spacing_nrrd, 1, r"Zero-valued spacing is not supported"),
    Case("degenerate direction matrix (NIfTI sform)", degenerate_direction, 1, r"orthonormal direction cosines"),
    Case("degenerate direction matrix (NRRD)", degenerate_direction_nrrd, 1, r"Bad direction, determinant is 0"),
    Case("NaN voxels (.nii.gz)", with_voxel(np.nan), 1, r"3 voxel\(s\) are NaN or infinite"),
    Case("inf voxels (.nii.gz)", with_voxel(np.inf), 1, r"3 voxel\(s\) are NaN or infinite"),
    Case("truncated .mha", truncated_mha, 1, r"the file exists but cannot be read: it is probably truncated"),
    Case("DICOM folder with one truncated slice", dicom_with_a_truncated_slice, 1,
         r"the DICOM file .* of the series cannot be read: it is probably truncated"),
    Case("DICOM folder, one slice cut inside its preamble (100 bytes left)", dicom_with_a_slice_cut_in_its_header(100),
         1, r"the DICOM file\(s\) CT0004.dcm are damaged"),
    Case("DICOM folder, one slice cut inside its header (600 bytes left)", dicom_with_a_slice_cut_in_its_header(600),
         1, r"the DICOM file\(s\) CT0004.dcm are damaged"),
    Case("a CT given as the MR", ct_as_mr, 1, r"like a CT in HU"),
    Case("a CT stored without its rescale (HU + 1024) given as the MR", unrescaled_ct_as_mr, 1, r"without its rescale"),
    Case("a 0/1 mask given as the MR", mask_as_mr, 1, r"label map or mask"),
    Case("1e-4 mm voxels", voxel_size(1e-4), 1, r"voxel size .* is outside what a scanner produces"),
    Case("1e5 mm voxels", voxel_size(1e5), 1, r"voxel size .* is outside what a scanner produces"),
    Case("a model with 0.05 mm pixels on a 1.6 m field of view (a 32000^2 canvas)", fine_model_on_a_wide_field, 1,
         r"synthesis would need about \d+\.\d GB .* on a 32000x32000 canvas"),
    Case("one-slice volume, 1 mm", slab(1, 1.0), 1, r"a slab only 1 voxel\(s\) thick"),
    Case("two-slice volume, 0.5 mm", slab(2, 0.5), 1, r"a slab only 2 voxel\(s\) thick"),
    Case("--out is a file", out_is_a_file, 2, r"--out .* is a file"),
    Case("two inputs with one output name", same_names, 2, r"would both write"),
    Case("an output would overwrite an input", output_is_an_input, 2, r"would overwrite the input"),
    Case("--dicom-out holds an earlier run's series", dicom_out_used_before, 2, r"not empty.*--overwrite"),
    Case("DICOM folder, --series names no series", two_series_and_unknown_choice, 1, r"no series with UID or number"),
    Case("model: corrupted metadata header", model_header_corrupt, 2, r"the model file is damaged"),
    Case("model: flipped bytes in the weights", model_weights_flipped, 2, r"weights do not match the checksum"),
    Case("model: NaN weights", model_nan_weights, 2, r"NaN or infinite weights"),
    Case("model: negative normalisation value", model_negative_normalisation, 2,
         r"'value' must be a finite number > 0"),
    Case("train --checkpoint-every 0", checkpoint_every_zero, 2, r"checkpoint_every must be >= 1"),
    Case("train --out is a file", train_out_is_a_file, 2, r"--out .* is a file"),
    Case("train --resume, a checkpoint with pickled objects", malicious_checkpoint, 2, r"refused unread"),
]


def run_case(case: Case, tmp: Path, model: Path, capsys) -> tuple[int, str]:
    """(exit code, the message) of one case; paths below ``tmp`` are written <tmp>."""
    tmp.mkdir(parents=True)
    argv = case.setup(tmp, model)
    capsys.readouterr()
    code = cli_main(argv)
    captured = capsys.readouterr()
    results = [json.loads(line)["result"] for line in captured.out.splitlines() if line.startswith('{"result"')]
    if results:
        message = next(r["error"] for r in results[0] if r["error"])
    else:
        message = captured.err.strip().splitlines()[-1].split(": error: ", 1)[-1]
    message = message.replace(str(tmp), "<tmp>")
    message = re.sub(r"\d+\.\d GB of memory are available", "<N> GB of memory are available", message)
    return code, message


OUTCOMES: dict = {}  # bad input -> (exit code, message), filled by the cases, read by the table check


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    return root, tiny_model(root / "tiny.mrtoct.safetensors", "axial")


@pytest.mark.parametrize("case", CASES, ids=[c.bad_input for c in CASES])
def test_bad_input_gets_its_message(workspace, case, capsys):
    root, model = workspace
    code, message = run_case(case, root / re.sub(r"\W+", "_", case.bad_input), model, capsys)
    OUTCOMES[case.bad_input] = (code, message)
    assert re.search(case.message, message, re.S), message
    assert code == case.exit_code, message


def table(rows: dict) -> str:
    lines = ["# What each bad input gets", "",
             "Generated by `Testing/engine/test_bad_inputs.py` from its own cases (each one a real `mrtoct` run); "
             "a test fails when this file is out of date. Regenerate with "
             "`MRTOCT_WRITE_BAD_INPUTS=1 python -m pytest -q Testing/engine/test_bad_inputs.py`.", "",
             "Exit 1: that input failed, the others of the batch went on (the message is its `error`); exit 2: "
             "refused before any work. Nothing is written for a refused input.", "",
             "| bad input | exit | message |", "|---|---|---|"]
    for name, (code, message) in rows.items():
        cell = message.replace("|", "\\|").replace("\n", "<br>")
        lines.append(f"| {name} | {code} | {cell} |")
    return "\n".join(lines) + "\n"


def test_the_committed_table_is_up_to_date():
    rows = OUTCOMES
    if len(rows) != len(CASES):
        pytest.skip("runs after every case of this module (run the whole file)")
    text = table({c.bad_input: rows[c.bad_input] for c in CASES})
    if os.environ.get("MRTOCT_WRITE_BAD_INPUTS"):
        TABLE.write_text(text, encoding="utf-8")
    assert TABLE.is_file() and TABLE.read_text(encoding="utf-8") == text, \
        "docs/BAD_INPUTS.md is out of date: regenerate it (see this module's docstring)"



def test_a_long_input_name_that_fits_is_written(workspace, tmp_path):
    """A 236-character name fits as the output's name; its hidden temporary must fit too (it failed with ENAMETOOLONG)."""
    _, model = workspace
    source = mr_file(tmp_path, "a" * 229 + ".nii.gz")
    assert cli_main(synthesize(tmp_path, model, source)) == 0
    assert (tmp_path / "out" / ("a" * 229 + "_sct.nii.gz")).is_file()
