"""MR preprocessing as the papers define it: Yang's FCM white-matter peak, Hiasa's [0, 100] window rule, N4 recorded in
the model file and repeated at synthesis, older model files and configs read as before."""
import numpy as np
import pytest
import SimpleITK as sitk

from helpers import REAL_DATA, requires_real_data, tiny_model
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.config import GC_OPERATORS, MR_SCALINGS, TrainConfig, preset
from MRtoCTSynthesisLib.losses import GRADIENT_OPERATORS
from MRtoCTSynthesisLib.modelfile import load_model, save_model
from MRtoCTSynthesisLib.mr_normalization import NormalizationError, fuzzy_c_means, inner_head, white_matter_peak
from MRtoCTSynthesisLib.phantom import HEAD_LABELS, make_phantom
from MRtoCTSynthesisLib.preprocessing import (MR_SCALINGS as PREPROCESSING_SCALINGS, Normalization,
                                              foreground_of, normalization_from_metadata, normalization_metadata,
                                              prepare_volume)
from MRtoCTSynthesisLib.synthesis import translate

WHITE_MATTER = next(k for k, name in HEAD_LABELS.items() if name == "white_matter")
PEAK_TOLERANCE = 0.03  # |peak / white-matter median - 1| on N4-corrected 3 mm head phantoms (measured: <= 1.5 %)


@pytest.fixture(scope="module")
def head_phantoms():
    """Three 3 mm head phantoms (each with its smooth MR bias field) and their N4-corrected MR."""
    phantoms = [make_phantom("head", seed, (64, 64, 48), (3.0, 3.0, 3.0)) for seed in range(3)]
    return [(p, V.n4_bias_correction(p.mr)) for p in phantoms]


def white_matter_median(array: np.ndarray, labels: sitk.Image) -> float:
    return float(np.median(array[sitk.GetArrayFromImage(labels) == WHITE_MATTER]))


# ------------------------------------------------------------------------------------------- fuzzy C-means
def test_fuzzy_c_means_finds_the_centres_of_a_three_class_mixture():
    rng = np.random.default_rng(0)
    means = np.array([300.0, 700.0, 1000.0])
    values = np.concatenate([rng.normal(m, 30.0, n) for m, n in zip(means, (3000, 5000, 4000))])
    centres, memberships = fuzzy_c_means(rng.permutation(values))
    assert np.allclose(centres, means, rtol=0.02)
    assert np.allclose(memberships.sum(axis=1), 1.0)
    # the result is a fixed point of Bezdek's two update equations (m = 2)
    x = rng.permutation(values)
    centres, u = fuzzy_c_means(x)
    w = u ** 2
    assert np.allclose(w.T @ x / w.sum(axis=0), centres, rtol=1e-5)
    d = np.abs(x[:, None] - centres[None])
    assert np.allclose(u, (1 / d ** 2) / (1 / d ** 2).sum(axis=1, keepdims=True), atol=1e-6)


def test_fuzzy_c_means_refuses_constant_or_too_few_values():
    with pytest.raises(NormalizationError, match="constant"):
        fuzzy_c_means(np.full(100, 5.0))
    with pytest.raises(NormalizationError, match="at least 3"):
        fuzzy_c_means(np.array([1.0, 2.0]))


# ------------------------------------------------------------------------------------- white-matter peak
def test_white_matter_peak_of_n4_corrected_phantoms_is_their_white_matter(head_phantoms):
    for phantom, corrected in head_phantoms:
        array = V.array_of(corrected)
        peak = white_matter_peak(array, corrected.GetSpacing()[::-1])
        assert peak / white_matter_median(array, phantom.labels) == pytest.approx(1.0, abs=PEAK_TOLERANCE)


def test_yang_normalisation_puts_the_white_matter_on_its_target(head_phantoms):
    """The whole MR path of the yang2018 preset (N4, canonical grid, FCM peak -> 2000, window): the voxels labelled
    white matter end up at 2000 +- 3 % in MR units."""
    norm = Normalization.from_config(preset("yang2018"))
    assert norm.n4 and norm.mr_scaling == "wm_peak" and norm.mr_wm_peak_value == 2000
    for phantom, _ in head_phantoms:
        prepared = prepare_volume(phantom.mr, "mr", norm)
        array = norm.window("mr").from_network(V.slices_to_volume(prepared.slices, norm.plane))
        assert white_matter_median(array, phantom.labels) == pytest.approx(2000, rel=PEAK_TOLERANCE)
        assert prepared.n4_seconds > 0


