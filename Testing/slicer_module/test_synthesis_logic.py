"""MRtoCTSynthesisLogic against a real MRML scene (slicer-core) and the real engine."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import rotation

OBLIQUE_SPACING = (0.7, 0.8, 2.5)
OBLIQUE_ORIGIN = (-61.3, 14.2, 95.5)


def ras_matrix(image: sitk.Image) -> np.ndarray:
    """IJK-to-RAS of a SimpleITK image, written out independently of the module's converters."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = np.diag([-1, -1, 1]) @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = np.diag([-1, -1, 1]) @ np.array(image.GetOrigin())
    return matrix


def ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


@pytest.fixture
def oblique_mr(phantom_mr) -> sitk.Image:
    """The phantom's voxels on an oblique (20 degrees), anisotropic (0.7/0.8/2.5 mm), off-origin grid."""
    image = sitk.Image(phantom_mr)
    image.SetSpacing(OBLIQUE_SPACING)
    image.SetOrigin(OBLIQUE_ORIGIN)
    image.SetDirection(rotation((20, 0, 0)).flatten())
    return image


@pytest.fixture
def mr_node(slicer_core, scene, oblique_mr):
    """An MR volume node made with slicer.util (not with the module's converters), int16 like a scanner's."""
    array = np.round(sitk.GetArrayFromImage(oblique_mr)).astype(np.int16)
    node = slicer_core.util.addVolumeFromArray(array, ras_matrix(oblique_mr), name="T1 brain")
    return node


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


# ------------------------------------------------------------------------------------------------ converters


def test_sitk_image_from_volume_node_matches_mrml_written_file(module, slicer_core, mr_node, tmp_path):
    from MRtoCTSlicer import nodes
    """The node -> image geometry equals what MRML's own NRRD writer stores (independent ground truth)."""
    storage = slicer_core.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / "mr.nrrd"))
    assert storage.WriteData(mr_node)
    written = sitk.ReadImage(str(tmp_path / "mr.nrrd"))
    image = nodes.sitkImageFromVolumeNode(mr_node)
    assert image.GetSize() == written.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), written.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), written.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(image.GetDirection(), written.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(written))


def test_update_volume_node_round_trips_geometry(module, scene, oblique_mr):
    from MRtoCTSlicer import nodes
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")
    nodes.updateVolumeNodeFromSitkImage(node, oblique_mr)
    np.testing.assert_allclose(ijk_to_ras(node), ras_matrix(oblique_mr), atol=1e-12)
    back = nodes.sitkImageFromVolumeNode(node)
    np.testing.assert_allclose(back.GetDirection(), oblique_mr.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(back.GetOrigin(), oblique_mr.GetOrigin(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(oblique_mr))


# ------------------------------------------------------------------------------------------------ synthesize


def test_synthesize_keeps_geometry_and_matches_the_engine(module, logic, scene, mr_node, tiny_model, tmp_path,
                                                         slicer_core):
    from MRtoCTSlicer.display import CT_WINDOW_PRESETS
    from MRtoCTSynthesisLib.synthesis import synthesize

    before_array = slicer_core.util.arrayFromVolume(mr_node).copy()
    before_matrix = ijk_to_ras(mr_node)
    before_mtime = mr_node.GetImageData().GetMTime()
    steps = []

    sct = logic.synthesize(mr_node, model=str(tiny_model), device="cpu", progress=lambda f, m: steps.append(f))

    # geometry: identical IJK-to-RAS (bit for bit) and dimensions
    np.testing.assert_array_equal(ijk_to_ras(sct), before_matrix)
    assert sct.GetImageData().GetDimensions() == mr_node.GetImageData().GetDimensions()
    # values: exactly what the engine gives for the same image (read back from MRML's own NRRD writer)
    storage = slicer_core.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / "mr.nrrd"))
    storage.WriteData(mr_node)
    expected = synthesize(sitk.ReadImage(str(tmp_path / "mr.nrrd")), str(tiny_model), device="cpu").sct
    hu = slicer_core.util.arrayFromVolume(sct)
    assert hu.dtype == np.float32
    np.testing.assert_allclose(hu, sitk.GetArrayFromImage(expected), atol=1e-3)
    assert -1000.5 <= hu.min() and hu.max() <= 3500.5
    # input untouched
    np.testing.assert_array_equal(slicer_core.util.arrayFromVolume(mr_node), before_array)
    np.testing.assert_array_equal(ijk_to_ras(mr_node), before_matrix)
    assert mr_node.GetName() == "T1 brain"
    assert mr_node.GetImageData().GetMTime() == before_mtime
    # name, display, provenance
    assert sct.GetName() == "T1 brain sCT"
    display = sct.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (2000.0, 400.0)
    assert display.GetNumberOfWindowLevelPresets() == len(CT_WINDOW_PRESETS)
    assert sct.GetAttribute("MRtoCTSynthesis.Model") == "tiny-test"
    assert sct.GetAttribute("MRtoCTSynthesis.Device") == "cpu"
    assert sct.GetNodeReference(module.SOURCE_REFERENCE) is mr_node
    assert steps and steps[-1] == 1.0
    assert module.MRtoCTSynthesisLogic.qualityVolumes(sct) == {}


