"""The Sample Data entry's loader puts the demo's head phantom MR into the (real) scene; registering the entry itself
needs Slicer's SampleData module and runs only in the application."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def test_phantom_mr_sample_is_the_demo_subject(module, scene):
    from MRtoCTSlicer.nodes import sitkImageFromVolumeNode
    from MRtoCTSlicer.sampledata import NODE_NAME, loadPhantomMR
    from MRtoCTSynthesisLib.demo import DEMO_SEED, DEMO_SHAPE, DEMO_SPACING
    from MRtoCTSynthesisLib.phantom import make_phantom

    node = loadPhantomMR()
    assert node.GetScene() is scene and node.GetName() == NODE_NAME
    expected = make_phantom("head", DEMO_SEED, DEMO_SHAPE, DEMO_SPACING).mr
    image = sitkImageFromVolumeNode(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing())
    assert node.GetDisplayNode() is not None
