"""The CycleGAN trainer: one process (CPU or one GPU) or several under ``torchrun`` (DistributedDataParallel).

G_CT: MR -> CT and G_MR: CT -> MR are trained against D_CT and D_MR with the loss of the preset
(Yang eq. 9 / Hiasa eq. 6):

    L_G = lambda_adversarial [L_GAN(G_CT, D_CT) + L_GAN(G_MR, D_MR)] + lambda_cycle L_cycle
          + lambda_structure L_structure + lambda_GC L_GC + lambda_identity L_identity
          + lambda_supervised L1(G_CT(MR), CT)   [paired only]

with L_structure = eq. 8 (both directions summed) and L_GC = 1/2 (both directions) of Hiasa eq. 5. Updates alternate:
G (with D fixed), then D (with G fixed) on images drawn from a pool of 50 earlier fakes (Zhu et al.).
With only lambda_supervised > 0 (``TrainConfig.supervised_only``) a step is one L1 update of G_CT (one process).

Run it with ``mrtoct train`` or ``torchrun --nproc_per_node=N -m MRtoCTSynthesisLib.train`` (same arguments).
A run folder holds config.json, events.jsonl, losses.csv, loss_curves.png, preview.png, checkpoint.pt and, at the
end, model.mrtoct.safetensors. ``--resume`` continues a killed run from its last checkpoint exactly, under torchrun too
(with the same number of processes: the checkpoint holds every rank's RNG states and image pools). N processes
draw N x batch_size slices per step and DDP averages their gradients; the learning rate is not scaled.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import pickle
import random
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import __version__
from . import losses as L
from .acceleration import Plan, autocast, resolve_plan, to_layout
from .atomic import write_atomically
from .config import PRESET_NAMES, RECIPES, TrainConfig, preset
from .dataset import SliceCache, SliceDataset, check_folders, paired_slice, volume_stem
from .events import EVENTS_FILE, EventWriter, iter_events
from .figures import Panel, save_loss_curves, save_panel_grid
from .losslog import append_row, read_rows, truncate_rows
from .metrics import mutual_information
from .modelfile import SUFFIX, load_model, range_note, save_model, sha256_of
from .networks import PatchDiscriminator, build_network, generator_spec, init_weights
from .preprocessing import Normalization, normalization_metadata
from .sampling import SlicePair

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BODY_HU = -500.0   # validation's body mask: CT above this (the benchmarks' CT body threshold)
MODEL = "model" + SUFFIX
PREVIEW_SLICES = 3


# ------------------------------------------------------------------------------------------- networks as pairs

class Generators(nn.Module):
    """G_CT (MR -> CT) and G_MR (CT -> MR) in one module, so DDP sees one forward per step."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        spec = generator_spec(config.generator, config.ngf, config.n_blocks, config.generator_norm)
        self.G_CT = init_weights(build_network(spec["architecture"], **spec["kwargs"]))
        self.G_MR = init_weights(build_network(spec["architecture"], **spec["kwargs"]))
        self.identity = config.lambda_identity > 0

    def forward(self, mr: torch.Tensor, ct: torch.Tensor) -> dict:
        fake_ct, fake_mr = self.G_CT(mr), self.G_MR(ct)
        out = {"fake_ct": fake_ct, "fake_mr": fake_mr, "rec_mr": self.G_MR(fake_ct), "rec_ct": self.G_CT(fake_mr)}
        if self.identity:
            out.update(idt_ct=self.G_CT(ct), idt_mr=self.G_MR(mr))
        return out


class Discriminators(nn.Module):
    """D_CT and D_MR; real and fake go through in one batch (instance norm keeps samples independent)."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        kwargs = dict(in_channels=1, ndf=config.ndf, n_layers=config.d_layers)
        self.D_CT = init_weights(PatchDiscriminator(**kwargs))
        self.D_MR = init_weights(PatchDiscriminator(**kwargs))

    def forward(self, ct_real, ct_fake, mr_real, mr_fake):
        d_ct = self.D_CT(torch.cat([ct_real, ct_fake]))
        d_mr = self.D_MR(torch.cat([mr_real, mr_fake]))
        n_ct, n_mr = len(ct_real), len(mr_real)
        return d_ct[:n_ct], d_ct[n_ct:], d_mr[:n_mr], d_mr[n_mr:]


class ImagePool:
    """Zhu et al.'s history of generated images: with probability 1/2 a new fake is swapped for an older one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif rng.random() < 0.5:
                index = int(rng.integers(0, self.size))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out)

    def state(self) -> torch.Tensor:
        return torch.cat(self.images).cpu() if self.images else torch.zeros(0)

    def load(self, stored: torch.Tensor, device: torch.device) -> None:
        self.images = [image[None].to(device) for image in stored]