def test_second_run_gets_a_unique_name_and_replace_reuses_the_node(logic, scene, mr_node, tiny_model):
    first = logic.synthesize(mr_node, model=str(tiny_model), device="cpu")
    second = logic.synthesize(mr_node, model=str(tiny_model), device="cpu")
    assert first.GetName() == "T1 brain sCT" and second.GetName() != first.GetName()
    count = node_count(scene)
    again = logic.synthesize(mr_node, model=str(tiny_model), device="cpu", outputNode=first)
    assert again is first and node_count(scene) == count


def test_quality_maps_become_referenced_volumes_on_the_input_grid(module, logic, scene, mr_node, tiny_model):
    from MRtoCTSlicer.display import QUALITY_COLOR_NODE_ID
    sct = logic.synthesize(mr_node, model=str(tiny_model), device="cpu", qualityMap=True)
    maps = logic.qualityVolumes(sct)
    assert set(maps) == {"cycle_residual", "structure_discrepancy"}
    for name, volume in maps.items():
        np.testing.assert_array_equal(ijk_to_ras(volume), ijk_to_ras(mr_node))
        assert volume.GetDisplayNode().GetColorNodeID() == QUALITY_COLOR_NODE_ID
        assert volume.GetName() == f"T1 brain sCT quality ({name.replace('_', ' ')})"
    count = node_count(scene)
    logic.synthesize(mr_node, model=str(tiny_model), device="cpu", qualityMap=True, outputNode=sct)
    assert node_count(scene) == count  # replacing the sCT reuses its quality volumes


def test_output_keeps_the_input_parent_transform(logic, scene, mr_node, tiny_model):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    mr_node.SetAndObserveTransformNodeID(transform.GetID())
    sct = logic.synthesize(mr_node, model=str(tiny_model), device="cpu")
    assert sct.GetTransformNodeID() == transform.GetID()


def test_sct_is_placed_beside_the_mr_in_subject_hierarchy(slicer_core, logic, scene, mr_node, tiny_model):
    sh = slicer_core.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    sh.CreateItem(study, mr_node)  # in Slicer the subject hierarchy plugins do this for every new node
    sct = logic.synthesize(mr_node, model=str(tiny_model), device="cpu")
    assert sh.GetItemParent(sh.GetItemByDataNode(sct)) == study


