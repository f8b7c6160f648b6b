"""MRtoCTTrainingLogic: the real trainer in a child process on tiny phantoms, a real MRML scene (slicer-core) for the
loss plot, the real local model registry (in a temporary MRTOCT_MODEL_CACHE)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_TRAIN_ARGS, tiny_phantom_dataset

TIMEOUT = 240
LOSSES_YANG = {"G_gan_ct", "G_gan_mr", "cycle", "structure", "G_total", "D_ct", "D_mr"}


# ------------------------------------------------------------------------------------------------ fixtures, helpers


@pytest.fixture
def tlogic(training_module, scene):
    return training_module.MRtoCTTrainingLogic()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return tiny_phantom_dataset(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty local model registry for this test."""
    folder = tmp_path / "model-cache"
    monkeypatch.setenv("MRTOCT_MODEL_CACHE", str(folder))
    return folder


def tiny(**settings) -> dict:
    """helpers.TINY_TRAIN_ARGS as TrainConfig settings (parsed by the trainer's own argument parser), plus
    ``settings``."""
    from MRtoCTSynthesisLib.config import TrainConfig
    from MRtoCTSynthesisLib.train import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = vars(parser.parse_args(["--mr", "-", "--ct", "-", "--out", "-", *TINY_TRAIN_ARGS]))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {**{k: v for k, v in args.items() if k in fields and v is not None}, **settings}


