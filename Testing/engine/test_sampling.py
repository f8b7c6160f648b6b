"""Position-based selection (Yang 2018, eq. 10) and the training-slice samplers."""
from collections import Counter
from fractions import Fraction
from math import floor

import numpy as np
import pytest

from MRtoCTSynthesisLib.sampling import (SAMPLER_MODES, SlicePair, linear_position, make_sampler,
                                         position_based_index)

PAIRS = [(270, 270), (100, 300), (300, 100), (20, 15), (11, 11), (2, 2)]


def eq10_t(i, k_mr, k_ct):
    """[i (K_CT - 1) / (K_MR - 1)] with [.] = round half up, in exact rational arithmetic."""
    return floor(Fraction(i * (k_ct - 1), k_mr - 1) + Fraction(1, 2))


def eq10_shifted(t, k_ct):
    """Eq. 10's condition for adding m: 5 <= t < K_CT - 5."""
    return 5 <= t < k_ct - 5


@pytest.mark.parametrize("k_mr,k_ct", PAIRS)
def test_linear_position_is_the_rounded_linear_alignment(k_mr, k_ct):
    got = [linear_position(i, k_mr, k_ct) for i in range(k_mr)]
    assert got == [eq10_t(i, k_mr, k_ct) for i in range(k_mr)]
    assert got[0] == 0 and got[-1] == k_ct - 1
    assert all(isinstance(t, int) for t in got)


def test_rounding_is_half_up():
    # 1 * (2 - 1) / (3 - 1) = 0.5 -> 1 (Python's round() would give 0); 3 * 4 / 8 = 1.5 -> 2; 5 * 4 / 8 = 2.5 -> 3
    assert linear_position(1, 3, 2) == 1
    assert linear_position(3, 9, 5) == 2
    assert linear_position(5, 9, 5) == 3


def test_single_mr_slice_maps_to_zero():
    assert linear_position(0, 1, 50) == 0
    assert position_based_index(0, 1, 50, np.random.default_rng(0)) == 0


@pytest.mark.parametrize("k_mr,k_ct", PAIRS)
def test_position_based_index_follows_eq10(k_mr, k_ct):
    rng = np.random.default_rng(k_mr * 1000 + k_ct)
    draws = 60
    cases = Counter()
    for i in range(k_mr):
        t = eq10_t(i, k_mr, k_ct)
        got = np.array([position_based_index(i, k_mr, k_ct, rng) for _ in range(draws)])
        assert np.all((got >= 0) & (got < k_ct)), (i, got)
        if eq10_shifted(t, k_ct):
            assert np.all(np.abs(got - t) <= 5), (i, t, got)
            assert len(set(got.tolist())) > 1, f"no random shift at interior t={t}"
            cases["shifted"] += 1
        else:
            assert np.all(got == t), f"border t={t} (K_CT={k_ct}) must get m = 0 exactly, got {got}"
            cases["border"] += 1
    assert cases["border"] > 0
    assert (cases["shifted"] > 0) == (k_ct > 10)


def test_border_cases_exactly():
    rng = np.random.default_rng(1)
    k = 30  # identity alignment: t = i; shifted exactly for 5 <= t < 25
    for t in (0, 4, 25, 29):
        assert {position_based_index(t, k, k, rng) for _ in range(200)} == {t}
    for t in (5, 24):
        assert {position_based_index(t, k, k, rng) for _ in range(2000)} == set(range(t - 5, t + 6))


def test_shift_m_is_uniform_on_minus5_to_5():
    rng = np.random.default_rng(2)
    n = 22000
    m = np.array([position_based_index(150, 300, 100, rng) for _ in range(n)]) - eq10_t(150, 300, 100)
    values, counts = np.unique(m, return_counts=True)
    assert values.tolist() == list(range(-5, 6))
    expected = n / 11  # 2000, binomial sd ~ 43
    assert np.all(np.abs(counts - expected) < 200), counts


def test_custom_shift_and_validation():
    rng = np.random.default_rng(3)
    assert {position_based_index(50, 100, 100, rng, max_shift=0, border=0) for _ in range(50)} == {50}
    assert {position_based_index(50, 100, 100, rng, max_shift=2, border=5) for _ in range(500)} == set(range(48, 53))
    with pytest.raises(ValueError, match="border"):
        position_based_index(50, 100, 100, rng, max_shift=6, border=5)
    with pytest.raises(ValueError, match=r"\[0, k_mr=10\)"):
        linear_position(10, 10, 20)
    with pytest.raises(ValueError, match="i=-1"):
        linear_position(-1, 10, 20)
    with pytest.raises(ValueError, match="k_ct"):
        linear_position(0, 10, 0)


