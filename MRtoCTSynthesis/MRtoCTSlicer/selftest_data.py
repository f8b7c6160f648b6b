"""Tiny models and settings for the modules' in-Slicer self-tests (also used by the headless tests and the panel
pictures): the real file formats and networks at the smallest size, so that a run takes seconds on a CPU."""
import contextlib
import os
from pathlib import Path

from .segment_logic import SEG_MODEL_SUFFIX
from .synthesis_logic import DEFAULT_MODEL

# the smallest training networks and slices: a few seconds per run on a CPU
TINY_TRAINING_SETTINGS = {"image_size": [32, 32], "augment_pad": [36, 36], "ngf": 4, "n_blocks": 1, "ndf": 4,
                          "log_every": 1, "preview_every": 3, "validate_every": 1000, "checkpoint_every": 2,
                          "iterations": 4}


def smallestSynthesisModel(folder) -> str:
    """The demo model if installed, else a tiny random model written to ``folder`` (same file format, 32x32)."""
    from MRtoCTSynthesisLib.modelfile import Catalog, save_untrained_model

    try:
        return str(Catalog().resolve(DEFAULT_MODEL))
    except Exception:
        return str(save_untrained_model(Path(folder) / "tiny-self-test.mrtoct.safetensors", "tiny-self-test"))


def saveTinySegmentationModel(path, name="tiny-seg-self-test", weightScale=1.0) -> Path:
    """An untrained "mr+sct" U-Net (base 2) with the pelvis label table, axial 32 x 32, written to ``path``.
    ``weightScale`` > 1 spreads the random logits, so that several structures appear."""
    import torch
    from MRtoCTSegmentLib.labels import load_label_table
    from MRtoCTSegmentLib.modelfile import save_seg_model
    from MRtoCTSegmentLib.unet import UNet2D
    from MRtoCTSynthesisLib.preprocessing import Normalization

    table = load_label_table("pelvis")
    norm = Normalization("axial", (32, 32), (-1000.0, 3500.0), (0.0, 3500.0))
    metadata = {"name": name, "description": "untrained U-Net for tests", "license": "Apache-2.0",
                "intended_use": "testing only",
                "network": {"architecture": "unet2d", "kwargs": {"in_channels": 2, "n_classes": table.n_classes,
                                                                 "base": 2, "norm": "batch", "dropout": 0.0}},
                "channels": "mr+sct", "label_table": table.to_json(), "normalization": norm.to_json()}
    net = UNet2D(2, table.n_classes, 2)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(weightScale)
    return save_seg_model(Path(path), metadata, net)


def tinySegmentationModels(folder) -> tuple[str, str]:
    """(segmentation model, synthesis model): tiny random ones written to ``folder``."""
    from MRtoCTSynthesisLib.modelfile import save_untrained_model

    synthesis = save_untrained_model(Path(folder) / "tiny-self-test.mrtoct.safetensors", "tiny-self-test")
    segmentation = saveTinySegmentationModel(Path(folder) / f"tiny-seg-self-test{SEG_MODEL_SUFFIX}")
    return str(segmentation), str(synthesis)


@contextlib.contextmanager
def separateModelCache(folder):
    """Models registered inside the block go to ``folder``, not to the user's model list."""
    previous = os.environ.get("MRTOCT_MODEL_CACHE")
    os.environ["MRTOCT_MODEL_CACHE"] = str(folder)
    try:
        yield Path(folder)
    finally:
        if previous is None:
            os.environ.pop("MRTOCT_MODEL_CACHE", None)
        else:
            os.environ["MRTOCT_MODEL_CACHE"] = previous
