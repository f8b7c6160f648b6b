"""Smoke test of ``mrtoct bench speed`` (tiny networks: the numbers mean nothing, only the report's shape is checked)
and of the bench <-> quality separation."""
import ast
import json
from pathlib import Path

import MRtoCTSynthesisLib
from MRtoCTSynthesisLib.cli import main as cli_main


def test_speed_bench_reports_both_paths_and_the_machine(tmp_path):
    args = ["bench", "speed", "--tiny", "--train-size", "32", "--train-ngf", "4", "--train-blocks", "1",
            "--presets", "hiasa2018", "--repeats", "1", "--skip", "memory", "difference", "--out", str(tmp_path)]
    assert cli_main(args) == 0
    report = json.loads((tmp_path / "speed.json").read_text(encoding="utf-8"))
    assert report["machine"]["cpu"]["model"] and isinstance(report["machine"]["cpu"]["flags"], list)
    assert {row["precision"] for row in report["gemm"]} >= {"float32", "bfloat16"}
    for size in ("32x32", "48x32"):
        paths = {row["path"] for row in report["synthesis"] if row["size"] == size}
        assert {"reference", "chosen (auto)"} <= paths
    assert [row["batch"] for row in report["batch"]] == [1, 2, 4]
    assert report["training"][0]["preset"] == "hiasa2018" and report["training"][0]["chosen_s_per_it"] > 0
    markdown = (tmp_path / "speed.md").read_text(encoding="utf-8")
    assert "CPU: " in markdown and "## Synthesis" in markdown and "## Training" in markdown


def _imported_modules(path):
    """Every module a file imports (also inside functions), relative imports as written ('..bench' -> 'bench')."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[-1] if node.level else node.module)
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[-1] for alias in node.names)
    return names


def test_bench_and_quality_do_not_import_each_other():
    package = Path(MRtoCTSynthesisLib.__file__).parent
    for bench_file in ("bench.py", "speed_bench.py"):
        assert "quality" not in _imported_modules(package / bench_file), bench_file
    for quality_file in (package / "quality").glob("*.py"):
        assert not {"bench", "speed_bench"} & _imported_modules(quality_file), quality_file.name