def alive(pid: int) -> bool:
    """True while a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if alive(p)]


def wait_for(condition, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def column(table, name) -> np.ndarray:
    array = table.GetColumnByName(name)
    return np.array([array.GetValue(i) for i in range(array.GetNumberOfTuples())])


requires_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process trees from /proc")


# ------------------------------------------------------------------------------------------------ a full run


@requires_proc
def test_a_run_is_followed_to_the_end_plotted_and_its_model_registered(module, tlogic, scene, phantoms, registry,
                                                                       tmp_path):
    from MRtoCTSynthesisLib.modelfile import Catalog, local_models
    from MRtoCTSynthesisLib.training_process import read_losses

    run = tmp_path / "pelvis-yang"
    run.mkdir()  # with the logs of an earlier attempt that failed before its first checkpoint
    (run / "events.jsonl").write_text('{"event": "start", "iteration": 1, "iterations": 99}\n')
    (run / "losses.csv").write_text("iteration,cycle\n1,5.0\n2,4.0\n")

    job = tlogic.startTraining(phantoms / "mr", phantoms / "ct", run, preset="yang2018",
                               settings=tiny(iterations=6, preview_every=3, checkpoint_every=3), device="cpu")
    assert job.process.running and alive(job.process.pid)
    kinds, slowest = [], 0.0
    deadline = time.time() + TIMEOUT
    while not job.finished and time.time() < deadline:
        started = time.time()
        kinds += [event["event"] for event in tlogic.pollTraining(job)]
        slowest = max(slowest, time.time() - started)
        time.sleep(0.05)

    assert job.succeeded, job.process.error
    assert slowest < 0.5, "pollTraining must never wait for the trainer"
    assert kinds[0] == "start" and kinds[-1] == "finished"
    assert kinds.count("iteration") == 6 and kinds.count("preview") == 2 and "checkpoint" in kinds
    assert job.process.iteration == job.process.iterations == 6 and job.process.eta_seconds == 0.0
    assert set(job.process.losses) == LOSSES_YANG
    assert job.process.preview == run / "preview.png" and job.process.preview.is_file()
    assert not alive(job.process.pid)

    # the loss plot: one table row per iteration (the earlier attempt's rows are gone), one series per loss
    rows = read_losses(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    table, chart = tlogic.lossPlotNodes(run, create=False)
    assert table is not None and chart is not None
    assert table.GetTable().GetNumberOfRows() == 6
    np.testing.assert_array_equal(column(table.GetTable(), "iteration"), [1, 2, 3, 4, 5, 6])
    for name in LOSSES_YANG | {"lr"}:
        np.testing.assert_allclose(column(table.GetTable(), name), [r[name] for r in rows], rtol=1e-6)
    series = tlogic.lossSeriesNodes(run)
    assert set(series) == LOSSES_YANG  # lr is in the table, not plotted
    assert chart.GetNumberOfPlotSeriesNodes() == len(LOSSES_YANG)
    for name, node in series.items():
        assert node.GetTableNodeID() == table.GetID() and node.GetXColumnName() == "iteration"
        assert node.GetPlotType() == node.PlotTypeScatter and node.GetMarkerStyle() == node.MarkerStyleNone
    assert chart.GetXAxisTitle() == "iteration"

    # the model: registered under the run folder's name, listed where Synthesize CT looks
    assert job.modelName == "pelvis-yang"
    assert local_models()["pelvis-yang"].resolve() == (run / "model.mrtoct.safetensors").resolve()
    listed = {m["name"]: m for m in Catalog().list_models()}
    assert listed["pelvis-yang"]["source"] == "local" and listed["pelvis-yang"]["path"]
    assert "pelvis-yang" in [m["name"] for m in module.MRtoCTSynthesisLogic.availableModels()]
    assert tlogic.modelNameOfRun(run) == "pelvis-yang"
    tlogic.useModelForSynthesis("pelvis-yang")
    assert module.MRtoCTSynthesisLogic().getParameterNode().model == "pelvis-yang"

    state = tlogic.runState(run)
    assert state.finished and not state.resumable and state.iteration == 6
    assert state.launch["mr"] == str((phantoms / "mr").resolve()) and state.launch["preset"] == "yang2018"
    with pytest.raises(ValueError, match="already holds a run"):
        tlogic.startTraining(phantoms / "mr", phantoms / "ct", run, settings=tiny(iterations=2), device="cpu")
    with pytest.raises(ValueError, match="is finished"):
        tlogic.resumeTraining(run, device="cpu")


@requires_proc
def test_stop_ends_the_whole_process_tree_and_resume_continues_to_the_end(training_module, tlogic, scene, phantoms,
                                                                          registry, tmp_path):
    """Two trainer processes under torchrun (a real process tree); Stop, then Resume as a new session would."""
    import torch
    from MRtoCTSynthesisLib.modelfile import local_models
    from MRtoCTSynthesisLib.training_process import read_losses

    run = tmp_path / "stopped"
    job = tlogic.startTraining(phantoms / "mr", phantoms / "ct", run, preset="cyclegan",
                               settings=tiny(iterations=60, checkpoint_every=5), device="cpu", processes=2)
    def checkpointed():
        tlogic.pollTraining(job)
        return job.finished or (job.process.checkpoint_iteration or 0) >= 5

    assert wait_for(checkpointed, timeout=TIMEOUT)
    assert not job.finished, job.process.error
    tree = [job.process.pid] + descendants(job.process.pid)
    assert len(tree) >= 3, "torchrun and its two workers"
    assert tlogic.runState(run).running_pid == job.process.pid
    with pytest.raises(ValueError, match="still running"):  # e.g. from a second Slicer
        training_module.MRtoCTTrainingLogic().resumeTraining(run, device="cpu")

    tlogic.stopTraining(job)

    assert job.finished and job.process.stopped and job.process.error == "stopped" and not job.succeeded
    assert wait_for(lambda: not any(alive(pid) for pid in tree), timeout=10), "a process survived Stop"
    assert not (run / "model.mrtoct.safetensors").exists() and job.modelName is None and local_models() == {}
    state = tlogic.runState(run)
    assert state.resumable and state.running_pid is None and 5 <= state.iteration < 60
    checkpoint = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert int(checkpoint["iteration"]) >= state.iteration and int(checkpoint["iteration"]) % 5 == 0

    # Resume with a new logic and an empty scene: the data folders come from the run's launch.json
    scene.Clear(0)
    logic = training_module.MRtoCTTrainingLogic()
    resumed = logic.resumeTraining(run, device="cpu")
    logic.waitForTraining(resumed, timeout=TIMEOUT)
    assert resumed.succeeded, resumed.process.error
    assert resumed.process.first_iteration == int(checkpoint["iteration"]) + 1
    assert [r["iteration"] for r in read_losses(run)] == list(range(1, 61)), "each iteration logged once"
    table, _ = logic.lossPlotNodes(run, create=False)
    np.testing.assert_array_equal(column(table.GetTable(), "iteration"), np.arange(1, 61))
    assert resumed.modelName == "stopped" and "stopped" in local_models()


SPAWNER = """
import subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
Path(sys.argv[1]).write_text(str(child.pid))
time.sleep(120)
"""


@requires_proc
def test_stop_also_kills_descendants_that_left_the_process_group(tmp_path):
    """torchrun starts each worker in a new session: killing the child's process group alone would orphan them."""
    from MRtoCTSynthesisLib.background import BackgroundProcess

    script, pid_file = tmp_path / "spawner.py", tmp_path / "grandchild.pid"
    script.write_text(SPAWNER)

    class Spawner(BackgroundProcess):
        def command(self):
            return [self.python, str(script), str(pid_file)]

    job = Spawner().start()
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    grandchild = int(pid_file.read_text())
    assert alive(grandchild) and os.getpgid(grandchild) != job.pid, "the grandchild leads its own group"
    job.cancel()
    assert job.finished and job.cancelled and not alive(job.pid)
    assert wait_for(lambda: not alive(grandchild), timeout=5), "the grandchild in its own session survived"
    assert alive(os.getpid())


