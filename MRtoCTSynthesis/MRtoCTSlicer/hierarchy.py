"""Subject hierarchy placement of the modules' outputs (no Qt)."""
import slicer


def placeBesideInSubjectHierarchy(inputNode, nodes):
    """Put ``nodes`` in ``inputNode``'s subject-hierarchy folder (its study, for DICOM data)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(inputNode.GetScene())
    inputItem = shNode.GetItemByDataNode(inputNode) if shNode else 0
    if not inputItem:
        return
    parent = shNode.GetItemParent(inputItem)
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parent)
        else:
            shNode.CreateItem(parent, node)
