"""The Slicer layer of the MR to CT extension, shared by its three modules (one job per file).

No Qt: ``nodes`` (volume node <-> SimpleITK image, input checks), ``hierarchy`` (subject hierarchy placement),
``display`` (CT window/level, slice-view layers), ``dependencies`` (installing torch and pip packages the way the
running Slicer version supports), ``interpreter`` (the Python that child processes run), ``formatting`` (durations),
``sampledata`` (the phantom MR as Slicer sample data).
Qt (PythonQt conventions): ``choices`` (combo boxes refilled without losing the chosen item), ``panel`` (the widget
template: parameter node <-> GUI, the background-job timer, the child-process probes, Reload).

The engine (``MRtoCTSynthesisLib``, ``MRtoCTSegmentLib``) knows nothing of Slicer; the module files
(``MRtoCTSynthesis.py``, ``MRtoCTTraining.py``, ``MRtoCTSegment.py``) declare the modules and hold their Widget,
Logic and Test classes on top of this package.
"""
