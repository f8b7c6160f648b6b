"""The acceleration plan: detection, fallbacks that never error, the runner, the JSON contract, and the fast paths'
agreement with float32 (synthesis in HU, training losses). Tiny networks; no timings."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from MRtoCTSynthesisLib import acceleration as A
from MRtoCTSynthesisLib import synthesis as S
from MRtoCTSynthesisLib import volumes as V
from MRtoCTSynthesisLib.config import preset
from MRtoCTSynthesisLib.networks import ResnetGenerator


def test_auto_on_this_cpu_is_bf16_exactly_where_it_is_native():
    plan = A.resolve_plan("cpu", "auto")
    assert plan.precision == ("bfloat16" if A.cpu_native_bf16() else "float32")
    assert plan.batch_size == 1 and plan.reason


def test_auto_picks_bf16_channels_last_on_a_native_bf16_cpu(monkeypatch):
    monkeypatch.setattr(A, "cpu_native_bf16", lambda: True)
    plan = A.resolve_plan("cpu", "auto")
    assert (plan.precision, plan.channels_last) == ("bfloat16", True)


def test_requested_precisions_never_error(monkeypatch):
    monkeypatch.setattr(A, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(A, "cpu_native_fp16", lambda: False)
    bf16 = A.resolve_plan("cpu", "bfloat16")
    assert bf16.precision == "bfloat16" and any("emulated" in n for n in bf16.notes)  # what the user asked for
    fp16 = A.resolve_plan("cpu", "float16")
    assert fp16.precision == "float32" and any("float16" in n for n in fp16.notes)
    assert A.resolve_plan("cpu", "float32").precision == "float32"
    assert A.resolve_plan("cpu", "float16", "training").precision == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        A.resolve_plan("cpu", "half")


def test_no_cpp_compiler_means_eager_with_a_note(monkeypatch):
    monkeypatch.setattr(A, "cpp_compiler", lambda: None)
    assert not A.resolve_plan("cpu", "float32").compile  # auto: quietly eager
    forced = A.resolve_plan("cpu", "float32", compile=True)
    assert not forced.compile and any("C++ compiler" in n for n in forced.notes)


def test_compile_variable_overrides_the_automatic_choice_only(monkeypatch):
    monkeypatch.setattr(A, "_compile_available", lambda kind: (True, ""))
    monkeypatch.setattr(A, "cpu_native_bf16", lambda: True)
    monkeypatch.delenv(A.COMPILE_ENV, raising=False)
    assert A.resolve_plan("cpu", "bfloat16", "training").compile            # auto: native bf16 is compiled
    monkeypatch.setenv(A.COMPILE_ENV, "0")
    off = A.resolve_plan("cpu", "bfloat16", "training")
    assert not off.compile and any(A.COMPILE_ENV in n for n in off.notes)
    assert A.resolve_plan("cpu", "bfloat16", "training", compile=True).compile  # an explicit request wins
    monkeypatch.setenv(A.COMPILE_ENV, "1")
    assert A.resolve_plan("cpu", "float32", "training").compile             # float32 on a CPU: auto would not
    monkeypatch.setenv(A.COMPILE_ENV, "maybe")                               # anything else: the automatic rule
    assert not A.resolve_plan("cpu", "float32", "training").compile


def test_small_jobs_are_not_compiled():
    assert not A.resolve_plan("cpu", "float32", work_gflop=10.0).compile


def test_network_gflop_counts_the_convolutions():
    net = torch.nn.Conv2d(2, 3, 5, padding=2)
    assert A.network_gflop(net, (2, 2, 64, 48)) == pytest.approx(2 * 2 * 3 * 25 * 64 * 48 * 2 / 1e9)
    assert A.network_gflop(ResnetGenerator(ngf=64, n_blocks=9), (1, 1, 256, 256)) == pytest.approx(97.46, abs=0.01)


def _tiny_generator():
    torch.manual_seed(0)
    return ResnetGenerator(ngf=4, n_blocks=1).eval()


def test_failing_compilation_falls_back_to_eager(monkeypatch):
    def broken_compile(module, **kwargs):
        def run(x):
            raise RuntimeError("no compiler\nlong details")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    net, x = _tiny_generator(), torch.rand(3, 1, 16, 16)
    runner = A.prepare(net, A.Plan("cpu", "float32", False, True, 4, "test"))
    with torch.no_grad():
        torch.testing.assert_close(runner(x), net(x))
    assert "eager" in runner.backend and any("torch.compile failed" in n for n in runner.notes)


def test_compiled_runner_pads_a_short_batch_without_changing_results(monkeypatch):
    seen = []

    def recording_compile(module, **kwargs):
        def run(x):
            seen.append(len(x))
            return module(x)
        return run
    monkeypatch.setattr(torch, "compile", recording_compile)
    net, x = _tiny_generator(), torch.rand(3, 1, 16, 16)
    runner = A.prepare(net, A.Plan("cpu", "float32", True, True, 4, "test"))
    with torch.no_grad():
        out = runner(x)
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-6)
    assert seen == [4] and out.shape == x.shape and out.is_contiguous() and out.dtype == torch.float32


def test_json_contract(capsys):
    assert A.main(["--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"cpu", "gpus", "devices", "precisions", "auto"} <= set(info)
    assert {"model", "flags", "native_bf16", "cpp_compiler"} <= set(info["cpu"])
    assert info["devices"][0] == "cpu" and info["precisions"] == list(A.PRECISIONS)
    assert set(info["auto"]) == set(info["devices"])
    assert {"precision", "backend", "reason"} <= set(info["auto"]["cpu"])
    assert A.main(["--json", "--device", "cpu"]) == 0
    assert list(json.loads(capsys.readouterr().out)["auto"]) == ["cpu"]


def test_bf16_synthesis_of_the_demo_model_is_within_5_hu_of_float32():
    """The fast path where bf16 is native (emulated here: correct, only slow) on a phantom head."""
    from MRtoCTSynthesisLib.phantom import make_phantom, subject_seeds

    mr = make_phantom("head", subject_seeds(0, 1)[0]).mr[24:40, :, :]  # 16 central sagittal slices
    reference = S.synthesize(mr, "phantom-head-demo", device="cpu", precision="float32")
    fast = S.synthesize(mr, "phantom-head-demo", device="cpu", precision="bfloat16")
    assert (reference.precision, fast.precision) == ("float32", "bfloat16") and fast.backend
    body = V.array_of(V.body_mask(mr)) > 0
    difference = np.abs(V.array_of(fast.sct) - V.array_of(reference.sct))[body]
    assert difference.mean() <= 5.0


# ------------------------------------------------------------------------------------------- training

class _NoData:
    mr = ct = [np.zeros((1, 8, 8), np.float32)]
    paired = False


def _trainer(precision, run_dir):
    from MRtoCTSynthesisLib.train import CycleGANTrainer

    config = preset("yang2018", image_size=(32, 32), augment_pad=None, ngf=4, n_blocks=1, ndf=4, iterations=20,
                    precision=precision)
    return CycleGANTrainer(config, _NoData(), Path(run_dir), torch.device("cpu"), show_progress=False)


def _batches(count):
    """Smooth, image-like MR/CT pairs in [-1, 1] (a bright disc of varying size on a dark background)."""
    yy, xx = np.mgrid[:32, :32]
    out = []
    for k in range(count):
        disc = ((yy - 16) ** 2 + (xx - 16) ** 2 < (6 + k) ** 2).astype(np.float32)
        out.append((torch.from_numpy(disc * 1.6 - 0.8)[None, None], torch.from_numpy(disc * 1.2 - 1.0)[None, None]))
    return out


def test_bf16_training_losses_agree_with_float32(tmp_path):
    """Same seed, same batches. Step 1 (same weights: bf16's rounding alone): every term within 2 % of float32.
    Steps 2-3: the reconstruction terms and the total within 2 %; the adversarial terms of these tiny networks
    amplify any difference once the weights differ (they drifted 10-15 %), so they are not compared there."""
    runs = {}
    for precision in ("float32", "bfloat16"):
        trainer = _trainer(precision, tmp_path / precision)
        assert trainer.plan.precision == precision
        runs[precision] = [trainer.train_step(mr, ct) for mr, ct in _batches(3)]
    for step, (exact, fast) in enumerate(zip(runs["float32"], runs["bfloat16"])):
        names = exact if step == 0 else ("cycle", "structure", "G_total")
        for name in names:
            assert abs(fast[name] - exact[name]) <= 0.02 * abs(exact[name]) + 1e-3, (step, name, exact, fast)


def test_bf16_training_checkpoint_resumes_exactly(tmp_path):
    batches = _batches(4)
    first = _trainer("bfloat16", tmp_path)
    for mr, ct in batches[:3]:
        first.train_step(mr, ct)
        first.iteration += 1
    first.save_checkpoint()
    expected = first.train_step(*batches[3])
    resumed = _trainer("bfloat16", tmp_path)
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed.train_step(*batches[3]) == expected


def test_training_falls_back_to_eager_when_compilation_fails(tmp_path, monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    from MRtoCTSynthesisLib.train import CycleGANTrainer

    config = preset("cyclegan", image_size=(32, 32), augment_pad=None, ngf=4, n_blocks=1, ndf=4, iterations=5)
    plan = A.Plan("cpu", "float32", False, True, 1, "test: compile forced")
    trainer = CycleGANTrainer(config, _NoData(), tmp_path, torch.device("cpu"), show_progress=False, plan=plan)
    assert not trainer.plan.compile and any("torch.compile failed" in n for n in trainer.plan.notes)
    assert all(p.grad is None for p in trainer.generators.parameters())  # the trial pass left no gradients
    losses = trainer.train_step(*_batches(1)[0])
    assert np.isfinite(list(losses.values())).all()
