"""Run an engine command in a child process that a GUI can follow without freezing (pure Python, no Slicer, no Qt).

``BackgroundProcess`` is the process runner shared by the Slicer modules: the child runs in its own process group
(session), its stdout and stderr are read by threads into a queue so ``poll()`` never blocks, and ``cancel()`` kills
the whole process tree (grandchildren included, e.g. torchrun's workers). Subclasses say what to run (``command``)
and what a line of output means (``_handle_line``); ``training_process.TrainingProcess`` is the trainer's.

``BackgroundSynthesis`` runs ``mrtoct synthesize``; the Slicer panel polls it from a timer::

    job = BackgroundSynthesis([mr_path], out_dir, model="head-synth", device="auto").start()
    # every 200 ms:
    for update in job.poll():          # new {"progress": 0.42, "message": "...", "eta_seconds": 12.0}
        show(update)
    if job.finished: ...               # job.returncode, job.results (one dict per input), job.error
    job.cancel()                       # kills the whole process tree; no output is left behind

The child prints one JSON line per progress update and, at the end, ``{"result": [{"input", "output", "error",
"seconds", "extra_outputs"}]}`` (``--progress-json``). Everything else it prints (logging, warnings) is kept in
``job.log`` for error reports.

Nothing half-written ever reaches ``out_dir`` (or ``dicom_out``): the child writes into a private staging folder
inside ``out_dir``, and only the outputs of a finished run are moved into place; a cancelled or crashed run has its
staging folder removed. Result paths are reported at their final location.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .events import parse_json_line

PathLike = Union[str, os.PathLike]
CLI_MODULE = "MRtoCTSynthesisLib.cli"
LIBRARY_ROOT = Path(__file__).resolve().parent.parent  # the folder holding the MRtoCTSynthesisLib package
STAGING_PREFIX = ".mrtoct-partial-"
LOG_LINES = 400  # lines of the child's other output kept for error reports
CANCEL_WAIT_SECONDS = 0.5  # how long cancel() waits for the killed child and its output (a GUI waits for cancel)


class BackgroundProcess:
    """One engine command in a child process of its own process group; ``poll()`` never blocks.

    Subclasses implement ``command()`` and may override ``_handle_line`` (what a line of output means: return the
    updates it makes, a list), ``_prepare`` (before the child starts), ``_start_failed`` and ``_on_exit`` (once, when
    the child has exited or was cancelled).
    """

    def __init__(self, python: Optional[PathLike] = None, module: str = CLI_MODULE,
                 extra_pythonpath: Iterable[PathLike] = (), env: Optional[dict] = None,
                 cwd: Optional[PathLike] = None) -> None:
        """``python``: the interpreter to run (default: this one; in Slicer pass ``PythonSlicer``).
        ``module``: the module run as ``python -m <module>`` would run it (tests may point it at a stand-in).
        The folder holding ``MRtoCTSynthesisLib`` (and ``extra_pythonpath``) is put first on the child's ``sys.path``
        by a one-line bootstrap, so the engine need not be installed in the child's interpreter and no launcher's
        PYTHONPATH handling can hide it."""
        self.python = str(python or sys.executable)
        self.module = module
        self.pythonpath = [str(LIBRARY_ROOT)] + [str(p) for p in extra_pythonpath]
        self.env = env
        self.cwd = None if cwd is None else Path(cwd)

        self.returncode: Optional[int] = None
        self.cancelled = False
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self._process: Optional[subprocess.Popen] = None
        self._lines: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._finalized = False

    # ----------------------------------------------------------------------------------------------- command

    def command(self) -> list[str]:
        """The child's command line."""
        raise NotImplementedError

    def python_command(self, *arguments: str, module: Optional[str] = None) -> list[str]:
        """``python -m <module> arguments...`` with the bootstrap that puts the engine first on ``sys.path``."""
        bootstrap = (f"import runpy, sys; sys.path[:0] = {self.pythonpath!r}; "
                     f"runpy.run_module({(module or self.module)!r}, run_name='__main__', alter_sys=True)")
        return [self.python, "-c", bootstrap, *map(str, arguments)]

    def _environment(self) -> dict:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"   # progress lines must arrive as they are printed
        env["PYTHONIOENCODING"] = "utf-8"
        return env

    # ----------------------------------------------------------------------------------------------- lifecycle

    def _prepare(self) -> None:
        """Called by ``start()`` before the child is started (e.g. to create its output folder)."""

    def _start_failed(self) -> None:
        """Called when the child could not be started (undo ``_prepare``)."""

    def start(self):
        if self._process is not None:
            raise RuntimeError("this job was already started")
        self._prepare()
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel() kills grandchildren too
        self.started_at = time.time()
        try:
            self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, env=self._environment(),
                                             cwd=None if self.cwd is None else str(self.cwd),
                                             encoding="utf-8", errors="replace", **kwargs)
        except OSError:
            self._start_failed()
            raise
        for stream, kind in ((self._process.stdout, "out"), (self._process.stderr, "err")):
            reader = threading.Thread(target=self._read, args=(stream, kind), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, stream, kind: str) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put((kind, line.rstrip("\r\n")))
        stream.close()

    @property
    def pid(self) -> Optional[int]:
        """The child's process id (also its process group id, on POSIX); None before ``start()``."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and not self.finished

    @property
    def finished(self) -> bool:
        return self._finalized

    def poll(self) -> list:
        """Updates received since the last call (never blocks); finishes the job once the child exited."""
        if self._process is None:
            raise RuntimeError("call start() first")
        updates = self._drain()
        if not self._finalized and self._process.poll() is not None:
            for reader in self._readers:
                reader.join(timeout=5)
            updates += self._drain()
            self.returncode = self._process.returncode
            self._finalize()
        return updates

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> list:
        """Block until the child exits (or ``timeout`` s pass); returns all updates received meanwhile."""
        deadline = None if timeout is None else time.time() + timeout
        updates = self.poll()
        while not self.finished and (deadline is None or time.time() < deadline):
            time.sleep(interval)
            updates += self.poll()
        return updates

    def cancel(self) -> None:
        """Kill the child and everything it started; returns within about ``CANCEL_WAIT_SECONDS``, even when an
        escaped grandchild still holds the output pipes open (the reader threads then end with it). Safe to call at
        any time."""
        if self._process is None or self._finalized:
            return
        self.cancelled = True
        _kill_tree(self._process)
        deadline = time.time() + CANCEL_WAIT_SECONDS
        try:
            self._process.wait(timeout=CANCEL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kill failed; still do not block the GUI
            pass
        for reader in self._readers:
            reader.join(timeout=max(0.0, deadline - time.time()))
        self._drain()
        self.returncode = self._process.returncode
        self._finalize()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    # ----------------------------------------------------------------------------------------------- output

    def _drain(self) -> list:
        updates = []
        while True:
            try:
                kind, line = self._lines.get_nowait()
            except queue.Empty:
                return updates
            updates += self._handle_line(kind, line)

    def _handle_line(self, kind: str, line: str) -> list:
        """One line of the child's stdout (``kind`` "out") or stderr ("err") -> updates; default: keep it in the log."""
        if line.strip():
            self.log.append(line)
        return []

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self.log)[-lines:]).strip()

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        self.finished_at = time.time()
        self._on_exit()

    def _on_exit(self) -> None:
        """Called once, after the child exited or was cancelled (``returncode`` and ``cancelled`` are set)."""


