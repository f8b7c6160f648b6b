"""The project's digital head phantom MR as Slicer sample data: a first-time user has an input in one click.

The phantom is generated (``MRtoCTSynthesisLib.phantom``, numpy + SimpleITK only), not downloaded: it is the subject
``mrtoct demo`` synthesizes, which the demo model never saw in training.
"""
import os

import slicer

from .nodes import updateVolumeNodeFromSitkImage

CATEGORY = "MR to CT"
SAMPLE_NAME = "MRtoCTPhantomHeadMR"
NODE_NAME = "Phantom head MR"


def loadPhantomMR(source=None):
    """Add the demo's head phantom MR to the scene as a scalar volume node named "Phantom head MR"; returns it.
    ``source``: the SampleData source that was clicked (unused; SampleData passes it to a custom downloader)."""
    from MRtoCTSynthesisLib.demo import DEMO_SEED, DEMO_SHAPE, DEMO_SPACING
    from MRtoCTSynthesisLib.phantom import make_phantom

    phantom = make_phantom("head", DEMO_SEED, DEMO_SHAPE, DEMO_SPACING)
    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(NODE_NAME))
    updateVolumeNodeFromSitkImage(node, phantom.mr)
    node.CreateDefaultDisplayNodes()
    return node


def registerSampleData():
    """Called once Slicer has started (the module connects it to ``startupCompleted()``)."""
    import SampleData

    icon = os.path.join(os.path.dirname(os.path.dirname(__file__)), "Resources", "Icons", "MRtoCTSynthesis.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, thumbnailFileName=icon, nodeNames=NODE_NAME,
        customDownloader=loadPhantomMR)
