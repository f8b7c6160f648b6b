"""Combo boxes of the panels (PythonQt conventions): refilled without losing the chosen item, the device list and
the precision menu from the acceleration probe's answer.

Why the refill matters: Qt makes the first item current when a combo box is cleared and refilled; with signals
blocked nobody notices, the parameter node still names the chosen model, and the next GUI change writes the first
model back. ``fillComboBox`` makes the chosen item current again.
"""
import qt

from MRtoCTSynthesisLib.config import PRECISIONS

PRECISION_LABELS = {"bfloat16": "bfloat16 (half range, GPU)", "float16": "float16 (half precision, GPU)",
                    "float32": "float32 (full precision)"}


def fillComboBox(combo, items, selected=None, separatorBefore=None) -> bool:
    """Replace the items of ``combo`` by ``items`` ((label, data) or (label, data, tool tip)) with its signals
    blocked; the item whose data is ``selected`` (default: the current one) is current afterwards. An item whose data
    is ``separatorBefore`` gets a separator above it. Returns False if ``selected`` is not among the items."""
    if selected is None:
        selected = combo.currentData
    wasBlocked = combo.blockSignals(True)
    try:
        combo.clear()
        for item in items:
            label, data = item[0], item[1]
            if separatorBefore is not None and data == separatorBefore and combo.count:
                combo.insertSeparator(combo.count)
            combo.addItem(label, data)
            if len(item) > 2 and item[2]:
                combo.setItemData(combo.count - 1, item[2], qt.Qt.ToolTipRole)
        index = combo.findData(selected) if selected is not None else -1
        combo.setCurrentIndex(max(index, 0))
    finally:
        combo.blockSignals(wasBlocked)
    return index >= 0


def deviceItems(devices):
    """(label, device) items for the device combo box: "auto" and "cpu" first, then the GPUs the probe found."""
    labels = {"auto": "Automatic (GPU if available)", "cpu": "CPU", "mps": "Apple GPU (MPS)"}
    return [(labels.get(d, f"GPU {d.partition(':')[2]} ({d})" if d.startswith("cuda") else d), d) for d in devices]


def automaticChoice(devices, choices, device):
    """What ``auto`` precision means on ``device`` (for "auto": the first GPU the probe found, else the CPU):
    (device, {"precision", "backend", "reason"}) or (device, None) when the probe did not say."""
    if device == "auto":
        device = next((d for d in devices if d not in ("auto", "cpu")), "cpu")
    return device, choices.get(device)


def precisionItems(devices, choices, device):
    """(label, precision) items; the "auto" label says what auto chose on ``device``, from the acceleration probe."""
    where, choice = automaticChoice(devices, choices, device)
    if choice and choice.get("precision"):
        auto = f"Automatic: {choice['precision']} on {where}"
        if choice.get("backend"):
            auto += f" ({choice['backend']})"
        tip = choice.get("reason") or ""
    else:
        auto, tip = "Automatic", "the engine chooses when the synthesis starts"
    return [(auto, "auto", tip)] + [(PRECISION_LABELS[p], p) for p in PRECISIONS[1:]]