class BackgroundBatch(BackgroundProcess):
    """A batch command of the ``mrtoct`` CLI run with ``--progress-json``: JSON progress lines, then one
    ``{"result": [...]}`` line with a record per input (``error`` None when it succeeded)."""

    what = "the process"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.progress = 0.0
        self.message = ""
        self.eta_seconds: Optional[float] = None
        self.results: Optional[list[dict]] = None

    @property
    def succeeded(self) -> bool:
        """Finished, not cancelled, and every input done."""
        return (self.finished and not self.cancelled and self.results is not None
                and all(r.get("error") is None for r in self.results))

    @property
    def error(self) -> Optional[str]:
        """What went wrong, for a message box (None while running or after a full success)."""
        if not self.finished or self.succeeded:
            return None
        if self.cancelled:
            return "cancelled"
        failed = [r for r in (self.results or []) if r.get("error")]
        if failed:
            return "\n".join(f"{Path(r['input']).name}: {r['error']}" for r in failed)
        detail = self.log_tail()
        return f"{self.what} exited with code {self.returncode}" + (f":\n{detail}" if detail else "")

    def _handle_line(self, kind: str, line: str) -> list[dict]:
        record = parse_json_line(line) if kind == "out" else None
        if record is None:
            if line.strip():
                self.log.append(line)
        elif "result" in record and isinstance(record["result"], list):
            self.results = record["result"]
        elif "progress" in record:
            return [self._progress_update(record)]
        else:
            self.log.append(line)
        return []

    def _progress_update(self, record: dict) -> dict:
        progress = min(1.0, max(0.0, float(record.get("progress") or 0.0)))
        eta = record.get("eta_seconds")
        if eta is None and progress >= 0.05 and self.started_at is not None:  # extrapolate from the elapsed time
            eta = (time.time() - self.started_at) * (1.0 - progress) / progress
        self.progress, self.message = progress, str(record.get("message", ""))
        self.eta_seconds = None if eta is None else max(0.0, float(eta))
        return {"progress": self.progress, "message": self.message, "eta_seconds": self.eta_seconds}


