"""What the benchmark compares and in which setting: variants, metrics and constants, the data setting of each
anatomy, the network sizes, the options of an invocation and the training configuration of a run."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional


VARIANTS = ("cyclegan", "cyclegan-pbs", "paired", "yang2018", "hiasa2018", "cyclegan-cycle3", "supervised")
# variant -> (preset, overrides of its loss weights): controls that isolate one effect each
VARIANT_PRESETS = {
    "cyclegan-cycle3": ("cyclegan", {"lambda_cycle": 3.0}),   # hiasa2018 without GC: isolates the GC loss
    "supervised": ("paired", {"lambda_adversarial": 0.0, "lambda_cycle": 0.0, "lambda_supervised": 1.0}),  # L1 only
}
BASELINE = "cyclegan"
# effect -> (variant, its control): each comparison changes one thing
EFFECTS = {"PBS": ("cyclegan-pbs", "cyclegan"), "MIND": ("yang2018", "cyclegan-pbs"),
           "GC": ("hiasa2018", "cyclegan-cycle3"), "pairing": ("paired", "cyclegan"),
           "supervision": ("supervised", "paired")}
YANG_PBS_SHIFT_MM = 5.0                     # Yang eq. 10: m in [-5, 5] slices of about 1 mm
ANATOMIES = ("head", "pelvis")
DATA_RANGE_HU = 4500.0                      # Yang: PSNR peak and SSIM dynamic range for CT in [-1000, 3500] HU
SATURATED_HU = -990.0                       # sCT at or below this counts as "generator output at tanh -1"
SATURATED_SHARE = 50.0                      # % of body voxels above which a variant is reported as saturated
BONE_HU = 250.0
CT_WINDOW_YANG, MR_WINDOW_YANG, MR_PERCENTILE_VALUE_YANG = (-1000.0, 3500.0), (0.0, 3500.0), 3000.0
# the MR reference shared by every variant of an anatomy: Yang's white-matter peak where there is white matter,
# the body percentile (config.py's hiasa2018 rule, here onto Yang's window) for the pelvis
MR_SCALING = {"head": "wm_peak", "pelvis": "percentile"}
TRAIN_DATA_SEED, TEST_DATA_SEED = 0, 7_000  # dataset seeds; subject seeds are spawned from them (never equal)
REAL_SCANS = ("head_t1_rire001.mha", "head_t1gd_brain1.nrrd")
DEFAULT_REAL_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "real"  # beside the checkout
PLAN = "plan.json"
TEST_METRICS = "test_metrics.json"

# (key, label, +1 higher is better / -1 lower is better, decimals)
METRICS = (("mae", "MAE (HU)", -1, 1), ("psnr", "PSNR (dB)", 1, 2), ("ssim", "SSIM", 1, 3),
           ("ssim_hg", "SSIM(HG)", 1, 3), ("mae_bone", "MAE bone (HU)", -1, 1),
           ("mi_mr_sct", "MI(MR, sCT) (nats)", 1, 3))
YANG_METRICS = ("mae", "psnr", "ssim", "ssim_hg")
EXTRA_COLUMNS = (("saturated_pct", "sCT <= -990 HU in body (%)", 1), ("mae_air", "MAE air (HU)", 1),
                 ("mae_soft_tissue", "MAE soft tissue (HU)", 1), ("mi_mr_ct", "MI(MR, CT) (nats)", 3))
METRIC_INFO = {key: (label, sign, decimals) for key, label, sign, decimals in METRICS}
UNITS = {"mae": " HU", "mae_bone": " HU", "psnr": " dB", "mi_mr_sct": " nats"}


@dataclass(frozen=True)
class Setting:
    """The data setting of one anatomy: phantom geometry, slicing plane and network canvas (shared by all variants)."""

    anatomy: str
    paper: str                     # whose setting it mirrors
    plane: str
    shape: tuple                   # phantom voxels (x, y, z)
    spacing: tuple                 # phantom voxel size mm (x, y, z)
    image_size: tuple              # network canvas (rows, columns)
    augment_pad: tuple             # pad to this, then random-crop image_size (Yang's augmentation)
    pixel_spacing_mm: tuple        # in-plane pixel size of the canvas (so the anatomy has one scale everywhere)
    train_subjects: int            # of which validation_fraction are held out by the trainer for validation
    test_subjects: int
    validation_fraction: float = 0.1

    @property
    def pbs_max_shift(self) -> int:
        """Yang's +-5 mm of PBS shift in slices of this setting (at least 1, at most eq. 10's border of 5)."""
        thickness = {"sagittal": self.spacing[0], "coronal": self.spacing[1], "axial": self.spacing[2]}[self.plane]
        return int(min(5, max(1, round(YANG_PBS_SHIFT_MM / thickness))))


@dataclass(frozen=True)
class Network:
    ngf: int
    ndf: int
    n_blocks: int


# default: natural-size anatomy at 2 / 2.5 mm (a skull of 3-4 voxels), canvases of at least 128 pixels a side so
# that the 70x70 PatchGAN judges patches, not the whole image.
# Head: 88x128x128 voxels of 2 mm hold the whole head (170x240x230 mm) unscaled; sagittal slices are 128x128.
# Pelvis: 160x104x96 voxels of 2.5 mm hold the pelvis (400x250x240 mm); coronal slices are 96x160 on 128x160.
# small (quick CPU checks only; degenerate for a GAN): 4 / 5 mm, 64x64 / 48x80 canvases, a one-voxel skull.
# 30 training subjects (27 train + 3 validation) and 15 test subjects, as Yang's 27/3/15 split.
SETTINGS = {
    "default": {
        "head": Setting("head", "Yang 2018 (sagittal)", "sagittal", (88, 128, 128), (2.0, 2.0, 2.0), (128, 128),
                        (136, 136), (2.0, 2.0), 30, 15),
        "pelvis": Setting("pelvis", "Hiasa 2018 (coronal)", "coronal", (160, 104, 96), (2.5, 2.5, 2.5), (128, 160),
                          (136, 168), (2.5, 2.5), 30, 15),
    },
    "small": {
        "head": Setting("head", "Yang 2018 (sagittal)", "sagittal", (48, 64, 64), (4.0, 4.0, 4.0), (64, 64), (72, 72),
                        (4.0, 4.0), 30, 15),
        "pelvis": Setting("pelvis", "Hiasa 2018 (coronal)", "coronal", (80, 56, 48), (5.0, 5.0, 5.0), (48, 80),
                          (56, 88), (5.0, 5.0), 30, 15),
    },
    "paper": {
        "head": Setting("head", "Yang 2018 (sagittal)", "sagittal", (176, 256, 240), (1.0, 1.0, 1.0), (384, 256),
                        (400, 284), (1.0, 1.0), 30, 15),
        "pelvis": Setting("pelvis", "Hiasa 2018 (coronal)", "coronal", (256, 160, 152), (1.6, 1.6, 1.6), (256, 256),
                          (272, 272), (1.6, 1.6), 30, 15),
    },
    "tiny": {
        "head": Setting("head", "Yang 2018 (sagittal)", "sagittal", (24, 32, 32), (8.0, 8.0, 8.0), (32, 32), (36, 36),
                        (8.0, 8.0), 4, 3, 0.25),
        "pelvis": Setting("pelvis", "Hiasa 2018 (coronal)", "coronal", (40, 28, 24), (10.0, 10.0, 10.0), (24, 40),
                          (28, 44), (10.0, 10.0), 4, 3, 0.25),
    },
}
NETWORKS = {"default": Network(32, 64, 6), "small": Network(16, 32, 6), "paper": Network(64, 64, 9),
            "tiny": Network(4, 4, 1)}
PAPER_ITERATIONS = 200_000


@dataclass
class Options:
    out: Path
    budget_minutes: float = 60.0
    iterations: Optional[int] = None
    seeds: tuple = (0,)
    anatomies: tuple = ("head",)
    variants: tuple = VARIANTS
    scale: str = "default"                 # default | small | paper | tiny
    data: Optional[Path] = None            # paired subject folders (<subject>/mr, ct[, mask]) instead of phantoms
    test_fraction: float = 1 / 3           # share of --data subjects held out for testing (Yang: 15 of 45)
    network: Optional[Network] = None
    train_subjects: Optional[int] = None
    test_subjects: Optional[int] = None
    real_data: Optional[Path] = DEFAULT_REAL_DATA
    real_scans: tuple = REAL_SCANS
    report: Optional[Path] = None
    device: str = "auto"
    progress: bool = True
    command: str = ""
    timing_steps: tuple = (3, 5)           # warm-up, timed
    plan_only: bool = False
    threads: Optional[int] = None          # torch CPU threads (None: torch's default)
    stop_after_minutes: Optional[float] = None  # every run this invocation trains stops by then (its model is kept)
    recipe: str = "paper"                  # config.RECIPES: the presets' networks and optimiser, or the fast recipe

    def settings(self) -> list[Setting]:
        chosen = []
        for anatomy in self.anatomies:
            s = SETTINGS[self.scale][anatomy]
            changes = {}
            if self.train_subjects is not None:
                changes["train_subjects"] = self.train_subjects
            if self.test_subjects is not None:
                changes["test_subjects"] = self.test_subjects
            chosen.append(Setting(**{**asdict(s), **changes}) if changes else s)
        return chosen

    def net(self) -> Network:
        return self.network or NETWORKS[self.scale]

    @property
    def report_path(self) -> Path:
        return self.report or self.out / "RESULTS.md"


def preset_of(variant: str) -> tuple[str, dict]:
    """The engine preset a variant starts from and its loss-weight overrides (none for the five papers' variants)."""
    return VARIANT_PRESETS.get(variant, (variant, {}))


def training_config(variant: str, setting: Setting, net: Network, iterations: int, seed: int, recipe: str = "paper"):
    """The preset ``variant`` in the benchmark's common data setting; only losses and sampling stay the preset's.

    PBS uses Yang's shift in millimetres (``Setting.pbs_max_shift``); validation runs 20 times per run so that
    convergence can be read from the curve. A recipe other than "paper" brings its own generator (``net`` then gives
    the discriminator width only)."""
    from ..config import preset

    name, losses = preset_of(variant)
    every = max(1, min(1000, iterations // 10))
    losses = {"lambda_supervised": 0.0, **losses}
    widths = asdict(net) if recipe == "paper" else {"ndf": net.ndf}
    return preset(name, recipe=recipe, plane=setting.plane, image_size=setting.image_size, augment_pad=setting.augment_pad,
                  pixel_spacing_mm=setting.pixel_spacing_mm, ct_window=CT_WINDOW_YANG, mr_window=MR_WINDOW_YANG,
                  mr_scaling=MR_SCALING[setting.anatomy], mr_percentile=99.5,
                  mr_percentile_value=MR_PERCENTILE_VALUE_YANG, **widths, iterations=iterations, seed=seed, pbs_max_shift=setting.pbs_max_shift,
                  validation_fraction=setting.validation_fraction, checkpoint_every=every, preview_every=every,
                  validate_every=max(1, min(1000, iterations // 20)), log_every=max(1, min(25, every)), **losses)


def overrides_of(variant: str, config) -> dict:
    """Fields where the benchmark's configuration differs from the preset (what the report must declare)."""
    from ..config import preset

    name, losses = preset_of(variant)
    base, used = preset(name, **losses).to_dict(), config.to_dict()
    skip = {"iterations", "seed", "checkpoint_every", "preview_every", "validate_every", "log_every", "ngf", "ndf",
            "n_blocks", "image_size", "augment_pad", "pixel_spacing_mm", "validation_fraction"}
    return {k: (base[k], used[k]) for k in used if k not in skip and base[k] != used[k]}