def linear_decay(iterations: int, decay_start: int):
    """lr factor: 1 until ``decay_start``, then linearly to 0 at ``iterations`` (Hiasa sec. 2.2)."""
    span = max(1, iterations - decay_start)
    return lambda it: 1.0 if it < decay_start else max(0.0, 1.0 - (it - decay_start) / span)


# ------------------------------------------------------------------------------------------- distributed

@dataclasses.dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device: torch.device) -> World:
    """Join the process group when started by torchrun (NCCL on GPUs, gloo on CPUs).

    On GPUs each process first selects its own device (LOCAL_RANK), so NCCL never puts two ranks on GPU 0.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend)
    return World(torch.distributed.get_rank(), size, local_rank)


def resolve_device(name: str, world: Optional[World] = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA was requested but torch sees no GPU; use --device cpu or auto")
        if device.index is None and world is not None:
            device = torch.device("cuda", world.local_rank)
    return device


# ------------------------------------------------------------------------------------------- the trainer

class CycleGANTrainer:
    """Owns the networks, optimisers, pools and RNG of one run; ``run()`` trains to the end and writes the model."""

    def __init__(self, config: TrainConfig, data: SliceDataset, run_dir: os.PathLike, device: torch.device,
                 world: Optional[World] = None, validation: Optional[SliceDataset] = None, echo_events: bool = False,
                 show_progress: bool = True, trace_ranks: bool = False, data_summary: Optional[dict] = None,
                 plan: Optional[Plan] = None) -> None:
        """``plan`` (benchmarks) overrides the one resolved from ``config.precision`` for ``device``."""
        self.config, self.data, self.validation = config, data, validation
        self.run_dir, self.device, self.world = Path(run_dir), device, world or World()
        self.events = EventWriter(self.run_dir, echo=echo_events, enabled=self.world.is_main)
        self.show_progress = show_progress and self.world.is_main
        self.trace_ranks = trace_ranks
        self.data_summary = data_summary or {}
        torch.manual_seed(config.seed)
        self.plan = plan or resolve_plan(device, config.precision, "training", batch_size=config.batch_size)
        layout = torch.channels_last if self.plan.channels_last else torch.contiguous_format
        self.generators = Generators(config).to(device, memory_format=layout)
        self.discriminators = Discriminators(config).to(device, memory_format=layout)
        if self.plan.compile:
            self._compile_networks()
        for note in self.plan.notes:
            log.info(note)
        self.G, self.D = self._distribute(self.generators), self._distribute(self.discriminators)
        betas = (config.beta1, config.beta2)
        self.opt_G = torch.optim.Adam(self.generators.parameters(), lr=config.lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.discriminators.parameters(), lr=config.lr, betas=betas)
        decay = linear_decay(config.iterations, config.lr_decay_start)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, decay)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, decay)
        self.pool_ct, self.pool_mr = ImagePool(config.pool_size), ImagePool(config.pool_size)
        self.rng = np.random.default_rng([config.seed, self.world.rank])
        self.iteration = 0
        self.warm_started: Optional[dict] = None      # the model file this run started from (``warm_start``)
        if config.supervised_only and self.world.size > 1:
            raise ValueError("supervised-only training (all GAN, cycle and structure weights 0) runs in one process; "
                             "start it without torchrun")
        self.preview_pairs = self._preview_pairs()

    def _distribute(self, module: nn.Module) -> nn.Module:
        if self.world.size == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def _autocast(self):
        """The plan's autocast (bf16/fp16 where chosen; the losses are computed in float32 outside it)."""
        return autocast(self.plan)

    def _networks(self) -> list[nn.Module]:
        return [self.generators.G_CT, self.generators.G_MR, self.discriminators.D_CT, self.discriminators.D_MR]

    def _compile_networks(self) -> None:
        """Compile the four networks in place (state_dict keys unchanged, so checkpoints stay interchangeable).

        In one process a forward + backward pass on zeros compiles them now, so that a failure falls back to eager
        mode (with a note) before any weight, pool or random state has changed; the gradients are discarded.
        """
        for net in self._networks():
            net.compile()
        if self.world.size > 1:
            return
        try:
            shape = (self.config.batch_size, 1, *self.config.image_size)
            zeros = to_layout(torch.zeros(shape, device=self.device), self.plan)
            with self._autocast():
                total = sum(net(zeros).float().mean() for net in self._networks())
            total.backward()
        except Exception as error:
            for net in self._networks():
                net._compiled_call_impl = None  # back to the eager forward
            note = f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:160]}); training eagerly"
            log.warning(note)
            self.plan = dataclasses.replace(self.plan, compile=False, notes=(*self.plan.notes, note))
        for net in self._networks():
            net.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------------- one step

    def train_step(self, mr: torch.Tensor, ct: torch.Tensor) -> dict:
        """One G update then one D update; returns the loss terms (unweighted) and totals as floats."""
        c = self.config
        mr, ct = to_layout(mr.to(self.device), self.plan), to_layout(ct.to(self.device), self.plan)
        if c.supervised_only:
            return self._supervised_step(mr, ct)
        if self.iteration < c.d_warmup:
            return self._discriminator_warmup_step(mr, ct)
        self.discriminators.requires_grad_(False)
        with self._autocast():
            out = self.G(mr, ct)
            d_ct_fake = self.discriminators.D_CT(out["fake_ct"])  # plain modules: D is fixed in the G step
            d_mr_fake = self.discriminators.D_MR(out["fake_mr"])
        out = {name: image.float() for name, image in out.items()}  # losses in float32 (a no-op in float32)
        d_ct_fake, d_mr_fake = d_ct_fake.float(), d_mr_fake.float()
        terms = {"G_gan_ct": L.lsgan_generator_loss(d_ct_fake), "G_gan_mr": L.lsgan_generator_loss(d_mr_fake),
                 "cycle": L.cycle_loss(out["rec_mr"], mr) + L.cycle_loss(out["rec_ct"], ct)}
        weighted = c.lambda_adversarial * (terms["G_gan_ct"] + terms["G_gan_mr"]) + c.lambda_cycle * terms["cycle"]
        if c.lambda_structure:
            terms["structure"] = (L.structure_loss(mr, out["fake_ct"], c.mind_region, c.mind_patch, c.mind_sigma)
                                  + L.structure_loss(ct, out["fake_mr"], c.mind_region, c.mind_patch, c.mind_sigma))
            weighted = weighted + c.lambda_structure * terms["structure"]
        if c.lambda_gc:
            terms["gc"] = 0.5 * (L.gradient_consistency_loss(ct, out["fake_mr"], c.gc_operator)
                                 + L.gradient_consistency_loss(mr, out["fake_ct"], c.gc_operator))
            weighted = weighted + c.lambda_gc * terms["gc"]
        if c.lambda_identity:
            terms["identity"] = L.identity_loss(out["idt_ct"], ct) + L.identity_loss(out["idt_mr"], mr)
            weighted = weighted + c.lambda_identity * terms["identity"]
        if c.lambda_supervised:
            terms["supervised"] = L.cycle_loss(out["fake_ct"], ct)  # the same L1, to the registered CT
            weighted = weighted + c.lambda_supervised * terms["supervised"]
        terms["G_total"] = weighted
        self.opt_G.zero_grad(set_to_none=True)
        weighted.backward()
        self.opt_G.step()

        terms.update(self._discriminator_step(mr, ct, out["fake_ct"], out["fake_mr"]))
        self.sched_G.step()
        self.sched_D.step()
        return {name: float(value.detach()) for name, value in terms.items()}

    def _discriminator_step(self, mr: torch.Tensor, ct: torch.Tensor, fake_ct: torch.Tensor,
                            fake_mr: torch.Tensor) -> dict:
        """One update of both discriminators on real slices and pooled fakes; returns their LSGAN losses."""
        self.discriminators.requires_grad_(True)
        fake_ct = self.pool_ct.query(fake_ct, self.rng)
        fake_mr = self.pool_mr.query(fake_mr, self.rng)
        with self._autocast():
            d_ct_real, d_ct_fake, d_mr_real, d_mr_fake = self.D(ct, to_layout(fake_ct, self.plan), mr,
                                                                to_layout(fake_mr, self.plan))
        d_ct_real, d_ct_fake, d_mr_real, d_mr_fake = (d.float() for d in (d_ct_real, d_ct_fake, d_mr_real, d_mr_fake))
        terms = {"D_ct": L.lsgan_discriminator_loss(d_ct_real, d_ct_fake),
                 "D_mr": L.lsgan_discriminator_loss(d_mr_real, d_mr_fake)}
        self.opt_D.zero_grad(set_to_none=True)
        (terms["D_ct"] + terms["D_mr"]).backward()
        self.opt_D.step()
        return terms

    def _discriminator_warmup_step(self, mr: torch.Tensor, ct: torch.Tensor) -> dict:
        """``d_warmup``: the generators translate without gradients and only the discriminators learn, so that the
        first generator updates of a warm-started GAN follow a critic that tells real from fake, not a random one.
        The schedules step as in any iteration (the warm-up is part of ``iterations``)."""
        with torch.no_grad(), self._autocast():
            fake_ct, fake_mr = self.generators.G_CT(mr).float(), self.generators.G_MR(ct).float()
        terms = self._discriminator_step(mr, ct, fake_ct, fake_mr)
        with warnings.catch_warnings():   # the generators' schedule runs on while their optimiser rests, by design
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.sched_G.step()
        self.sched_D.step()
        return {name: float(value.detach()) for name, value in terms.items()}

    def _supervised_step(self, mr: torch.Tensor, ct: torch.Tensor) -> dict:
        """One update of G_CT with lambda_supervised L1(G_CT(MR), CT) (and with ``supervised_both`` of G_MR with the
        same weight on L1(G_MR(CT), MR), so that both generators can start a GAN); the discriminators stay untouched."""
        with self._autocast():
            fake_ct = self.generators.G_CT(mr)
            fake_mr = self.generators.G_MR(ct) if self.config.supervised_both else None
        terms = {"supervised": L.cycle_loss(fake_ct.float(), ct)}
        if fake_mr is not None:
            terms["supervised_mr"] = L.cycle_loss(fake_mr.float(), mr)
        weighted = self.config.lambda_supervised * sum(terms.values())
        self.opt_G.zero_grad(set_to_none=True)
        weighted.backward()
        self.opt_G.step()
        self.sched_G.step()  # the discriminators, their optimiser and schedule stay untouched
        return {**{k: float(v.detach()) for k, v in terms.items()}, "G_total": float(weighted.detach())}

    # ------------------------------------------------------------------------------------------- the loop

    def run(self, stop_at: Optional[float] = None) -> Path:
        """Train to ``config.iterations`` and write the model; with ``stop_at`` (a ``time.time()`` value) stop at the
        first iteration that ends after it and write the model there (its metadata records the iterations done, and a
        "stopped" event says why): a time budget that no run can overshoot, for shared machines and leases."""
        c = self.config
        if stop_at is not None and self.world.size > 1:
            raise ValueError("a time budget (stop_at) needs one process: ranks could stop at different iterations")
        start = self.iteration
        self.events.emit("start", iteration=start + 1, iterations=c.iterations, config=c.to_dict(),
                         device=str(self.device), world_size=self.world.size, resumed=start > 0)
        began, timer = time.time(), _RateMeter()
        bar = tqdm(total=c.iterations, initial=start, disable=not self.show_progress, unit="it", dynamic_ncols=True)
        try:
            while self.iteration < c.iterations:
                if stop_at is not None and time.time() >= stop_at and self.iteration > start:
                    self.events.emit("stopped", iteration=self.iteration, iterations=c.iterations,
                                     reason="time budget reached")
                    self.validate()
                    self.save_checkpoint()
                    break
                batch = self.data.batch(self.rng, c.batch_size)
                values = self.train_step(batch.mr, batch.ct)
                self.iteration += 1
                timer.tick()
                bar.update(1)
                if self.trace_ranks:
                    self._trace(batch.pairs)
                self._after_step(values, timer, bar)
            model = self.finish(time.time() - began)
        except Exception as error:
            self.events.emit("error", message=str(error), traceback=traceback.format_exc())
            raise
        finally:
            bar.close()
        return model

    def _after_step(self, values: dict, timer: "_RateMeter", bar: tqdm) -> None:
        c, it = self.config, self.iteration
        last = it == c.iterations
        if it % c.log_every == 0 or last or it == 1:
            lr = self.opt_G.param_groups[0]["lr"]
            eta = timer.seconds_per_iteration * (c.iterations - it)
            self._append_losses({"iteration": it, **values, "lr": lr, "seconds": timer.seconds_per_iteration})
            self.events.emit("iteration", iteration=it, iterations=c.iterations, losses=values, lr=lr,
                             seconds_per_iteration=timer.seconds_per_iteration, eta_seconds=eta)
            bar.set_postfix({k: f"{values[k]:.3f}" for k in ("G_total", "cycle", "D_ct") if k in values})
        if it % c.validate_every == 0 or last:
            self.validate()
        if it % c.preview_every == 0 or last:
            self.write_preview()
        if it % c.checkpoint_every == 0 or last:
            self.save_checkpoint()

    # ------------------------------------------------------------------------------------------- outputs

    def _append_losses(self, row: dict) -> None:
        if self.world.is_main:
            append_row(self.run_dir / "losses.csv", row)

    def _preview_pairs(self) -> list[SlicePair]:
        source = self.validation or self.data
        pairs = []
        for volume in range(min(PREVIEW_SLICES, len(source.mr))):
            k_mr = len(source.mr[volume])
            ct_volume = volume if volume < len(source.ct) else 0
            k_ct = len(source.ct[ct_volume])
            pairs.append(SlicePair(volume, k_mr // 2, ct_volume, k_ct // 2))
        return pairs

    @torch.no_grad()
    def translate(self, mr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MR slices (N, H, W) in [-1, 1] -> (sCT, reconstructed MR), both (N, H, W) in [-1, 1]."""
        x = to_layout(torch.from_numpy(mr[:, None]).to(self.device), self.plan)
        with self._autocast():
            fake_ct = self.generators.G_CT(x)
            rec_mr = self.generators.G_MR(fake_ct)
        return fake_ct.float()[:, 0].cpu().numpy(), rec_mr.float()[:, 0].cpu().numpy()

    def write_preview(self) -> None:
        if not self.world.is_main:
            return
        source = self.validation or self.data
        rows = []
        for pair in self.preview_pairs:
            mr, ct = paired_slice(source, pair)
            fake_ct, rec_mr = self.translate(mr[None])
            rows.append([Panel(mr, "MR", -1, 1), Panel(fake_ct[0], "sCT", -1, 1), Panel(rec_mr[0], "reconstructed MR", -1, 1),
                         Panel(ct, "a CT (unpaired)" if not source.paired else "CT", -1, 1)])
        preview = save_panel_grid(rows, self.run_dir / "preview.png", suptitle=f"iteration {self.iteration}")
        curves = save_loss_curves(read_rows(self.run_dir / "losses.csv"), self.run_dir / "loss_curves.png",
                                  title=f"{self.config.preset}: losses to iteration {self.iteration}")
        self.events.emit("preview", iteration=self.iteration, path=preview, curves=curves)

    @torch.no_grad()
    def validate(self) -> dict:
        """Cycle L1 and MI(MR, sCT) on validation slices; MAE in window units when the CT is registered to the MR."""
        if self.validation is None or not self.world.is_main:
            return {}
        low, high = self.config.ct_window
        body_level = 2 * (BODY_HU - low) / (high - low) - 1  # the body threshold in the network's units
        cycle, mi, errors, body_errors = [], [], [], []
        for volume, stack in enumerate(self.validation.mr):
            picks = np.linspace(0, len(stack) - 1, num=min(8, len(stack))).round().astype(int)
            for index in picks:
                pair = SlicePair(volume, int(index), min(volume, len(self.validation.ct) - 1), int(index))
                mr, ct = paired_slice(self.validation, pair)
                fake_ct, rec_mr = self.translate(mr[None])
                cycle.append(float(np.abs(rec_mr[0] - mr).mean()))
                mi.append(mutual_information(mr, fake_ct[0]))
                if self.validation.paired:
                    error = np.abs(fake_ct[0] - ct)
                    errors.append(error.ravel())
                    body_errors.append(error[ct > body_level])
        metrics = {"cycle_l1_mr": float(np.mean(cycle)), "mi_mr_sct": float(np.mean(mi))}
        if errors:  # whole canvas (mostly background) and inside the body, as the benchmarks score
            metrics["mae_hu"] = float(np.concatenate(errors).mean()) * (high - low) / 2
            inside = np.concatenate(body_errors)
            if inside.size:
                metrics["mae_body_hu"] = float(inside.mean()) * (high - low) / 2
        self.last_validation = metrics
        self.events.emit("validation", iteration=self.iteration, metrics=metrics)
        return metrics

    def _trace(self, pairs: Sequence[SlicePair]) -> None:
        """Per-rank record of the slices drawn and a checksum of the weights (to check DDP keeps ranks in sync)."""
        checksum = float(sum(p.double().sum() for p in self.generators.parameters()))
        with open(self.run_dir / f"trace_rank{self.world.rank}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"iteration": self.iteration, "pairs": [list(map(int, p)) for p in pairs],
                                     "checksum": checksum}) + "\n")

    # ------------------------------------------------------------------------------------------- checkpoints

    def state(self) -> dict:
        """The checkpoint: shared weights and optimisers once, plus every rank's ``rank_state`` (collective call)."""
        return {"iteration": self.iteration, "generators": self.generators.state_dict(),
                "discriminators": self.discriminators.state_dict(), "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict(), "sched_G": self.sched_G.state_dict(),
                "sched_D": self.sched_D.state_dict(), "ranks": self._gather_rank_states(),
                "config": json.dumps(self.config.to_dict())}

    def rank_state(self) -> dict:
        """What differs between ranks: the image pools and the python, numpy and torch (CPU, CUDA) RNG states."""
        cuda = self.device.type == "cuda"
        return {"pool_ct": self.pool_ct.state(), "pool_mr": self.pool_mr.state(),
                "rng": json.dumps(self.rng.bit_generator.state), "python_rng": json.dumps(random.getstate()),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else torch.zeros(0, dtype=torch.uint8)}

    def _gather_rank_states(self) -> list:
        """Every rank's ``rank_state``, in rank order, on rank 0 (None elsewhere): one checkpoint file holds them all,
        so a kill can never leave ranks at different iterations."""
        mine = self.rank_state()
        if self.world.size == 1:
            return [mine]
        gathered = [None] * self.world.size if self.world.is_main else None
        torch.distributed.gather_object(mine, gathered, dst=0)
        return gathered

    def save_checkpoint(self) -> Optional[Path]:
        """Write checkpoint.pt atomically (rank 0); every rank must call it, as it gathers their states."""
        state = self.state()
        if not self.world.is_main:
            return None
        path = write_atomically(self.run_dir / CHECKPOINT, lambda temp: torch.save(state, temp))
        self.events.emit("checkpoint", iteration=self.iteration, path=path)
        return path

    def warm_start(self, path: os.PathLike) -> dict:
        """Start the networks from the model file ``path`` (a warm start, issue 22: e.g. a GAN from a supervised
        model, or a longer run from a shipped one): each generator the file holds is loaded (strict); the rest, the
        optimisers and the schedule start fresh. Refused unless the file's networks and normalisation (windows,
        plane, MR scaling) are this run's, since its weights mean something only under them."""
        bundle = load_model(path)
        c = self.config
        mine = normalization_metadata(Normalization.from_config(c))
        spec = generator_spec(c.generator, c.ngf, c.n_blocks, c.generator_norm)
        differ = [f"{key} (file {bundle.metadata.get(key)!r}, run {value!r})" for key, value in mine.items()
                  if key not in ("image_size", "pixel_spacing_mm", "extra_planes")   # weights mean the same
                  and bundle.metadata.get(key) != value]
        differ += [f"network {name} (file {bundle.metadata['networks'][name]!r}, run {spec!r})"
                   for name in bundle.state_dicts if bundle.metadata["networks"][name] != spec]
        if differ:
            raise ValueError(f"--init-from {path} cannot start this run: its settings differ: {'; '.join(differ)}. "
                             "Give the run the file's settings (its model card lists them) or start without it")
        for name, weights in bundle.state_dicts.items():
            getattr(self.generators, name).load_state_dict(weights, strict=True)
        record = {"file": str(path), "sha256": sha256_of(path), "networks": sorted(bundle.state_dicts),
                  "model": bundle.metadata.get("name", "")}
        self.warm_started = record
        self.events.emit("warm_start", **record)
        return record

    def load_checkpoint(self, path: os.PathLike) -> None:
        """Restore everything a step depends on, on every rank, so the run continues as if never interrupted."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        ranks = state.get("ranks") or [{key: state[key] for key in ("pool_ct", "pool_mr", "rng", "torch_rng")}]
        if len(ranks) != self.world.size and self.world.is_main:
            log.warning("%s was written by %d training process(es) and this run has %d: training continues, but not "
                        "exactly as the uninterrupted run would (another effective batch; ranks without a saved state "
                        "start fresh RNG streams and empty pools). Resume with %d process(es) to continue exactly.",
                        path, len(ranks), self.world.size, len(ranks))
        self.generators.load_state_dict(state["generators"])
        self.discriminators.load_state_dict(state["discriminators"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.sched_G.load_state_dict(state["sched_G"])
        self.sched_D.load_state_dict(state["sched_D"])
        self.iteration = int(state["iteration"])
        if self.world.is_main:
            truncate_rows(self.run_dir / "losses.csv", self.iteration)
        if self.world.rank >= len(ranks):
            return
        mine = ranks[self.world.rank]
        self.pool_ct.load(mine["pool_ct"], self.device)
        self.pool_mr.load(mine["pool_mr"], self.device)
        self.rng.bit_generator.state = json.loads(mine["rng"])
        if "python_rng" in mine:
            version, internal, gauss = json.loads(mine["python_rng"])
            random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(mine["torch_rng"])
        if self.device.type == "cuda" and mine.get("cuda_rng") is not None and mine["cuda_rng"].numel():
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)

    # ------------------------------------------------------------------------------------------- the model

    def finish(self, seconds: float) -> Path:
        model = self.run_dir / MODEL
        if self.world.is_main:
            save_model(model, self.model_metadata(seconds), {"G_CT": self.generators.G_CT, "G_MR": self.generators.G_MR})
            self.events.emit("finished", iteration=self.iteration, model=model, seconds=seconds)
        return model

    def model_metadata(self, seconds: float) -> dict:
        c = self.config
        spec = generator_spec(c.generator, c.ngf, c.n_blocks, c.generator_norm)
        weights = {k: getattr(c, k) for k in ("lambda_adversarial", "lambda_cycle", "lambda_structure", "lambda_gc",
                                              "lambda_identity", "lambda_supervised")}
        windows = normalization_metadata(Normalization.from_config(c))
        intended = " ".join(filter(None, ("Research use only. Not for clinical use or treatment planning.",
                                          range_note(windows))))
        return {"name": self.run_dir.name, "description": f"{c.preset}: {c.description}",
                "license": "as permitted by the training data (trained locally)", "intended_use": intended,
                "networks": {"G_CT": spec, "G_MR": spec}, "preset": c.preset, "loss_weights": weights,
                "loss_settings": {"gc_operator": c.gc_operator, "gc_gradients": "absolute",
                                  "mind_region": c.mind_region, "mind_patch": c.mind_patch, "mind_sigma": c.mind_sigma},
                **windows,
                "training": {**self.data_summary, "iterations": self.iteration, "seconds": round(seconds, 1),
                             "sampling": c.sampling, "recipe": c.recipe, "seed": c.seed, "world_size": self.world.size,
                             "engine_version": __version__, "warm_start": self.warm_started},
                "validation_metrics": getattr(self, "last_validation", {})}


class _RateMeter:
    """Seconds per iteration, smoothed (exponential moving average), for the ETA."""

    def __init__(self) -> None:
        self.last, self.seconds_per_iteration = time.time(), 0.0

    def tick(self) -> None:
        now = time.time()
        step, self.last = now - self.last, now
        self.seconds_per_iteration = step if self.seconds_per_iteration == 0 else 0.9 * self.seconds_per_iteration + 0.1 * step


# ------------------------------------------------------------------------------------------- building a run

def split_validation(paths: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out whole volumes (never slices of a training volume); at least one volume stays for training.

    ``paths`` may be any list (file paths, or volume indices); both parts keep its order."""
    count = min(len(paths) - 1, int(math.ceil(len(paths) * fraction))) if fraction > 0 else 0
    if count <= 0:
        return paths, []
    order = np.random.default_rng(seed).permutation(len(paths))
    held = set(order[:count].tolist())
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def _held_out_alike(ct_paths: list, mr_val: list) -> tuple[list, list]:
    """(training, held-out) CTs: held out are those whose stem is a held-out MR's (the same subjects)."""
    val_stems = {volume_stem(p) for p in mr_val}
    missing = val_stems - {volume_stem(p) for p in ct_paths}
    if missing:
        raise ValueError(f"validation pairs: no CT named like the held-out MR(s) {sorted(missing)}; validation_pairs "
                         "needs a CT of the same name for every MR (registered pairs)")
    return [p for p in ct_paths if volume_stem(p) not in val_stems], [p for p in ct_paths if volume_stem(p) in val_stems]


def build_trainer(config: TrainConfig, mr_folder: os.PathLike, ct_folder: os.PathLike, run_dir: os.PathLike,
                  device: str = "auto", cache_dir: Optional[os.PathLike] = None, resume: bool = False,
                  echo_events: bool = False, show_progress: bool = True, trace_ranks: bool = False,
                  resume_overrides: Optional[dict] = None) -> CycleGANTrainer:
    """Check the data, prepare the cache and the run folder, and return a ready (possibly resumed) trainer.

    On ``resume`` the run's recorded configuration is used (``config`` is ignored); ``resume_overrides`` are the
    settings given explicitly, checked by ``resumed_config``."""
    run_dir = Path(run_dir)
    recorded = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file; give a folder for the run (new, or a run to --resume)")
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            raise ValueError(f"nothing to resume in {run_dir}: no {CHECKPOINT}; start a new run without --resume")
        config = resumed_config(TrainConfig.from_dict(json.loads(recorded.read_text(encoding="utf-8"))),
                                resume_overrides or {}, run_dir)
    elif (run_dir / CHECKPOINT).exists() or (run_dir / MODEL).exists():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    probe = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                         ("cpu" if device == "auto" else device))
    world = init_world(probe)
    torch_device = resolve_device(device, world)
    paired = config.sampling == "paired"
    mr_paths, ct_paths = check_folders(mr_folder, ct_folder, paired=paired)
    mr_train, mr_val = split_validation(mr_paths, config.validation_fraction, config.seed)
    registered = paired or config.validation_pairs   # the MR's held-out subjects are held out of the CTs too
    if registered:
        ct_train, ct_val = _held_out_alike(ct_paths, mr_val)
    else:
        ct_train, ct_val = split_validation(ct_paths, config.validation_fraction, config.seed + 1)
    norm = Normalization.from_config(config)
    caches = [SliceCache(cache_dir or run_dir / "cache", norm.along(plane), config.augment_pad or config.image_size)
              for plane in norm.planes]

    def load(paths, modality, planes=len(caches)):
        """The slice stacks of ``paths`` along each plane in turn (the primary plane's first; paired lists align)."""
        return [cache.slices(p, modality) for cache in caches[:planes] for p in paths]

    crop = config.image_size
    data = SliceDataset(load(mr_train, "mr"), load(ct_train, "ct"), config.sampling, crop, config.pbs_max_shift)
    validation = None
    if mr_val and ct_val:
        validation = SliceDataset(load(mr_val, "mr", 1), load(ct_val, "ct", 1),   # the primary plane
                                  "paired" if registered else "random", crop)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.part"):  # temporary files of a killed write; the real files are intact
            stale.unlink()
        if not resume:
            write_atomically(recorded, lambda temp: temp.write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8"))
    summary = {"mr_volumes": len(mr_train), "ct_volumes": len(ct_train), "mr_validation_volumes": len(mr_val),
               "ct_validation_volumes": len(ct_val), "mr_slices": sum(len(v) for v in data.mr),
               "ct_slices": sum(len(v) for v in data.ct)}
    trainer = CycleGANTrainer(config, data, run_dir, torch_device, world, validation, echo_events, show_progress,
                              trace_ranks, summary)
    if config.init_from and not resume:     # a resumed run's weights come from its checkpoint
        trainer.warm_start(config.init_from)
    if resume:
        load_checkpoint_checked(trainer, run_dir / CHECKPOINT)
        trainer.warm_started = next((
            {k: e[k] for k in ("file", "sha256", "networks", "model")}
            for e in reversed(list(iter_events(run_dir / EVENTS_FILE))) if e["event"] == "warm_start"), None)
        if trainer.iteration > config.iterations:
            raise ValueError(f"{run_dir} is already at iteration {trainer.iteration}, beyond --iterations "
                             f"{config.iterations}; give --iterations {trainer.iteration} or more")
        if world.is_main and config.to_dict() != json.loads(recorded.read_text(encoding="utf-8")):
            write_atomically(recorded, lambda temp: temp.write_text(json.dumps(config.to_dict(), indent=2),
                                                                    encoding="utf-8"))
    return trainer


def resumed_config(recorded: TrainConfig, given: dict, run_dir: Path) -> TrainConfig:
    """The recorded configuration of a run to resume, with ``given`` (the flags given explicitly) checked against it.

    Rule: ``--iterations`` may change (train longer or stop earlier; the learning-rate decay follows the new count,
    and config.json records it); any other setting that differs from the recorded one is refused, since the
    checkpoint was trained with it: drop the flag, or start a new run.
    """
    try:
        candidate = recorded.with_overrides(**given)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot resume {run_dir} with the given settings: {error}") from error
    before, after = recorded.to_dict(), candidate.to_dict()
    changed = sorted(k for k in after if after[k] != before[k] and k != "iterations")
    if changed:
        listing = ", ".join(f"{k} (recorded {before[k]!r}, given {after[k]!r})" for k in changed)
        raise ValueError(f"--resume continues {run_dir} with its recorded settings, and these differ: {listing}; "
                         "drop those flags, or start a new run in another --out")
    if after["iterations"] != before["iterations"]:
        log.warning("resuming %s with --iterations %d (recorded %d): the run trains to the new count and its "
                    "learning-rate decay follows it", run_dir, after["iterations"], before["iterations"])
    return candidate


def load_checkpoint_checked(trainer: CycleGANTrainer, path: Path) -> None:
    """``trainer.load_checkpoint`` with a one-line error for a checkpoint that is not this trainer's (weights_only
    refuses any pickled object; the file may be damaged or planted)."""
    try:
        trainer.load_checkpoint(path)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} cannot be resumed from: it holds pickled objects other than tensors, which are "
                         "refused unread (loading them could run code), so it was not written by this trainer. "
                         "Delete it (and start the run again) or restore the run's own checkpoint") from None
    except (RuntimeError, EOFError, KeyError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} cannot be resumed from: it is damaged or not a checkpoint of this trainer "
                         f"({first[:200]}). Delete it (and start the run again) or restore a good copy") from None