class BackgroundSegmentation(BackgroundBatch):
    """One ``mrtoct segment`` run (label maps ``<stem>_seg.nii.gz`` in ``out_dir``) in a child process."""

    what = "the segmentation process"

    def __init__(self, inputs: Sequence[PathLike], out_dir: PathLike, model: PathLike,
                 synthesis_model: Optional[str] = None, sct_inputs: Optional[Sequence[PathLike]] = None,
                 device: str = "auto", python: Optional[PathLike] = None, module: str = CLI_MODULE,
                 extra_pythonpath: Iterable[PathLike] = (), env: Optional[dict] = None) -> None:
        """``python``, ``module``, ``extra_pythonpath``, ``env``: see ``BackgroundProcess``."""
        self.inputs = [Path(p) for p in inputs]
        if not self.inputs:
            raise ValueError("no input volumes given")
        super().__init__(python=python, module=module, extra_pythonpath=extra_pythonpath, env=env, cwd=out_dir)
        self.out_dir, self.model, self.device = Path(out_dir), str(model), str(device)
        self.synthesis_model = synthesis_model
        self.sct_inputs = None if sct_inputs is None else [Path(p) for p in sct_inputs]

    def command(self) -> list[str]:
        arguments = ["segment", *map(str, self.inputs), "--model", self.model, "--out", str(self.out_dir),
                     "--device", self.device, "--no-masks", "--progress-json"]
        if self.synthesis_model:
            arguments += ["--synthesis-model", str(self.synthesis_model)]
        if self.sct_inputs:
            arguments += ["--sct", *map(str, self.sct_inputs)]
        return self.python_command(*arguments)

    def _prepare(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)