def test_inner_head_keeps_out_the_scalp(head_phantoms):
    phantom, corrected = head_phantoms[0]
    array = V.array_of(corrected)
    inner = inner_head(array, corrected.GetSpacing()[::-1])
    labels = sitk.GetArrayFromImage(phantom.labels)
    fat = next(k for k, name in HEAD_LABELS.items() if name == "fat")
    assert (inner & (labels == fat)).sum() < 0.1 * (labels == fat).sum()  # face and neck fat lie deeper
    assert (inner & (labels == WHITE_MATTER)).sum() > 0.5 * (labels == WHITE_MATTER).sum()
    with pytest.raises(NormalizationError, match="inside the head"):
        inner_head(array[:, :6, :6], (3.0, 3.0, 3.0))


def test_hiasa_rule_puts_the_body_99_5th_percentile_at_the_window_top(head_phantoms):
    norm = Normalization.from_config(preset("hiasa2018"))
    assert norm.n4 and norm.mr_scaling == "percentile" and (norm.mr_percentile, norm.mr_percentile_value) == (99.5, 100)
    assert norm.mr_window == (0.0, 100.0)
    phantom, corrected = head_phantoms[0]
    prepared = prepare_volume(phantom.mr, "mr", norm)
    original = V.array_of(corrected)
    assert prepared.mr_scale * np.percentile(original[foreground_of(original)], 99.5) == pytest.approx(100, rel=1e-3)


# ------------------------------------------------------------------------------------------ N4 repeated
def _model_with(tmp_path, name, n4):
    source = load_model(tiny_model(tmp_path / "tiny.mrtoct.safetensors", plane="axial"))
    metadata = {k: v for k, v in source.metadata.items() if k not in ("format", "format_version", "engine_version")}
    metadata["mr_normalization"] = {**metadata["mr_normalization"], "n4": n4, "n4_shrink": 2,
                                    "n4_iterations": [10, 10]}
    return load_model(save_model(tmp_path / f"{name}.mrtoct.safetensors", metadata, source.state_dicts))


def test_n4_recorded_in_a_model_is_repeated_at_synthesis_and_off_means_off(tmp_path):
    phantom = make_phantom("head", 4, (32, 32, 24), (7.0, 7.0, 7.0))
    with_n4, without = _model_with(tmp_path, "n4", True), _model_with(tmp_path, "plain", False)
    assert normalization_from_metadata(with_n4.metadata).n4_iterations == (10, 10)
    sct_n4 = V.array_of(translate(phantom.mr, with_n4, device="cpu").sct)
    corrected = V.n4_bias_correction(phantom.mr, shrink=2, iterations=(10, 10))
    expected = V.array_of(translate(corrected, without, device="cpu").sct)
    np.testing.assert_array_equal(sct_n4, expected)  # the model's N4, with its recorded settings, ran first
    raw = V.array_of(translate(phantom.mr, without, device="cpu").sct)
    assert np.abs(raw - sct_n4).max() > 1.0, "without N4 in the file, synthesis does not correct"


def test_n4_time_is_reported_in_progress():
    phantom = make_phantom("head", 5, (32, 32, 24), (7.0, 7.0, 7.0))
    messages = []
    norm = Normalization("axial", (32, 32), (-1000.0, 3500.0), (0.0, 3500.0), n4=True, n4_shrink=2,
                         n4_iterations=(5,))
    prepare_volume(phantom.mr, "mr", norm, progress=messages.append)
    assert messages[0].startswith("N4 bias correction") and "done in" in messages[-1]


# --------------------------------------------------------------------------------- recorded, old files
def test_normalisation_round_trips_through_model_metadata():
    norm = Normalization.from_config(preset("yang2018", n4_shrink=3, n4_iterations=(20, 10)))
    record = normalization_metadata(norm)
    assert record["mr_normalization"] == {"method": "wm_peak", "percentile": 99.5, "value": 3000.0,
                                          "wm_peak_value": 2000.0, "n4": True, "n4_shrink": 3,
                                          "n4_iterations": [20, 10]}
    assert normalization_from_metadata(record) == norm


