"""The data path the quality benchmark depends on (issue 12's diagnostic), and the supervised-only training mode.

A supervised network that cannot beat a constant predictor would point at the data path: these tests pin down that
training pairs are aligned, that slices go back onto the input grid unchanged, and that the supervised-only mode
trains G_CT alone with the L1 to the registered CT.
"""
import numpy as np
import pytest
import torch

from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.config import preset
from MRtoCTSynthesisLib.dataset import SliceCache, SliceDataset
from MRtoCTSynthesisLib.phantom import make_phantom, write_phantom
from MRtoCTSynthesisLib.preprocessing import Normalization, prepare_volume, restore_volume

SHAPE, SPACING = (24, 32, 32), (8.0, 8.0, 8.0)


def _norm(plane="sagittal"):
    return Normalization(plane=plane, image_size=(32, 32), ct_window=(-1000.0, 3500.0), mr_window=(0.0, 3500.0),
                         mr_percentile_value=3000.0, pixel_spacing_mm=(8.0, 8.0))


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_training_pairs_are_aligned(tmp_path, plane):
    """The cached MR and CT slices of one subject overlap best without any shift (slice index or in-plane)."""
    phantom = make_phantom("head", 11, SHAPE, SPACING)
    write_phantom(phantom, tmp_path, "s")
    cache = SliceCache(tmp_path / "cache", _norm(plane), (36, 36))
    mr = np.asarray(cache.slices(tmp_path / "mr" / "s.nii.gz", "mr"), np.float32)
    ct = np.asarray(cache.slices(tmp_path / "ct" / "s.nii.gz", "ct"), np.float32)
    assert mr.shape == ct.shape
    mr_body, ct_body = mr > -0.9, ct > 2 * 500 / 4500 - 1  # MR above background; CT above -500 HU
    middle = mr.shape[0] // 2
    aligned = _dice(mr_body[middle], ct_body[middle])
    assert aligned > 0.8
    for shift in (-2, -1, 1, 2):
        assert _dice(mr_body[middle + shift], ct_body[middle]) < aligned
        assert _dice(np.roll(mr_body[middle], shift, axis=0), ct_body[middle]) < aligned
        assert _dice(np.roll(mr_body[middle], shift, axis=1), ct_body[middle]) < aligned


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_ct_slices_go_back_onto_the_input_grid(plane):
    """CT -> normalised slices -> canvas -> back -> HU -> input grid returns the CT (the synthesis output path)."""
    phantom = make_phantom("head", 12, SHAPE, SPACING)
    norm = _norm(plane)
    prepared = prepare_volume(phantom.ct, "ct", norm)
    fit = V.plan_slice_fit(prepared.slices.shape[1:], prepared.pixel_spacing, norm.image_size, norm.pixel_spacing_mm)
    canvas = V.fit_slices(torch.from_numpy(prepared.slices[:, None]), fit, pad_value=-1.0)
    back = norm.window("ct").from_network(V.unfit_slices(canvas, fit)[:, 0].numpy())
    restored = V.array_of(restore_volume(back, prepared, plane))
    expected = np.clip(V.array_of(phantom.ct), -1000.0, 3500.0)  # the CT window bounds what a network can express
    assert np.abs(restored - expected).max() < 0.5  # HU (float rounding only)


def test_paired_batches_pair_the_same_slice_and_crop():
    mr = [np.arange(5 * 6 * 6, dtype=np.float32).reshape(5, 6, 6)]
    dataset = SliceDataset(mr, [m * 2 for m in mr], "paired", (4, 4))
    batch = dataset.batch(np.random.default_rng(0), 8)
    assert torch.equal(batch.ct, batch.mr * 2)


def test_supervised_only_is_a_documented_configuration():
    config = preset("paired", lambda_adversarial=0.0, lambda_cycle=0.0, lambda_supervised=1.0)
    assert config.supervised_only and not preset("paired").supervised_only
    with pytest.raises(ValueError, match="lambda_supervised must be > 0"):
        preset("paired", lambda_adversarial=0.0, lambda_cycle=0.0)
    with pytest.raises(ValueError, match="lambda_adversarial must be >= 0"):
        preset("cyclegan", lambda_adversarial=-1.0)


def test_supervised_step_trains_g_ct_alone():
    from MRtoCTSynthesisLib.train import CycleGANTrainer

    config = preset("paired", lambda_adversarial=0.0, lambda_cycle=0.0, lambda_supervised=1.0, ngf=4, ndf=4,
                    n_blocks=1, image_size=(16, 16), augment_pad=None, iterations=5)
    rng = np.random.default_rng(0)
    mr = [rng.uniform(-1, 1, (3, 16, 16)).astype(np.float32)]
    data = SliceDataset(mr, [np.tanh(2 * m) for m in mr], "paired", (16, 16))
    trainer = CycleGANTrainer(config, data, "/nonexistent-run", torch.device("cpu"), show_progress=False)
    frozen = {name: p.detach().clone() for name, p in [*trainer.generators.G_MR.named_parameters(),
                                                        *(("D." + n, p) for n, p in
                                                          trainer.discriminators.named_parameters())]}
    before = [p.detach().clone() for p in trainer.generators.G_CT.parameters()]
    batch = data.batch(trainer.rng, 1)
    losses = trainer.train_step(batch.mr, batch.ct)
    assert set(losses) == {"supervised", "G_total"} and losses["supervised"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.generators.G_CT.parameters()))
    now = dict([*trainer.generators.G_MR.named_parameters(),
                *(("D." + n, p) for n, p in trainer.discriminators.named_parameters())])
    assert all(torch.equal(frozen[name], now[name]) for name in frozen)
    first = losses["supervised"]
    for _ in range(30):
        losses = trainer.train_step(batch.mr, batch.ct)
    assert losses["supervised"] < first  # the L1 to the CT goes down on a fixed pair
