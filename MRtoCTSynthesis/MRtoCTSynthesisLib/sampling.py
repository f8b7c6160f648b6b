"""Choice of the 2D training slices for a CycleGAN trained on (unpaired) volumes.

Yang et al. 2018, section 2.6, position-based selection (PBS), eq. (10): MR and CT volumes are linearly
aligned by their numbers of slices K_MR and K_CT, and MR slice i is trained against CT slice

    T(i) = [i (K_CT - 1) / (K_MR - 1)] + m   if 5 <= [i (K_CT - 1) / (K_MR - 1)] < K_CT - 5,
    T(i) = [i (K_CT - 1) / (K_MR - 1)]       otherwise,

with [.] rounding and m a uniform random integer in [-5, 5].

Samplers (``make_sampler``) draw index tuples only: they hold two arrays of slice counts, never per-slice objects.
  - "random": conventional CycleGAN; an MR slice and, independently, a CT slice, each uniform over all slices.
  - "pbs": a uniform MR slice, a uniform CT volume, and the CT slice T(i) of eq. (10).
  - "paired": registered MR/CT pairs; the CT slice is the MR slice of the same volume index.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Sequence

import numpy as np

SAMPLER_MODES = ("random", "pbs", "paired")
PBS_MAX_SHIFT = 5  # eq. (10): m in [-5, 5]
PBS_BORDER = 5     # eq. (10): shifted only if 5 <= t < K_CT - 5


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_count(name: str, k: object) -> int:
    if not _is_int(k) or k < 1:
        raise ValueError(f"{name} must be a positive integer number of slices, got {k!r}")
    return int(k)


def _check_shift(max_shift: int, border: int) -> None:
    if not _is_int(max_shift) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
    if not _is_int(border) or border < max_shift:
        raise ValueError(f"border must be an integer >= max_shift={max_shift} so that T(i) stays in [0, K_CT), "
                         f"got {border!r}")


def linear_position(i: int, k_mr: int, k_ct: int) -> int:
    """t = [i (K_CT - 1) / (K_MR - 1)], the CT slice linearly aligned with MR slice i (eq. 10).

    [.] is round-half-up, floor(x + 1/2), computed in exact integer arithmetic as
    floor((2 i (K_CT - 1) + K_MR - 1) / (2 (K_MR - 1))), so halves never depend on float error.
    K_MR = 1 makes the ratio 0/0; the single MR slice (i = 0) then maps to t = 0.
    """
    k_mr, k_ct = _check_count("k_mr", k_mr), _check_count("k_ct", k_ct)
    if not _is_int(i) or not 0 <= i < k_mr:
        raise ValueError(f"MR slice index i={i!r} must be an integer in [0, k_mr={k_mr})")
    if k_mr == 1:
        return 0
    return (2 * int(i) * (k_ct - 1) + k_mr - 1) // (2 * (k_mr - 1))


def position_based_index(i: int, k_mr: int, k_ct: int, rng: np.random.Generator,
                         max_shift: int = PBS_MAX_SHIFT, border: int = PBS_BORDER) -> int:
    """T(i) of eq. (10): t + m with m uniform in [-max_shift, max_shift] if border <= t < K_CT - border, else t.

    The paper uses max_shift = border = 5; max_shift > border is refused because T(i) could leave [0, K_CT).
    """
    _check_shift(max_shift, border)
    t = linear_position(i, k_mr, k_ct)
    if border <= t < k_ct - border:
        return t + int(rng.integers(-max_shift, max_shift + 1))
    return t


class SlicePair(NamedTuple):
    """One training example: MR slice ``mr_slice`` of MR volume ``mr_volume``, CT likewise."""

    mr_volume: int
    mr_slice: int
    ct_volume: int
    ct_slice: int


class SliceSampler(ABC):
    """Base sampler: the MR slice is uniform over the union of all MR slices; subclasses choose the CT slice."""

    mode = ""

    def __init__(self, mr_slice_counts: Sequence[int], ct_slice_counts: Sequence[int]) -> None:
        self.mr_counts = self._counts("mr_slice_counts", mr_slice_counts)
        self.ct_counts = self._counts("ct_slice_counts", ct_slice_counts)
        self._mr_starts = np.concatenate(([0], np.cumsum(self.mr_counts)[:-1]))
        self._ct_starts = np.concatenate(([0], np.cumsum(self.ct_counts)[:-1]))

    @staticmethod
    def _counts(name: str, counts: Sequence[int]) -> np.ndarray:
        if isinstance(counts, (str, bytes)) or len(counts) == 0:
            raise ValueError(f"{name} must be a non-empty list with the number of slices of each volume")
        return np.array([_check_count(f"{name}[{v}]", k) for v, k in enumerate(counts)], dtype=np.int64)

    def __len__(self) -> int:
        """Number of MR slices (one epoch's worth of draws)."""
        return int(self.mr_counts.sum())

    @staticmethod
    def _uniform_slice(rng: np.random.Generator, counts: np.ndarray, starts: np.ndarray) -> tuple[int, int]:
        """(volume, slice) uniform over the union of all slices: a flat index located by binary search."""
        flat = int(rng.integers(int(counts.sum())))
        volume = int(np.searchsorted(starts, flat, side="right")) - 1
        return volume, flat - int(starts[volume])

    @abstractmethod
    def _ct(self, rng: np.random.Generator, mr_volume: int, mr_slice: int) -> tuple[int, int]:
        """(CT volume, CT slice) to train against MR slice ``mr_slice`` of volume ``mr_volume``."""

    def sample(self, rng: np.random.Generator) -> SlicePair:
        mr_volume, mr_slice = self._uniform_slice(rng, self.mr_counts, self._mr_starts)
        return SlicePair(mr_volume, mr_slice, *self._ct(rng, mr_volume, mr_slice))

    def sample_batch(self, rng: np.random.Generator, n: int) -> list[SlicePair]:
        if not _is_int(n) or n < 0:
            raise ValueError(f"batch size n must be a non-negative integer, got {n!r}")
        return [self.sample(rng) for _ in range(n)]


class RandomSampler(SliceSampler):
    """Conventional CycleGAN: the CT slice is uniform over all CT slices, independent of the MR slice."""

    mode = "random"

    def _ct(self, rng: np.random.Generator, mr_volume: int, mr_slice: int) -> tuple[int, int]:
        return self._uniform_slice(rng, self.ct_counts, self._ct_starts)


class PositionBasedSampler(SliceSampler):
    """Yang 2018 PBS: a uniform CT volume and its slice T(i) from eq. (10)."""

    mode = "pbs"

    def __init__(self, mr_slice_counts: Sequence[int], ct_slice_counts: Sequence[int],
                 max_shift: int = PBS_MAX_SHIFT) -> None:
        super().__init__(mr_slice_counts, ct_slice_counts)
        _check_shift(max_shift, PBS_BORDER)
        self.max_shift = max_shift

    def _ct(self, rng: np.random.Generator, mr_volume: int, mr_slice: int) -> tuple[int, int]:
        ct_volume = int(rng.integers(len(self.ct_counts)))
        return ct_volume, position_based_index(mr_slice, int(self.mr_counts[mr_volume]),
                                               int(self.ct_counts[ct_volume]), rng, max_shift=self.max_shift)


class PairedSampler(SliceSampler):
    """Registered pairs: CT volume v slice s goes with MR volume v slice s."""

    mode = "paired"

    def __init__(self, mr_slice_counts: Sequence[int], ct_slice_counts: Sequence[int]) -> None:
        super().__init__(mr_slice_counts, ct_slice_counts)
        if not np.array_equal(self.mr_counts, self.ct_counts):
            raise ValueError("paired sampling needs registered MR/CT pairs with equal slice counts per volume; got "
                             f"MR {self.mr_counts.tolist()} and CT {self.ct_counts.tolist()} "
                             "(resample the CT onto the MR grid, or use mode 'random' or 'pbs')")

    def _ct(self, rng: np.random.Generator, mr_volume: int, mr_slice: int) -> tuple[int, int]:
        return mr_volume, mr_slice


_SAMPLERS = {cls.mode: cls for cls in (RandomSampler, PositionBasedSampler, PairedSampler)}


def make_sampler(mode: str, mr_slice_counts: Sequence[int], ct_slice_counts: Sequence[int],
                 max_shift: int = PBS_MAX_SHIFT) -> SliceSampler:
    """Sampler for ``mode`` in SAMPLER_MODES over volumes with the given numbers of slices.

    ``max_shift`` is eq. (10)'s range of m for mode "pbs" (the paper's 5; at most PBS_BORDER) and unused otherwise.
    """
    if mode not in _SAMPLERS:
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of {SAMPLER_MODES}")
    if mode == PositionBasedSampler.mode:
        return PositionBasedSampler(mr_slice_counts, ct_slice_counts, max_shift=max_shift)
    return _SAMPLERS[mode](mr_slice_counts, ct_slice_counts)