# ------------------------------------------------------------------------------------------------ refused early


@pytest.fixture
def no_process(monkeypatch):
    """Fail the test if any child process is started."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


def _mixed_mr_folder(phantoms, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(phantoms / "mr", folder)
    shutil.copy(phantoms / "ct" / "head_000.nii.gz", folder / "ct_by_mistake.nii.gz")
    return folder


def _unreadable_mr_folder(phantoms, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(phantoms / "mr", folder)
    (folder / "scan.nii.gz").write_bytes(b"not a NIfTI file")
    return folder


def _empty_folder(phantoms, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no volumes here")
    return tmp_path / "empty"


@pytest.mark.parametrize("make_mr, ct, message", [
    (_empty_folder, "ct", r"MR folder .*empty holds no volumes"),
    (_mixed_mr_folder, "ct", r"ct_by_mistake.nii.gz is in the MR folder .* like a CT in HU; move it to the CT folder"),
    (_unreadable_mr_folder, "ct", r"unreadable MR volume: .*scan.nii.gz"),
    (lambda phantoms, tmp_path: phantoms / "mr", "mr", r"is in the CT folder but has no values below -500"),
], ids=["no volumes", "a CT in the MR folder", "unreadable file", "an MR in the CT folder"])
def test_bad_data_is_refused_before_anything_starts(tlogic, scene, phantoms, tmp_path, no_process, make_mr, ct,
                                                    message):
    from MRtoCTSynthesisLib.dataset import DatasetError

    mr = make_mr(phantoms, tmp_path)
    run = tmp_path / "run"
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(DatasetError, match=message):
        tlogic.startTraining(mr, phantoms / ct, run, preset="cyclegan", settings=tiny(iterations=2), device="cpu")
    assert not run.exists(), "no run folder is created"
    assert scene.GetNumberOfNodes() == nodes, "no plot node is created"


@pytest.mark.parametrize("case, message", [
    ("image size", "image_size .* must be multiples of 4"),
    ("supervised unpaired", "lambda_supervised needs paired sampling"),
    ("no run folder", "choose an output"),
    ("run folder is the MR folder", "must not be the MR folder"),
    ("no GPU", "PyTorch sees no GPU|there is no GPU"),
    ("resume without checkpoint", "nothing to resume"),
    ("paired names differ", "paired training needs MR and CT volumes with the same names"),
])
def test_bad_settings_are_refused_before_anything_starts(tlogic, scene, phantoms, tmp_path, no_process, case,
                                                         message):
    run = tmp_path / "run"
    mr, ct, preset, settings, device = phantoms / "mr", phantoms / "ct", "cyclegan", tiny(iterations=2), "cpu"
    if case == "image size":
        settings["image_size"], settings["augment_pad"] = [30, 32], [36, 36]
    elif case == "supervised unpaired":
        settings["lambda_supervised"] = 1.0
    elif case == "no run folder":
        run = ""
    elif case == "run folder is the MR folder":
        run = phantoms / "mr"
    elif case == "no GPU":
        device = "cuda:7"
    elif case == "paired names differ":
        preset, ct = "paired", tmp_path / "ct"
        ct.mkdir()
        shutil.copy(phantoms / "ct" / "head_000.nii.gz", ct / "other_name.nii.gz")
    if case == "resume without checkpoint":
        with pytest.raises(ValueError, match=message):
            tlogic.resumeTraining(run, mr, ct, device=device)
    else:
        with pytest.raises(ValueError, match=message):
            tlogic.startTraining(mr, ct, run, preset=preset, settings=settings, device=device)
    assert not run or not Path(run).exists() or run == phantoms / "mr"


def test_a_trainer_that_fails_reports_its_message(tmp_path, phantoms):
    """Engine level: a failure inside the trainer (here a data error it finds itself) reaches ``error``."""
    from MRtoCTSynthesisLib.training_process import TrainingProcess, config_overrides

    empty = tmp_path / "empty"
    empty.mkdir()
    job = TrainingProcess(tmp_path / "run", empty, phantoms / "ct", "cyclegan",
                          config_overrides("cyclegan", tiny(iterations=2)), device="cpu")
    job.start(check=False)  # skip the checks the logic does, so that the trainer meets the problem
    job.wait(timeout=TIMEOUT)
    assert job.finished and not job.succeeded and job.returncode != 0
    assert "holds no volumes" in job.error and "DatasetError" in job.log_tail()


# ------------------------------------------------------------------------------------------------ settings, commands


def test_preset_settings_fill_the_parameter_node(training_module, tlogic, scene):
    p = tlogic.getParameterNode()
    assert (p.preset, p.device, p.processes) == ("yang2018", "auto", 1)
    assert tlogic.settings(p) == tlogic.presetSettings("yang2018")
    assert set(tlogic.settings(p)) == set(training_module.SETTING_FIELDS)
    yang = tlogic.settings(p)
    assert (yang["lambda_cycle"], yang["lambda_structure"], yang["plane"], yang["image_size"]) == \
        (10.0, 5.0, "sagittal", [384, 256])

    tlogic.applyPreset(p, "hiasa2018")
    hiasa = tlogic.settings(p)
    assert p.preset == "hiasa2018"
    assert (hiasa["lambda_cycle"], hiasa["lambda_gc"], hiasa["lambda_structure"], hiasa["plane"]) == \
        (3.0, 0.3, 0.0, "coronal")
    assert hiasa["image_size"] == [256, 256] and hiasa["lr"] == 2e-4 and hiasa["iterations"] == 200_000
    tlogic.setSetting(p, "iterations", 5000)
    assert tlogic.getParameterNode().settings.iterations == 5000  # a new wrapper reads what the user set
    assert p.parameterNode.GetParameter("settings.iterations") == "5000"
    with pytest.raises(ValueError, match="unknown setting"):
        tlogic.setSetting(p, "learning_rate", 1.0)
    with pytest.raises(ValueError, match="range"):
        tlogic.setSetting(p, "batch_size", 0)
    assert tlogic.settings(p)["batch_size"] == 1
    for name in tlogic.presetNames():
        assert tlogic.presetDescription(name)


def test_training_parameters_saved_by_the_previous_version_are_migrated(tlogic, scene, tmp_path):
    """The old panel's strings and JSON settings ("Setting.image_size" = "[128, 96]") move to the typed parameters."""
    node = tlogic.getParameterNode().parameterNode
    for name in list(node.GetParameterNames()):
        node.UnsetParameter(name)
    old = {"MRFolder": str(tmp_path / "mr"), "RunFolder": str(tmp_path / "run"), "Preset": "hiasa2018",
           "Processes": "2", "Setting.image_size": "[128, 96]", "Setting.lr": "0.0001", "Setting.plane": '"axial"',
           "Setting.iterations": "not json"}
    for name, value in old.items():
        node.SetParameter(name, value)
    p = tlogic.getParameterNode()
    assert (p.mrFolder, p.ctFolder, p.runFolder, p.preset, p.processes) == \
        (str(tmp_path / "mr"), "", str(tmp_path / "run"), "hiasa2018", 2)
    settings = tlogic.settings(p)
    assert (settings["image_size"], settings["lr"], settings["plane"]) == ([128, 96], 1e-4, "axial")
    assert settings["iterations"] == tlogic.presetSettings("yang2018")["iterations"]  # unreadable: the default
    assert not set(old) & set(node.GetParameterNames())


