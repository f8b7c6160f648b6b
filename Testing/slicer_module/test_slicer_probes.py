"""The device list and what ``auto`` precision chooses come from a child process (``JsonCommand`` probes), parsed
from a real child: a small script that answers as ``python -m MRtoCTSynthesisLib.acceleration --json`` does, one
that fails, and a module that does not exist (the fallback the panels use before that command exists)."""
from __future__ import annotations

from pathlib import Path

from MRtoCTSynthesisLib.background import acceleration_choices, acceleration_probe, model_list_probe

HERE = Path(__file__).resolve().parent


def _answer(module):
    probe = acceleration_probe(module=module, extra_pythonpath=[HERE]).start()
    probe.wait(timeout=60)
    assert probe.finished
    return probe


def test_acceleration_answer_of_a_real_child_is_parsed():
    probe = _answer("fake_acceleration")
    devices, choices = acceleration_choices(probe.result)
    assert devices == ["auto", "cpu", "cuda:0"]
    assert choices["cuda:0"] == {"precision": "bfloat16", "backend": "cudnn", "reason": "bfloat16 tensor cores"}
    assert "probing devices..." in probe.log


def test_a_missing_or_failing_command_falls_back_to_auto_and_cpu():
    probe = _answer("no_such_module_for_mrtoct")
    assert probe.result is None and probe.returncode != 0
    assert acceleration_choices(probe.result) == (["auto", "cpu"], {})
    for malformed in ({"devices": "cuda:0"}, {"auto": []}, [], "x"):
        assert acceleration_choices(malformed)[0] == ["auto", "cpu"]


def test_model_list_comes_from_a_child(model_cache):
    probe = model_list_probe().start()
    probe.wait(timeout=120)
    names = [entry["name"] for entry in probe.result["models"]]
    assert "phantom-head-demo" in names
