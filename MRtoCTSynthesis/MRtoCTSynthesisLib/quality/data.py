"""The subjects: phantoms (held-out test seeds; training and test data written under ``<out>/data``), or real paired
data read from a folder of subject folders (``--data``)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..baselines import Subject
from .output import _dump, _jsonable, _say
from .settings import TEST_DATA_SEED, TRAIN_DATA_SEED, Setting

PAIRED_ROLES = ("mr", "ct", "mask")     # file stems in a subject folder (SynthRAD: mr.nii.gz, ct.nii.gz, mask.nii.gz)


def subject_seeds_of(setting: Setting) -> tuple[list[int], list[int]]:
    from ..phantom import subject_seeds

    train, test = subject_seeds(TRAIN_DATA_SEED, setting.train_subjects), subject_seeds(TEST_DATA_SEED,
                                                                                         setting.test_subjects)
    if set(train) & set(test):
        raise RuntimeError("training and test phantom seeds overlap")  # never with SeedSequence spawning
    return train, test


def write_data(out: Path, setting: Setting) -> Path:
    """Training (paired MR/CT folders) and test phantoms under <out>/data/<anatomy>; skipped when complete."""
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
    jobs = [(setting, seed, root / part, f"{setting.anatomy}_{index:03d}")
            for part, seeds in (("train", train_seeds), ("test", test_seeds)) for index, seed in enumerate(seeds)]
    for_each_in_processes(_write_phantom, jobs)
    _dump(marker, record)
    _say(f"wrote {len(train_seeds)} training and {len(test_seeds)} test {setting.anatomy} phantoms in "
         f"{time.time() - began:.0f} s ({root})")
    return root


def _write_phantom(setting: Setting, seed: int, folder: Path, name: str) -> None:
    from ..phantom import make_phantom, write_phantom

    write_phantom(make_phantom(setting.anatomy, seed, setting.shape, setting.spacing), folder, name)


def for_each_in_processes(function, jobs: list[tuple]) -> None:
    """``function(*job)`` for every job, in one worker process per CPU (each job is independent and seeded, so the
    result does not depend on the order): 45 phantoms take a minute on one core, seconds on a GPU machine's 16."""
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        for job in jobs:
            function(*job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(function, *job) for job in jobs]:
            done.result()


def test_phantoms(setting: Setting, root: Path) -> list[Subject]:
    """The test phantoms ``write_data`` wrote under ``root``/test, with their seeds (read, not generated again: every
    invocation sharing a benchmark needs them, and reading takes a fraction of the generation's time)."""
    subjects = written_subjects(root / "test")
    seeds = subject_seeds_of(setting)[1]
    if [s.name for s in subjects] != [f"{setting.anatomy}_{index:03d}" for index in range(len(seeds))]:
        raise ValueError(f"{root / 'test'} does not hold the {len(seeds)} test phantoms of this setting; delete "
                         f"{root} and run the benchmark again to rewrite them")
    for subject, seed in zip(subjects, seeds):
        subject.seed = int(seed)
    return subjects


def written_subjects(folder: Path) -> list[Subject]:
    """The paired subjects written by ``write_data`` in ``folder`` (mr/, ct/ and labels/ of the same names)."""
    from .. import volumes as V
    from ..dataset import find_volumes, volume_stem

    subjects = []
    for path in find_volumes(folder / "mr", "MR"):
        name = volume_stem(path)
        labels = folder / "labels" / path.name
        subjects.append(Subject(name, V.read_volume(path), V.read_volume(folder / "ct" / path.name), None,
                                V.read_volume(labels) if labels.exists() else None))
    return subjects


# ----------------------------------------------------------------------------------------- real paired data (--data)

def paired_files(folder: Path) -> dict[str, dict[str, Path]]:
    """``{subject: {"mr": path, "ct": path[, "mask": path]}}`` for every sub-folder of ``folder`` (sorted by name).

    A subject folder holds ``mr.<ext>`` and ``ct.<ext>`` (the CT registered to the MR, on its grid) and optionally
    ``mask.<ext>`` (the evaluation mask), as the SynthRAD challenge ships them. Raises ValueError naming the problem.
    """
    from .. import volumes as V
    from ..dataset import volume_stem

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--data {folder} is not a folder; it must hold one folder per subject with mr and ct files")
    subjects = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = {volume_stem(p).lower(): p for p in sub.iterdir() if p.is_file()
                 and p.name.lower().endswith(V.VOLUME_SUFFIXES)}
        missing = [r for r in ("mr", "ct") if r not in files]
        if missing:
            raise ValueError(f"subject folder {sub} lacks {' and '.join(missing)} (expected e.g. mr.nii.gz and "
                             "ct.nii.gz, optionally mask.nii.gz)")
        subjects[sub.name] = {r: files[r] for r in PAIRED_ROLES if r in files}
    if len(subjects) < 3:
        raise ValueError(f"--data {folder} holds {len(subjects)} subject folders; at least 3 are needed (training, "
                         "validation and test subjects)")
    return subjects


def split_subjects(names: list[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split of the subject names (sorted) into training and test subjects (at least 2 for training)."""
    from ..train import split_validation

    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    train, test = split_validation(sorted(names), test_fraction, TEST_DATA_SEED)
    if len(train) < 2 or not test:
        raise ValueError(f"{len(names)} subjects give {len(train)} training and {len(test)} test subjects; "
                         "add subjects or change --test-fraction")
    return train, test


def link_data(out: Path, anatomy: str, folder: Path, test_fraction: float) -> tuple[Path, list[str], list[str]]:
    """Training folders ``<out>/data/<anatomy>/train/{mr,ct}/<subject>.<ext>`` as links to the --data files (never
    copied or modified); returns (root, training names, test names)."""
    from .. import volumes as V

    files = paired_files(folder)
    train, test = split_subjects(list(files), test_fraction)
    root = out / "data" / anatomy
    record = {"data": str(Path(folder).resolve()), "train": train, "test": test}
    marker = root / "complete.json"
    if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) == record:
        return root, train, test
    if root.exists():
        shutil.rmtree(root)
    for name in train:
        mr, ct = V.read_volume(files[name]["mr"]), V.read_volume(files[name]["ct"])
        if mr.GetSize() != ct.GetSize():
            raise ValueError(f"subject {name}: the CT ({ct.GetSize()}) is not on the MR's grid ({mr.GetSize()}); "
                             "paired data needs the CT registered and resampled onto the MR")
        for role in ("mr", "ct"):
            source = files[name][role]
            suffix = source.name[len(source.name.split(".")[0]):]
            target = root / "train" / role / f"{name}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source.resolve(), target)
    _dump(marker, record)
    return root, train, test


def data_subjects(folder: Path, names: list[str]) -> list[Subject]:
    """The named subjects of a --data folder, read (MR, CT, and the mask when the folder has one)."""
    from .. import volumes as V

    files = paired_files(folder)
    subjects = []
    for name in names:
        mask = V.read_volume(files[name]["mask"]) if "mask" in files[name] else None
        subjects.append(Subject(name, V.read_volume(files[name]["mr"]), V.read_volume(files[name]["ct"]), mask))
    return subjects
