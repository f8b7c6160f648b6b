"""Volume node <-> SimpleITK image with exact geometry, and the checks on input/output volume nodes (no Qt)."""
import vtk

import slicer


def _lpsFromRas():
    import numpy as np

    return np.diag([-1.0, -1.0, 1.0])


def sitkImageFromVolumeNode(volumeNode):
    """A SimpleITK image (a copy) with the voxels and exact geometry of a scalar volume node.

    Geometry: the node's IJK-to-RAS matrix converted to LPS (SimpleITK's convention): direction * spacing =
    diag(-1, -1, 1) @ IJKToRAS[:3, :3], origin = diag(-1, -1, 1) @ IJKToRAS[:3, 3]. A parent transform of the node is
    not applied (the image is in the node's local frame). The node is not modified.
    """
    import numpy as np
    import SimpleITK as sitk

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("the volume node has no image data")
    components = volumeNode.GetImageData().GetNumberOfScalarComponents()
    if components != 1:
        raise ValueError(f"volume '{volumeNode.GetName()}' has {components} components per voxel; a scalar (grey) "
                         "volume is needed")
    array = slicer.util.arrayFromVolume(volumeNode)  # (K, J, I) view on the node's voxels
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = slicer.util.arrayFromVTKMatrix(ijkToRas)
    lps = _lpsFromRas() @ matrix[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    return image


def updateVolumeNodeFromSitkImage(volumeNode, image):
    """Set a volume node's voxels (deep copy) and IJK-to-RAS geometry from a 3D scalar SimpleITK image."""
    import numpy as np
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("a 3D scalar image is needed")
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _lpsFromRas() @ (direction * np.array(image.GetSpacing(), float))
    matrix[:3, 3] = _lpsFromRas() @ np.array(image.GetOrigin(), float)
    slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    return volumeNode


def writeVolumeOnGridOf(volumeNode, image, inputVolume):
    """An engine output into ``volumeNode`` with ``inputVolume``'s matrix bit for bit and its parent transform."""
    updateVolumeNodeFromSitkImage(volumeNode, image)
    volumeNode.CopyOrientation(inputVolume)
    volumeNode.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())


def checkVolumeNodes(inputVolume, outputVolume=None):
    """ValueError naming the problem: no input, not a grey-level volume, no voxels, output = input or not scalar."""
    if inputVolume is None:
        raise ValueError("no input MR volume selected")
    if not inputVolume.IsA("vtkMRMLScalarVolumeNode") or inputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"'{inputVolume.GetName()}' is not a scalar (grey-level) volume")
    if inputVolume.GetImageData() is None:
        raise ValueError(f"volume '{inputVolume.GetName()}' has no voxels")
    if outputVolume is not None:
        if outputVolume is inputVolume or outputVolume.GetID() == inputVolume.GetID():
            raise ValueError("the output volume must not be the input MR: choose another volume or 'Create new'")
        if not outputVolume.IsA("vtkMRMLScalarVolumeNode") or outputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(f"output '{outputVolume.GetName()}' must be a scalar volume")


def safeFileName(name: str) -> str:
    """A node name as a file name (letters, digits, - _ . kept; the rest '_')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "volume"


def writeVolumeNodeToFile(volumeNode, path):
    """A scalar volume node written as a file (NRRD, NIfTI) with its exact geometry, for a child process to read."""
    import SimpleITK as sitk

    sitk.WriteImage(sitkImageFromVolumeNode(volumeNode), str(path), False)
    return path
