"""The demo's two MRs as Slicer sample data: a first-time user has an input in one click.

* "Real head T1 MR": the real 3D T1 MPRAGE embedded in the project (Resources/SampleData, BSD-2, 2 mm), the MR
  ``mrtoct demo`` synthesizes first; read from the extension, not downloaded.
* "Phantom head MR": the project's digital head phantom, generated (``MRtoCTSynthesisLib.phantom``), the subject the
  demo scores against its own CT.
"""
import os

import slicer

from .nodes import updateVolumeNodeFromSitkImage

CATEGORY = "MR to CT"
SAMPLE_NAME = "MRtoCTPhantomHeadMR"
NODE_NAME = "Phantom head MR"
REAL_SAMPLE_NAME = "MRtoCTRealHeadT1MR"
REAL_NODE_NAME = "Real head T1 MR"


def loadPhantomMR(source=None):
    """Add the demo's head phantom MR to the scene as a scalar volume node named "Phantom head MR"; returns it.
    ``source``: the SampleData source that was clicked (unused; SampleData passes it to a custom downloader)."""
    from MRtoCTSynthesisLib.demo import DEMO_SEED, DEMO_SHAPE, DEMO_SPACING
    from MRtoCTSynthesisLib.phantom import make_phantom

    return _addVolume(make_phantom("head", DEMO_SEED, DEMO_SHAPE, DEMO_SPACING).mr, NODE_NAME)


def loadRealHeadMR(source=None):
    """Add the embedded real head T1 MR (the demo's) as a scalar volume node named "Real head T1 MR"; returns it."""
    from MRtoCTSynthesisLib.demo import SAMPLE_MR
    from MRtoCTSynthesisLib.volumes import read_volume

    return _addVolume(read_volume(SAMPLE_MR), REAL_NODE_NAME)


def _addVolume(image, name):
    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    updateVolumeNodeFromSitkImage(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def registerSampleData():
    """Called once Slicer has started (the module connects it to ``startupCompleted()``)."""
    import SampleData

    icon = os.path.join(os.path.dirname(os.path.dirname(__file__)), "Resources", "Icons", "MRtoCTSynthesis.png")
    for sample, node, loader in ((REAL_SAMPLE_NAME, REAL_NODE_NAME, loadRealHeadMR),
                                 (SAMPLE_NAME, NODE_NAME, loadPhantomMR)):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=sample, thumbnailFileName=icon, nodeNames=node, customDownloader=loader)