# ------------------------------------------------------------------------------------------- command line

_FLAG_TYPES = {"image_size": (int, 2), "augment_pad": (int, 2), "pixel_spacing_mm": (float, 2),
               "ct_window": (float, 2), "mr_window": (float, 2), "decay_start": (int, None),
               "mr_percentile": (float, None), "n4_iterations": (int, "+"), "extra_planes": (str, "+")}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's arguments; every TrainConfig field is also a --flag overriding the preset."""
    parser.add_argument("--mr", required=True, help="folder of (unpaired) MR volumes")
    parser.add_argument("--ct", required=True, help="folder of CT volumes in HU")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, events, previews, the model)")
    parser.add_argument("--preset", default="yang2018", choices=PRESET_NAMES)
    parser.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                        help="network and optimiser over the preset's: paper (as published, default) or fast (a small "
                             "U-Net, batch 4, Adam 1e-3: learns several times faster on a CPU; docs/RESULTS.md)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then CPU), cpu, cuda, cuda:N")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--cache", help="preprocessing cache folder (default: <out>/cache)")
    parser.add_argument("--events-stdout", action="store_true", help="also print events as JSON lines on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--trace-ranks", action="store_true", help="per-rank trace of slices and weight checksums")
    group = parser.add_argument_group("preset overrides (default: the preset's value)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("preset", "recipe", "description", "extra"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in _FLAG_TYPES:
            kind, count = _FLAG_TYPES[f.name]
            group.add_argument(flag, dest=f.name, type=kind, nargs=count, default=None)
        elif isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=None)
        else:
            group.add_argument(flag, dest=f.name, type=type(f.default), default=None)


def explicit_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given as flags (not left at the preset's value)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name, None) is not None and f.name not in ("preset", "description", "extra")}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return preset(args.preset, **explicit_overrides(args))


def run_from_args(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    trainer = build_trainer(config, args.mr, args.ct, args.out, args.device, args.cache, args.resume,
                            args.events_stdout, not args.no_progress, args.trace_ranks,
                            resume_overrides=explicit_overrides(args))
    model = trainer.run()
    if trainer.world.is_main:
        print(f"model written: {model}", file=sys.stderr)
    if trainer.world.size > 1:
        torch.distributed.destroy_process_group()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MRtoCTSynthesisLib.train", description=__doc__.split("\n")[0])
    add_train_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