def test_overrides_and_the_trainer_command_line(tmp_path):
    from MRtoCTSynthesisLib.config import preset
    from MRtoCTSynthesisLib.train import add_train_arguments, config_from_args
    from MRtoCTSynthesisLib.training_process import (TORCHRUN_MODULE, TRAIN_MODULE, TrainingProcess,
                                                     config_overrides, override_arguments)

    values = {**{k: v for k, v in preset("yang2018").to_dict().items() if k not in ("description", "extra")},
              "image_size": [128, 96], "lambda_structure": 2.5, "lr": 1e-4, "iterations": 3000, "n4": False}
    overrides = config_overrides("yang2018", values)
    # only what differs from the preset; a new canvas keeps the preset's augmentation margin (16 x 28)
    assert overrides == {"image_size": (128, 96), "augment_pad": (144, 124), "lambda_structure": 2.5, "lr": 1e-4,
                         "iterations": 3000, "n4": False}

    job = TrainingProcess(tmp_path / "run", "/data/mr", "/data/ct", "yang2018", overrides, device="cuda:1",
                          python="/opt/Slicer/bin/PythonSlicer")
    command = job.command()
    assert command[:2] == ["/opt/Slicer/bin/PythonSlicer", "-c"] and repr(TRAIN_MODULE) in command[2]
    arguments = command[3:]
    for option in (["--mr", "/data/mr"], ["--ct", "/data/ct"], ["--preset", "yang2018"], ["--device", "cuda:1"],
                   ["--image-size", "128", "96"], ["--lambda-structure", "2.5"], ["--n4", "false"]):
        index = arguments.index(option[0])
        assert arguments[index:index + len(option)] == option
    assert "--no-progress" in arguments and "--resume" not in arguments
    # the trainer's own parser reads these flags back into the same configuration
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert config_from_args(parser.parse_args(arguments)) == preset("yang2018", **overrides)
    assert override_arguments({"decay_start": None}) == []

    ddp = TrainingProcess(tmp_path / "run", "/data/mr", "/data/ct", "yang2018", overrides, device="cuda:1",
                          processes=4)
    command = ddp.command()
    assert repr(TORCHRUN_MODULE) in command[2]
    assert command[3:6] == ["--standalone", "--nproc_per_node=4", "--no-python"]
    assert command[6:] == ddp.python_command(*ddp.trainer_arguments())  # each worker: the single-process command
    assert repr(TRAIN_MODULE) in command[8]
    assert command[command.index("--device") + 1] == "cuda"  # each rank takes its local GPU
    pythonpath = ddp._environment()["PYTHONPATH"].split(os.pathsep)
    assert pythonpath[0] == str(Path(__file__).resolve().parents[2] / "MRtoCTSynthesis")  # for torchrun's workers


