"""Metrics against hand-computed values (Yang 2018 sec. 3.2, Hiasa 2018 sec. 3.1)."""
import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from MRtoCTSynthesisLib import metrics


def test_mae_hand_value_and_mask():
    ref = np.zeros((2, 2))
    pred = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert metrics.mae(pred, ref) == 1.5
    assert metrics.mae(pred, ref, mask=np.array([[True, True], [False, False]])) == 0.5


def test_psnr_known_mse():
    ref = np.zeros((8, 8))
    pred = np.full((8, 8), 45.0)  # MSE = 2025, RMSE = 45
    assert metrics.psnr(pred, ref) == pytest.approx(20 * math.log10(4500 / 45))  # = 40 dB
    assert metrics.psnr(pred, ref, data_range=255.0) == pytest.approx(20 * math.log10(255 / 45))
    assert metrics.psnr(ref, ref) == math.inf


def test_ssim_identical_constant_and_skimage():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1000, 3500, (32, 32))
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    noisy = ref + rng.normal(0, 300, ref.shape)
    assert metrics.ssim(noisy, ref) < 1.0
    # constant images a=0, b=45: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 4500)^2 = 2025
    assert metrics.ssim(np.zeros((16, 16)), np.full((16, 16), 45.0)) == pytest.approx(0.5)
    # equals skimage's own map mean over a mask
    mask = np.zeros(ref.shape, bool)
    mask[5:20, 8:30] = True
    _, smap = structural_similarity(ref, noisy, data_range=4500.0, full=True, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
    assert metrics.ssim(noisy, ref, mask) == pytest.approx(smap[mask].mean())


def test_ssim_is_wang_2004_with_the_gaussian_11x11_window():
    """Wang et al. eq. 13 at one pixel, with their weights w (11 x 11 Gaussian, sigma 1.5, summing to 1):
    mu = sum w x, sigma^2 = sum w (x - mu)^2, sigma_xy = sum w (x - mu_x)(y - mu_y)."""
    rng = np.random.default_rng(3)
    ref = rng.uniform(-1000, 3500, (21, 21))
    pred = ref + rng.normal(0, 400, ref.shape)
    offsets = np.arange(-5, 6)
    w = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    x, y = ref[5:16, 5:16], pred[5:16, 5:16]  # the window centred on pixel (10, 10)
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 4500) ** 2, (0.03 * 4500) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    centre = np.zeros(ref.shape, bool)
    centre[10, 10] = True
    assert metrics.ssim(pred, ref, centre) == pytest.approx(expected, rel=1e-9)


def test_ssim_3d_is_slice_wise():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 1000, (3, 16, 16))
    pred = ref + rng.normal(0, 100, ref.shape)
    per_slice = [structural_similarity(r, p, data_range=4500.0, full=True, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False)[1].mean() for r, p in zip(ref, pred)]
    assert metrics.ssim(pred, ref) == pytest.approx(np.mean(per_slice))
    assert metrics.ssim(np.moveaxis(pred, 0, 2), np.moveaxis(ref, 0, 2), axis=2) == pytest.approx(np.mean(per_slice))
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(pred[:, :5], ref[:, :5])


def test_mask_respected():
    ref = np.zeros((32, 32))
    pred = ref.copy()
    pred[:, 24:] = 1000.0  # differs only far outside the mask
    mask = np.zeros(ref.shape, bool)
    mask[:, :12] = True
    assert metrics.mae(pred, ref, mask) == 0.0
    assert metrics.psnr(pred, ref, mask) == math.inf
    assert metrics.ssim(pred, ref, mask) == pytest.approx(1.0)
    assert metrics.mae(pred, ref) > 0
    with pytest.raises(ValueError, match="empty"):
        metrics.mae(pred, ref, np.zeros(ref.shape, bool))


def test_high_gradient_mask_selects_edges():
    ref = np.zeros((32, 32))
    ref[:, 16:] = 1000.0
    hg = metrics.high_gradient_mask(ref)
    expected = np.zeros(ref.shape, bool)
    expected[:, 15:17] = True  # central differences are nonzero on both sides of the step
    np.testing.assert_array_equal(hg, expected)
    pred = ref.copy()
    pred[:, 4] = 500.0  # error beyond the window's reach (5 pixels) of the edge: SSIM(HG) stays 1, SSIM drops
    assert metrics.ssim_high_gradient(pred, ref) == pytest.approx(1.0)
    assert metrics.ssim(pred, ref) < 1.0
    assert math.isnan(metrics.ssim_high_gradient(ref, np.ones_like(ref)))  # flat reference: no edges


def test_mae_per_tissue_classes():
    ref = np.array([[-1000.0, -1000.0, 40.0], [40.0, 1000.0, 1000.0]])
    pred = ref + np.array([[10.0, 30.0, 5.0], [15.0, 100.0, 300.0]])
    assert metrics.mae_per_tissue(pred, ref) == {"air": 20.0, "soft_tissue": 10.0, "bone": 200.0}
    only_air = metrics.mae_per_tissue(pred, ref, mask=ref < -500)
    assert only_air["air"] == 20.0 and math.isnan(only_air["bone"])


