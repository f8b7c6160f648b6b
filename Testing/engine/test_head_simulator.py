"""The head simulator (labels from a CT, contrast-randomised MR, deformed pairs) and the reference-free head checks."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MRtoCTSynthesisLib import head_checks as C
from MRtoCTSynthesisLib import head_simulator as H
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("head", 3, (44, 64, 64), (4.0, 4.0, 4.0))


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_labels_from_a_ct_find_bone_air_and_the_brain(phantom):
    labels = V.array_of(H.tissue_labels_from_ct(phantom.ct), np.uint8)
    truth = V.array_of(phantom.labels, np.uint8)      # phantoms are LPS already: same grid
    assert labels.shape == truth.shape
    assert dice(labels == H.LABEL["cortical_bone"], truth == H.LABEL["cortical_bone"]) > 0.6
    assert dice(labels > 0, truth > 0) > 0.95
    brain = np.isin(labels, [H.LABEL[n] for n in ("grey_matter", "white_matter", "csf")])
    true_brain = np.isin(truth, [H.LABEL[n] for n in ("grey_matter", "white_matter", "csf")])
    assert dice(brain, true_brain) > 0.8


def test_random_contrasts_keep_bone_and_air_dark_and_vary_the_rest(phantom):
    labels = V.array_of(phantom.labels, np.uint8)
    brain = labels == H.LABEL["white_matter"]
    ratios = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        contrast = H.draw_contrast(rng)
        mr = H.random_mr(labels, contrast, rng)
        assert mr.dtype == np.float32 and np.isfinite(mr).all() and mr.min() >= 0
        assert contrast.means["cortical_bone"] <= 0.08 and contrast.means["air_cavity"] <= 0.08
        ratios.append(contrast.means["white_matter"] / max(contrast.means["grey_matter"], 1e-3))
        assert mr[brain].mean() > 0
    assert min(ratios) < 1 < max(ratios)            # white matter brighter than grey in some draws, darker in others


def test_a_simulated_pair_is_registered_reproducible_and_deformed(phantom):
    anatomy = H.Anatomy("phantom", phantom.ct, phantom.labels)
    mr, ct, _ = H.simulated_pair(anatomy, np.random.default_rng(1))
    again, _, _ = H.simulated_pair(anatomy, np.random.default_rng(1))
    other, other_ct, _ = H.simulated_pair(anatomy, np.random.default_rng(2))
    assert mr.GetSize() == ct.GetSize() and mr.GetSpacing() == ct.GetSpacing() == (H.SPACING_MM,) * 3
    assert mr.GetOrigin() == ct.GetOrigin() and mr.GetDirection() == ct.GetDirection()
    np.testing.assert_array_equal(V.array_of(mr), V.array_of(again))
    body, other_body = V.array_of(ct) > -500, V.array_of(other_ct) > -500
    assert dice(body, other_body) < 0.98                                  # another draw, another shape
    assert -1100 <= V.array_of(ct).min() and V.array_of(ct).max() < 3000


def test_write_simulated_dataset_alternates_real_anatomy_and_phantoms(tmp_path, phantom, monkeypatch):
    monkeypatch.setattr(H, "make_phantom", lambda kind, seed, shape, spacing: phantom)   # keep the test fast
    real = H.Anatomy("ct", phantom.ct, phantom.labels)
    assert H.anatomy_of_pair(0, [real], 0) is real and H.anatomy_of_pair(1, [real], 0).name.startswith("phantom")
    paths = H.write_simulated_dataset(tmp_path, [real], 2, seed=5)
    assert [p.name for p in paths] == ["sim_000.nii.gz", "sim_001.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == ["sim_000.nii.gz", "sim_001.nii.gz"]


def test_several_processes_make_the_same_pairs_as_one(tmp_path, phantom):
    real = H.Anatomy("ct", phantom.ct, phantom.labels)
    one = H.write_simulated_dataset(tmp_path / "one", [real], 3, seed=2)
    two = H.write_simulated_dataset(tmp_path / "two", [real], 3, seed=2, jobs=2)
    assert [p.name for p in one] == [p.name for p in two] == ["sim_000.nii.gz", "sim_001.nii.gz", "sim_002.nii.gz"]
    for a, b in zip(one, two):
        for sub in ("mr", "ct"):
            np.testing.assert_array_equal(V.array_of(V.read_volume(a.parent.parent / sub / a.name)),
                                          V.array_of(V.read_volume(b.parent.parent / sub / b.name)))


def test_a_phantom_pair_can_keep_its_own_mr_deformed_like_its_ct(phantom):
    anatomy = H.Anatomy("phantom", phantom.ct, phantom.labels, phantom.mr)
    mr, ct, contrast = H.simulated_pair(anatomy, np.random.default_rng(4), own_mr=True)
    drawn, drawn_ct, _ = H.simulated_pair(anatomy, np.random.default_rng(4))
    assert contrast is None
    np.testing.assert_array_equal(V.array_of(ct), V.array_of(drawn_ct))       # the same deformation
    body, own_body = V.array_of(ct) > -500, V.array_of(phantom.ct) > -500
    assert np.corrcoef(V.array_of(mr)[body], V.array_of(drawn)[body])[0, 1] < 0.99   # not the drawn contrast
    assert abs(V.array_of(mr)[body].mean() / V.array_of(phantom.mr)[own_body].mean() - 1) < 0.2   # the phantom's
    with pytest.raises(ValueError, match="no MR of its own"):
        H.simulated_pair(H.Anatomy("ct", phantom.ct, phantom.labels), np.random.default_rng(4), own_mr=True)
    assert [i for i in range(16) if H.keeps_own_mr(i, 2)] == [3, 7, 11, 15]
    assert not any(H.keeps_own_mr(i, 0) for i in range(16))


def test_vault_check_sees_a_closed_skull_and_an_opened_one(phantom):
    closed = C.check_ct(phantom.ct)
    assert closed.completeness > 0.9 and closed.rays_counted >= 100 and closed.brain_bone < 0.01
    hu = V.array_of(phantom.ct)
    labels = V.array_of(phantom.labels, np.uint8)
    centre_k = int(closed.rays.centre[0] / 2)                  # check grid 2 mm, phantom 4 mm
    top = np.zeros_like(hu, bool)
    top[centre_k:] = True
    opened = hu.copy()
    opened[top & np.isin(labels, [H.LABEL["cortical_bone"], H.LABEL["bone_marrow"]])] = 40.0
    assert C.check_ct(V.image_like(opened, phantom.ct)).completeness < 0.1
    everywhere = np.where(labels > 0, 1200.0, -1000.0).astype(np.float32)
    assert C.check_ct(V.image_like(everywhere, phantom.ct)).brain_bone > 0.9


def test_rays_that_leave_the_scan_are_not_counted(phantom):
    full = C.check_ct(phantom.ct)
    slab = phantom.ct[:, :, 8:30]                               # cut through the head above and below
    cut = C.check_ct(slab)
    assert cut.rays_counted < full.rays_counted



def test_rays_that_leave_the_scanned_box_are_not_counted(phantom):
    """A ray that reaches the edge of the scan's own box (an oblique or tilted scan leaves corners of the check's
    axis-aligned grid empty) left the scan, not the head: it must not count as an open vault."""
    k, j, i = np.ogrid[:40, :40, :40]
    head = (k - 15) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 < 15 ** 2
    no_bone = np.zeros(head.shape, np.float32)
    centre = np.array([15.0, 20.0, 20.0])
    whole = C.cast_rays(head, no_bone, centre, np.ones_like(head))
    lower = np.zeros_like(head)
    lower[:24] = True                                           # the scan's box ends 18 mm above the centre
    cut = C.cast_rays(head, no_bone, centre, lower)
    assert whole.counted.all() and 0 < cut.counted.sum() < whole.counted.sum()
    assert lower[tuple(cut.ends[cut.counted].T)].all()
    tilted = sitk.Image(phantom.ct)
    angle = np.radians(20)
    tilted.SetDirection((1, 0, 0, 0, np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle)))
    box = C.scanned_region(tilted)
    assert 0.3 < box.mean() < 0.95 and not box[0].all() and not box[-1].all()


def test_shares_by_depth_find_each_class_at_its_depth():
    """A ball of soft tissue under a 4 mm fat layer, cut flat by the scan's box: fat in the shells 0-4 mm under the
    skin, soft tissue below, and the cut face (no skin) is not a surface."""
    k, j, i = np.ogrid[:40, :40, :40]
    radius = np.sqrt((k - 20) ** 2 + (j - 20) ** 2 + (i - 20) ** 2)           # voxels of 2 mm
    head = radius < 15
    hu = np.where(radius < 13, 40.0, -100.0).astype(np.float32)
    scanned = np.ones_like(head)
    shares = C.shares_by_depth(hu, head, scanned)
    assert shares["0-2"]["fat"] == 1.0 and shares["2-4"]["fat"] > 0.9 and shares["6-8"]["soft tissue"] == 1.0
    scanned[30:] = False                                                       # the slab ends inside the head
    cut = C.shares_by_depth(hu, head & scanned, scanned)
    assert cut["6-8"]["soft tissue"] == 1.0 and cut["0-2"]["fat"] == 1.0        # the cut face added no "skin"
    assert C.shares_by_depth(hu, head & scanned, np.ones_like(head))["0-2"]["soft tissue"] > 0.1   # as it would


def test_histogram_distance_and_the_sct_check(phantom):
    shares = C.hu_shares(np.array([-1000.0, -100.0, 40.0, 1000.0]), np.ones(4, bool))
    assert shares == {"air": 0.25, "fat": 0.25, "soft tissue": 0.25, "bone": 0.25}
    assert C.histogram_distance(shares, shares) == 0
    assert C.histogram_distance(shares, {"air": 1.0, "fat": 0, "soft tissue": 0, "bone": 0}) == 0.75
    check = C.check_sct(phantom.mr, phantom.ct)                 # the true CT as the "sCT" of the phantom MR
    assert check.completeness > 0.9 and check.mi_mr_sct > 0.1
    assert set(check.summary(shares)) >= {"skull_completeness", "brain_bone_share", "hu_histogram_distance",
                                          "shares_by_depth_mm"}
    assert check.depth_shares["8-12"]["bone"] > 0.2 > check.depth_shares["0-2"]["bone"]   # the skull under the scalp


def test_check_figure_is_written(tmp_path, phantom):
    check = C.check_sct(phantom.mr, phantom.ct)
    path = C.check_figure(check.mr, {"CT": check}, tmp_path / "f.png", "phantom")
    assert path.exists() and path.stat().st_size > 10_000
    assert sitk.ReadImage(str(path)).GetSize()[0] > 200


def test_the_model_recipe_script_trains_a_model_from_simulated_pairs(tmp_path, monkeypatch):
    """scripts/make_head_model.py end to end at the smallest size (phantom anatomy only: no real CT folder)."""
    from helpers import REPO
    from MRtoCTSynthesisLib.modelfile import load_model

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import make_head_model

    monkeypatch.setitem(make_head_model.CONFIG, "image_size", (32, 32))
    monkeypatch.setitem(make_head_model.CONFIG, "augment_pad", (48, 48))
    monkeypatch.setitem(make_head_model.CONFIG, "pixel_spacing_mm", (8.0, 8.0))
    assert make_head_model.main(["all", "--work", str(tmp_path), "--real-data", str(tmp_path / "absent"),
                                 "--pairs", "2", "--minutes", "0.02"]) == 0
    assert sorted(p.name for p in (tmp_path / "sim" / "mr").iterdir()) == ["sim_000.nii.gz", "sim_001.nii.gz"]
    metadata = load_model(tmp_path / make_head_model.NAME / "model.mrtoct.safetensors").metadata
    assert metadata["plane"] == "axial" and metadata["training"]["recipe"] == "fast"


def test_the_model_chain_is_reproduced_in_one_command_and_resumes_past_its_finished_steps(tmp_path, monkeypatch):
    """make_head_model.reproduce on a tiny chain: from scratch, two warm starts of it, their weight average."""
    from helpers import REPO
    from MRtoCTSynthesisLib.modelfile import load_model, sha256_of

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import make_head_model as M

    for key, value in (("image_size", (32, 32)), ("augment_pad", (48, 48)), ("pixel_spacing_mm", (8.0, 8.0))):
        monkeypatch.setitem(M.CONFIG, key, value)
    monkeypatch.setattr(M, "PAIRS", 2)
    chain = (M.Step("a", 0.02, own_mr_every=0), M.Step("b", 0.02, "a", 3e-4),
             M.Step("c", 0.02, "a", seed=1, prior=H.SimulationPrior(max_extra_scalp_mm=4.0)),
             M.Step("s", soup=("b", "c")))
    final = M.reproduce(tmp_path, tmp_path / "absent", chain=chain)
    model_of = {step.name: tmp_path / step.name / M.NAME / M.MODEL for step in chain}
    assert final == model_of["s"]
    assert load_model(model_of["b"]).metadata["training"]["warm_start"]["file"] == str(model_of["a"])
    ingredients = load_model(final).metadata["training"]["weight_average"]
    assert [(i["file"], i["share"]) for i in ingredients] == [(str(model_of["b"]), 0.5), (str(model_of["c"]), 0.5)]
    digests = {name: sha256_of(path) for name, path in model_of.items()}
    assert M.reproduce(tmp_path, tmp_path / "absent", chain=chain) == final                 # all done: nothing redone
    assert digests == {name: sha256_of(path) for name, path in model_of.items()}


def test_thick_slices_can_be_drawn_mostly_axial():
    """``axial_thick_share`` 1: every thick-slice contrast blurs along the axial axis (k) alone; the default draws
    the axis at random, so some thick slices lie along j or i."""
    def thick_axes(share):
        contrasts = [H.draw_contrast(np.random.default_rng(seed), prior=H.SimulationPrior(axial_thick_share=share))
                     for seed in range(80)]
        thick = [c.blur_voxels for c in contrasts if max(c.blur_voxels) > 0.8]    # above any in-plane blur
        return [int(np.argmax(blur)) for blur in thick]
    assert thick_axes(1.0) and set(thick_axes(1.0)) == {0}
    assert set(thick_axes(None)) > {0}


def test_fat_can_be_drawn_brighter_than_skin_and_muscle():
    """``bright_fat_share`` 1: fat outshines skin and muscle in every contrast; the default draws it alike, so fat is
    darker than one of them in some; the prior redraws fat alone."""
    def fat_brightest(prior):
        contrasts = [H.draw_contrast(np.random.default_rng(seed), prior=prior) for seed in range(60)]
        return [c.means["fat"] >= max(c.means["skin"], c.means["muscle"]) for c in contrasts]
    assert all(fat_brightest(H.SimulationPrior(bright_fat_share=1.0)))
    assert not all(fat_brightest(H.SimulationPrior()))
    plain, bright = (H.draw_contrast(np.random.default_rng(3), prior=H.SimulationPrior(bright_fat_share=share))
                     for share in (0.0, 1.0))
    assert plain.blur_voxels == bright.blur_voxels and plain.means["fat"] != bright.means["fat"]
    assert {k: v for k, v in plain.means.items() if k != "fat"} == {k: v for k, v in bright.means.items() if k != "fat"}


def test_the_bias_field_can_be_drawn_stronger():
    """``max_bias`` bounds the drawn sd of the log bias field; the default keeps the v1-v4 draws."""
    strong = [H.draw_contrast(np.random.default_rng(seed), prior=H.SimulationPrior(max_bias=0.7)).bias for seed in range(40)]
    plain = [H.draw_contrast(np.random.default_rng(seed)).bias for seed in range(40)]
    assert max(plain) <= 0.35 < max(strong) <= 0.7
    np.testing.assert_allclose(np.array(strong) / 2, plain)               # the same uniform draws, rescaled


def test_thicken_scalp_inserts_fat_under_the_skin_in_plane(phantom):
    labels, hu = V.array_of(phantom.labels, np.uint8), V.array_of(phantom.ct)
    assert H.thicken_scalp(labels, hu, 0)[0] is labels
    thick, thick_hu = H.thicken_scalp(labels, hu, 2)
    body, grown = labels > 0, thick > 0
    k = labels.shape[0] // 2
    row = labels.shape[1] // 2
    inside = np.flatnonzero(body[k, row])
    grown_inside = np.flatnonzero(grown[k, row])
    assert grown_inside[0] == inside[0] - 2 and grown_inside[-1] == inside[-1] + 2      # 2 voxels each side
    assert np.array_equal(grown.reshape(len(grown), -1).any(1), body.reshape(len(body), -1).any(1))   # no lid
    assert thick[k, row, grown_inside[0]] == labels[k, row, inside[0]]                     # the rim moved out
    assert thick_hu[k, row, grown_inside[0]] == hu[k, row, inside[0]]
    under = (k, row, slice(grown_inside[0] + 1, inside[0] + 1))                               # old rim included
    assert (thick[under] == H.LABEL["fat"]).all()
    assert np.allclose(thick_hu[under], np.median(hu[labels == H.LABEL["fat"]]))
    below_rim = np.stack([ndimage.binary_erosion(s, border_value=1) for s in body])     # unchanged under the rim
    assert np.array_equal(thick[below_rim], labels[below_rim]) and np.array_equal(thick_hu[below_rim], hu[below_rim])


def test_a_thicker_scalp_is_drawn_within_the_prior(phantom):
    anatomy = H.Anatomy("phantom", phantom.ct, phantom.labels)
    fat_voxels = []
    for seed in range(4):
        _, ct, _ = H.simulated_pair(anatomy, np.random.default_rng(seed), prior=H.SimulationPrior(max_extra_scalp_mm=8))
        fat_voxels.append(((V.array_of(ct) > -200) & (V.array_of(ct) < -30)).sum())
    _, plain, _ = H.simulated_pair(anatomy, np.random.default_rng(0))
    assert max(fat_voxels) > 1.3 * ((V.array_of(plain) > -200) & (V.array_of(plain) < -30)).sum()


def test_the_brain_under_the_skull_can_be_labelled_csf_keeping_the_ct(phantom):
    labels, hu = V.array_of(phantom.labels, np.uint8), V.array_of(phantom.ct)
    labels = np.where(labels == H.LABEL["csf"], H.LABEL["grey_matter"], labels).astype(np.uint8)   # a CT's labels
    assert H.add_subarachnoid_csf(labels, hu, 0)[0] is labels
    layered, layered_hu = H.add_subarachnoid_csf(labels, hu, 1)
    assert layered_hu is hu and (labels != layered).any()
    changed = labels != layered
    assert (layered[changed] == H.LABEL["csf"]).all() and (hu[changed] < H.MARROW_HU).all()
    assert np.isin(labels[changed], (H.LABEL["grey_matter"], H.LABEL["white_matter"])).all()
    skull = np.isin(labels, (H.LABEL["cortical_bone"], H.LABEL["bone_marrow"]))
    assert ndimage.binary_dilation(skull, np.ones((3, 3, 3)))[changed].all()              # only next to the skull
    brain_near_skull = (layered == H.LABEL["grey_matter"]) & ndimage.binary_dilation(skull) & (hu < H.MARROW_HU)
    assert not brain_near_skull.any()
    thicker = H.add_subarachnoid_csf(labels, hu, 2)[0]
    assert (thicker == H.LABEL["csf"]).sum() > (layered == H.LABEL["csf"]).sum()


def test_levels_align_by_the_heads_cross_section_and_weight_the_reference_by_level():
    """A CT covering 90 levels, fat below and bone above; a head slab matching its levels 30-79: the shift is
    found and the reference is the CT at those levels, not its whole head; a head twice as wide is not matched."""
    area = np.concatenate([np.linspace(100, 300, 50), np.linspace(300, 20, 40)])           # neck .. vertex
    counts = np.zeros((90, len(C.HU_CLASSES)))
    counts[:45, 1] = area[:45]                                                               # fat (lower half)
    counts[45:, 3] = area[45:]                                                               # bone (upper half)
    ct = C.Levels(area.copy(), counts)
    slab = C.Levels(area[30:80].copy(), counts[30:80].copy())
    assert C.align_levels(slab, ct) == (30, 0.0)
    match = C.level_matched_shares(slab, {"ct": ct})
    expected_fat = area[30:45].sum() / area[30:80].sum()
    assert match.covered == 1.0 and abs(match.reference["fat"] - expected_fat) < 1e-9
    assert C.histogram_distance(match.shares, match.reference) < 1e-9
    whole = counts.sum(axis=0) / counts.sum()
    assert abs(whole[1] - expected_fat) > 0.1                                                # the whole head differs
    wide = C.Levels(2 * slab.area, 2 * slab.counts)
    unmatched = C.level_matched_shares(wide, {"ct": ct})
    assert unmatched.reference is None and unmatched.covered == 0.0 and unmatched.summary()["cts"]["ct"]["used"] is False
    short = C.Levels(np.full(5, np.nan), np.zeros((5, len(C.HU_CLASSES))))
    assert C.align_levels(short, ct) is None


def test_level_matched_distance_of_a_slab_against_its_whole_head(phantom):
    full = C.check_ct(phantom.ct)
    mr_slab, ct_slab = phantom.mr[:, :, 20:], phantom.ct[:, :, 20:]            # brain and vault, no face or neck
    summary = C.check_sct(mr_slab, ct_slab).summary(C.mean_shares([full]), {"whole head": full})
    alignment = summary["level_matched"]["cts"]["whole head"]
    assert alignment["used"] and abs(alignment["shift_mm"] - 20 * 4.0) <= 4.0
    assert summary["hu_histogram_distance_level_matched"] < 0.03 < summary["hu_histogram_distance"]


def test_a_head_ct_stored_upside_down_is_turned_right_way_up(tmp_path):
    array = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)             # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.5))
    for name in (H.UPSIDE_DOWN_CTS[0], "other_ct.nii.gz"):
        V.write_volume(image, tmp_path / name)
    turned, kept = H.read_head_ct(tmp_path / H.UPSIDE_DOWN_CTS[0]), H.read_head_ct(tmp_path / "other_ct.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(turned), array[::-1])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(kept), array)
    assert V.Geometry.of(turned) == V.Geometry.of(image)


def test_levels_where_the_scanned_box_cuts_the_head_are_not_counted():
    k, j, i = np.ogrid[:30, :30, :30]
    head = (k - 15) ** 2 + (j - 15) ** 2 + (i - 15) ** 2 < 10 ** 2
    scanned = np.ones(head.shape, bool)
    scanned[:12, :, 20:] = False                                   # a tilted box's corner: the lower levels are cut
    levels = C.levels_of(np.full(head.shape, 40.0, np.float32), head, scanned)
    has_head = head.reshape(30, -1).any(axis=1)
    assert np.isnan(levels.area[:12][has_head[:12]]).all() and np.isfinite(levels.area[12:][has_head[12:]]).all()
    assert np.isnan(levels.area[~has_head]).all()
    assert levels.counts[20, 2] == head[20].sum()                  # soft tissue (40 HU) counted per level
