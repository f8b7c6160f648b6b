"""Training the segmentation U-Net on labelled CT volumes (Hiasa et al. 2018, sec. 3.2).

Each labelled CT gives the CT-domain channel ("sct": at inference it is G_CT(MR)) and, through the synthesis model's
G_MR, the MR-domain channel ("mr": at inference the real MR). Channel modes: "mr+sct" (the paper's two-channel
input), "sct" and "mr". Loss: cross-entropy + soft Dice (``losses.dice_ce_loss``); Adam, learning rate 1e-4 (the
paper; 1e5 iterations). Augmentation: random crop of the network canvas from a padded canvas, random left-right flip
(coronal and axial planes only: a sagittal slice has no left-right axis), random intensity scale/shift per channel
(background stays at -1). Validation: Dice per structure on held-out whole volumes.

A run folder holds config.json, events.jsonl (the JSON-lines protocol of MRtoCTSynthesisLib.events), losses.csv,
preview.png, checkpoint.pt (atomic; ``--resume`` continues a killed run exactly) and, at the end,
model.mrtoct-seg.safetensors.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from MRtoCTSynthesisLib import __version__
from MRtoCTSynthesisLib.atomic import write_atomically
from MRtoCTSynthesisLib.config import preset
from MRtoCTSynthesisLib.dataset import DatasetError, check_modality, find_volumes, volume_stem
from MRtoCTSynthesisLib.events import EventWriter
from MRtoCTSynthesisLib.losslog import append_row, truncate_rows
from MRtoCTSynthesisLib.metrics import dice
from MRtoCTSynthesisLib.modelfile import sha256_of
from MRtoCTSynthesisLib.preprocessing import Normalization, normalization_from_metadata
from MRtoCTSynthesisLib.synthesis import load_bundle, pick_device
from MRtoCTSynthesisLib.train import split_validation
from MRtoCTSynthesisLib import volumes as V

from . import data as D
from .labels import LabelTable, load_label_table, read_source_names
from .losses import dice_ce_loss
from .modelfile import SUFFIX, channel_names, save_seg_model
from .translate import synthesize_mr
from .unet import MULTIPLE, NORMS, UNet2D

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
MODEL = "model" + SUFFIX


@dataclass
class SegTrainConfig:
    """Every setting of a segmentation run (recorded in config.json and the model file). Units: mm, HU."""

    channels: str = "mr+sct"                 # mr+sct (Hiasa) | sct | mr
    table: object = "pelvis"                 # built-in name, JSON path, or the table's JSON object
    plane: str = "coronal"
    image_size: tuple = (256, 256)           # network canvas H x W (multiples of 16)
    augment_pad: Optional[tuple] = (288, 288)  # pad to this, then random-crop image_size (None: no crop)
    pixel_spacing_mm: Optional[tuple] = None  # None: fit the slice to the canvas keeping the aspect ratio
    ct_window: Optional[tuple] = None         # None: the synthesis model's CT window
    base: int = 64                           # U-Net width (Ronneberger: 64)
    norm: str = "batch"
    dropout: float = 0.0
    lr: float = 1e-4                         # Hiasa: Adam, 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    iterations: int = 100_000                # Hiasa: 1e5
    batch_size: int = 4
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    flip: bool = True                        # random left-right flips (coronal/axial planes)
    intensity_scale: float = 0.1             # x -> (x + 1) * U(1 - s, 1 + s) + U(-t, t) on the body, -1 outside
    intensity_shift: float = 0.1
    validation_fraction: float = 0.1
    seed: int = 0
    checkpoint_every: int = 1000
    validate_every: int = 1000
    preview_every: int = 1000
    log_every: int = 10

    def __post_init__(self) -> None:
        for key in ("image_size", "augment_pad", "pixel_spacing_mm", "ct_window"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, tuple(float(v) if key in ("pixel_spacing_mm", "ct_window") else int(v)
                                         for v in value))
        self.validate()

    def validate(self) -> None:
        problems = []
        try:
            channel_names(self.channels)
        except ValueError as error:
            problems.append(str(error))
        if self.plane not in V.PLANES:
            problems.append(f"plane {self.plane!r} is not one of {V.PLANES}")
        if len(self.image_size) != 2 or any(v < MULTIPLE or v % MULTIPLE for v in self.image_size):
            problems.append(f"image_size {self.image_size} must be two multiples of {MULTIPLE}")
        if self.augment_pad is not None and (any(p < s for p, s in zip(self.augment_pad, self.image_size))
                                             or any(p % MULTIPLE for p in self.augment_pad)):
            problems.append(f"augment_pad {self.augment_pad} must be multiples of {MULTIPLE} >= image_size")
        if self.norm not in NORMS:
            problems.append(f"norm {self.norm!r} is not one of {NORMS}")
        if self.iterations < 1 or self.batch_size < 1 or self.base < 1:
            problems.append("iterations, batch_size and base must be >= 1")
        if self.lr <= 0 or self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight == 0:
            problems.append("lr must be > 0 and the loss weights >= 0, not both 0")
        if self.ct_window is not None and not self.ct_window[1] > self.ct_window[0]:
            problems.append("ct_window needs high > low")
        if problems:
            raise ValueError("invalid segmentation training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "SegTrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown segmentation configuration keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def make_normalization(config: SegTrainConfig, synthesis_metadata: Optional[dict]) -> Normalization:
    """The segmentation inputs' normalisation: MR scaling and windows of the synthesis model (so real MR at inference
    looks like G_MR's output in training), the CT window of the config or the synthesis model; plane and canvas of
    the config. Without a synthesis model: yang2018's, but with the body-percentile MR scaling, a rule for any
    anatomy (the white-matter peak needs a head; the label tables also cover the pelvis)."""
    base = (normalization_from_metadata(synthesis_metadata) if synthesis_metadata is not None
            else Normalization.from_config(preset("yang2018", mr_scaling="percentile")))
    return dataclasses.replace(base, plane=config.plane, image_size=tuple(config.image_size),
                               ct_window=tuple(config.ct_window or base.ct_window),
                               pixel_spacing_mm=config.pixel_spacing_mm)


# ------------------------------------------------------------------------------------------- the trainer

class SegTrainer:
    """Owns the U-Net, optimiser and RNG of one run; ``run()`` trains to the end and writes the model file."""

    def __init__(self, config: SegTrainConfig, table: LabelTable, norm: Normalization, train: list, validation: list,
                 run_dir: Path, device: torch.device, echo_events: bool = False, show_progress: bool = True,
                 synthesis_info: Optional[dict] = None, data_summary: Optional[dict] = None) -> None:
        if not train:
            raise DatasetError("no training volumes")
        self.config, self.table, self.norm = config, table, norm
        self.train_volumes, self.validation = train, validation
        self.run_dir, self.device = Path(run_dir), device
        self.events = EventWriter(self.run_dir, echo=echo_events)
        self.show_progress = show_progress
        self.synthesis_info, self.data_summary = synthesis_info, data_summary or {}
        torch.manual_seed(config.seed)
        self.net = UNet2D(len(channel_names(config.channels)), table.n_classes, config.base, config.norm,
                          config.dropout).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
        self.rng = np.random.default_rng(config.seed)
        self.iteration = 0
        self.last_validation: dict = {}
        self.index = np.array([(v, s) for v, volume in enumerate(train) for s in range(len(volume.labels))])
        flip_axis = {"coronal": True, "axial": True, "sagittal": False}[config.plane]
        self.flip = config.flip and flip_axis

    # ------------------------------------------------------------------------------------------- batches

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        picks = self.index[self.rng.integers(0, len(self.index), c.batch_size)]
        h, w = c.image_size
        images, labels = [], []
        for v, s in picks:
            volume = self.train_volumes[v]
            image, label = volume.images[s].astype(np.float32), volume.labels[s]
            top = int(self.rng.integers(0, image.shape[-2] - h + 1))
            left = int(self.rng.integers(0, image.shape[-1] - w + 1))
            image, label = image[:, top:top + h, left:left + w], label[top:top + h, left:left + w]
            if self.flip and self.rng.random() < 0.5:
                image, label = image[..., ::-1], label[..., ::-1]
            if c.intensity_scale or c.intensity_shift:
                scale = 1 + self.rng.uniform(-c.intensity_scale, c.intensity_scale, (len(image), 1, 1))
                shift = self.rng.uniform(-c.intensity_shift, c.intensity_shift, (len(image), 1, 1))
                body = image > -1 + 1e-3
                image = np.where(body, np.clip((image + 1) * scale + shift - 1, -1, 1), image)
            images.append(np.ascontiguousarray(image, dtype=np.float32))
            labels.append(np.ascontiguousarray(label, dtype=np.int64))
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        self.net.train()
        logits = self.net(images.to(self.device))
        loss, terms = dice_ce_loss(logits, labels.to(self.device), self.config.ce_weight, self.config.dice_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), **terms}

    # ------------------------------------------------------------------------------------------- the loop

    def run(self) -> Path:
        c = self.config
        self.events.emit("start", iteration=self.iteration + 1, iterations=c.iterations, config=c.to_dict(),
                         device=str(self.device), world_size=1, resumed=self.iteration > 0, task="segmentation")
        began, seconds_per_iteration, last = time.time(), 0.0, time.time()
        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not self.show_progress, unit="it",
                   dynamic_ncols=True)
        try:
            while self.iteration < c.iterations:
                values = self.train_step(*self.batch())
                self.iteration += 1
                now = time.time()
                step, last = now - last, now
                seconds_per_iteration = step if seconds_per_iteration == 0 else 0.9 * seconds_per_iteration + 0.1 * step
                bar.update(1)
                it, final = self.iteration, self.iteration == c.iterations
                if it % c.log_every == 0 or final or it == 1:
                    lr = self.optimizer.param_groups[0]["lr"]
                    self._append_losses({"iteration": it, **values, "lr": lr, "seconds": seconds_per_iteration})
                    self.events.emit("iteration", iteration=it, iterations=c.iterations, losses=values, lr=lr,
                                     seconds_per_iteration=seconds_per_iteration,
                                     eta_seconds=seconds_per_iteration * (c.iterations - it))
                    bar.set_postfix({k: f"{values[k]:.3f}" for k in ("loss", "ce", "dice")})
                if it % c.validate_every == 0 or final:
                    self.validate()
                if it % c.preview_every == 0 or final:
                    self.write_preview()
                if it % c.checkpoint_every == 0 or final:
                    self.save_checkpoint()
            model = self.finish(time.time() - began)
        except Exception as error:
            self.events.emit("error", message=str(error), traceback=traceback.format_exc())
            raise
        finally:
            bar.close()
        return model

    def _append_losses(self, row: dict) -> None:
        append_row(self.run_dir / "losses.csv", row)

    # ------------------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(N, C, H, W) canvas slices -> (N, H, W) uint8 labels (argmax), eval mode."""
        self.net.eval()
        out = np.empty((len(images),) + images.shape[-2:], np.uint8)
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size].astype(np.float32)).to(self.device)
            out[start:start + batch_size] = self.net(x).argmax(dim=1).cpu().numpy()
        return out

    def validate(self) -> dict:
        """Dice per structure on the held-out volumes (their training-domain channels), mean over volumes."""
        if not self.validation:
            return {}
        per_volume = []
        for volume in self.validation:
            scores = dice(self.predict(volume.images).astype(np.int64), volume.labels.astype(np.int64),
                          [s.value for s in self.table.structures])
            per_volume.append([scores[s.value] for s in self.table.structures])
        with np.errstate(all="ignore"):
            means = np.nanmean(np.array(per_volume, dtype=float), axis=0)
        metrics = {f"dice_{s.name}": float(m) for s, m in zip(self.table.structures, means)}
        metrics["mean_dice"] = float(np.nanmean(means)) if np.isfinite(means).any() else float("nan")
        self.last_validation = metrics
        self.events.emit("validation", iteration=self.iteration, metrics=metrics)
        return metrics

    def write_preview(self) -> Optional[Path]:
        from MRtoCTSynthesisLib.figures import Panel, save_panel_grid

        source = (self.validation or self.train_volumes)[0]
        s = len(source.labels) // 2
        images = source.images[s:s + 1]
        prediction = self.predict(images)[0]
        n = self.table.n_classes - 1
        row = [Panel(images[0, c].astype(np.float32), name, -1, 1) for c, name in
               enumerate(channel_names(self.config.channels))]
        row += [Panel(source.labels[s], "reference", 0, n, "tab20"), Panel(prediction, "prediction", 0, n, "tab20")]
        path = save_panel_grid([row], self.run_dir / "preview.png", suptitle=f"iteration {self.iteration}")
        self.events.emit("preview", iteration=self.iteration, path=path)
        return path

    # ------------------------------------------------------------------------------------------- checkpoints

    def state(self) -> dict:
        return {"iteration": self.iteration, "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": json.dumps(self.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                "config": json.dumps(self.config.to_dict())}

    def save_checkpoint(self) -> Path:
        path = write_atomically(self.run_dir / CHECKPOINT, lambda temp: torch.save(self.state(), temp))
        self.events.emit("checkpoint", iteration=self.iteration, path=path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.iteration = int(state["iteration"])
        truncate_rows(self.run_dir / "losses.csv", self.iteration)

    # ------------------------------------------------------------------------------------------- the model

    def model_metadata(self, seconds: float) -> dict:
        c = self.config
        return {"name": self.run_dir.name, "description": f"2D U-Net ({c.channels}) trained on labelled CT "
                                                          f"(Hiasa 2018 sec. 3.2), {self.table.name} structures",
                "license": "as permitted by the training data (trained locally)",
                "intended_use": "Research use only. Not for clinical use.",
                "network": {"architecture": "unet2d",
                            "kwargs": {"in_channels": len(channel_names(c.channels)),
                                       "n_classes": self.table.n_classes, "base": c.base, "norm": c.norm,
                                       "dropout": c.dropout}},
                "channels": c.channels, "label_table": self.table.to_json(), "normalization": self.norm.to_json(),
                "synthesis_model": self.synthesis_info,
                "training": {**self.data_summary, "iterations": self.iteration, "seconds": round(seconds, 1),
                             "config": {k: v for k, v in c.to_dict().items() if k != "table"},
                             "engine_version": __version__},
                "validation_metrics": self.last_validation}

    def finish(self, seconds: float) -> Path:
        model = save_seg_model(self.run_dir / MODEL, self.model_metadata(seconds), self.net)
        self.events.emit("finished", iteration=self.iteration, model=model, seconds=seconds)
        return model


# ------------------------------------------------------------------------------------------- building a run

def find_label_names(labels_folder: Path, explicit: Optional[Path]) -> Optional[dict]:
    """Source label names: the given file, else a labels.json in the labels folder or beside it (phantom layout)."""
    if explicit is not None:
        return read_source_names(explicit)
    for candidate in (labels_folder / "labels.json", labels_folder.parent / "labels.json"):
        if candidate.is_file():
            log.info("label names from %s", candidate)
            return read_source_names(candidate)
    return None


def pair_labels(ct_paths: Sequence[Path], labels_folder: Path) -> list:
    labels = {volume_stem(p): p for p in find_volumes(labels_folder, "label")}
    missing = [p.name for p in ct_paths if volume_stem(p) not in labels]
    if missing:
        raise DatasetError(f"no label map in {labels_folder} for CT volumes {missing[:5]} (label maps need the CT's "
                           "file name)")
    return [labels[volume_stem(p)] for p in ct_paths]


def build_seg_trainer(config: SegTrainConfig, ct_folder, labels_folder, synthesis_model, run_dir, device: str = "auto",
                      label_names=None, cache_dir=None, resume: bool = False, echo_events: bool = False,
                      show_progress: bool = True) -> SegTrainer:
    """Check the data, make the channels (G_MR of every CT, cached), prepare the run folder, return the trainer."""
    run_dir = Path(run_dir)
    recorded = run_dir / "config.json"
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            raise ValueError(f"nothing to resume in {run_dir}: no {CHECKPOINT}; start a new run without --resume")
        config = SegTrainConfig.from_dict(json.loads(recorded.read_text(encoding="utf-8")))
    elif (run_dir / CHECKPOINT).exists() or (run_dir / MODEL).exists():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    torch_device = pick_device(device)
    table = load_label_table(config.table)
    channels = channel_names(config.channels)
    bundle = None
    if synthesis_model is not None:
        bundle = load_bundle(synthesis_model)
    elif "mr" in channels:
        raise ValueError(f"channels {config.channels!r} need a synthesis model (its G_MR makes the MR channel from "
                         "the CT); pass --synthesis-model")
    norm = make_normalization(config, bundle.metadata if bundle is not None else None)
    ct_paths = find_volumes(ct_folder, "CT")
    label_paths = pair_labels(ct_paths, Path(labels_folder))
    source_names = find_label_names(Path(labels_folder), Path(label_names) if label_names else None)
    if source_names is not None and table.source_mapping is None:
        raise ValueError(f"label names were given/found but label table {table.name!r} has no source_mapping")
    cache = Path(cache_dir) if cache_dir else run_dir / "cache"
    canvas = config.augment_pad or config.image_size
    synthesis_key = None
    if bundle is not None:
        synthesis_key = sha256_of(bundle.path) if bundle.path is not None else bundle.metadata["name"]
    volumes = []
    for ct_path, label_path in zip(ct_paths, label_paths):
        name = volume_stem(ct_path)
        key = D.cache_key({"ct": D.file_key(ct_path), "labels": D.file_key(label_path), "norm": norm.to_json(),
                           "channels": channels, "canvas": canvas, "table": table.to_json(),
                           "names": source_names, "synthesis": synthesis_key if "mr" in channels else None})
        volume = D.load_cached(cache, name, key)
        if volume is None:
            ct = V.read_volume(ct_path)
            check_modality(V.array_of(ct), "ct", ct_path)
            labels = V.read_volume(label_path)
            labels = (table.map_image(labels, source_names) if source_names is not None
                      else _table_values(labels, table, label_path))
            images = {"sct": ct}
            if "mr" in channels:
                images["mr"] = synthesize_mr(ct, bundle, device=str(torch_device))
            volume = D.make_volume(name, images, labels, channels, norm, canvas)
            D.store_cached(cache, volume, key)
            log.info("prepared %s: %d slices", name, len(volume.labels))
        volumes.append(volume)
    train_ids, val_ids = split_validation(list(range(len(volumes))), config.validation_fraction, config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.part"):
        stale.unlink()
    if not resume:
        text = json.dumps(config.to_dict(), indent=2)
        write_atomically(recorded, lambda temp: temp.write_text(text, encoding="utf-8"))
    synthesis_info = None
    if bundle is not None:
        synthesis_info = {"name": bundle.metadata["name"],
                          "sha256": sha256_of(bundle.path) if bundle.path is not None else None}
    summary = {"ct_volumes": len(train_ids), "validation_volumes": len(val_ids),
               "slices": int(sum(len(volumes[i].labels) for i in train_ids)), "label_table": table.name}
    trainer = SegTrainer(config, table, norm, [volumes[i] for i in train_ids], [volumes[i] for i in val_ids], run_dir,
                         torch_device, echo_events, show_progress, synthesis_info, summary)
    if resume:
        trainer.load_checkpoint(run_dir / CHECKPOINT)
    return trainer


def _table_values(labels, table: LabelTable, path) -> object:
    import SimpleITK as sitk

    table.check_label_values(sitk.GetArrayViewFromImage(labels), str(path))
    return sitk.Cast(labels, sitk.sitkUInt8 if table.n_classes <= 256 else sitk.sitkUInt16)


# ------------------------------------------------------------------------------------------- command line

_TUPLES = {"image_size": int, "augment_pad": int, "pixel_spacing_mm": float, "ct_window": float}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, help="folder of labelled CT volumes (HU)")
    parser.add_argument("--labels", required=True, help="folder of label maps named like the CTs")
    parser.add_argument("--synthesis-model", help="synthesis model (file, catalog or local name) whose G_MR makes "
                                                  "the MR channel; needed for --channels mr and mr+sct")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, events, the model)")
    parser.add_argument("--label-names", help="JSON of the label maps' values -> names, mapped through the table's "
                                              "source_mapping (default: labels.json in or beside --labels, if any)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--cache", help="folder for prepared subjects (default <out>/cache)")
    parser.add_argument("--events-stdout", action="store_true", help="also print events as JSON lines on stdout")
    parser.add_argument("--no-progress", action="store_true")
    group = parser.add_argument_group("settings (default: SegTrainConfig's)")
    defaults = SegTrainConfig()
    for f in dataclasses.fields(SegTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in _TUPLES:
            group.add_argument(flag, dest=f.name, type=_TUPLES[f.name], nargs=2, default=None)
        elif f.name == "channels":
            group.add_argument(flag, dest=f.name, choices=["mr+sct", "sct", "mr"], default=None,
                               help="input channels (default mr+sct, Hiasa's)")
        elif f.name == "table":
            group.add_argument(flag, dest=f.name, default=None, help="label table: head, pelvis or a JSON file")
        elif isinstance(getattr(defaults, f.name), bool):
            group.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=None)
        else:
            group.add_argument(flag, dest=f.name, type=type(getattr(defaults, f.name)), default=None)


def config_from_args(args: argparse.Namespace) -> SegTrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SegTrainConfig)
              if getattr(args, f.name, None) is not None}
    return SegTrainConfig.from_dict(values)


def run_from_args(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = build_seg_trainer(config_from_args(args), args.ct, args.labels, args.synthesis_model, args.out,
                                args.device, args.label_names, args.cache, args.resume, args.events_stdout,
                                not args.no_progress)
    model = trainer.run()
    print(f"segmentation model written: {model}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MRtoCTSegmentLib.train", description=__doc__.split("\n")[0])
    add_train_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
