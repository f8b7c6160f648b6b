"""The "MR to CT Synthesis" logic: MR volume node -> sCT volume node (and quality maps), blocking or in a child
process; no Qt, so it runs headless and from Slicer's Python console."""
import os
import shutil
import tempfile
from pathlib import Path

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import dependencies, display
from .display import setQualityDisplay
from .hierarchy import placeBesideInSubjectHierarchy
from .interpreter import pythonExecutable
from .nodes import checkVolumeNodes, safeFileName, sitkImageFromVolumeNode, writeVolumeNodeToFile, writeVolumeOnGridOf
from .parameters import DEFAULT_MODEL, SynthesisParameters, wrapParameterNode

MODULE_DIR = Path(__file__).resolve().parents[1]  # the folder of MRtoCTSynthesis.py and its Resources
QUALITY_REFERENCE_PREFIX = "MRtoCTSynthesis.quality."
SOURCE_REFERENCE = "MRtoCTSynthesis.source"


class SynthesisJob:
    """A background synthesis started by ``MRtoCTSynthesisLogic.startBackgroundSynthesis``.

    ``process`` is the ``MRtoCTSynthesisLib.background.BackgroundSynthesis`` to ``poll()``; the scene is changed only by
    ``finishBackgroundSynthesis``, so a cancelled or failed job leaves no node behind.
    """

    def __init__(self, process, workDir, inputVolumeID, outputVolumeID, scene):
        self.process, self.workDir = process, workDir
        self.inputVolumeID, self.outputVolumeID, self.scene = inputVolumeID, outputVolumeID, scene

    def inputVolume(self):
        return self.scene.GetNodeByID(self.inputVolumeID)

    def outputVolume(self):
        return self.scene.GetNodeByID(self.outputVolumeID) if self.outputVolumeID else None

    def removeWorkDir(self):
        shutil.rmtree(self.workDir, ignore_errors=True)


class MRtoCTSynthesisLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, MRML nodes out. No Qt here: everything runs headless and from the Python console.

    Blocking (console, scripts)::

        logic = slicer.util.getModuleLogic("MRtoCTSynthesis")   # or MRtoCTSynthesisLogic()
        sct = logic.synthesize(mrNode, model="phantom-head-demo", device="auto")
        results = logic.synthesizeFiles(["a.nii.gz", "b.nrrd"], "/out", model="phantom-head-demo")

    Non-blocking (what the panel does): ``startBackgroundSynthesis`` -> poll ``job.process`` ->
    ``finishBackgroundSynthesis``.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> SynthesisParameters:
        """The module's parameters (``parameters.SynthesisParameters`` over the scene's parameter node)."""
        return wrapParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self), SynthesisParameters)

    # ------------------------------------------------------------------------------------------- dependencies

    @staticmethod
    def setupPythonRequirements(askConfirmation=True):
        """Install what is missing: torch through the PyTorch extension, then the engine's pip requirements
        (``dependencies.ENGINE_REQUIREMENTS``). False if the user declined, True when everything is installed; nothing
        Slicer ships is upgraded. RuntimeError with what to do if the PyTorch extension is missing, torch is too old,
        or pip fails (for example offline)."""
        return dependencies.setupPythonRequirements(dependencies.ENGINE_REQUIREMENTS, askConfirmation,
                                                    "MR to CT Synthesis")

    # ------------------------------------------------------------------------------------------- models, devices

    @staticmethod
    def availableModels():
        """Catalog and locally trained models: dicts with name, description, source ("catalog"/"local"), path."""
        try:
            from MRtoCTSynthesisLib.modelfile import Catalog
        except ImportError:  # torch or safetensors not installed yet: read the catalog file itself
            import json

            folder = MODULE_DIR / "Resources" / "Models"
            catalog = json.loads((folder / "catalog.json").read_text(encoding="utf-8"))
            return [{"name": m["name"], "description": m.get("description", ""), "source": "catalog",
                     "path": str(folder / m["file"]) if (folder / m.get("file", "-")).is_file() else None}
                    for m in catalog.get("models", [])]
        return Catalog().list_models()

    def modelDescription(self, model):
        """One line about a model (catalog or file) for the panel; never raises."""
        try:
            for entry in self.availableModels():
                if entry["name"] == model:
                    return entry.get("description") or ""
            if os.path.isfile(model):
                from MRtoCTSynthesisLib.modelfile import read_metadata

                metadata = read_metadata(model)
                return f"{metadata['name']}: {metadata['description']} (license: {metadata['license']})"
        except Exception as error:
            return f"Cannot read this model: {error}"
        return ""

    def modelNeedsDownload(self, model):
        """True for a catalog model that has a download URL but no local file yet."""
        if os.path.isfile(str(model)):
            return False
        from MRtoCTSynthesisLib.modelfile import Catalog

        catalog = Catalog()
        if "url" not in catalog.models.get(str(model), {}):
            return False
        return not any(entry["name"] == model and entry["path"] for entry in catalog.list_models()
                       if entry["source"] == "catalog")

    @staticmethod
    def downloadModel(model, progress=None):
        """Download catalog model ``model`` into the model cache (sha256-checked); returns its path."""
        from MRtoCTSynthesisLib.modelfile import Catalog

        return Catalog().download(model, progress=progress)

    # ------------------------------------------------------------------------------------------- blocking synthesis

    def synthesize(self, inputVolume, model=DEFAULT_MODEL, device="auto", outputNode=None, qualityMap=False,
                   precision="auto", batchSize=None, progress=None, cancel=None, inputIsMR=False):
        """Synthesize a CT from ``inputVolume`` (blocking); returns the sCT scalar volume node.

        The sCT has the input's exact geometry (IJK-to-RAS, dimensions, parent transform), float32 HU voxels, a CT
        window/level and is named "<input name> sCT" (``outputNode`` given: that node is overwritten instead). With
        ``qualityMap`` the quality maps become volumes referenced by the sCT (see ``qualityVolumes``).
        ``progress(fraction, message)`` is called during the run; ``cancel()`` returning True stops it and raises
        ``SynthesisCancelled``. The input node is never modified, and on error or cancel the scene is unchanged.
        ``inputIsMR`` accepts an MR that looks like a label map or an unrescaled CT (refused by default).
        """
        from MRtoCTSynthesisLib.synthesis import synthesize

        checkVolumeNodes(inputVolume, outputNode)
        image = sitkImageFromVolumeNode(inputVolume)
        result = synthesize(image, model, device=device, batch_size=batchSize, precision=precision,
                            quality_map=qualityMap, progress=progress, cancel=cancel, input_is_mr=inputIsMR)
        return self._storeResult(inputVolume, result.sct, result.quality, outputNode,
                                 {"Model": result.model_name, "Device": result.device,
                                  "Seconds": f"{result.seconds:.2f}"})

    def synthesizeFiles(self, inputs, outputFolder, model=DEFAULT_MODEL, device="auto", qualityMap=False,
                        dicomFolder=None, precision="auto", batchSize=None, progress=None, cancel=None,
                        inputIsMR=False):
        """Synthesize CTs for many MR files (blocking, no scene change): ``<outputFolder>/<name>_sct.nii.gz`` each.

        ``inputs``: a list of volume files / DICOM series folders, or one folder whose volume files are all used.
        Returns the engine's per-file results (``input``, ``output``, ``error``, ``seconds``): one failing file is
        reported in its result and the others go on; a failed file leaves no output behind.
        """
        from MRtoCTSynthesisLib.synthesis import synthesize_files

        return synthesize_files(self.expandInputs(inputs), outputFolder, model, device=device,
                                quality_map=qualityMap, dicom_out=dicomFolder, progress=progress, cancel=cancel,
                                batch_size=batchSize, precision=precision, input_is_mr=inputIsMR)

    @staticmethod
    def expandInputs(inputs):
        """A folder of volume files -> its volume files (sorted); a DICOM folder or a list -> as given."""
        from MRtoCTSynthesisLib.volumes import VOLUME_SUFFIXES

        if isinstance(inputs, (str, os.PathLike)):
            folder = Path(inputs)
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)) \
                if folder.is_dir() else []
            return files or [folder]
        return [Path(p) for p in inputs]

    # ------------------------------------------------------------------------------------------- background synthesis

    def startBackgroundSynthesis(self, inputVolume, model=DEFAULT_MODEL, device="auto", precision="auto",
                                 qualityMap=False, outputVolume=None, python=None, inputIsMR=False):
        """Start the synthesis in a child process (``python -m MRtoCTSynthesisLib.cli synthesize``) and return a
        ``SynthesisJob``. Poll ``job.process.poll()``; when ``job.process.finished``, call
        ``finishBackgroundSynthesis(job)``. The scene is not touched until then."""
        from MRtoCTSynthesisLib.background import BackgroundSynthesis

        checkVolumeNodes(inputVolume, outputVolume)
        workDir = Path(tempfile.mkdtemp(prefix="MRtoCTSynthesis-"))
        try:
            inputPath = workDir / "input" / f"{safeFileName(inputVolume.GetName())}.nrrd"
            inputPath.parent.mkdir()
            writeVolumeNodeToFile(inputVolume, inputPath)
            process = BackgroundSynthesis([inputPath], workDir / "output", model=model, device=device,
                                          quality_map=qualityMap, precision=precision, python=python or pythonExecutable(),
                                          input_is_mr=inputIsMR).start()
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return SynthesisJob(process, workDir, inputVolume.GetID(), outputVolume.GetID() if outputVolume else None,
                            inputVolume.GetScene())

    def cancelBackgroundSynthesis(self, job):
        """Kill the job's process tree and delete its files; the scene stays as it was."""
        job.process.cancel()
        job.removeWorkDir()

    def finishBackgroundSynthesis(self, job):
        """Load a finished job's sCT (and quality maps) into the scene; returns the sCT node, None if cancelled.
        Raises RuntimeError with the process's message if it failed. The job's files are deleted."""
        import SimpleITK as sitk
        from MRtoCTSynthesisLib.background import quality_outputs

        try:
            process = job.process
            if not process.finished:
                process.wait()
            if process.cancelled:
                return None
            if not process.succeeded:
                raise RuntimeError(process.error)
            inputVolume = job.inputVolume()
            if inputVolume is None:
                raise RuntimeError("the input volume was removed from the scene while the synthesis was running")
            record = process.results[0]
            sct = sitk.ReadImage(record["output"], sitk.sitkFloat32)
            quality = {name: sitk.ReadImage(str(path), sitk.sitkFloat32)
                       for name, path in quality_outputs(record).items()}
            return self._storeResult(inputVolume, sct, quality, job.outputVolume(), {
                "Model": record.get("model_name") or self._modelName(job.process.model),
                "Device": record.get("device") or job.process.device, "Seconds": f"{record.get('seconds', 0.0)}"})
        finally:
            job.removeWorkDir()

    @staticmethod
    def _modelName(model):
        """The name in a model file's metadata; a catalog or local model's name as is."""
        if os.path.isfile(str(model)):
            from MRtoCTSynthesisLib.modelfile import read_metadata

            return read_metadata(model)["name"]
        return str(model)

    # ------------------------------------------------------------------------------------------- results in the scene

    def _storeResult(self, inputVolume, sct, quality, outputVolume, attributes):
        """Write engine outputs into the scene on the input's exact geometry; a failure leaves no new node."""
        dimensions = tuple(inputVolume.GetImageData().GetDimensions())
        for name, image in [("sCT", sct)] + list(quality.items()):
            if tuple(image.GetSize()) != dimensions:
                raise RuntimeError(f"the engine returned the {name} on another grid than the input "
                                   f"({image.GetSize()} voxels instead of {dimensions})")
        scene = inputVolume.GetScene()
        created = []
        try:
            if outputVolume is None:
                outputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                       scene.GenerateUniqueName(f"{inputVolume.GetName()} sCT"))
                created.append(outputVolume)
            writeVolumeOnGridOf(outputVolume, sct, inputVolume)
            for key, value in attributes.items():
                outputVolume.SetAttribute(f"MRtoCTSynthesis.{key}", str(value))
            outputVolume.SetNodeReferenceID(SOURCE_REFERENCE, inputVolume.GetID())
            self.setCTDisplay(outputVolume)
            for name, image in quality.items():
                role = QUALITY_REFERENCE_PREFIX + name
                qualityVolume = outputVolume.GetNodeReference(role)
                if qualityVolume is None:
                    label = name.replace("_", " ")
                    qualityVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(
                        f"{outputVolume.GetName()} quality ({label})"))
                    created.append(qualityVolume)
                writeVolumeOnGridOf(qualityVolume, image, inputVolume)
                setQualityDisplay(qualityVolume)
                outputVolume.SetNodeReferenceID(role, qualityVolume.GetID())
            placeBesideInSubjectHierarchy(inputVolume, [outputVolume] + [
                outputVolume.GetNodeReference(QUALITY_REFERENCE_PREFIX + name) for name in quality])
        except BaseException:
            for node in created:
                scene.RemoveNode(node)
            raise
        return outputVolume

    @staticmethod
    def qualityVolumes(sctVolume):
        """Quality-map volumes of an sCT node, by map name ("cycle_residual", "structure_discrepancy")."""
        volumes = {}
        for index in range(sctVolume.GetNumberOfNodeReferenceRoles()):
            role = sctVolume.GetNthNodeReferenceRole(index)
            if role.startswith(QUALITY_REFERENCE_PREFIX) and sctVolume.GetNodeReference(role) is not None:
                volumes[role[len(QUALITY_REFERENCE_PREFIX):]] = sctVolume.GetNodeReference(role)
        return volumes

    # the display helpers, on the logic for Python-console users (``logic.showResult(mr, sct)``)
    setCTDisplay = staticmethod(display.setCTDisplay)
    showResult = staticmethod(display.showResult)
    showQualityMap = staticmethod(display.showQualityMap)

    # ------------------------------------------------------------------------------------------- DICOM

    def exportDicom(self, sctVolume, folder, referenceVolume=None, overwrite=False):
        """Write the sCT as a DICOM CT series (one file per slice) into ``folder``; returns the files.

        If ``referenceVolume`` (the MR) was loaded from DICOM, the series joins its patient, study and frame of
        reference, so a planning system shows the sCT beside the MR.
        """
        from MRtoCTSynthesisLib.dicom_export import write_ct_series

        if not folder:
            raise ValueError("no DICOM output folder selected")
        return write_ct_series(sitkImageFromVolumeNode(sctVolume), folder,
                               reference_dicom=self.referenceDicomFile(referenceVolume), overwrite=overwrite)

    @staticmethod
    def referenceDicomFile(volumeNode):
        """A DICOM file the volume was loaded from (via Slicer's DICOM database), or None."""
        if volumeNode is None:
            return None
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        path = database.fileForInstance(uids[0])
        return path if path and os.path.isfile(path) else None