def test_evaluate_combines():
    ref = np.zeros((16, 16))
    ref[:, 8:] = 1000.0
    result = metrics.evaluate(ref + 45.0, ref)
    assert set(result) == {"mae", "psnr", "ssim", "ssim_hg", "mae_air", "mae_soft_tissue", "mae_bone"}
    assert result["mae"] == pytest.approx(45.0) and result["psnr"] == pytest.approx(40.0)
    assert result["mae_soft_tissue"] == pytest.approx(45.0) and math.isnan(result["mae_air"])


def test_mutual_information_entropy_independence_invariance():
    a = np.repeat([0, 1, 2, 3], [8, 4, 2, 2]).reshape(4, 4).astype(float)  # p = 1/2, 1/4, 1/8, 1/8
    assert metrics.mutual_information(a, a) == pytest.approx(1.75 * math.log(2))  # H = 1.75 bits
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 8, (2, 400, 500))
    assert metrics.mutual_information(x, y, bins=8) < 1e-3
    noisy = np.where(rng.random(x.shape) < 0.3, y, x)  # dependent on x
    remap = np.array([1000, 990, 960, 910, 840, 750, 640, 510])  # invertible, nonlinear, order-reversing
    mi = metrics.mutual_information(x, noisy)
    assert mi > 0.1
    assert metrics.mutual_information(x, remap[noisy]) == pytest.approx(mi)


def test_dice_hand_values():
    pred = np.array([0, 1, 1, 2, 2, 2, 0])
    ref = np.array([0, 1, 2, 2, 2, 0, 0])
    result = metrics.dice(pred, ref)
    assert result == {1: pytest.approx(2 / 3), 2: pytest.approx(4 / 6)}
    assert math.isnan(metrics.dice(pred, ref, labels=[5])[5])
    with pytest.raises(ValueError, match="integer"):
        metrics.dice(pred.astype(float), ref)


def test_shape_and_input_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.mae(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="mask shape"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)), mask=np.ones((8, 9), bool))
    with pytest.raises(ValueError, match="2D images or 3D"):
        metrics.psnr(np.zeros(8), np.zeros(8))
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.dice(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mae(np.full((2, 2), np.nan), np.zeros((2, 2)))


def test_inputs_not_modified():
    pred, ref = np.arange(144.0).reshape(12, 12), np.ones((12, 12))
    mask = np.ones((12, 12), bool)
    copies = [pred.copy(), ref.copy(), mask.copy()]
    metrics.evaluate(pred, ref, mask)
    for original, copy in zip((pred, ref, mask), copies):
        np.testing.assert_array_equal(original, copy)


def test_hiasa_mae_and_psnr_on_the_255_scale_hand_values():
    """[-150, 350] HU -> [0, 255]: ref (-150, 350, 100, 1000) -> (0, 255, 127.5, 255 clipped); pred (-100, 350, 100,
    -500) -> (25.5, 255, 127.5, 0). Errors 25.5, 0, 0, 255: MAE = 70.125, MSE = (650.25 + 65025) / 4 = 16418.8125."""
    ref = np.array([[-150.0, 350.0], [100.0, 1000.0]])
    pred = np.array([[-100.0, 350.0], [100.0, -500.0]])
    result = metrics.mae_psnr_255(pred, ref, ct_window=(-150, 350))
    assert result["mae_255"] == pytest.approx(70.125)
    assert result["psnr_255"] == pytest.approx(20 * math.log10(255 / math.sqrt(16418.8125)))
    only_first = metrics.mae_psnr_255(pred, ref, np.array([[1, 0], [0, 0]]))
    assert only_first == {"mae_255": pytest.approx(25.5), "psnr_255": pytest.approx(20 * math.log10(255 / 25.5))}


def test_mutual_information_per_slice_is_the_mean_over_slices_with_mask():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 4, (3, 10, 12)).astype(float)
    b = np.where(rng.random(a.shape) < 0.5, a, rng.integers(0, 4, a.shape))
    mask = np.ones(a.shape, bool)
    mask[1] = False  # a slice outside the mask is left out
    expected = np.mean([metrics.mutual_information(a[k], b[k], bins=64) for k in (0, 2)])
    assert metrics.mutual_information_per_slice(a, b, mask) == pytest.approx(expected)
    assert metrics.mutual_information_per_slice(np.moveaxis(a, 0, 1), np.moveaxis(b, 0, 1),
                                                np.moveaxis(mask, 0, 1), axis=1) == pytest.approx(expected)
    assert metrics.mutual_information_per_slice(a, b, mask) != pytest.approx(metrics.mutual_information(a, b, mask))


def test_paper_metric_sets_by_preset():
    rng = np.random.default_rng(5)
    ref = rng.uniform(-1000, 1500, (4, 16, 16))
    pred, mr = ref + rng.normal(0, 50, ref.shape), rng.uniform(0, 100, ref.shape)
    yang = metrics.paper_metrics(pred, ref, None, "cyclegan-pbs", (-1000, 3500))
    assert list(yang) == list(metrics.METRIC_SETS["yang2018"])
    assert yang["psnr"] == pytest.approx(metrics.psnr(pred, ref, data_range=4500.0))
    hiasa = metrics.paper_metrics(pred, ref, None, "hiasa2018", (-150, 350), mr=mr)
    assert list(hiasa) == list(metrics.METRIC_SETS["hiasa2018"])
    assert hiasa["mae_255"] == metrics.mae_psnr_255(pred, ref, ct_window=(-150, 350))["mae_255"]
    assert set(metrics.paper_metrics(pred, ref, None, "hiasa2018", (-150, 350))) == {"mae_255", "psnr_255"}