def test_resume_reads_the_run_folder(tmp_path):
    from MRtoCTSynthesisLib.config import preset
    from MRtoCTSynthesisLib.training_process import TrainingProcess, run_state

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(preset("hiasa2018", iterations=80).to_dict()))
    (run / "launch.json").write_text(json.dumps({"mr": "/data/mr", "ct": "/data/ct", "preset": "hiasa2018",
                                                 "cache": "/fast/cache", "pid": 2 ** 22 + 12345}))
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "events.jsonl").write_text('{"event": "checkpoint", "iteration": 40, "path": "x"}\n{"event": "iter')
    state = run_state(run)
    assert state.resumable and state.iteration == 40 and state.iterations == 80 and state.running_pid is None
    assert "iteration 40 of 80" in state.summary()
    job = TrainingProcess(run, resume=True, device="cpu")
    arguments = job.command()[3:]
    assert arguments[arguments.index("--mr") + 1] == "/data/mr" and "--resume" in arguments
    assert arguments[arguments.index("--preset") + 1] == "hiasa2018"
    assert arguments[arguments.index("--cache") + 1] == "/fast/cache"
    assert not any(a.startswith("--iterations") for a in arguments), "a resumed run keeps its own settings"


# ------------------------------------------------------------------------------------------------ the Slicer self-test


def test_the_module_self_test_passes_headless(training_module, scene, registry):
    """MRtoCTTrainingTest is what Slicer's ctest runs; here it runs against the headless scene."""
    from MRtoCTSynthesisLib.modelfile import local_models

    started = time.time()
    training_module.MRtoCTTrainingTest().runTest()
    assert time.time() - started < 90
    assert local_models() == {}, "the self-test registers its model in a temporary registry only"


def test_run_buttons_follow_the_run_folder(training_module, tmp_path):
    """The training panel's Start / Resume rules (``training_text.runControls``) on real RunState values."""
    from MRtoCTSlicer.training_text import runControls, stopText
    from MRtoCTSynthesisLib.training_process import RunState

    fresh, stopped = RunState(tmp_path), RunState(tmp_path, has_checkpoint=True, iteration=200, iterations=1000)
    done, busy = RunState(tmp_path, has_checkpoint=True, finished=True), RunState(tmp_path, running_pid=4242)
    assert runControls(None, ready=False, running=False)["start"] is False
    assert runControls(fresh, ready=True, running=False) == {
        "text": "New run.", "start": True, "resume": False,
        "startTip": "Check the data, then train a new model in the run folder"}
    stoppedControls = runControls(stopped, ready=True, running=False)
    assert (stoppedControls["start"], stoppedControls["resume"]) == (False, True)
    assert "already holds a run" in stoppedControls["startTip"]
    assert (runControls(done, True, False)["start"], runControls(done, True, False)["resume"]) == (False, False)
    assert (runControls(busy, True, False)["start"], runControls(busy, True, False)["resume"]) == (False, False)
    assert runControls(None, True, running=True)["text"] == "Training in this folder."
    process = type("Process", (), {"iteration": 250, "checkpoint_iteration": 200})()
    assert stopText(process, "Slicer is closing") == ("Stopped at iteration 250 because Slicer is closing. Resume "
                                                      "continues from the checkpoint at iteration 200.")
    process.checkpoint_iteration = 0
    assert stopText(process) == "Stopped, before the first checkpoint: Start begins again."
