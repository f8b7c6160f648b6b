"""How the sCT and its quality maps are shown: CT window/level presets and slice-view layers (no Qt)."""
import slicer

# name -> (label, window, level) in HU
CT_WINDOW_PRESETS = {
    "wide": ("CT wide (W 2000 / L 400)", 2000.0, 400.0),
    "bone": ("Bone (W 1000 / L 400)", 1000.0, 400.0),
    "soft": ("Soft tissue (W 400 / L 40)", 400.0, 40.0),
    "brain": ("Brain (W 80 / L 40)", 80.0, 40.0),
}
DEFAULT_WINDOW_PRESET = "wide"
QUALITY_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"


def setCTDisplay(volumeNode, preset=DEFAULT_WINDOW_PRESET):
    """Grey colour map and a CT window/level (``CT_WINDOW_PRESETS``; all of them are offered as presets)."""
    if preset not in CT_WINDOW_PRESETS:
        raise ValueError(f"unknown window preset {preset!r}; choose one of {sorted(CT_WINDOW_PRESETS)}")
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    display = volumeNode.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.ResetWindowLevelPresets()
    for _, window, level in CT_WINDOW_PRESETS.values():
        display.AddWindowLevelPreset(window, level)
    _, window, level = CT_WINDOW_PRESETS[preset]
    display.AutoWindowLevelOff()
    display.SetWindowLevel(window, level)


def setQualityDisplay(volumeNode):
    """Hot colours with automatic window/level for a quality map."""
    volumeNode.CreateDefaultDisplayNodes()
    volumeNode.GetDisplayNode().SetAndObserveColorNodeID(QUALITY_COLOR_NODE_ID)
    volumeNode.GetDisplayNode().AutoWindowLevelOn()


def showResult(inputVolume, sctVolume, mrOpacity=0.0, fit=False):
    """Slice views: sCT in the background, the MR in the foreground at ``mrOpacity`` (drag it to compare)."""
    slicer.util.setSliceViewerLayers(background=sctVolume, foreground=inputVolume, foregroundOpacity=mrOpacity,
                                     fit=fit)


def showQualityMap(sctVolume, qualityVolume, opacity=0.6):
    """Slice views: the quality map (hot colours = least trust) over the sCT."""
    slicer.util.setSliceViewerLayers(background=sctVolume, foreground=qualityVolume, foregroundOpacity=opacity)


def setMROpacity(opacity):
    slicer.util.setSliceViewerLayers(foregroundOpacity=opacity)
