"""Seconds per training step of every benchmark variant at the default setting (2 mm head, 128x128 canvas, ngf 32),
measured on random slices (the cost does not depend on the content): the basis of the full comparison's estimate.

    python benchmarks/quality/step_times.py benchmarks/quality/timing_default_setting.json
"""
import json, sys, time
import numpy as np, torch
from MRtoCTSynthesisLib.dataset import SliceDataset
from MRtoCTSynthesisLib.train import CycleGANTrainer
from MRtoCTSynthesisLib.quality import SETTINGS, NETWORKS, VARIANTS, training_config, machine_description
torch.set_num_threads(1)
setting, net = SETTINGS["default"]["head"], NETWORKS["default"]
rng = np.random.default_rng(0)
vol = [rng.uniform(-1, 1, (20, 136, 136)).astype(np.float32) for _ in range(2)]
out = {"machine": machine_description("cpu"), "seconds_per_iteration": {}}
for variant in VARIANTS:
    config = training_config(variant, setting, net, 100, 0)
    data = SliceDataset(vol, vol, config.sampling, config.image_size, config.pbs_max_shift)
    trainer = CycleGANTrainer(config, data, "/nonexistent", torch.device("cpu"), show_progress=False)
    times = []
    for step in range(3):
        b = data.batch(trainer.rng, 1)
        t = time.perf_counter(); trainer.train_step(b.mr, b.ct); times.append(time.perf_counter() - t)
    out["seconds_per_iteration"][variant] = float(np.median(times[1:]))
    print(variant, out["seconds_per_iteration"][variant], flush=True)
out["machine_end"] = machine_description("cpu")
json.dump(out, open(sys.argv[1], "w"), indent=2)
