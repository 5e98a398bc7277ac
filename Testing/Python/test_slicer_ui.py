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
# tab -> (its title, the screenshot's name; the Interactive panel's keeps the name the extension's metadata links)
PANELS = {"segmentTab": ("Segment", "segment"), "clickTab": ("Interactive", "points"), "trainTab": ("Train", "train"),
          "modelsTab": ("Models", "models")}


from pythonqt_shim import STAND_INS  # noqa: E402  (the same MRML/CTK stand-ins the Widget test uses)


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
    assert tabs.tabText(tabs.indexOf(page)) == PANELS[tab_name][0]
    panel.findChild(QtWidgets.QFrame, "dependencyFrame").setVisible(False)  # installed: the usual state
    panel.show()
    QtWidgets.QApplication.processEvents()
    image = panel.grab().toImage()
    assert image.width() >= 300 and image.height() >= 400
    assert _distinct_colours(image) > 8, "the panel rendered blank"
    for folder in (SCREENSHOTS, Path(os.environ.get("MEDFOUND_ARTIFACTS", REPO / "artifacts")) / "slicer"):
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"MedFoundSlicer-{PANELS[tab_name][1]}.png"
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


JARGON = ("zero-shot", "zeroshot", "mean presence", "ω", "prompted-segmenter", "encoder3d", "PyTorch Utils")


def _ui_strings() -> list[str]:
    return [e.text for e in ET.parse(UI_FILE).getroot().iter("string") if e.text]


def _translated_strings() -> list[str]:
    source = (MODULE_DIR / "MedFoundSlicer.py").read_text()
    return re.findall(r'_\(\s*"((?:[^"\\]|\\.)*)"', source)


def test_clinician_wording_has_no_jargon():
    texts = _ui_strings() + _translated_strings()
    assert len(texts) > 50
    found = sorted({(word, text) for text in texts for word in JARGON if word.lower() in text.lower()})
    assert not found, f"jargon in what users read: {found}"


def test_one_device_selector_and_advanced_settings_collapsed(panel):
    root = ET.parse(UI_FILE).getroot()
    devices = [w.get("name") for w in root.iter("widget") if w.get("class") == "QComboBox" and "device" in w.get("name").lower()]
    assert devices == ["deviceComboBox"]
    advanced = {w.get("name"): w for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"
                and any(s.text == "Advanced" for s in w.iter("string"))}
    assert set(advanced) == {"advancedCollapsibleButton", "trainAdvancedCollapsibleButton", "clickAdvancedCollapsibleButton"}
    for name in advanced:
        assert panel.findChild(QtCore.QObject, name).property("collapsed") is True, name
    inside = {w.get("name") for name in advanced for w in advanced[name].iter("widget")}
    assert {"deviceComboBox", "learningRateSpinBox", "batchSizeSpinBox", "clickModelComboBox"} <= inside


def test_progress_bars_are_hidden_when_idle(panel):
    bars = panel.findChildren(QtWidgets.QProgressBar)
    assert len(bars) == 3 and all(bar.isHidden() for bar in bars)


def test_interactive_tools_name_their_shortcuts_and_the_coordinate_tables_are_gone(panel):
    """Every tool of the Interactive panel says its keyboard shortcut in its tooltip (the Widget's SHORTCUTS),
    the tools toggle (place mode on/off), and the old point-coordinate tables are not in the panel."""
    import MedFoundSlicer

    shortcuts = MedFoundSlicer.MedFoundSlicerWidget.SHORTCUTS
    assert set(MedFoundSlicer.MedFoundSlicerWidget.TOOL_BUTTONS.values()) <= set(shortcuts)
    for name, keys in shortcuts.items():
        button = panel.findChild(QtWidgets.QPushButton, name)
        assert f"({keys})" in button.toolTip(), (name, button.toolTip())
    for name in MedFoundSlicer.MedFoundSlicerWidget.TOOL_BUTTONS.values():
        assert panel.findChild(QtWidgets.QPushButton, name).isCheckable(), name
    assert len(set(shortcuts.values())) == len(shortcuts)
    slicer_keys = {"B", "F", "G", "T", "V", "R", "S", "I", "Q", "W", "Z", "Y", "Ctrl+Z", "Ctrl+Y", "Space"}  # Slicer's own
    assert not set(shortcuts.values()) & slicer_keys
    page = panel.findChild(QtWidgets.QWidget, "clickTab")
    assert not [w.objectName() for w in page.findChildren(QtWidgets.QTableWidget)]
    assert panel.findChild(QtCore.QObject, "positivePointsWidget") is None