class BackgroundSynthesis(BackgroundBatch):
    """One ``mrtoct synthesize`` run in a child process; ``poll()`` never blocks."""

    what = "the synthesis process"

    def __init__(self, inputs: Sequence[PathLike], out_dir: PathLike, model: PathLike, device: str = "auto",
                 quality_map: bool = False, dicom_out: Optional[PathLike] = None, precision: str = "auto",
                 batch_size: Optional[int] = None, python: Optional[PathLike] = None, module: str = CLI_MODULE,
                 extra_pythonpath: Iterable[PathLike] = (), env: Optional[dict] = None,
                 input_is_mr: bool = False) -> None:
        """``python``, ``module``, ``extra_pythonpath``, ``env``: see ``BackgroundProcess``; ``input_is_mr``: the
        CLI's --input-is-mr."""
        self.input_is_mr = bool(input_is_mr)
        self.inputs = [Path(p) for p in inputs]
        if not self.inputs:
            raise ValueError("no input volumes given")
        out_dir = Path(out_dir)
        super().__init__(python=python, module=module, extra_pythonpath=extra_pythonpath, env=env, cwd=out_dir)
        self.out_dir = out_dir
        self.dicom_out = Path(dicom_out) if dicom_out is not None else None
        if self.dicom_out is not None and self.dicom_out.is_dir() and any(self.dicom_out.iterdir()):
            raise ValueError(f"DICOM output folder {self.dicom_out} is not empty; choose an empty or new folder")
        self.model, self.device, self.quality_map = str(model), str(device), bool(quality_map)
        self.precision, self.batch_size = precision, batch_size
        self.staging = self.out_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"

    def command(self) -> list[str]:
        """The child's command line."""
        arguments = ["synthesize", *map(str, self.inputs), "--model", self.model, "--out", str(self.staging),
                     "--device", self.device, "--progress-json"]
        if self.quality_map:
            arguments.append("--quality-map")
        if self.precision != "auto":
            arguments += ["--precision", self.precision]
        if self.batch_size is not None:
            arguments += ["--batch-size", str(int(self.batch_size))]
        if self.dicom_out is not None:
            arguments += ["--dicom-out", str(self.staging / "dicom")]
        if self.input_is_mr:
            arguments.append("--input-is-mr")
        return self.python_command(*arguments)

    def _prepare(self) -> None:
        self.staging.mkdir(parents=True)

    def _start_failed(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    # ----------------------------------------------------------------------------------------------- outputs

    def _on_exit(self) -> None:
        """Move a finished run's outputs from staging into place (or drop them if cancelled), once."""
        try:
            if not self.cancelled and self.results is not None:
                self._publish()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _publish(self) -> None:
        moved: dict[Path, Path] = {}
        dicom_staging = self.staging / "dicom"
        for entry in sorted(self.staging.iterdir()):
            if entry == dicom_staging:
                continue
            if entry.name.startswith("."):  # a temporary file of an interrupted write
                continue
            target = self.out_dir / entry.name
            if target.is_dir() and entry.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
            moved[entry] = target
        if self.dicom_out is not None and dicom_staging.is_dir():
            self.dicom_out.parent.mkdir(parents=True, exist_ok=True)
            if self.dicom_out.is_dir():  # empty (checked at construction): replace it
                self.dicom_out.rmdir()
            shutil.move(str(dicom_staging), str(self.dicom_out))
            moved[dicom_staging] = self.dicom_out
        self.results = [self._relocate(record, moved) for record in self.results]

    def _relocate(self, record: dict, moved: dict[Path, Path]) -> dict:
        def final(path: Optional[str]) -> Optional[str]:
            if not path:
                return path
            p = Path(path) if Path(path).is_absolute() else self.out_dir / path
            for old, new in moved.items():
                if p == old or old in p.parents:
                    return str(new / p.relative_to(old))
            return str(p)

        record = dict(record)
        record["output"] = final(record.get("output"))
        record["extra_outputs"] = [final(p) for p in record.get("extra_outputs") or []]
        return record


class JsonCommand(BackgroundProcess):
    """A short engine command whose answer is one JSON object on stdout (its last JSON line): asked from a child
    process so that a GUI never imports torch or starts CUDA itself. ``result`` is that object once the child has
    exited with code 0, else None (``log`` then says why)."""

    def __init__(self, module: str, *arguments: str, python: Optional[PathLike] = None,
                 extra_pythonpath: Iterable[PathLike] = (), env: Optional[dict] = None) -> None:
        super().__init__(python=python, module=module, extra_pythonpath=extra_pythonpath, env=env)
        self.arguments = [str(a) for a in arguments]
        self.result: Optional[dict] = None
        self._last_json: Optional[dict] = None

    def command(self) -> list[str]:
        return self.python_command(*self.arguments)

    def _handle_line(self, kind: str, line: str) -> list:
        record = parse_json_line(line) if kind == "out" else None
        if isinstance(record, dict):
            self._last_json = record
        elif line.strip():
            self.log.append(line)
        return []

    def _on_exit(self) -> None:
        if not self.cancelled and self.returncode == 0:
            self.result = self._last_json


ACCELERATION_MODULE = "MRtoCTSynthesisLib.acceleration"
FALLBACK_DEVICES = ("auto", "cpu")


def acceleration_probe(python: Optional[PathLike] = None, module: str = ACCELERATION_MODULE,
                       extra_pythonpath: Iterable[PathLike] = ()) -> JsonCommand:
    """``python -m MRtoCTSynthesisLib.acceleration --json`` (not started): the devices torch sees and what precision
    ``auto`` chooses on each, read with ``acceleration_choices(probe.result)`` once it has finished."""
    return JsonCommand(module, "--json", python=python, extra_pythonpath=extra_pythonpath)


def acceleration_choices(record: Optional[dict]) -> tuple[list[str], dict[str, dict]]:
    """(devices, {device: {"precision", "backend", "reason"}}) from the acceleration JSON
    ``{"cpu": {...}, "devices": ["cpu", "cuda:0", ...], "auto": {"<device>": {...}}}``.

    ``devices`` always starts with "auto" and contains "cpu"; a missing, failed or malformed answer gives
    ``FALLBACK_DEVICES`` and no automatic choices, so a panel still works before torch is installed."""
    devices = list(FALLBACK_DEVICES)
    choices: dict[str, dict] = {}
    if not isinstance(record, dict):
        return devices, choices
    listed = record.get("devices")
    if isinstance(listed, list):
        devices += [str(d) for d in listed if isinstance(d, str) and d not in devices]
    auto = record.get("auto")
    if isinstance(auto, dict):
        choices = {str(d): dict(c) for d, c in auto.items() if isinstance(c, dict)}
    return devices, choices


def model_list_probe(python: Optional[PathLike] = None, extra_pythonpath: Iterable[PathLike] = ()) -> JsonCommand:
    """``python -m MRtoCTSynthesisLib.background models`` (not started): ``result["models"]`` is the catalog and
    local model list (``modelfile.Catalog.list_models``), read in a child because the model code imports torch."""
    return JsonCommand(__name__, "models", python=python, extra_pythonpath=extra_pythonpath)


def quality_outputs(record: dict) -> dict[str, Path]:
    """Quality-map files of one result record, by map name: ``<stem>_sct.nii.gz`` has ``<stem>_<name>.nii.gz``."""
    output = record.get("output")
    if not output:
        return {}
    name = Path(output).name
    stem = name[: name.rfind("_sct")] if "_sct" in name else name.split(".")[0]
    maps = {}
    for extra in record.get("extra_outputs") or []:
        extra_name = Path(extra).name
        if extra_name.startswith(stem + "_") and not Path(extra).is_dir():
            key = extra_name[len(stem) + 1:].split(".")[0]
            maps[key] = Path(extra)
    return maps


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill a child started by ``BackgroundProcess.start`` and all its descendants.

    The child leads its own process group, but a descendant may lead another one (torchrun starts each worker in a
    new session), so the descendants are listed first - once their parent is gone they can no longer be found - and
    each one's group is killed too. The caller's own process group is never signalled.
    """
    if process.poll() is not None and os.name == "nt":
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        return
    descendants = _descendants(process.pid)
    own_group = os.getpgrp()
    groups = {process.pid}
    for pid in descendants:
        try:
            groups.add(os.getpgid(pid))
        except (ProcessLookupError, PermissionError):
            pass
    for group in groups - {own_group}:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in descendants:  # one that joined a group it does not lead
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _descendants(pid: int) -> list[int]:
    """Process ids of all descendants of ``pid`` (POSIX: /proc where there is one, else ``ps``)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    else:
        try:
            listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                                     timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _print_models() -> int:
    import json

    from .modelfile import Catalog

    models = [{k: (str(v) if isinstance(v, Path) else v) for k, v in entry.items()} for entry in Catalog().list_models()]
    print(json.dumps({"models": models}), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["models"]:
        sys.exit("usage: python -m MRtoCTSynthesisLib.background models")
    sys.exit(_print_models())
