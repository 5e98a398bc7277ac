"""The module's Widget, built from the real .ui under PySide6 offscreen, driven through its own slots:
one text-prompted segmentation (in the child process) and one cancel, on a real CT in a real MRML scene."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6 import QtWidgets  # noqa: E402  (after QT_QPA_PLATFORM)

import pythonqt_shim  # noqa: E402
import slicer  # noqa: E402
from MedFoundSlicerLib import nodes, selftest  # noqa: E402

SLICE_MODEL = "starter-v2"  # the Dice floors of selftest were measured with it
LIMIT_S = 600  # only stops a hang; nothing here is timed


@pytest.fixture
def widget(monkeypatch, model_store):
    """MedFoundSlicerWidget set up in a fresh scene, warm-up finished."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    dialogs = pythonqt_shim.Dialogs()
    qt, ctk = pythonqt_shim.install(monkeypatch, dialogs)
    import MedFoundSlicer

    monkeypatch.setattr(MedFoundSlicer, "qt", qt)
    monkeypatch.setattr(MedFoundSlicer, "ctk", ctk)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene())
    parent = QtWidgets.QWidget()
    parent.setLayout(QtWidgets.QVBoxLayout())
    module_widget = MedFoundSlicer.MedFoundSlicerWidget(pythonqt_shim.wrap(parent))
    module_widget.setup()
    module_widget.dialogs = dialogs
    _run_until(app, lambda: module_widget._warmJob is None)
    assert not dialogs.errors, dialogs.errors
    yield module_widget
    module_widget.cleanup()
    parent.deleteLater()


def _run_until(app, condition) -> None:
    """Spin the Qt event loop (the Widget's QTimer polls the job) until ``condition()``."""
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        assert time.monotonic() < deadline, "the widget never reached the expected state"
        app.processEvents()
        time.sleep(0.02)


def _prepare(widget, shared_data):
    volume = nodes.load_volume_node(slicer.mrmlScene, str(shared_data / f"{selftest.CASE}_img.nii.gz"))
    ui = widget.ui
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.promptsTextEdit.setPlainText("liver\nspleen")
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findText(SLICE_MODEL))
    assert ui.modelComboBox.currentText == SLICE_MODEL
    return volume


def test_segment_through_the_widget(widget, shared_data):
    app = QtWidgets.QApplication.instance()
    ui = widget.ui
    assert ui.modelComboBox.currentIndex == 0 and widget._segmentModel() == "default"  # the core chooses per modality
    volume = _prepare(widget, shared_data)
    assert ui.tabWidget.enabled and ui.applyButton.text == "Segment" and ui.segmentProgressBar.isHidden()
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and not ui.segmentProgressBar.isHidden()
    _run_until(app, lambda: widget._job is None)
    assert not widget.dialogs.errors, widget.dialogs.errors
    assert ui.applyButton.text == "Segment" and ui.segmentProgressBar.isHidden()
    segmentation = ui.outputSegmentationSelector.currentNode()
    assert segmentation is not None and nodes.segment_names(segmentation) == ["liver", "spleen"]
    reference, values = selftest.reference_labels(shared_data)
    liver = segmentation.GetSegmentation().GetSegmentIdBySegmentName("liver")
    assert selftest.dice(nodes.segment_mask(segmentation, liver, volume), reference == values["liver"]) >= selftest.MIN_DICE["liver"]
    assert ui.summaryTable.rowCount == 2 and ui.summaryTable.item(0, 0).text() == "liver"
    ui.modelsTable.selectRow(0)  # the Models panel describes a model in words, not its JSON card
    assert "{" not in ui.modelCardTextEdit.plainText and "Research use only" in ui.modelCardTextEdit.plainText
    assert ui.segmentStatusLabel.text.startswith("2 of 2 structures found")
    choices = widget.logic.choices()  # the panel's choices went into the parameter node
    assert (choices["Prompts"], choices["Model"]) == ("liver\nspleen", SLICE_MODEL)
    assert widget.logic.chosenNode("InputVolume") is volume


def test_cancel_through_the_widget_leaves_the_scene_unchanged(widget, shared_data):
    app = QtWidgets.QApplication.instance()
    ui = widget.ui
    _prepare(widget, shared_data)
    ui.applyButton.click()
    job = widget._job
    _run_until(app, lambda: ui.segmentStatusLabel.text != "Starting...")  # the child reported progress
    before = selftest.scene_snapshot(slicer.mrmlScene)
    ui.applyButton.click()  # the button reads Cancel while the job runs
    _run_until(app, lambda: widget._job is None)
    assert job.state.value == "cancelled" and job.returncode is None  # killed, not finished
    assert ui.segmentStatusLabel.text == "Cancelled; the scene was not changed."
    assert selftest.scene_snapshot(slicer.mrmlScene) == before
    assert not widget.dialogs.errors and ui.applyButton.text == "Segment"
    # opening a scene shows the choices saved in its parameter node
    widget.logic.setChoices(Prompts="aorta", RegionCheck=False)
    slicer.mrmlScene.InvokeEvent(slicer.mrmlScene.EndImportEvent)
    assert ui.promptsTextEdit.plainText == "aorta" and not ui.regionCheckBox.checked
