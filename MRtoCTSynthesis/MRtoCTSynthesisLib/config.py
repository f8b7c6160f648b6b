"""Training presets: every hyperparameter of the papers' variants, documented, overridable and recorded.

Presets (Yang et al. 2018 = structure-constrained CycleGAN; Hiasa et al. 2018 = gradient-consistency CycleGAN):

* ``cyclegan``      conventional CycleGAN (Zhu 2017 / Wolterink 2017): LSGAN + cycle L1 (lambda 10), random slices,
                    in Yang's data setting (sagittal, 384x256, CT [-1000, 3500] HU, MR [0, 3500]).
* ``cyclegan-pbs``  the same with Yang's position-based selection (eq. 10).
* ``yang2018``      structure-constrained: + MIND structure-consistency loss (lambda2 = 5; 9x9 region, 7x7 Gaussian
                    patch, sigma 2), PBS.
* ``hiasa2018``     gradient consistency: lambda_cycle = 3, lambda_GC = 0.3 (GC of absolute gradients, central
                    differences, as the authors' code), CT [-150, 350] HU and MR [0, 100] (Hiasa maps both to
                    [0, 255]; the networks see [-1, 1]), coronal 256x256.
* ``paired``        the CycleGAN fed registered paired slices (Yang's "cycleGAN (paired)" upper bound); an extra
                    supervised L1 to the paired CT is a separate switch (``lambda_supervised``), 0 by default.

MR preprocessing. Every preset N4-corrects the MR (both papers: "All MR volumes are N4 corrected", Yang 3.1; "N4ITK
... was applied to all MRI volumes", Hiasa Fig. 1); ``n4=False`` turns it off. Yang's data section, which all
his compared methods (cycleGAN, PBS, paired) share, normalises "by aligning the white matter peak identified by
fuzzy C-means": the Yang-setting presets use ``mr_scaling="wm_peak"`` with the peak at 2000 (Yang gives no value;
2000 puts white matter at 4/7 of the window [0, 3500], leaving room for fat, which is brighter in T1). Hiasa maps
MR [0, 100] to [0, 255] in their scanner's units and says nothing more; a window is chosen to span the data, so
[0, 100] is read as [background, top of the body's intensities]: the body's 99.5th percentile (its robust
maximum: the brightest 0.5 %, vessels and fat highlights, saturate) becomes 100.

Supervised only (no GAN, no cycle; the diagnostic upper bound of the quality benchmark): the ``paired`` preset with
``lambda_adversarial=0, lambda_cycle=0, lambda_supervised=1`` trains G_CT alone with L1(G_CT(MR), CT).

All presets: Adam (lr 2e-4, beta1 0.5), learning rate constant for the first half of the iterations and decaying
linearly to 0 over the second half (Hiasa sec. 2.2; the CycleGAN default), batch 1, image pool of 50.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

PRESET_NAMES = ("cyclegan", "cyclegan-pbs", "yang2018", "hiasa2018", "paired")
SAMPLING_MODES = ("random", "pbs", "paired")
MR_SCALINGS = ("wm_peak", "percentile", "none")    # preprocessing.MR_SCALINGS (kept here: no torch import)
PRECISIONS = ("auto", "bfloat16", "float16", "float32")   # acceleration.py applies them (kept here: no torch import)


def are_extra_planes(extra: Any, plane: str) -> bool:
    """``extra`` names slicing planes other than ``plane``, each once (TrainConfig.extra_planes, model files)."""
    others = {"sagittal", "coronal", "axial"} - {plane}
    return set(extra) <= others and len(set(extra)) == len(extra)
GC_OPERATORS = ("central", "sobel", "prewitt")     # losses.GRADIENT_OPERATORS
GENERATOR_KINDS = ("resnet", "unet")               # networks.GENERATORS
GENERATOR_NORMS = ("instance", "batch", "none")    # unet.NORMS


@dataclass
class TrainConfig:
    """One complete training configuration. Units: mm, HU, iterations."""

    preset: str = "cyclegan"
    recipe: str = "paper"                         # paper (the presets as published) | fast (RECIPES, issue 22)
    description: str = ""
    # --- data (Yang sec. 3.1 unless a preset says otherwise)
    plane: str = "sagittal"                       # slicing plane of the 2D networks
    extra_planes: tuple = ()                      # more planes whose slices train the same network; synthesis
                                                  # runs it along every plane and averages the HU (issue 21)
    image_size: tuple = (384, 256)                # network canvas H x W
    augment_pad: Optional[tuple] = (400, 284)     # pad to this then random-crop image_size (None: no augmentation)
    pixel_spacing_mm: Optional[tuple] = None      # None: resize to fit the canvas keeping the aspect ratio (Yang)
    ct_window: tuple = (-1000.0, 3500.0)          # HU mapped to [-1, 1]
    mr_window: tuple = (0.0, 3500.0)              # MR units (after normalisation) mapped to [-1, 1]
    mr_scaling: str = "percentile"                # MR reference: wm_peak | percentile | none (see preprocessing)
    mr_percentile: Optional[float] = 99.5         # "percentile": this percentile in the body ...
    mr_percentile_value: float = 3000.0           # ... becomes this value (MR scans have no standard unit)
    mr_wm_peak_value: float = 2000.0              # "wm_peak": Yang's FCM white-matter peak becomes this value
    n4: bool = False                              # N4 bias correction of MR before normalisation (presets: on)
    n4_shrink: int = 4                            # N4 is fitted on the MR shrunk by this factor per axis
    n4_iterations: tuple = (50, 50, 30, 20)       # N4 iterations per fitting level
    sampling: str = "random"                      # random | pbs | paired
    pbs_max_shift: int = 5                        # m in [-5, 5] of eq. 10
    validation_fraction: float = 0.1              # share of volumes (not slices) held out
    validation_pairs: bool = False                # unpaired sampling on folders of registered pairs (phantoms): hold
                                                  # out the same subjects in both domains, so validation scores MAE
    # --- losses
    lambda_adversarial: float = 1.0               # weight of the two LSGAN generator terms (0: no discriminators)
    lambda_cycle: float = 10.0
    lambda_structure: float = 0.0                 # Yang lambda2 (MIND structure consistency)
    lambda_gc: float = 0.0                        # Hiasa lambda_GC (gradient consistency)
    gc_operator: str = "central"                  # GC gradient kernel: central [-1, 0, 1] | sobel | prewitt
    lambda_identity: float = 0.0
    lambda_supervised: float = 0.0                # L1 to the paired CT (paired preset only)
    supervised_both: bool = False                 # supervised only: also train G_MR with L1(G_MR(CT), MR) (warm starts)
    mind_region: int = 9
    mind_patch: int = 7
    mind_sigma: float = 2.0
    # --- networks
    generator: str = "resnet"                     # resnet (the papers') | unet (recipe study, issue 22)
    generator_norm: str = "instance"              # unet only: instance | batch | none
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    d_layers: int = 3
    # --- optimisation
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    iterations: int = 200_000
    decay_start: Optional[int] = None             # None: half of the iterations
    batch_size: int = 1
    pool_size: int = 50
    seed: int = 0
    precision: str = "auto"                       # auto | bfloat16 | float16 | float32 (acceleration.resolve_plan)
    init_from: str = ""                           # warm start: a model file whose networks start the run (train.py)
    d_warmup: int = 0                             # the first iterations train the discriminators alone (generators
                                                  # frozen): a warm-started GAN then meets a trained critic
    # --- bookkeeping
    checkpoint_every: int = 1000
    preview_every: int = 500
    validate_every: int = 1000
    log_every: int = 10
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)
        self.augment_pad = None if self.augment_pad is None else tuple(int(v) for v in self.augment_pad)
        self.pixel_spacing_mm = None if self.pixel_spacing_mm is None else tuple(float(v) for v in self.pixel_spacing_mm)
        self.ct_window = tuple(float(v) for v in self.ct_window)
        self.mr_window = tuple(float(v) for v in self.mr_window)
        self.n4_iterations = tuple(int(v) for v in self.n4_iterations)
        self.extra_planes = tuple(str(v) for v in self.extra_planes)
        self.validate()

    @property
    def lr_decay_start(self) -> int:
        return self.iterations // 2 if self.decay_start is None else self.decay_start

    @property
    def supervised_only(self) -> bool:
        """Only the supervised L1 trains: G_CT alone, no discriminators, no G_MR updates."""
        return not any((self.lambda_adversarial, self.lambda_cycle, self.lambda_structure, self.lambda_gc,
                        self.lambda_identity))

    def validate(self) -> None:
        problems = []
        if self.plane not in ("sagittal", "coronal", "axial"):
            problems.append(f"plane {self.plane!r} is not sagittal, coronal or axial")
        if not are_extra_planes(self.extra_planes, self.plane):
            problems.append(f"extra_planes {self.extra_planes} must be other planes than {self.plane!r} (sagittal, "
                            "coronal, axial), each once")
        if self.extra_planes and self.sampling == "pbs":
            problems.append("extra_planes needs random or paired sampling: position-based selection (pbs) matches "
                            "slice positions along one plane")
        if self.sampling not in SAMPLING_MODES:
            problems.append(f"sampling {self.sampling!r} is not one of {SAMPLING_MODES}")
        if self.recipe not in RECIPES:
            problems.append(f"recipe {self.recipe!r} is not one of {tuple(RECIPES)}")
        if self.generator not in GENERATOR_KINDS:
            problems.append(f"generator {self.generator!r} is not one of {GENERATOR_KINDS}")
        if self.generator_norm not in GENERATOR_NORMS:
            problems.append(f"generator_norm {self.generator_norm!r} is not one of {GENERATOR_NORMS}")
        if self.generator == "unet" and any(v % 16 for v in self.image_size):
            problems.append(f"image_size {self.image_size} must be multiples of 16 for the U-Net (four poolings)")
        elif any(v % 4 for v in self.image_size):
            problems.append(f"image_size {self.image_size} must be multiples of 4 (two stride-2 convolutions)")
        if self.augment_pad is not None and any(p < s for p, s in zip(self.augment_pad, self.image_size)):
            problems.append(f"augment_pad {self.augment_pad} must be at least image_size {self.image_size}")
        if self.mr_scaling not in MR_SCALINGS:
            problems.append(f"mr_scaling {self.mr_scaling!r} is not one of {MR_SCALINGS}")
        if self.mr_scaling == "percentile" and self.mr_percentile is None:
            problems.append("mr_scaling 'percentile' needs mr_percentile (or choose mr_scaling 'none')")
        if self.gc_operator not in GC_OPERATORS:
            problems.append(f"gc_operator {self.gc_operator!r} is not one of {GC_OPERATORS}")
        if self.n4_shrink < 1 or not self.n4_iterations or min(self.n4_iterations) < 1:
            problems.append("n4_shrink and every n4_iterations level must be >= 1")
        if self.iterations < 1 or self.batch_size < 1:
            problems.append("iterations and batch_size must be >= 1")
        for name in ("checkpoint_every", "preview_every", "validate_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (every N iterations), got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.d_warmup < 0 or (self.d_warmup and (self.supervised_only or self.d_warmup >= self.iterations)):
            problems.append(f"d_warmup {self.d_warmup} must be >= 0, below iterations ({self.iterations}), and 0 "
                            "in supervised-only training (it has no discriminators)")
        if self.lambda_supervised and self.sampling != "paired":
            problems.append("lambda_supervised needs paired sampling (registered MR/CT pairs)")
        for name in ("lambda_adversarial", "lambda_cycle", "lambda_structure", "lambda_gc", "lambda_identity",
                     "lambda_supervised", "lr"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.supervised_both and not self.supervised_only:
            problems.append("supervised_both applies to supervised-only training (every GAN, cycle and structure "
                            "weight 0)")
        if self.supervised_only and not self.lambda_supervised:
            problems.append("with lambda_adversarial, lambda_cycle, lambda_structure, lambda_gc and lambda_identity "
                            "all 0, lambda_supervised must be > 0 (nothing would train the generator)")
        if self.ct_window[1] <= self.ct_window[0] or self.mr_window[1] <= self.mr_window[0]:
            problems.append("intensity windows need high > low")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        if "mr_scaling" not in values and "mr_percentile" in values and values["mr_percentile"] is None:
            values = {**values, "mr_scaling": "none"}  # a config.json from before mr_scaling: null meant no scaling
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **overrides})


_YANG_DATA = dict(plane="sagittal", image_size=(384, 256), augment_pad=(400, 284),
                  ct_window=(-1000.0, 3500.0), mr_window=(0.0, 3500.0), n4=True, mr_scaling="wm_peak",
                  mr_wm_peak_value=2000.0)

PRESETS: dict[str, dict] = {
    "cyclegan": dict(_YANG_DATA, description="Conventional CycleGAN (LSGAN, cycle L1 x10), random slice selection",
                     sampling="random", lambda_cycle=10.0),
    "cyclegan-pbs": dict(_YANG_DATA, description="CycleGAN with Yang's position-based slice selection (eq. 10)",
                         sampling="pbs", lambda_cycle=10.0),
    "yang2018": dict(_YANG_DATA, description="Structure-constrained CycleGAN (Yang 2018): MIND loss x5, PBS",
                     sampling="pbs", lambda_cycle=10.0, lambda_structure=5.0),
    "hiasa2018": dict(description="CycleGAN with gradient-consistency loss (Hiasa 2018): cycle x3, GC x0.3",
                      plane="coronal", image_size=(256, 256), augment_pad=(272, 272),
                      ct_window=(-150.0, 350.0), mr_window=(0.0, 100.0), n4=True, mr_scaling="percentile",
                      mr_percentile=99.5, mr_percentile_value=100.0,
                      sampling="random", lambda_cycle=3.0, lambda_gc=0.3),
    "paired": dict(_YANG_DATA, description="CycleGAN on registered paired slices (Yang's upper bound)",
                   sampling="paired", lambda_cycle=10.0),
}

# Recipes: network and optimiser settings put over a preset's (its losses, sampling and data setting stay). "paper"
# changes nothing. "fast" is what learned fastest in the recipe study under one fixed CPU-time budget
# (mrtoct bench recipe; docs/RESULTS.md section 9): a small U-Net generator (4x cheaper per slice on a CPU than the
# ResNet, skip connections that carry the anatomy), batch 4 with Adam lr 1e-3 and beta1 0.9.
RECIPES: dict[str, dict] = {
    "paper": {},
    "fast": dict(generator="unet", ngf=16, batch_size=4, lr=1e-3, beta1=0.9),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with optional overrides (any TrainConfig field). ``recipe`` (an override too) puts the named
    recipe's network and optimiser settings over the preset's; explicit overrides still win."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")
    recipe = overrides.get("recipe", "paper")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {tuple(RECIPES)}")
    return TrainConfig.from_dict({**PRESETS[name], **RECIPES[recipe], "preset": name, **overrides})
