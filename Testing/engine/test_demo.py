"""The main job (`mrtoct demo`): the default model on the embedded real head MR and on an unseen phantom."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from safetensors import safe_open

from helpers import assert_same_geometry
from MRtoCTSynthesisLib import DEFAULT_MODEL
from MRtoCTSynthesisLib.cli import main as cli_main
from MRtoCTSynthesisLib.demo import SAMPLE_MR, demo_summary
from MRtoCTSynthesisLib.modelfile import WEIGHTS_HASH_KEY, Catalog, load_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli_main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    return out, json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def test_the_default_model_is_bundled_with_its_checksum_and_card():
    path = Catalog().resolve(DEFAULT_MODEL)
    with safe_open(str(path), "pt") as f:
        assert WEIGHTS_HASH_KEY in f.metadata()
    card = load_model(path).metadata
    assert "not for clinical use" in card["intended_use"].lower()
    assert card["validation_metrics"]["fresh_phantoms"]["mae_vs_constant"]["model"] < 1   # beats the constant


def test_demo_writes_the_real_mr_sct_on_its_grid_and_the_pictures(demo):
    out, _ = demo
    for name in ("real_mr_sct.nii.gz", "real_mr.png", "mr.nii.gz", "ct_reference.nii.gz", "sct.nii.gz", "demo.png"):
        assert (out / name).stat().st_size > 1000, name
    assert_same_geometry(sitk.ReadImage(str(out / "real_mr_sct.nii.gz")), sitk.ReadImage(str(SAMPLE_MR)))


def test_demo_reports_checks_and_baselines_and_the_model_beats_them(demo):
    _, metrics = demo
    real, phantom = metrics["real_mr"], metrics["phantom"]
    assert real["model"] == DEFAULT_MODEL
    assert real["skull_completeness"] > 0.8 and real["brain_bone_share"] < 0.1
    assert abs(sum(real["hu_shares"].values()) - 1) <= 4 * 0.5e-4 + 1e-9   # four shares, each rounded to 4 decimals
    assert set(phantom["baselines_mae"]) == {"constant", "mr-lookup"}
    assert phantom["mae"] < phantom["baselines_mae"]["constant"]          # it has learned the mapping
    assert np.isclose(phantom["mae_vs_constant"], phantom["mae"] / phantom["baselines_mae"]["constant"])
    printed = demo_summary(metrics, "out")
    assert "skull completeness" in printed and "constant" in printed and "MR lookup" in printed
