"""The Slicer layer of the MR to CT extension, shared by its three modules (one job per file).

No Qt: ``nodes`` (volume node <-> SimpleITK image, input checks), ``hierarchy`` (subject hierarchy placement),
``display`` (CT window/level, slice-view layers), ``dependencies`` (installing torch and pip packages the way the
running Slicer version supports), ``interpreter`` (the Python that child processes run), ``formatting`` (durations),
``sampledata`` (the phantom MR as Slicer sample data), ``parameters`` (the modules' ``@parameterNodeWrapper``
classes, two GUI connectors, migration of older parameter nodes), the Logic classes (``synthesis_logic``,
``segment_logic``, ``training_logic``), ``training_text`` (the training panel's texts and button rules),
``backgroundcheck`` (a file check in a thread), ``selftest_data`` (tiny models for the self-tests).
Qt (PythonQt conventions): ``choices`` (combo boxes refilled without losing the chosen item), ``preview`` (the
trainer's preview picture), ``panel`` (the widget template: parameters bound to the .ui, the background-job timer,
the child-process probes, Reload).

The engine (``MRtoCTSynthesisLib``, ``MRtoCTSegmentLib``) knows nothing of Slicer; the module files
(``MRtoCTSynthesis.py``, ``MRtoCTTraining.py``, ``MRtoCTSegment.py``) declare the modules, their Widget and Test
classes, on top of this package.
"""
