"""The Sample Data entries: their loaders put the demo's real head MR and head phantom MR into the (real) scene, and ``registerSampleData``
registers it the way Slicer's SampleData module takes it. SampleData itself (a GUI module) does not load headless:
``sampledata_module`` stands in for it with ``registerCustomSampleDataSource``'s exact signatures, read from Slicer's
source (Modules/Scripted/SampleData/SampleData.py of v5.6.0 and of 5.12/5.13), and its click, which calls
``source.customDownloader(source)``. The SampleData panel and the startupCompleted() signal are in-Slicer only."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def sampledata_module(version: str) -> tuple[types.ModuleType, list]:
    """``SampleData`` of Slicer ``version`` as far as registration goes; returns it and the registered sources."""
    sources = []

    def register_5_6(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                     customDownloader=None, thumbnailFileName=None, loadFileType="VolumeFile", loadFiles=None,
                     loadFileProperties={}, checksums=None):
        sources.append(types.SimpleNamespace(category=category, sampleName=sampleName, nodeNames=nodeNames,
                                             thumbnailFileName=thumbnailFileName, customDownloader=customDownloader))

    def register_5_12(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                      customDownloader=None, thumbnailFileName=None, loadFileTypes=None, loadFiles=None,
                      loadFileProperties={}, checksums=None, loadFileType=None):
        register_5_6(category, sampleName, uris, fileNames, nodeNames, customDownloader, thumbnailFileName)

    module = types.ModuleType("SampleData")
    module.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource={"5.6": register_5_6, "5.12": register_5_12}[version])
    return module, sources


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


def test_real_mr_sample_is_the_embedded_mr(module, scene):
    from MRtoCTSlicer.nodes import sitkImageFromVolumeNode
    from MRtoCTSlicer.sampledata import REAL_NODE_NAME, loadRealHeadMR
    from MRtoCTSynthesisLib.demo import SAMPLE_MR

    node = loadRealHeadMR()
    assert node.GetScene() is scene and node.GetName() == REAL_NODE_NAME
    expected = sitk.ReadImage(str(SAMPLE_MR))
    image = sitkImageFromVolumeNode(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("version", ["5.6", "5.12"])
def test_registered_entries_load_their_mr_when_clicked(module, scene, monkeypatch, version):
    from MRtoCTSlicer.sampledata import (CATEGORY, NODE_NAME, REAL_NODE_NAME, REAL_SAMPLE_NAME, SAMPLE_NAME,
                                         registerSampleData)

    sampleData, sources = sampledata_module(version)
    monkeypatch.setitem(sys.modules, "SampleData", sampleData)
    registerSampleData()
    assert [(s.category, s.sampleName, s.nodeNames) for s in sources] == [
        (CATEGORY, REAL_SAMPLE_NAME, REAL_NODE_NAME), (CATEGORY, SAMPLE_NAME, NODE_NAME)]
    for source in sources:
        assert Path(source.thumbnailFileName).is_file()
        node = source.customDownloader(source)  # what the entry's button does
        assert node.GetScene() is scene and node.GetName() == source.nodeNames
