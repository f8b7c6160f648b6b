"""The trainer's preview picture in the training panel (PythonQt conventions)."""
import qt

NO_PREVIEW = "The preview (MR | synthetic CT | reconstructed MR | a CT) appears here during training."


def showPreview(label, path) -> None:
    """The preview PNG (MR | sCT | reconstructed MR | a CT) in ``label``, scaled to its width; None: the placeholder
    text. A file that does not read (the trainer is rewriting it) keeps the last picture."""
    if path is None:
        label.setPixmap(qt.QPixmap())
        label.text = NO_PREVIEW
        return
    pixmap = qt.QPixmap(path)
    if pixmap.isNull():
        return
    label.setPixmap(pixmap.scaledToWidth(max(200, label.width - 4), qt.Qt.SmoothTransformation))
    label.toolTip = path
