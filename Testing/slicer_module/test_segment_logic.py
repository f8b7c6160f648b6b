"""MRtoCTSegmentLogic against a real MRML scene (slicer-core) and the real engine (tiny random models)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, load_module_file, register_module_logic, slicer_modules
from test_synthesis_logic import ijk_to_ras, oblique_mr, ras_matrix  # noqa: F401  (fixtures and helpers)

SEGMENT_MODULE_FILE = REPO / "MRtoCTSegment" / "MRtoCTSegment.py"


@pytest.fixture(scope="session")
def segment_module(module):
    """MRtoCTSegment.py (it imports MRtoCTSynthesis.py), imported headless."""
    return load_module_file(sys.modules["slicer"], SEGMENT_MODULE_FILE)


@pytest.fixture(autouse=True)
def segmentations_logic(slicer_core, scene, monkeypatch):
    """The Segmentations module logic, registered as the Slicer application does (it also registers the
    segmentation representation converters: binary labelmap, closed surface)."""
    logic = register_module_logic(scene, "Segmentations", slicer_core.vtkSlicerSegmentationsModuleLogic())
    monkeypatch.setattr(slicer_core, "modules", slicer_modules(scene), raising=False)
    return logic


@pytest.fixture
def segment_logic(segment_module, scene, segmentations_logic):
    return segment_module.MRtoCTSegmentLogic()


@pytest.fixture(scope="session")
def tiny_seg_model(tmp_path_factory, model_cache, module):
    """A tiny random "mr+sct" U-Net with the pelvis label table (12 structures); axial 32 x 32 canvas; its weights
    x3 spread the random logits so that several structures appear."""
    import torch
    from MRtoCTSlicer.selftest_data import saveTinySegmentationModel

    torch.manual_seed(0)
    return saveTinySegmentationModel(tmp_path_factory.mktemp("seg-models") / "tiny-seg.mrtoct-seg.safetensors",
                                     "tiny-seg", weightScale=3.0)


@pytest.fixture
def mr_node(slicer_core, scene, oblique_mr):
    array = np.round(sitk.GetArrayFromImage(oblique_mr)).astype(np.int16)
    return slicer_core.util.addVolumeFromArray(array, ras_matrix(oblique_mr), name="T1 pelvis")


def exported_labels(slicer, scene, segmentation_node, mr_node):
    """The segmentation exported by MRML to a labelmap with the MR as reference (label value = segment index + 1)."""
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        segmentation_node, label_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    assert ok
    return label_node


def test_segment_creates_a_segmentation_equal_to_the_engine_labels(segment_module, segment_logic, scene, mr_node,
                                                                  tiny_seg_model, tiny_model, slicer_core):
    from MRtoCTSegmentLib.segment import segment

    slicer = slicer_core
    before_array = slicer.util.arrayFromVolume(mr_node).copy()
    before_matrix = ijk_to_ras(mr_node)
    before_mtime = mr_node.GetImageData().GetMTime()
    steps = []

    seg_node = segment_logic.segment(mr_node, model=str(tiny_seg_model), synthesisModel=str(tiny_model),
                                     device="cpu", progress=lambda f, m: steps.append(f))

    assert seg_node.IsA("vtkMRMLSegmentationNode") and seg_node.GetScene() is scene
    assert seg_node.GetName() == "T1 pelvis segmentation"
    expected = segment(sys.modules["MRtoCTSlicer.nodes"].sitkImageFromVolumeNode(mr_node), str(tiny_seg_model),
                       synthesis_model=str(tiny_model), device="cpu")
    engine = sitk.GetArrayFromImage(expected.labels)
    assert len(np.unique(engine)) >= 3  # the comparison is not trivial

    # segments: one per structure, in table order, named and coloured by the table, with terminology
    segmentation = seg_node.GetSegmentation()
    table = expected.table
    assert segmentation.GetNumberOfSegments() == len(table.structures) == 12
    for index, structure in enumerate(table.structures):
        segment_obj = segmentation.GetNthSegment(index)
        assert segmentation.GetNthSegmentID(index) == structure.name
        assert segment_obj.GetName() == structure.display_name
        np.testing.assert_allclose(segment_obj.GetColor(), np.array(structure.color) / 255.0, atol=1e-6)
        value = __import__("vtk").reference("")
        assert segment_obj.GetTag("TerminologyEntry", value)
        entry = str(value)
        assert entry == structure.terminology_entry()
        assert entry.startswith("Segmentation category and type - ")
        assert f"~{structure.type.scheme}^{structure.type.value}^" in entry

    # the labelmap MRML exports with the MR as reference equals the engine's labels, on the MR's exact grid
    label_node = exported_labels(slicer, scene, seg_node, mr_node)
    np.testing.assert_allclose(ijk_to_ras(label_node), before_matrix, atol=1e-9)
    assert label_node.GetImageData().GetDimensions() == mr_node.GetImageData().GetDimensions()
    exported = slicer.util.arrayFromVolume(label_node)
    mapping = np.zeros(256, np.uint8)  # exported value (segment index + 1) -> table value
    for index, structure in enumerate(table.structures):
        mapping[index + 1] = structure.value
    np.testing.assert_array_equal(mapping[exported], engine)
    # and per segment, straight from its binary labelmap on the MR grid
    for structure in table.structures:
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, structure.name, mr_node)
        np.testing.assert_array_equal(mask.astype(bool), engine == structure.value)

    # reference geometry, display, provenance
    assert seg_node.GetNodeReference(segment_module.SOURCE_REFERENCE) is mr_node
    assert seg_node.GetSegmentation().ContainsRepresentation("Closed surface")
    display = seg_node.GetDisplayNode()
    assert display.GetVisibility2D() and display.GetVisibility3D()
    assert seg_node.GetAttribute("MRtoCTSegment.Model") == "tiny-seg"
    assert seg_node.GetAttribute("MRtoCTSegment.Device") == "cpu"
    assert steps and steps[-1] == 1.0
    # input untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(mr_node), before_array)
    np.testing.assert_array_equal(ijk_to_ras(mr_node), before_matrix)
    assert mr_node.GetName() == "T1 pelvis" and mr_node.GetImageData().GetMTime() == before_mtime


def test_existing_sct_is_used_and_not_modified(segment_logic, scene, mr_node, tiny_seg_model, tiny_model,
                                              slicer_core, module):
    sct = module.MRtoCTSynthesisLogic().synthesize(mr_node, model=str(tiny_model), device="cpu")
    sct_before = slicer_core.util.arrayFromVolume(sct).copy()
    from_sct = segment_logic.segment(mr_node, model=str(tiny_seg_model), sctNode=sct, device="cpu")
    on_the_fly = segment_logic.segment(mr_node, model=str(tiny_seg_model), synthesisModel=str(tiny_model),
                                       device="cpu")
    assert from_sct.GetName() != on_the_fly.GetName()
    for index in range(12):
        segment_id = from_sct.GetSegmentation().GetNthSegmentID(index)
        np.testing.assert_array_equal(
            slicer_core.util.arrayFromSegmentBinaryLabelmap(from_sct, segment_id, mr_node),
            slicer_core.util.arrayFromSegmentBinaryLabelmap(on_the_fly, segment_id, mr_node))
    np.testing.assert_array_equal(slicer_core.util.arrayFromVolume(sct), sct_before)


def test_cancel_and_errors_leave_the_scene_unchanged(segment_logic, scene, mr_node, tiny_seg_model, tiny_model):
    from MRtoCTSegmentLib.segment import SegmentationCancelled

    count = scene.GetNumberOfNodes()
    with pytest.raises(SegmentationCancelled):
        segment_logic.segment(mr_node, model=str(tiny_seg_model), synthesisModel=str(tiny_model), device="cpu",
                              cancel=lambda: True)
    with pytest.raises(ValueError, match="no input MR"):
        segment_logic.segment(None, model=str(tiny_seg_model))
    with pytest.raises(Exception):
        segment_logic.segment(mr_node, model="/no/such/model.mrtoct-seg.safetensors")
    assert scene.GetNumberOfNodes() == count


def test_parameter_node_defaults_and_model_list(segment_module, segment_logic, scene, tiny_seg_model, model_cache):
    import shutil

    shutil.copy(tiny_seg_model, model_cache / "listed.mrtoct-seg.safetensors")
    try:
        models = [str(m) for m in segment_logic.availableModels()]
        assert str(model_cache / "listed.mrtoct-seg.safetensors") in models
        p = segment_logic.getParameterNode()
        assert p.device == "auto" and p.model in models and p.sctVolume is None
        assert "tiny-seg" in segment_logic.modelDescription(str(tiny_seg_model))
        assert segment_logic.modelDescription("/no/such/file").startswith("Cannot read")
    finally:
        (model_cache / "listed.mrtoct-seg.safetensors").unlink()
