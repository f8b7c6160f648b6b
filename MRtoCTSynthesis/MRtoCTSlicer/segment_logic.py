"""The "MR to CT Segment" logic: MR (+ sCT) volume nodes -> a segmentation node with the label table's names,
colours and terminology; blocking, or in a child process (``mrtoct segment``); no Qt."""
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import dependencies
from .hierarchy import placeBesideInSubjectHierarchy
from .interpreter import pythonExecutable
from .nodes import checkVolumeNodes, safeFileName, sitkImageFromVolumeNode, writeVolumeNodeToFile
from .parameters import SegmentParameters, wrapParameterNode

SEG_MODEL_SUFFIX = ".mrtoct-seg.safetensors"
SOURCE_REFERENCE = "MRtoCTSegment.source"
# installed: the module folders are merged into one; source tree: MRtoCTSegment is a sibling of MRtoCTSynthesis
SEGMENT_MODULE_DIR = next((folder for folder in (Path(__file__).resolve().parents[1],
                                                 Path(__file__).resolve().parents[2] / "MRtoCTSegment")
                           if (folder / "MRtoCTSegment.py").is_file()), Path(__file__).resolve().parents[1])


class SegmentationJob:
    """A background segmentation: ``process`` (``background.BackgroundSegmentation``) to poll; the scene is changed
    only by ``finishBackgroundSegmentation``, so a cancelled or failed job leaves no node behind."""

    def __init__(self, process, workDir, mrNodeID, scene, synthesisModel):
        self.process, self.workDir, self.mrNodeID, self.scene = process, workDir, mrNodeID, scene
        self.synthesisModel = synthesisModel

    def removeWorkDir(self):
        shutil.rmtree(self.workDir, ignore_errors=True)


class MRtoCTSegmentLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, a segmentation node out. No Qt here: everything runs headless and from the Python console::

        logic = slicer.util.getModuleLogic("MRtoCTSegment")   # or MRtoCTSegmentLogic()
        seg = logic.segment(mrNode, model="/models/pelvis.mrtoct-seg.safetensors", synthesisModel="pelvis-2024")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> SegmentParameters:
        """The module's parameters (``parameters.SegmentParameters``); no model chosen yet: the first one found."""
        parameters = wrapParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self), SegmentParameters)
        if not parameters.model:
            models = self.availableModels()
            if models:
                parameters.model = str(models[0])
        return parameters

    # ------------------------------------------------------------------------------------------- dependencies, models

    @staticmethod
    def setupPythonRequirements(askConfirmation=True):
        """torch and the engine's pip requirements (the segmentation engine needs nothing more)."""
        return dependencies.setupPythonRequirements(dependencies.ENGINE_REQUIREMENTS, askConfirmation,
                                                    "MR to CT Segment")

    @staticmethod
    def modelFolders():
        """Where segmentation model files are looked for: the module's Resources/Models and the model cache."""
        folders = [SEGMENT_MODULE_DIR / "Resources" / "Models"]
        cache = os.environ.get("MRTOCT_MODEL_CACHE") or str(Path.home() / ".cache" / "mrtoct" / "models")
        folders.append(Path(cache))
        return folders

    @classmethod
    def availableModels(cls):
        """Segmentation model files (``*.mrtoct-seg.safetensors``) found in ``modelFolders()`` (searched recursively)."""
        found = []
        for folder in cls.modelFolders():
            if folder.is_dir():
                found.extend(sorted(folder.rglob(f"*{SEG_MODEL_SUFFIX}")))
        return found

    @staticmethod
    def modelDescription(model):
        """One line about a segmentation model file for the panel; never raises."""
        if not model:
            return ""
        try:
            from MRtoCTSegmentLib.modelfile import load_seg_model

            metadata = load_seg_model(model).metadata
            return (f"{metadata['name']}: {metadata['description']} (channels {metadata['channels']}, "
                    f"license: {metadata['license']})")
        except Exception as error:
            return f"Cannot read this model: {error}"

    # ------------------------------------------------------------------------------------------- blocking segmentation

    def segment(self, mrNode, model, synthesisModel=None, sctNode=None, device="auto", batchSize=8, progress=None,
                cancel=None):
        """Segment ``mrNode`` (blocking); returns a new ``vtkMRMLSegmentationNode`` named "<MR name> segmentation".

        ``sctNode``: an existing sCT (resampled onto the MR grid by the engine if needed); without it the sCT is
        synthesized with ``synthesisModel`` (None: the one recorded in the segmentation model). The segmentation has
        the MR's reference geometry and parent transform and one segment per structure of the model's label table
        (name, colour, terminology), shown in 2D and 3D. ``cancel()`` returning True raises SegmentationCancelled.
        The input nodes are never modified; on error or cancel the scene is unchanged.
        """
        from MRtoCTSegmentLib.segment import segment

        checkVolumeNodes(mrNode)
        mr = sitkImageFromVolumeNode(mrNode)
        sct = sitkImageFromVolumeNode(sctNode) if sctNode is not None else None
        result = segment(mr, str(model) if isinstance(model, Path) else model, synthesis_model=synthesisModel,
                         sct=sct, device=device, batch_size=batchSize, progress=progress, cancel=cancel)
        return self.createSegmentationNode(mrNode, result, {
            "Model": result.model_name, "SynthesisModel": "" if sctNode is not None else str(synthesisModel or ""),
            "Device": result.device, "Seconds": f"{result.seconds:.2f}"})

    # ------------------------------------------------------------------------------------------- background segmentation

    def startBackgroundSegmentation(self, mrNode, model, synthesisModel=None, sctNode=None, device="auto",
                                    python=None):
        """Start ``mrtoct segment`` in a child process on the MR (and sCT) written to a private folder; returns a
        ``SegmentationJob`` to poll (``job.process.poll()``) and then ``finishBackgroundSegmentation(job)``. The
        scene is not touched until then."""
        from MRtoCTSynthesisLib.background import BackgroundSegmentation

        checkVolumeNodes(mrNode)
        if sctNode is not None:
            checkVolumeNodes(sctNode)
        workDir = Path(tempfile.mkdtemp(prefix="MRtoCTSegment-"))
        try:
            (workDir / "input").mkdir()
            mrPath = writeVolumeNodeToFile(mrNode, workDir / "input" / f"{safeFileName(mrNode.GetName())}.nrrd")
            sctPaths = None if sctNode is None else [writeVolumeNodeToFile(sctNode, workDir / "input" / "sct.nrrd")]
            process = BackgroundSegmentation([mrPath], workDir / "output", model, synthesis_model=synthesisModel,
                                             sct_inputs=sctPaths, device=device,
                                             python=python or pythonExecutable()).start()
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return SegmentationJob(process, workDir, mrNode.GetID(), mrNode.GetScene(),
                               synthesisModel if sctNode is None else "")

    @staticmethod
    def cancelBackgroundSegmentation(job):
        """Kill the job's process tree and delete its files; the scene stays as it was."""
        job.process.cancel()
        job.removeWorkDir()

    def finishBackgroundSegmentation(self, job):
        """The segmentation node of a finished job (None if it was cancelled); RuntimeError with the process's
        message if it failed. The job's files are deleted."""
        import SimpleITK as sitk
        from MRtoCTSegmentLib.labels import load_label_table
        from MRtoCTSegmentLib.modelfile import load_seg_model

        try:
            process = job.process
            if process.cancelled:
                return None
            if not process.succeeded:
                raise RuntimeError(process.error)
            mrNode = job.scene.GetNodeByID(job.mrNodeID)
            if mrNode is None:
                raise RuntimeError("the MR volume was removed from the scene while the segmentation was running")
            labels = next(p for p in process.results[0]["outputs"] if p.endswith("_seg.nii.gz"))
            metadata = load_seg_model(process.model).metadata
            result = SimpleNamespace(labels=sitk.ReadImage(labels), table=load_label_table(metadata["label_table"]))
            return self.createSegmentationNode(mrNode, result, {
                "Model": metadata["name"], "SynthesisModel": str(job.synthesisModel or ""), "Device": process.device,
                "Seconds": f"{process.results[0].get('seconds', 0.0)}"})
        finally:
            job.removeWorkDir()

    @staticmethod
    def createSegmentationNode(mrNode, result, attributes=None):
        """A segmentation node from an engine result (labels on the MR's grid + label table)."""
        import numpy as np
        import SimpleITK as sitk

        labels = sitk.GetArrayFromImage(result.labels)  # (K, J, I), like arrayFromVolume
        dimensions = tuple(mrNode.GetImageData().GetDimensions())
        if labels.shape[::-1] != dimensions:
            raise RuntimeError(f"the engine returned the labels on another grid than the MR ({labels.shape[::-1]} "
                               f"voxels instead of {dimensions})")
        scene = mrNode.GetScene()
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                   scene.GenerateUniqueName(f"{mrNode.GetName()} segmentation"))
        try:
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(mrNode)
            segmentationNode.SetAndObserveTransformNodeID(mrNode.GetTransformNodeID())
            segmentation = segmentationNode.GetSegmentation()
            wasModifying = segmentationNode.StartModify()
            for structure in result.table.structures:
                segmentId = segmentation.AddEmptySegment(structure.name, structure.display_name,
                                                         list(structure.color_float))
                segmentation.GetSegment(segmentId).SetTag("TerminologyEntry", structure.terminology_entry())
                mask = (labels == structure.value).astype(np.uint8)
                slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, mrNode)
            segmentationNode.EndModify(wasModifying)
            for key, value in (attributes or {}).items():
                segmentationNode.SetAttribute(f"MRtoCTSegment.{key}", str(value))
            segmentationNode.SetNodeReferenceID(SOURCE_REFERENCE, mrNode.GetID())
            segmentationNode.CreateClosedSurfaceRepresentation()
            display = segmentationNode.GetDisplayNode()
            display.SetVisibility2D(True)
            display.SetVisibility3D(True)
            placeBesideInSubjectHierarchy(mrNode, [segmentationNode])
        except BaseException:
            scene.RemoveNode(segmentationNode)
            raise
        return segmentationNode
