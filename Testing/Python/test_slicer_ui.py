"""The module's .ui loads under PySide6 (offscreen) with stand-ins for Slicer's widgets.

Checks that every ``self.ui.<name>`` the Widget code uses exists in the .ui (a renamed widget would
otherwise only fail inside Slicer), and writes one screenshot per panel to Resources/Screenshots/
and to ``$MEDFOUND_ARTIFACTS/slicer`` (default ``artifacts/slicer``) for review.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402  (after QT_QPA_PLATFORM)

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedFoundSlicer"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedFoundSlicer.ui"
SCREENSHOTS = REPO / "Resources" / "Screenshots"
PANELS = {"segmentTab": "Segment", "clickTab": "Zero-shot", "trainTab": "Train", "modelsTab": "Models"}


# ---------------------------------------------------------------- stand-ins for Slicer widgets
class qMRMLWidget(QtWidgets.QWidget):
    pass


class qSlicerWidget(QtWidgets.QWidget):
    pass


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Shows what Slicer would with a CT loaded: the 'none' text if enabled, else a node of its type."""

    SAMPLE = {"vtkMRMLScalarVolumeNode": "CT abdomen", "vtkMRMLSegmentationNode": "CT abdomen segmentation"}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._types: list[str] = []
        self._none = ""

    def _refresh(self) -> None:
        self.clear()
        self.addItem(self._none or self.SAMPLE.get(self._types[0] if self._types else "", "node"))

    def _get_types(self) -> list[str]:
        return self._types

    def _set_types(self, types) -> None:
        self._types = list(types)
        self._refresh()

    def _get_none(self) -> str:
        return self._none

    def _set_none(self, text: str) -> None:
        self._none = text
        self._refresh()

    nodeTypes = QtCore.Property("QStringList", _get_types, _set_types)
    noneDisplay = QtCore.Property(str, _get_none, _set_none)


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """A group box titled like the collapsible button's text (the loader sets Qt properties)."""

    def _text(self) -> str:
        return self.title()

    def _set_text(self, text: str) -> None:
        self.setTitle(text)

    def _collapsed(self) -> bool:
        return False

    def _set_collapsed(self, collapsed: bool) -> None:
        self.setChecked(not collapsed) if self.isCheckable() else None

    text = QtCore.Property(str, _text, _set_text)
    collapsed = QtCore.Property(bool, _collapsed, _set_collapsed)


class ctkPathLineEdit(QtWidgets.QLineEdit):
    pass


class qSlicerSimpleMarkupsWidget(QtWidgets.QWidget):
    """A node selector and a small point table, like the real widget."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        combo = QtWidgets.QComboBox()
        combo.addItem("Point list")
        table = QtWidgets.QTableWidget(2, 4)
        table.setHorizontalHeaderLabels(["Name", "R", "A", "S"])
        table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.Stretch)
        table.verticalHeader().setVisible(False)
        table.setMaximumHeight(80)
        layout.addWidget(combo)
        layout.addWidget(table)


STAND_INS = [qMRMLWidget, qSlicerWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit, qSlicerSimpleMarkupsWidget]


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def panel(app):
    loader = QtUiTools.QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    stream = QtCore.QFile(str(UI_FILE))
    assert stream.open(QtCore.QFile.ReadOnly)
    widget = loader.load(stream)
    stream.close()
    assert widget is not None, loader.errorString()
    widget.resize(460, 900)
    return widget


def _ui_names() -> list[str]:
    return [w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")]


def test_widget_names_are_unique():
    names = _ui_names()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate widget names in {UI_FILE.name}: {duplicates}"


def test_every_widget_the_code_uses_exists(panel):
    source = (MODULE_DIR / "MedFoundSlicer.py").read_text()
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", source))
    assert len(used) > 30, "the Widget should look its controls up through self.ui"
    missing = sorted(n for n in used if panel.findChild(QtCore.QObject, n) is None)
    assert not missing, f"widgets used by MedFoundSlicer.py but absent from the .ui: {missing}"


def test_custom_widgets_are_declared():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    qt_classes = {c for c in used if c.startswith("Q")}
    assert used - qt_classes <= declared, f"undeclared custom widgets: {sorted(used - qt_classes - declared)}"


@pytest.mark.parametrize("tab_name", list(PANELS))
def test_panel_screenshot(panel, tab_name, tmp_path):
    tabs = panel.findChild(QtWidgets.QTabWidget, "tabWidget")
    page = panel.findChild(QtWidgets.QWidget, tab_name)
    tabs.setCurrentWidget(page)
    panel.findChild(QtWidgets.QFrame, "dependencyFrame").setVisible(False)  # installed: the usual state
    panel.show()
    QtWidgets.QApplication.processEvents()
    image = panel.grab().toImage()
    assert image.width() >= 300 and image.height() >= 400
    assert _distinct_colours(image) > 8, "the panel rendered blank"
    for folder in (SCREENSHOTS, Path(os.environ.get("MEDFOUND_ARTIFACTS", REPO / "artifacts")) / "slicer"):
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"MedFoundSlicer-{PANELS[tab_name].replace('-', '').lower()}.png"
        partial = target.with_suffix(".tmp.png")
        assert image.save(str(partial), "PNG")
        os.replace(partial, target)
    # every visible control of the page lies inside the panel (nothing clipped off the right edge)
    for child in page.findChildren(QtWidgets.QAbstractButton):
        if child.isVisible():
            right = child.mapTo(panel, QtCore.QPoint(child.width(), 0)).x()
            assert right <= panel.width(), f"{child.objectName()} is clipped"


def _distinct_colours(image: QtGui.QImage) -> int:
    step = max(1, image.width() // 40)
    colours = {image.pixel(x, y) for x in range(0, image.width(), step) for y in range(0, image.height(), step)}
    return len(colours)


def test_node_selectors_declare_their_node_types(panel):
    expected = {"inputVolumeSelector": "vtkMRMLScalarVolumeNode", "clickVolumeSelector": "vtkMRMLScalarVolumeNode",
                "trainVolumeSelector": "vtkMRMLScalarVolumeNode", "outputSegmentationSelector": "vtkMRMLSegmentationNode",
                "clickOutputSelector": "vtkMRMLSegmentationNode", "trainSegmentationSelector": "vtkMRMLSegmentationNode"}
    for name, node_type in expected.items():
        selector = panel.findChild(QtCore.QObject, name)
        assert list(selector.property("nodeTypes")) == [node_type], name