@pytest.mark.parametrize("old, scaling, n4", [
    ({"percentile": 99.5, "value": 3000.0, "n4": False}, "percentile", False),
    ({"percentile": 99.5, "value": 90.0}, "percentile", False),
    ({"percentile": None, "value": 3000.0, "n4": True}, "none", True),
])
def test_old_model_files_read_as_their_engine_did(old, scaling, n4):
    metadata = {"plane": "sagittal", "image_size": [32, 32], "ct_window": [-1000, 3500], "mr_window": [0, 3500],
                "pixel_spacing_mm": None, "mr_normalization": old}
    norm = normalization_from_metadata(metadata)
    assert (norm.mr_scaling, norm.n4, norm.n4_shrink, norm.n4_iterations) == (scaling, n4, 4, (50, 50, 30, 20))


def test_old_config_without_scaling_fields_still_loads():
    old = {k: v for k, v in TrainConfig().to_dict().items()
           if k not in ("mr_scaling", "mr_wm_peak_value", "n4_shrink", "n4_iterations", "gc_operator")}
    assert TrainConfig.from_dict(old).mr_scaling == "percentile"
    assert TrainConfig.from_dict({**old, "mr_percentile": None}).mr_scaling == "none"
    with pytest.raises(ValueError, match="mr_scaling"):
        preset("yang2018", mr_scaling="zscore")
    with pytest.raises(ValueError, match="gc_operator"):
        preset("hiasa2018", gc_operator="scharr")


def test_every_preset_n4_corrects_and_names_match_the_engine():
    from MRtoCTSynthesisLib.config import PRESETS

    assert all(preset(name).n4 for name in PRESETS)
    assert {preset(name).mr_scaling for name in ("cyclegan", "cyclegan-pbs", "yang2018", "paired")} == {"wm_peak"}
    assert MR_SCALINGS == PREPROCESSING_SCALINGS and set(GC_OPERATORS) == set(GRADIENT_OPERATORS)


def test_training_records_n4_scaling_gc_operator_and_the_window_note(tmp_path):
    from helpers import TINY_TRAIN_ARGS, tiny_phantom_dataset
    from MRtoCTSynthesisLib.train import MODEL, main as train_main

    data = tiny_phantom_dataset(tmp_path / "data", n=2)
    run = tmp_path / "run"
    assert train_main(["--mr", str(data / "mr"), "--ct", str(data / "ct"), "--out", str(run), *TINY_TRAIN_ARGS,
                       "--preset", "hiasa2018", "--iterations", "2", "--gc-operator", "sobel"]) == 0
    metadata = load_model(run / MODEL).metadata
    assert metadata["mr_normalization"] == {"method": "percentile", "percentile": 99.5, "value": 100.0,
                                            "wm_peak_value": 2000.0, "n4": True, "n4_shrink": 4,
                                            "n4_iterations": [50, 50, 30, 20]}
    assert metadata["loss_settings"]["gc_operator"] == "sobel"
    assert "[-150, 350] HU caps every sCT" in metadata["intended_use"]
    assert normalization_from_metadata(metadata) == Normalization.from_config(preset(
        "hiasa2018", image_size=(32, 32), gc_operator="sobel"))


@requires_real_data
@pytest.mark.parametrize("name", ["head_t1_rire001.mha", "head_t1gd_brain1.nrrd"])
def test_white_matter_peak_of_real_t1_heads_is_their_main_brain_peak(name):
    """Plain T1 (RIRE): the white-matter class is the brightest. Contrast-enhanced T1: the brightest FCM class is the
    enhancement (about 10 % of the voxels) and is passed over for the tissue peak. Either way the peak is the main
    mode of the inner head's histogram, within 3 %."""
    corrected = V.n4_bias_correction(V.read_volume(REAL_DATA / name))
    canonical, _ = V.to_canonical(corrected)
    array, spacing = V.array_of(canonical), canonical.GetSpacing()[::-1]
    values = array[inner_head(array, spacing)]
    counts, edges = np.histogram(values, bins=128, range=(0, np.percentile(values, 99.9)))
    mode = (edges[counts.argmax()] + edges[counts.argmax() + 1]) / 2
    assert white_matter_peak(array, spacing) == pytest.approx(mode, rel=0.03)
