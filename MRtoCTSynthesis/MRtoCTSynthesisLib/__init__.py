"""MR-to-CT synthesis engine: pure Python (torch, numpy, SimpleITK); no Slicer, no Qt."""

__version__ = "0.1.0"
DEFAULT_MODEL = "head-synth"   # the catalog model used when none is named (scripts/make_head_model.py)
