"""MR (+ synthetic CT) segmentation engine (Hiasa et al. 2018, sec. 3.2): pure Python (torch, numpy, SimpleITK).

Modules (one job each): ``unet`` (2D U-Net, registered by name), ``labels`` (label tables: names, colours,
terminology, phantom-label mapping), ``modelfile`` (segmentation model files: safetensors + JSON, never pickle),
``translate`` (G_MR(CT) and G_CT(MR) volumes with a synthesis model), ``data`` (channels and labels as slices),
``losses`` (Dice + cross-entropy), ``train`` (the trainer), ``segment`` (inference on the MR's grid, outputs),
``evaluation`` (Dice, surface distances), ``experiment`` (the phantom benchmark of the three channel modes).
"""

from MRtoCTSynthesisLib import __version__  # one version for the whole engine

__all__ = ["__version__"]