@pytest.mark.parametrize("case", ["cancel", "bad model", "output is input", "labelmap input", "no input"])
def test_failures_leave_the_scene_unchanged(module, slicer_core, logic, scene, mr_node, tiny_model, tmp_path, case):
    from MRtoCTSynthesisLib.synthesis import SynthesisCancelled

    before = node_count(scene)
    bad_model = tmp_path / "broken.mrtoct.safetensors"
    bad_model.write_bytes(b"\x80\x04not a model")
    arguments = {
        "cancel": (dict(inputVolume=mr_node, cancel=lambda: True), SynthesisCancelled),
        "bad model": (dict(inputVolume=mr_node, model=str(bad_model)), ValueError),
        "output is input": (dict(inputVolume=mr_node, outputNode=mr_node), ValueError),
        "labelmap input": (dict(inputVolume=slicer_core.util.addVolumeFromArray(
            np.zeros((4, 5, 6), np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")), ValueError),
        "no input": (dict(inputVolume=None), ValueError),
    }
    kwargs, error = arguments[case]
    before = node_count(scene)
    with pytest.raises(error):
        logic.synthesize(model=kwargs.pop("model", str(tiny_model)), device="cpu", **kwargs)
    assert node_count(scene) == before


# ------------------------------------------------------------------------------------------------ batch


def test_synthesize_files_reports_the_bad_file_and_finishes_the_others(logic, phantom_mr, tiny_model, tmp_path):
    inputs = tmp_path / "mr"
    inputs.mkdir()
    sitk.WriteImage(phantom_mr, str(inputs / "a.nii.gz"))
    sitk.WriteImage(phantom_mr, str(inputs / "c.nrrd"))
    (inputs / "b.nii.gz").write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "out"

    results = logic.synthesizeFiles(inputs, out, model=str(tiny_model), device="cpu")  # a folder: all its volumes

    by_name = {Path(r.input).name: r for r in results}
    assert sorted(by_name) == ["a.nii.gz", "b.nii.gz", "c.nrrd"]
    assert by_name["b.nii.gz"].error and by_name["b.nii.gz"].output is None
    for name in ("a.nii.gz", "c.nrrd"):
        assert by_name[name].error is None
        written = sitk.ReadImage(str(by_name[name].output))
        assert written.GetSize() == phantom_mr.GetSize()
    assert sorted(p.name for p in out.iterdir()) == ["a_sct.nii.gz", "c_sct.nii.gz"]  # nothing partial for b


def test_expand_inputs(logic, tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("", encoding="utf-8")
    assert logic.expandInputs(tmp_path) == [tmp_path / "x.nii.gz"]
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "1.dcm").write_bytes(b"")
    assert logic.expandInputs(dicom) == [dicom]
    assert logic.expandInputs(["a.nrrd", tmp_path]) == [Path("a.nrrd"), tmp_path]


# ------------------------------------------------------------------------------------------------ background job


def test_background_job_gives_the_same_sct_as_the_blocking_call(logic, scene, mr_node, tiny_model):
    job = logic.startBackgroundSynthesis(mr_node, model=str(tiny_model), device="cpu", qualityMap=True)
    count = node_count(scene)
    updates = job.process.wait(timeout=600)
    assert node_count(scene) == count  # nothing is added before finishBackgroundSynthesis
    assert updates and updates[-1]["progress"] == 1.0
    sct = logic.finishBackgroundSynthesis(job)
    assert not job.workDir.exists()
    reference = logic.synthesize(mr_node, model=str(tiny_model), device="cpu")
    import slicer

    np.testing.assert_allclose(slicer.util.arrayFromVolume(sct), slicer.util.arrayFromVolume(reference), atol=1e-3)
    np.testing.assert_array_equal(ijk_to_ras(sct), ijk_to_ras(mr_node))
    assert sct.GetName() == "T1 brain sCT" and sct.GetAttribute("MRtoCTSynthesis.Model") == "tiny-test"
    assert set(logic.qualityVolumes(sct)) == {"cycle_residual", "structure_discrepancy"}


def test_cancelled_background_job_leaves_no_node_and_no_files(logic, scene, mr_node, tiny_model):
    before = node_count(scene)
    job = logic.startBackgroundSynthesis(mr_node, model=str(tiny_model), device="cpu")
    pid = job.process._process.pid
    logic.cancelBackgroundSynthesis(job)
    assert job.process.cancelled and job.process.finished
    assert logic.finishBackgroundSynthesis(job) is None
    assert node_count(scene) == before
    assert not job.workDir.exists()
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_an_input_that_looks_like_a_mask_is_refused_unless_the_caller_says_it_is_an_mr(slicer_core, logic, scene,
                                                                                     oblique_mr, tiny_model):
    from MRtoCTSynthesisLib.volume_checks import VolumeError

    mask = (sitk.GetArrayFromImage(oblique_mr) > 300).astype(np.int16)
    node = slicer_core.util.addVolumeFromArray(mask, ras_matrix(oblique_mr), name="mask")
    before = node_count(scene)
    with pytest.raises(VolumeError, match="label map or mask"):
        logic.synthesize(node, model=str(tiny_model), device="cpu")
    job = logic.startBackgroundSynthesis(node, model=str(tiny_model), device="cpu")
    job.process.wait(timeout=600)
    with pytest.raises(RuntimeError, match="label map or mask"):
        logic.finishBackgroundSynthesis(job)
    assert node_count(scene) == before
    assert logic.synthesize(node, model=str(tiny_model), device="cpu", inputIsMR=True) is not None
    job = logic.startBackgroundSynthesis(node, model=str(tiny_model), device="cpu", inputIsMR=True)
    job.process.wait(timeout=600)
    assert logic.finishBackgroundSynthesis(job) is not None


def test_failed_background_job_raises_with_the_process_message(logic, scene, mr_node, tmp_path):
    before = node_count(scene)
    job = logic.startBackgroundSynthesis(mr_node, model=str(tmp_path / "missing.mrtoct.safetensors"), device="cpu")
    job.process.wait(timeout=600)
    with pytest.raises(RuntimeError, match="missing.mrtoct.safetensors"):
        logic.finishBackgroundSynthesis(job)
    assert node_count(scene) == before and not job.workDir.exists()


# ------------------------------------------------------------------------------------------------ parameters, display


def test_parameters_defaults_validation_and_scene_round_trip(module, slicer_core, logic, scene, mr_node, tmp_path):
    """Slicer's parameterNodeWrapper (the vendored 5.6.0) over the scene's real vtkMRMLScriptedModuleNode."""
    from MRtoCTSlicer.parameters import SynthesisParameters

    p = logic.getParameterNode()
    assert (p.model, p.device, p.precision, p.qualityMap, p.inputVolume) == (module.DEFAULT_MODEL, "auto", "auto",
                                                                             False, None)
    assert logic.getParameterNode().parameterNode is p.parameterNode  # one node per scene (singleton)
    with pytest.raises(ValueError, match="float8"):
        p.precision = "float8"
    with pytest.raises(TypeError):
        p.qualityMap = "true"
    p.device, p.qualityMap, p.inputVolume = "cuda:1", True, mr_node
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    restored = slicer_core.vtkMRMLScene()
    restored.SetURL(str(tmp_path / "scene.mrml"))
    restored.Import()
    again = SynthesisParameters(restored.GetSingletonNode("MRtoCTSynthesis", "vtkMRMLScriptedModuleNode"))
    assert (again.device, again.qualityMap, again.precision) == ("cuda:1", True, "auto")
    assert again.inputVolume.GetName() == "T1 brain" and again.inputVolume.GetScene() is restored


def test_parameters_saved_by_the_previous_version_are_migrated(module, slicer_core, logic, scene, mr_node):
    """A scene saved before the wrapper: capitalised names, "true"/"false"; the values move to the new names."""
    node = logic.getParameterNode().parameterNode
    for name in list(node.GetParameterNames()):
        node.UnsetParameter(name)
    old = {"Model": "my-model", "Device": "cuda:0", "Precision": "float16", "QualityMap": "true",
           "DicomExport": "false", "DicomFolder": "/tmp/dicom", "WindowPreset": "bone"}
    for name, value in old.items():
        node.SetParameter(name, value)
    node.SetNodeReferenceID("InputVolume", mr_node.GetID())

    p = logic.getParameterNode()
    assert (p.model, p.device, p.precision, p.qualityMap, p.dicomExport, p.dicomFolder, p.windowPreset) == \
        ("my-model", "cuda:0", "float16", True, False, "/tmp/dicom", "bone")
    assert p.inputVolume is mr_node
    assert not set(old) & set(node.GetParameterNames()) and node.GetNodeReferenceID("InputVolume") is None


def test_show_result_and_quality_map_set_the_slice_views(module, slicer_core, logic, scene, mr_node, tiny_model):
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    sct = logic.synthesize(mr_node, model=str(tiny_model), device="cpu", qualityMap=True)
    logic.showResult(mr_node, sct, mrOpacity=0.3)
    for view in views:
        assert view.GetBackgroundVolumeID() == sct.GetID() and view.GetForegroundVolumeID() == mr_node.GetID()
        assert view.GetForegroundOpacity() == pytest.approx(0.3)
    quality = logic.qualityVolumes(sct)["cycle_residual"]
    logic.showQualityMap(sct, quality)
    assert all(v.GetForegroundVolumeID() == quality.GetID() for v in views)
    logic.setCTDisplay(sct, "soft")
    assert (sct.GetDisplayNode().GetWindow(), sct.GetDisplayNode().GetLevel()) == (400.0, 40.0)
    with pytest.raises(ValueError):
        logic.setCTDisplay(sct, "lung")


def test_models(module, logic, tiny_model):
    from MRtoCTSynthesisLib.modelfile import register_local_model

    register_local_model(tiny_model, "my-local-model")
    models = {m["name"]: m for m in logic.availableModels()}
    assert models["my-local-model"]["source"] == "local"
    assert "untrained" in logic.modelDescription(str(tiny_model))
    assert logic.modelNeedsDownload(str(tiny_model)) is False


def test_progress_text_and_durations(module):
    from MRtoCTSlicer import formatting
    assert formatting.formatDuration(8.4) == "8 s"
    assert formatting.formatDuration(125) == "2 min 05 s"
    assert formatting.formatDuration(3780) == "1 h 03 min"
    assert formatting.etaText({"progress": 0.42, "message": "slices 4/9", "eta_seconds": 12}) == " (about 12 s left)"
    assert formatting.etaText({"progress": 0.42, "message": "", "eta_seconds": None}) == ""
    assert formatting.etaText({"progress": 1.0, "message": "done", "eta_seconds": 0.0}) == ""


# ------------------------------------------------------------------------------------------------ the Slicer self-test


def test_the_module_self_test_passes_headless(module, scene):
    """MRtoCTSynthesisTest is what Slicer's ctest runs; here it runs against the headless scene."""
    started = time.time()
    module.MRtoCTSynthesisTest().runTest()
    assert time.time() - started < 60