def test_random_mode_covers_every_slice_uniformly():
    mr_counts, ct_counts = [3, 5, 2], [4, 1, 6]
    sampler = make_sampler("random", mr_counts, ct_counts)
    assert sampler.mode == "random" and len(sampler) == 10
    pairs = sampler.sample_batch(np.random.default_rng(4), 6000)
    mr = Counter((p.mr_volume, p.mr_slice) for p in pairs)
    ct = Counter((p.ct_volume, p.ct_slice) for p in pairs)
    assert set(mr) == {(v, s) for v, k in enumerate(mr_counts) for s in range(k)}
    assert set(ct) == {(v, s) for v, k in enumerate(ct_counts) for s in range(k)}
    # slice-uniform over the union of slices (not volume-uniform): 600 and ~545 per slice
    assert all(abs(c - 600) < 120 for c in mr.values()), mr
    assert all(abs(c - 6000 / 11) < 120 for c in ct.values()), ct
    # independence: the joint (MR volume, CT volume) frequencies are the product of the marginals
    joint = Counter((p.mr_volume, p.ct_volume) for p in pairs)
    for (v, w), c in joint.items():
        assert abs(c - 6000 * mr_counts[v] / 10 * ct_counts[w] / 11) < 120, (v, w, c)


def test_pbs_mode_pairs_each_mr_slice_with_its_eq10_ct_slice():
    mr_counts, ct_counts = [40, 25], [30, 60, 12]
    sampler = make_sampler("pbs", mr_counts, ct_counts)
    pairs = sampler.sample_batch(np.random.default_rng(5), 3000)
    assert {p.ct_volume for p in pairs} == {0, 1, 2}
    assert len({(p.mr_volume, p.mr_slice) for p in pairs}) == sum(mr_counts)
    for p in pairs:
        k_mr, k_ct = mr_counts[p.mr_volume], ct_counts[p.ct_volume]
        t = eq10_t(p.mr_slice, k_mr, k_ct)
        assert 0 <= p.ct_slice < k_ct
        assert abs(p.ct_slice - t) <= 5 if eq10_shifted(t, k_ct) else p.ct_slice == t
    shifts = {p.ct_slice - eq10_t(p.mr_slice, mr_counts[p.mr_volume], ct_counts[p.ct_volume]) for p in pairs}
    assert shifts == set(range(-5, 6))


def test_paired_mode_returns_the_same_slice_and_rejects_unequal_counts():
    sampler = make_sampler("paired", [7, 9], [7, 9])
    pairs = sampler.sample_batch(np.random.default_rng(6), 500)
    assert all(p.ct_volume == p.mr_volume and p.ct_slice == p.mr_slice for p in pairs)
    assert len({(p.mr_volume, p.mr_slice) for p in pairs}) == 16
    with pytest.raises(ValueError, match="equal slice counts"):
        make_sampler("paired", [7, 9], [7, 8])
    with pytest.raises(ValueError, match="equal slice counts"):
        make_sampler("paired", [7, 9], [7, 9, 9])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="random.*pbs.*paired"):
        make_sampler("cyclic", [5], [5])
    with pytest.raises(ValueError, match="mr_slice_counts"):
        make_sampler("random", [], [5])
    with pytest.raises(ValueError, match=r"ct_slice_counts\[1\]"):
        make_sampler("pbs", [5], [5, 0])
    with pytest.raises(ValueError, match="batch size"):
        make_sampler("random", [5], [5]).sample_batch(np.random.default_rng(0), -1)
    assert set(SAMPLER_MODES) == {"random", "pbs", "paired"}


@pytest.mark.parametrize("mode", SAMPLER_MODES)
def test_samplers_are_deterministic_from_the_seed(mode):
    sampler = make_sampler(mode, [30, 50, 20], [30, 50, 20])
    a = sampler.sample_batch(np.random.default_rng(7), 50)
    b = sampler.sample_batch(np.random.default_rng(7), 50)
    c = sampler.sample_batch(np.random.default_rng(8), 50)
    assert a == b and a != c
    assert all(isinstance(p, SlicePair) and all(type(x) is int for x in p) for p in a)


def test_sampler_scales_to_many_slices():
    sampler = make_sampler("pbs", [270] * 10_000, [300] * 10_000)
    assert len(sampler) == 2_700_000
    assert len(sampler.sample_batch(np.random.default_rng(9), 1000)) == 1000


def test_pbs_sampler_max_shift():
    pairs = make_sampler("pbs", [100], [100], max_shift=2).sample_batch(np.random.default_rng(10), 2000)
    assert {p.ct_slice - p.mr_slice for p in pairs} == set(range(-2, 3))
    with pytest.raises(ValueError, match="border"):
        make_sampler("pbs", [100], [100], max_shift=6)
