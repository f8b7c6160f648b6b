"""The phantom subjects: held-out test seeds, and the training and test data written under ``<out>/data``."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .output import _dump, _jsonable, _say
from .settings import TEST_DATA_SEED, TRAIN_DATA_SEED, Setting


def subject_seeds_of(setting: Setting) -> tuple[list[int], list[int]]:
    from ..phantom import subject_seeds

    train, test = subject_seeds(TRAIN_DATA_SEED, setting.train_subjects), subject_seeds(TEST_DATA_SEED,
                                                                                         setting.test_subjects)
    if set(train) & set(test):
        raise RuntimeError("training and test phantom seeds overlap")  # never with SeedSequence spawning
    return train, test


def write_data(out: Path, setting: Setting) -> Path:
    """Training (paired MR/CT folders) and test phantoms under <out>/data/<anatomy>; skipped when complete."""
    from ..phantom import make_phantom, write_phantom

    root = out / "data" / setting.anatomy
    marker = root / "complete.json"
    train_seeds, test_seeds = subject_seeds_of(setting)
    record = {"kind": setting.anatomy, "shape": setting.shape, "spacing": setting.spacing,
              "train_subject_seeds": train_seeds, "test_subject_seeds": test_seeds,
              "train_dataset_seed": TRAIN_DATA_SEED, "test_dataset_seed": TEST_DATA_SEED}
    if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) == _jsonable(record):
        return root
    if root.exists():
        shutil.rmtree(root)
    began = time.time()
    for part, seeds in (("train", train_seeds), ("test", test_seeds)):
        for index, seed in enumerate(seeds):
            write_phantom(make_phantom(setting.anatomy, seed, setting.shape, setting.spacing), root / part,
                          f"{setting.anatomy}_{index:03d}")
    _dump(marker, record)
    _say(f"wrote {len(train_seeds)} training and {len(test_seeds)} test {setting.anatomy} phantoms in "
         f"{time.time() - began:.0f} s ({root})")
    return root


def test_phantoms(setting: Setting) -> list:
    from ..phantom import make_phantom

    return [make_phantom(setting.anatomy, seed, setting.shape, setting.spacing)
            for seed in subject_seeds_of(setting)[1]]
