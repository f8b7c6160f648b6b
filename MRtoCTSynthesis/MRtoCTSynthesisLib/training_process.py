"""Run the trainer in a child process and follow its run folder (pure Python, no Slicer, no Qt).

What the Slicer training panel and its Logic use, and what a script can use the same way::

    job = TrainingProcess(run, mr="MR/", ct="CT/", preset="yang2018", overrides={"iterations": 2000}).start()
    # start() checks the folders and settings first (DatasetError / ValueError): nothing exists or runs on error
    # then, from a timer (never blocks):
    for event in job.poll(): ...        # new events of <run>/events.jsonl (kinds and fields: events.py)
    job.iteration, job.iterations, job.losses, job.eta_seconds, job.preview, job.checkpoint_iteration
    job.stop()                          # kills the whole process tree; the last checkpoint stays usable
    TrainingProcess(run, resume=True).start()   # continues from the checkpoint (folders from <run>/launch.json)
    if job.succeeded:
        register_trained_model(job.model)       # "Synthesize CT" lists it from now on

The child is ``python -m MRtoCTSynthesisLib.train`` (one process: CPU or one GPU), or for several GPUs
``torchrun --standalone --nproc_per_node=N --no-python python -m MRtoCTSynthesisLib.train`` with the same arguments.
Its events are read from the run folder's ``events.jsonl`` (not from its output), so a run folder can be followed
whoever started it. The child's own output (logging, tracebacks) is kept in ``job.log`` for error reports.

Beside the trainer's files, the run folder gets ``launch.json``: the data folders, preset, device, process count and
the trainer's pid, so a run can be resumed from another session (and a still-running trainer is not started twice).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .atomic import write_atomically
from .background import BackgroundProcess
from .config import PRESET_NAMES, PRESETS, TrainConfig, preset
from .events import EVENTS_FILE, read_new_events

PathLike = Union[str, os.PathLike]
TRAIN_MODULE = "MRtoCTSynthesisLib.train"
TORCHRUN_MODULE = "torch.distributed.run"
LAUNCH_FILE = "launch.json"
CHECKPOINT = "checkpoint.pt"            # = train.CHECKPOINT (train imports torch; this module does not)
MODEL = "model.mrtoct.safetensors"     # = train.MODEL
LOSSES_FILE = "losses.csv"
# files of a run that never reached a checkpoint: a new run in its folder replaces them (the trainer would append)
STALE_RUN_FILES = (EVENTS_FILE, LOSSES_FILE, "loss_curves.png", "preview.png", "config.json", LAUNCH_FILE)
NOT_OVERRIDABLE = ("preset", "description", "extra")
NO_RUN_FOLDER = "choose an output (run) folder: settings, checkpoints, previews and the model are written there"


# ------------------------------------------------------------------------------------------- settings

def preset_settings(name: str, recipe: str = "paper") -> dict:
    """Every TrainConfig field of preset ``name`` under ``recipe`` (tuples as tuples), e.g. to fill a settings
    panel."""
    config = preset(name, recipe=recipe)
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "extra"}


def preset_description(name: str) -> str:
    return PRESETS[name]["description"] if name in PRESETS else ""


def config_overrides(preset_name: str, values: dict) -> dict:
    """The entries of ``values`` (TrainConfig fields) that differ from the preset.

    A new ``image_size`` with the preset's ``augment_pad`` keeps the preset's augmentation margin (pad - size), so a
    larger canvas does not become an invalid configuration.
    """
    defaults = preset_settings(preset_name)
    unknown = sorted(set(values) - set(defaults) - set(NOT_OVERRIDABLE))
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(defaults)}")
    overrides = {}
    for name, value in values.items():
        if name in NOT_OVERRIDABLE:
            continue
        if isinstance(defaults[name], tuple) and value is not None:
            value = tuple(type(d)(v) for d, v in zip(defaults[name], value)) if len(value) == len(defaults[name]) \
                else tuple(value)
        elif isinstance(defaults[name], float) and value is not None:
            value = float(value)
        if value != defaults[name]:
            overrides[name] = value
    if "image_size" in overrides and "augment_pad" not in overrides and defaults["augment_pad"] is not None:
        margin = [p - s for p, s in zip(defaults["augment_pad"], defaults["image_size"])]
        overrides["augment_pad"] = tuple(s + m for s, m in zip(overrides["image_size"], margin))
    return overrides


def override_arguments(overrides: dict) -> list[str]:
    """Trainer command-line flags for TrainConfig overrides: ``{"image_size": (64, 64)}`` -> ``--image-size 64 64``."""
    arguments: list[str] = []
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, value in overrides.items():
        if name not in known or name in NOT_OVERRIDABLE:
            raise ValueError(f"{name!r} is not a training setting the trainer accepts as a flag")
        if value is None:  # the trainer's default (e.g. decay_start: half of the iterations)
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, (tuple, list)):
            arguments += [flag, *(_number(v) for v in value)]
        elif isinstance(value, bool):
            arguments += [flag, "true" if value else "false"]
        else:
            arguments += [flag, _number(value)]
    return arguments


def _number(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------- a run folder

@dataclass
class RunState:
    """What a run folder holds: nothing, a run that can be resumed, or a finished model."""

    folder: Path
    has_checkpoint: bool = False
    finished: bool = False
    iteration: int = 0                    # of the last checkpoint (0: none)
    iterations: Optional[int] = None      # planned (config.json)
    preset: Optional[str] = None
    launch: dict = field(default_factory=dict)
    running_pid: Optional[int] = None     # a trainer still running on this folder (Linux only; else None)

    @property
    def resumable(self) -> bool:
        return self.has_checkpoint and not self.finished

    @property
    def model(self) -> Path:
        return self.folder / MODEL

    def summary(self) -> str:
        if self.running_pid:
            return f"a trainer is running on this folder (process {self.running_pid})"
        if self.finished:
            return f"finished run ({self.iterations} iterations); its model is {self.model.name}"
        if self.has_checkpoint:
            return f"stopped run: checkpoint at iteration {self.iteration} of {self.iterations}; Resume continues it"
        return "new run"


def run_state(run_dir: PathLike) -> RunState:
    folder = Path(run_dir)
    state = RunState(folder, has_checkpoint=(folder / CHECKPOINT).is_file(), finished=(folder / MODEL).is_file())
    config = _read_json(folder / "config.json")
    state.iterations, state.preset = config.get("iterations"), config.get("preset")
    state.launch = read_launch(folder)
    state.running_pid = running_trainer(folder)
    if state.has_checkpoint:
        checkpoints = [e for e in read_new_events(folder / EVENTS_FILE)[0] if e["event"] in ("checkpoint", "finished")]
        state.iteration = int(checkpoints[-1]["iteration"]) if checkpoints else 0
    return state


def read_launch(run_dir: PathLike) -> dict:
    """The launch record of a run folder ({} if none): mr, ct, preset, overrides, device, processes, cache, pid."""
    return _read_json(Path(run_dir) / LAUNCH_FILE)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def running_trainer(run_dir: PathLike) -> Optional[int]:
    """The pid of a trainer process still running on ``run_dir`` (from launch.json), or None.

    Only where /proc shows command lines (Linux): the recorded pid must still run a command naming the run folder.
    """
    pid = read_launch(run_dir).get("pid")
    cmdline = Path(f"/proc/{pid}/cmdline") if isinstance(pid, int) else None
    if cmdline is None or not cmdline.exists():
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
        text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except (OSError, IndexError):
        return None
    return pid if os.path.abspath(run_dir) in text or str(Path(run_dir).resolve()) in text else None


def read_losses(run_dir: PathLike, below: Optional[int] = None) -> list[dict]:
    """The rows of ``<run>/losses.csv`` as floats (iteration as int); only iterations < ``below`` if given."""
    import csv

    path = Path(run_dir) / LOSSES_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            try:
                row = {key: float(value) for key, value in record.items() if key and value not in (None, "")}
                row["iteration"] = int(row["iteration"])
            except (KeyError, ValueError):  # a repeated header or a torn last line
                continue
            if below is None or row["iteration"] < below:
                rows.append(row)
    return rows


def check_training(mr: Optional[PathLike], ct: Optional[PathLike], run_dir: Optional[PathLike],
                   preset_name: str = "yang2018", overrides: Optional[dict] = None, resume: bool = False,
                   device: str = "auto", processes: int = 1) -> TrainConfig:
    """Everything that can be checked before training starts; raises ValueError (DatasetError for the data) with a
    message that says what to do. Creates nothing. Returns the configuration the run will use."""
    if not run_dir or not str(run_dir).strip():
        raise ValueError(NO_RUN_FOLDER)
    run_dir = Path(run_dir)
    if not mr or not str(mr).strip():
        raise ValueError("choose the folder of MR volumes")
    if not ct or not str(ct).strip():
        raise ValueError("choose the folder of CT volumes")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"the run folder {run_dir} is a file; choose a folder")
    pid = running_trainer(run_dir)
    if pid:
        raise ValueError(f"a trainer (process {pid}) is still running on {run_dir}; stop it first or choose another "
                         "run folder")
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise ValueError(f"nothing to resume in {run_dir}: it has no {CHECKPOINT}; press Start for a new run")
        if (run_dir / MODEL).is_file():
            raise ValueError(f"the run in {run_dir} is finished (its model is {MODEL}); choose a new run folder")
        try:
            config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"cannot read the configuration of the run in {run_dir} ({error})") from error
    else:
        if (run_dir / CHECKPOINT).is_file() or (run_dir / MODEL).is_file():
            raise ValueError(f"{run_dir} already holds a run: press Resume to continue it, or choose another (new or "
                             "empty) run folder")
        if preset_name not in PRESET_NAMES:
            raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESET_NAMES)}")
        config = preset(preset_name, **(overrides or {}))
    for folder, role in ((mr, "MR"), (ct, "CT")):
        if Path(folder).resolve() == run_dir.resolve():
            raise ValueError(f"the run folder must not be the {role} folder")
    check_device(device, processes)
    from .dataset import check_folders  # reads every volume (imports torch, SimpleITK)

    check_folders(mr, ct, paired=config.sampling == "paired")
    return config


def check_device(device: str = "auto", processes: int = 1) -> None:
    """Refuse a GPU that torch does not see, or more GPU processes than GPUs (ValueError)."""
    import torch

    device = str(device or "auto")
    if int(processes) < 1:
        raise ValueError("the number of processes must be at least 1")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} was chosen but PyTorch sees no GPU; choose the CPU or Automatic")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= count):
            raise ValueError(f"there is no GPU {device!r}: PyTorch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
        if int(processes) > count:
            raise ValueError(f"{processes} GPU processes were asked for but PyTorch sees {count} GPU(s)")
    elif device == "mps" and int(processes) > 1:
        raise ValueError("several processes need CUDA GPUs or the CPU")


def register_trained_model(model: PathLike, name: Optional[str] = None) -> str:
    """Register a finished run's model bundle so the model lists (``Catalog().list_models()``) show it.

    The name is the bundle's own (the run folder's name) unless given; if another model already uses it (a catalog
    model, or a local model at another path), "-2", "-3", ... is appended. Returns the registered name.
    """
    from .modelfile import Catalog, local_models, read_metadata, register_local_model

    path = Path(model).expanduser().resolve()
    base = name or read_metadata(path)["name"]
    taken = set(Catalog().models)
    taken |= {key for key, value in local_models().items() if Path(value).resolve() != path}
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        candidate = f"{base}-{number}"
    return register_local_model(path, candidate)


# ------------------------------------------------------------------------------------------- the process

class TrainingProcess(BackgroundProcess):
    """One training run (new or resumed) in a child process, followed through its run folder; ``poll()`` never
    blocks and returns the new events."""

    def __init__(self, run_dir: PathLike, mr: Optional[PathLike] = None, ct: Optional[PathLike] = None,
                 preset: str = "yang2018", overrides: Optional[dict] = None, device: str = "auto",
                 processes: Optional[int] = None, resume: bool = False, cache: Optional[PathLike] = None,
                 python: Optional[PathLike] = None, module: str = TRAIN_MODULE,
                 extra_pythonpath: Iterable[PathLike] = (), env: Optional[dict] = None) -> None:
        """``overrides``: TrainConfig fields that differ from ``preset`` (ignored on resume: the run's config.json
        holds its settings). ``processes`` > 1: torchrun with that many processes (one per GPU; gloo on CPU).
        On resume, ``mr``/``ct``/``cache``/``processes`` default to the run's launch.json (the same process count
        is what makes a resumed multi-process run exact). ``python``, ``module``,
        ``extra_pythonpath``, ``env``: see ``BackgroundProcess``."""
        if not run_dir or not str(run_dir).strip():
            raise ValueError(NO_RUN_FOLDER)
        run_dir = Path(run_dir)
        super().__init__(python=python, module=module, extra_pythonpath=extra_pythonpath, env=env)
        self.run_dir, self.resume = run_dir, bool(resume)
        launch = read_launch(run_dir) if resume else {}
        self.mr = str(mr or launch.get("mr") or "")
        self.ct = str(ct or launch.get("ct") or "")
        self.cache = str(cache or launch.get("cache") or "") or None
        if resume:
            recorded = _read_json(run_dir / "config.json")
            preset = recorded.get("preset") if recorded.get("preset") in PRESET_NAMES else preset
            overrides = {}
        self.preset, self.overrides = preset, dict(overrides or {})
        self.processes = max(1, int(processes if processes is not None else launch.get("processes", 1)))
        self.device = str(device or "auto")
        if self.processes > 1 and self.device.startswith("cuda:"):
            self.device = "cuda"  # each rank takes the GPU of its local rank
        self.events_path = run_dir / EVENTS_FILE
        self.config: Optional[TrainConfig] = None
        self.offset = 0

        self.iteration = 0
        self.first_iteration = 1
        self.iterations: Optional[int] = None
        self.losses: dict = {}
        self.lr: Optional[float] = None
        self.eta_seconds: Optional[float] = None
        self.seconds_per_iteration: Optional[float] = None
        self.validation: dict = {}
        self.preview: Optional[Path] = None
        self.curves: Optional[Path] = None
        self.checkpoint_iteration: Optional[int] = None
        self.model: Optional[Path] = None
        self.training_device: Optional[str] = None
        self.error_message: Optional[str] = None
        self.error_traceback: Optional[str] = None
        self._new_log: list[str] = []

    @classmethod
    def replay(cls, run_dir: PathLike) -> "TrainingProcess":
        """A follower that has read all events of ``run_dir`` without starting anything: the run's last iteration,
        losses, ETA, preview, checkpoint and model, as a follower of the running trainer saw them."""
        follower = cls(run_dir)
        follower._drain()
        return follower

    # ----------------------------------------------------------------------------------------------- command

    def trainer_arguments(self) -> list[str]:
        """The trainer's arguments; folders as absolute paths (the events and the model path then are too)."""
        arguments = ["--mr", os.path.abspath(self.mr), "--ct", os.path.abspath(self.ct),
                     "--out", os.path.abspath(self.run_dir), "--preset", self.preset, "--device", self.device,
                     "--no-progress"]
        if self.cache:
            arguments += ["--cache", os.path.abspath(self.cache)]
        if self.resume:
            arguments.append("--resume")
        return arguments + override_arguments(self.overrides)

    def command(self) -> list[str]:
        trainer = self.python_command(*self.trainer_arguments())
        if self.processes > 1:
            # torchrun starts each worker with the same interpreter and bootstrap as a single process would use
            # (--no-python: the command is run as given), so a launcher such as PythonSlicer sets up every worker
            return self.python_command("--standalone", f"--nproc_per_node={self.processes}", "--no-python",
                                       *trainer, module=TORCHRUN_MODULE)
        return trainer

    def _environment(self) -> dict:
        env = super()._environment()
        # also on PYTHONPATH, for anything the trainer starts with a plain interpreter
        env["PYTHONPATH"] = os.pathsep.join(self.pythonpath + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env

    # ----------------------------------------------------------------------------------------------- lifecycle

    def start(self, check: bool = True) -> "TrainingProcess":
        """Check the data and settings (``check_training``; skip with ``check=False``), then start the trainer.
        On a failed check nothing is created and no process starts."""
        if check:
            self.config = check_training(self.mr, self.ct, self.run_dir, self.preset, self.overrides, self.resume,
                                         self.device, self.processes)
        super().start()
        self._write_launch()
        return self

    def _prepare(self) -> None:
        if self.resume:
            _end_with_newline(self.events_path)  # a trainer killed mid-write may have left half a line
        elif self.events_path.is_file() and not (self.run_dir / CHECKPOINT).exists() \
                and not (self.run_dir / MODEL).exists():
            for name in STALE_RUN_FILES:  # an earlier attempt that never reached a checkpoint: the trainer would
                (self.run_dir / name).unlink(missing_ok=True)  # append to its logs
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.offset = self.events_path.stat().st_size if self.events_path.exists() else 0

    def _write_launch(self) -> None:
        record = {"mr": str(Path(self.mr).resolve()), "ct": str(Path(self.ct).resolve()), "preset": self.preset,
                  "overrides": {**read_launch(self.run_dir).get("overrides", {}), **self.overrides},
                  "device": self.device, "processes": self.processes, "cache": self.cache, "pid": self.pid}
        text = json.dumps(record, indent=2, default=list)
        try:
            write_atomically(self.run_dir / LAUNCH_FILE, lambda temp: temp.write_text(text, encoding="utf-8"))
        except OSError as error:  # only resuming from another session needs it
            self.log.append(f"could not write {LAUNCH_FILE}: {error}")

    def stop(self) -> None:
        """Kill the trainer and everything it started (torchrun's workers too). Checkpoints are written atomically,
        so the last one stays usable: ``TrainingProcess(run, resume=True)`` continues from it."""
        self.cancel()

    @property
    def stopped(self) -> bool:
        return self.cancelled

    @property
    def succeeded(self) -> bool:
        return self.finished and not self.cancelled and self.returncode == 0 and self.model is not None

    @property
    def error(self) -> Optional[str]:
        """What went wrong, for a message box (None while running or after success; "stopped" after stop())."""
        if not self.finished or self.succeeded:
            return None
        if self.cancelled:
            return "stopped"
        if self.error_message:
            return self.error_message
        detail = self.log_tail()
        last = next((line for line in reversed(detail.splitlines()) if line.strip()), "")
        if "Error: " in last:  # "module.DatasetError: message" -> the message
            return last.split("Error: ", 1)[1].strip()
        return f"the trainer exited with code {self.returncode}" + (f":\n{detail}" if detail else "")

    @property
    def progress(self) -> float:
        return min(1.0, self.iteration / self.iterations) if self.iterations else 0.0

    def new_log_lines(self) -> list[str]:
        """The child's output lines received since the last call."""
        lines, self._new_log = self._new_log, []
        return lines

    # ----------------------------------------------------------------------------------------------- events

    def _handle_line(self, kind: str, line: str) -> list:
        if line.strip():
            self.log.append(line)
            self._new_log.append(line)
        return []

    def _drain(self) -> list[dict]:
        super()._drain()  # the child's output -> log
        events, self.offset = read_new_events(self.events_path, self.offset)
        for event in events:
            self._apply(event)
        return events

    def _apply(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.first_iteration = int(event.get("iteration", 1))
            self.iteration = self.first_iteration - 1
            self.iterations = event.get("iterations")
            self.training_device = event.get("device")
        elif kind == "iteration":
            self.iteration, self.iterations = int(event["iteration"]), event.get("iterations", self.iterations)
            self.losses, self.lr = dict(event.get("losses") or {}), event.get("lr")
            self.seconds_per_iteration = event.get("seconds_per_iteration")
            eta = event.get("eta_seconds")
            self.eta_seconds = None if eta is None or not math.isfinite(float(eta)) else max(0.0, float(eta))
        elif kind == "validation":
            self.validation = dict(event.get("metrics") or {})
        elif kind == "preview":
            self.preview = Path(event["path"]) if event.get("path") else None
            self.curves = Path(event["curves"]) if event.get("curves") else None
        elif kind == "checkpoint":
            self.checkpoint_iteration = int(event["iteration"])
        elif kind == "finished":
            self.iteration = int(event.get("iteration", self.iteration))
            self.model = Path(event["model"])
            self.eta_seconds = 0.0
        elif kind == "error":
            self.error_message, self.error_traceback = event.get("message"), event.get("traceback")


def _end_with_newline(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.write(b"\n")
