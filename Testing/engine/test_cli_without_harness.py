"""The Slicer extension installs the engine without its benchmark harness (MRtoCTSynthesis/CMakeLists.txt leaves out
bench.py, speed_bench.py, tables.py and quality/): every other command must still work there, and `mrtoct bench`
must say what is missing instead of failing at start-up."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from helpers import tiny_model

REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = ("bench.py", "speed_bench.py", "tables.py", "quality")


def installed_like_slicer(root: Path) -> Path:
    """Copies of the two engines laid out as the extension installs them (the models catalog beside the synthesis
    engine, its harness left out)."""
    source = REPO / "MRtoCTSynthesis"
    target = root / "MRtoCTSynthesis"
    shutil.copytree(source / "MRtoCTSynthesisLib", target / "MRtoCTSynthesisLib",
                    ignore=shutil.ignore_patterns("__pycache__", *LEFT_OUT))
    shutil.copytree(source / "Resources" / "Models", target / "Resources" / "Models",
                    ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(REPO / "MRtoCTSegment", root / "MRtoCTSegment", ignore=shutil.ignore_patterns("__pycache__"))
    return root


# This venv has the engine installed editable: its import finder maps MRtoCTSynthesisLib.* onto the source tree and
# would find the harness there. Slicer's Python has no such finder, so the child drops it before importing the CLI.
AS_IN_SLICER = ("import runpy, sys; "
                "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', '')]; "
                "sys.argv[0] = 'mrtoct'; runpy.run_module('MRtoCTSynthesisLib.cli', run_name='__main__')")


def run_cli(package_root: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(package_root / m) for m in ("MRtoCTSynthesis", "MRtoCTSegment")))
    return subprocess.run([sys.executable, "-c", AS_IN_SLICER, *arguments], capture_output=True, text=True, env=env,
                          timeout=300)


def test_synthesize_works_and_bench_says_the_harness_is_missing(tmp_path):
    root = installed_like_slicer(tmp_path / "install")
    assert not (root / "MRtoCTSynthesis" / "MRtoCTSynthesisLib" / "quality").exists()
    probe = run_cli(root, "--version")
    assert probe.returncode == 0, probe.stderr
    model = tiny_model(tmp_path / "tiny.mrtoct.safetensors")
    mr = sitk.GetImageFromArray((sitk.GetArrayFromImage(sitk.GaussianSource(sitk.sitkFloat32, [24, 24, 12], [6, 6, 3],
                                                                              [12, 12, 6], 400.0))).astype("float32"))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))

    done = run_cli(root, "synthesize", str(tmp_path / "mr.nii.gz"), "--model", str(model), "--out", str(tmp_path / "out"),
                   "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "mr_sct.nii.gz").exists()

    bench = run_cli(root, "bench", "quality", "--out", str(tmp_path / "bench"))
    assert bench.returncode == 2
    assert "benchmark harness" in bench.stderr and "source checkout" in bench.stderr
    assert "Traceback" not in bench.stderr
