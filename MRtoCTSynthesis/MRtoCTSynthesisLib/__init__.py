"""MR-to-CT synthesis engine: pure Python (torch, numpy, SimpleITK); no Slicer, no Qt."""

__version__ = "0.1.0"
