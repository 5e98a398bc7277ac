"""MedFound: segmentation of CT/MRI in 3D Slicer from structure names or from points.

Thin by design: the Widget wires controls to :class:`MedFoundSlicerLogic`; the Logic (in
``MedFoundSlicerLib.logic``) owns all scene work and runs headless on slicer-core; MedFoundCore does
the computing. Heavy packages (torch, medfoundcore) are imported lazily, so the module always loads
and offers to install them.
"""

from __future__ import annotations

import logging
import os
import time

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedFoundSlicerLib import interactive
from MedFoundSlicerLib.install import STEPS, InstallCancelled, dependency_status, install_dependencies
from MedFoundSlicerLib.interactive_server import INTENSITY_MODEL, LEARNED_MODEL
from MedFoundSlicerLib.jobs import JobCallbacks, JobState
from MedFoundSlicerLib.logic import DEVICE_CHOICES, FINETUNE_KINDS, INTERACTIVE_KINDS, SEGMENT_KINDS, MedFoundLogic

try:  # Qt and CTK exist inside Slicer; headless slicer-core runs only the Logic and the Test scenarios.
    import ctk
    import qt
except ImportError:  # pragma: no cover - exercised only outside Slicer
    ctk = qt = None


#
# Module
#
class MedFoundSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedFound")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedFound developers"]
        self.parent.helpText = _(
            "Segment CT and MRI volumes by naming structures (one per line), or interactively: mark a structure "
            "with include and exclude points, a box or strokes and the segment updates after each mark; fine-tune "
            "models on your own segmentations and manage installed models. "
            "Segmenting, interactive work and training run in a separate process: Slicer stays responsive, and every job can be cancelled."
        )
        self.parent.acknowledgementText = _(
            "MedFound implements ideas from BiomedParse-V (fractal volumetric encoding, image-level structure "
            "detection) and 3DME (dual-branch progressive masking). Research use only; not for clinical decisions."
        )


#
# Logic
#
class MedFoundSlicerLogic(ScriptedLoadableModuleLogic, MedFoundLogic):
    """Slicer's logic object for MedFound; all behaviour lives in :class:`MedFoundLogic` (widget-free)."""

    def __init__(self, scene=None) -> None:
        # One cooperative chain, as Slicer's base class calls super().__init__() with no arguments:
        # ScriptedLoadableModuleLogic -> MedFoundLogic(scene=None) -> object; the scene is set after.
        super().__init__()
        self.scene = scene if scene is not None else slicer.mrmlScene


#
# Widget
#
class MedFoundSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The four panels: Segment, Interactive, Train and Models, and one Advanced section (device)."""

    POLL_INTERVAL_MS = 50
    FROM_SCRATCH = _("(train from scratch)")
    LEARNED_INTERACTIVE = _("Automatic: the learned model on a CT, intensity only on an MRI")  # the core's "default"
    INTENSITY_ONLY = _("Intensity only, no learning (points only)")
    AUTOMATIC_MODEL = _("Automatic (chosen for the image)")  # the core's "default": per modality (CT or MRI)
    LOADING_TEXT = _("Loading the interactive model (a few seconds, once per volume)...")
    UPDATING_TEXT = _("Updating the segment...")
    # Keyboard shortcuts of the Interactive panel, active while the module is shown. None of them is one of
    # Slicer's own (b/f slices, g/t/v/r views, s snaps a markup point, 0-9/q/w/i/z/y in the Segment Editor).
    SHORTCUTS = {"includePointButton": "A", "excludePointButton": "X", "boxButton": "Shift+B",
                 "includeStrokeButton": "L", "excludeStrokeButton": "Shift+L", "undoButton": "U", "newSegmentButton": "N"}
    TOOL_BUTTONS = {interactive.INCLUDE: "includePointButton", interactive.EXCLUDE: "excludePointButton",
                    interactive.BOX: "boxButton", interactive.STROKE_INCLUDE: "includeStrokeButton",
                    interactive.STROKE_EXCLUDE: "excludeStrokeButton"}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._warmJob = None
        self._job = None
        self._jobKind = ""
        self._jobContext = {}
        self._pairs = []
        self._interactive = None
        self._shortcuts = []
        self._metricsTable = None
        self._metricsChart = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFoundSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for selector in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector, self.ui.clickVolumeSelector,
                         self.ui.clickOutputSelector, self.ui.trainVolumeSelector, self.ui.trainSegmentationSelector):
            selector.setMRMLScene(slicer.mrmlScene)
        self.logic = MedFoundSlicerLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._poll)

        self._setupInteractive()
        self._connectSignals()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.ui.folderWidget.setVisible(False)
        self.ui.trainFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self._refreshDependencyState()

    def _connectSignals(self) -> None:
        ui = self.ui
        ui.installButton.connect("clicked()", self.onInstall)
        ui.promptLineEdit.connect("returnPressed()", self.onAddPrompt)
        ui.addPromptButton.connect("clicked()", self.onAddPrompt)
        ui.deviceComboBox.connect("currentIndexChanged(int)", lambda _index: self._updateDeviceWarning())
        ui.applyButton.connect("clicked()", self.onSegmentApply)
        ui.sceneSourceRadioButton.connect("toggled(bool)", self._onTrainSourceChanged)
        ui.addPairButton.connect("clicked()", self.onAddPair)
        ui.removePairButton.connect("clicked()", self.onRemovePair)
        ui.trainFolderPathLineEdit.connect("currentPathChanged(QString)", lambda _path: self._refreshPromptMap())
        ui.trainButton.connect("clicked()", self.onTrain)
        ui.modelsTable.connect("itemSelectionChanged()", self._showSelectedCard)
        ui.importModelButton.connect("clicked()", self.onImportModel)
        ui.deleteModelButton.connect("clicked()", self.onDeleteModel)
        ui.refreshModelsButton.connect("clicked()", self.refreshModels)

    def cleanup(self) -> None:
        """Called when the application closes: stop the worker, the interactive process and observers."""
        if self._job is not None:
            self._job.cancel()
        if self._interactive is not None:
            self._interactive.close()
        self._removeShortcuts()
        self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """The module is shown: its keyboard shortcuts become active."""
        self._installShortcuts()

    def exit(self) -> None:
        """Another module is shown: no shortcuts, no placing (the interactive process stays, for coming back)."""
        self._removeShortcuts()
        if self._interactive is not None:
            self._interactive.stopPlacing()

    def onSceneEndImport(self, _caller, _event) -> None:
        """A scene was opened: show the choices saved in its parameter node (once the panels are ready)."""
        if self._warmJob is None and self.ui.tabWidget.enabled:
            self._restoreSegmentChoices()

    def onSceneStartClose(self, _caller, _event) -> None:
        if self._job is not None:
            self._job.cancel()
        if self._interactive is not None:
            self._interactive.close()  # the process quits; the prompts and history go with the scene
        self._pairs = []
        self._metricsTable = self._metricsChart = None

    # ---------------------------------------------------------------- dependencies
    def _refreshDependencyState(self) -> None:
        status = dependency_status()
        self.ui.dependencyFrame.setVisible(not status.satisfied)
        self.ui.tabWidget.setEnabled(status.satisfied)
        if not status.satisfied:
            self.ui.dependencyLabel.text = _("MedFound needs {missing}. Install now (a few minutes, once).").format(
                missing=" and ".join(status.missing))
            return
        # Import torch and MedFoundCore on a worker (seconds, GIL-heavy) instead of stalling the GUI here.
        self.ui.tabWidget.setEnabled(False)
        self.ui.segmentStatusLabel.text = _("Loading MedFound...")
        self._warmJob = self.logic.startWarmUp(callbacks=JobCallbacks(on_done=self._onWarmUpDone))
        self._pollTimer.start()

    def _onWarmUpDone(self, job) -> None:
        self._warmJob = None
        if job.state is not JobState.SUCCEEDED:
            self.ui.dependencyFrame.setVisible(True)
            self.ui.installButton.setVisible(False)
            self.ui.dependencyLabel.text = _("MedFoundCore could not be loaded: {error}").format(error=job.error)
            logging.error("MedFound warm-up failed:\n%s", job.details)
            return
        self.ui.tabWidget.setEnabled(True)
        self.ui.segmentStatusLabel.text = ""
        self._populateVocabulary()
        self.refreshModels()
        self._restoreSegmentChoices()
        self._updateDeviceWarning()

    def onInstall(self) -> None:
        """Install PyTorch and MedFoundCore, then prepare the CT model's weights, under one progress dialog.

        The pip steps block (``slicer.util.pip_install`` keeps the GUI painted); the weight step runs
        in a child process polled here with ``processEvents``, so Slicer stays responsive and Cancel
        stops it. Errors go to Slicer's error display (``tryWithErrorDisplay``).
        """
        if not slicer.util.confirmOkCancelDisplay(
                _("Install the software MedFound needs (PyTorch and MedFoundCore) into Slicer and prepare the CT "
                  "model's pretrained weights? This downloads several hundred MB and takes a few minutes, once."),
                windowTitle=_("MedFound setup")):
            return
        dialog = slicer.util.createProgressDialog(windowTitle=_("MedFound setup"), labelText=_("Starting the setup..."),
                                                  maximum=100 * len(STEPS), autoClose=False, autoReset=False)
        current = {"text": ""}
        self.ui.installButton.setEnabled(False)  # the GUI runs on meanwhile: no second setup on top of this one

        def onStep(step: str, alreadyInstalled: bool) -> None:
            current["text"] = self._installStepText(step, alreadyInstalled)
            dialog.value = 100 * STEPS.index(step)
            dialog.labelText = current["text"]
            slicer.app.processEvents()  # show the new step before a blocking pip call

        def onProgress(progress) -> None:
            dialog.value = 100 * STEPS.index("ct-weights") + int(100 * (progress.fraction or 0))
            detail = self._installProgressText(progress)
            dialog.labelText = f"{current['text']}\n{detail}" if detail else current["text"]

        def tick() -> bool:
            slicer.app.processEvents()
            return bool(dialog.wasCanceled)

        def log(text: str) -> None:
            logging.info("MedFound setup: %s", text)
            slicer.util.showStatusMessage(text, 5000)

        try:
            with slicer.util.tryWithErrorDisplay(_("MedFound's setup did not finish."), waitCursor=False):
                try:
                    install_dependencies(slicer.util.pip_install, log=log, on_step=onStep, on_progress=onProgress, tick=tick)
                except InstallCancelled as stopped:
                    slicer.util.showStatusMessage(_("MedFound setup stopped: {reason}.").format(reason=stopped), 10000)
                else:
                    dialog.value = dialog.maximum
                    slicer.util.showStatusMessage(_("MedFound is ready."), 5000)
        finally:
            dialog.close()
            dialog.deleteLater()
            self.ui.installButton.setEnabled(True)
            self._refreshDependencyState()

    @staticmethod
    def _installStepText(step: str, alreadyInstalled: bool) -> str:
        number = _("Step {index} of {count}: ").format(index=STEPS.index(step) + 1, count=len(STEPS))
        if step == "torch":
            return number + (_("PyTorch, the engine that runs the AI models, is already installed.") if alreadyInstalled else
                             _("installing PyTorch, the engine that runs the AI models (a large download; a few minutes)..."))
        if step == "core":
            return number + (_("MedFound's segmentation software is already installed.") if alreadyInstalled else
                             _("installing MedFound's segmentation software..."))
        return number + _("preparing the CT model's pretrained weights and checking that they are intact...")

    @staticmethod
    def _installProgressText(progress) -> str:
        total = progress.total or 0
        if progress.stage == "reading":
            return _("Reading the weight files: {done} of {total} MB").format(done=progress.done, total=total)
        if progress.stage == "converting":
            return _("Converting them for fast loading (a few seconds)...")
        if progress.stage == "verifying":
            return _("Checking their integrity (checksum): {done} of {total} MB").format(done=progress.done, total=total)
        return ""

    # ---------------------------------------------------------------- shared helpers
    def _populateVocabulary(self) -> None:
        names = self.logic.vocabularyNames()
        completer = qt.QCompleter(names, self.ui.promptLineEdit)
        completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        completer.setFilterMode(qt.Qt.MatchContains)
        self.ui.promptLineEdit.setCompleter(completer)

    def refreshModels(self) -> None:
        """Fill every model selector and the Models table from the registry (called after train/import/delete)."""
        models = self.logic.models()
        for combo, kinds in ((self.ui.modelComboBox, SEGMENT_KINDS), (self.ui.baseModelComboBox, FINETUNE_KINDS),
                             (self.ui.clickModelComboBox, INTERACTIVE_KINDS)):
            current = combo.currentText
            combo.clear()
            for model in (m for m in models if m.kind in kinds):  # interactive-v1 by name: the learned model on any image
                combo.addItem(model.name)
            if combo is self.ui.modelComboBox:
                combo.insertItem(0, self.AUTOMATIC_MODEL)
            if combo is self.ui.baseModelComboBox:
                combo.addItem(self.FROM_SCRATCH)
            if combo is self.ui.clickModelComboBox:
                combo.insertItem(0, self.LEARNED_INTERACTIVE)
                combo.addItem(self.INTENSITY_ONLY)
            combo.setCurrentIndex(max(0, combo.findText(current)))
        table = self.ui.modelsTable
        table.setRowCount(len(models))
        for row, model in enumerate(models):
            for column, text in enumerate((model.name, model.kindLabel, model.version, ", ".join(model.prompts[:8]))):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        self._modelInfos = models
        self._showSelectedCard()

    def _deviceChoice(self, combo) -> str:
        return DEVICE_CHOICES.get(combo.currentText, "auto")

    def _updateDeviceWarning(self) -> None:
        report = self.logic.deviceReport(self._deviceChoice(self.ui.deviceComboBox))
        self.ui.deviceWarningLabel.text = report.warning
        self.ui.deviceWarningLabel.setVisible(bool(report.warning))

    def _startJob(self, kind: str, start, button, progressBar, statusLabel, runningText: str, **context) -> bool:
        """Start a job through ``start(callbacks)``; errors before the worker starts are shown, not raised."""
        callbacks = JobCallbacks(on_progress=lambda p: self._onProgress(p, progressBar, statusLabel),
                                 on_metrics=self._onMetrics, on_done=self._onJobDone)
        try:
            job = start(callbacks)
        except Exception as error:  # MedFoundError: a readable message; anything else: also shown
            statusLabel.text = str(error)
            slicer.util.errorDisplay(str(error), windowTitle=_("MedFound"))
            return False
        self._job, self._jobKind = job, kind
        self._jobContext = dict(context, button=button, progressBar=progressBar, statusLabel=statusLabel,
                                idleText=button.text, started=time.perf_counter())
        button.text = runningText
        progressBar.setRange(0, 0)
        progressBar.setVisible(True)
        statusLabel.text = _("Starting...")
        self._setOtherPanelsEnabled(kind, False)
        self._pollTimer.start()
        return True

    def _setOtherPanelsEnabled(self, kind: str, enabled: bool) -> None:
        for buttonKind, button in (("segment", self.ui.applyButton), ("train", self.ui.trainButton)):
            if buttonKind != kind:
                button.setEnabled(enabled)
        self.ui.deleteModelButton.setEnabled(enabled)
        self.ui.importModelButton.setEnabled(enabled)

    def _poll(self) -> None:
        for job in (self._warmJob, self._job, self._interactive):
            if job is not None:
                job.poll()
        session = self._interactive
        if self._warmJob is None and self._job is None and (session is None or (session.engine is None and not session.busy)):
            self._pollTimer.stop()

    def _onProgress(self, progress, progressBar, statusLabel) -> None:
        if progress.total:
            progressBar.setRange(0, int(progress.total))
            progressBar.setValue(int(progress.done))
        else:
            progressBar.setRange(0, 0)
        detail = f" — {progress.message}" if progress.message else ""
        total = f" {progress.done}/{progress.total}" if progress.total else ""
        statusLabel.text = f"{progress.stage.capitalize()}{total}{detail}"

    def _onJobDone(self, job) -> None:
        context, kind = self._jobContext, self._jobKind
        self._job, self._jobKind, self._jobContext = None, "", {}
        context["button"].text = context["idleText"]
        context["progressBar"].setVisible(False)  # a bar is shown only while its job runs
        self._setOtherPanelsEnabled(kind, True)
        label = context["statusLabel"]
        if job.state is JobState.CANCELLED:
            label.text = _("Cancelled; the scene was not changed.") if kind != "train" else _(
                "Stopped. Start again with the same model name to resume from the last saved step.")
        elif job.state is JobState.FAILED:
            label.text = job.error
            logging.error("MedFound %s failed: %s\n%s", kind, job.error, job.details)
            slicer.util.errorDisplay(job.error, windowTitle=_("MedFound"), detailedText=job.details or None)
        else:
            with slicer.util.tryWithErrorDisplay(_("Could not add the result to the scene."), waitCursor=True):
                {"segment": self._finishSegment, "train": self._finishTrain}[kind](job, context)

    # ---------------------------------------------------------------- Segment panel
    def onAddPrompt(self) -> None:
        text = self.ui.promptLineEdit.text.strip()
        if text:
            self.ui.promptsTextEdit.appendPlainText(text)
            self.ui.promptLineEdit.clear()

    def onSegmentApply(self) -> None:
        if self._jobKind == "segment":
            self._job.cancel()
            self.ui.segmentStatusLabel.text = _("Cancelling...")
            return
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if volumeNode is None:
            slicer.util.errorDisplay(_("Select an input volume."))
            return

        self._storeSegmentChoices()

        def start(callbacks):
            prompts = self.logic.parsePrompts(self.ui.promptsTextEdit.plainText)
            return self.logic.startSegmentation(volumeNode, prompts, self._segmentModel(),
                                                self._deviceChoice(self.ui.deviceComboBox), callbacks,
                                                regionCheck=self.ui.regionCheckBox.checked)

        self.ui.summaryTable.setRowCount(0)
        self._startJob("segment", start, self.ui.applyButton, self.ui.segmentProgressBar, self.ui.segmentStatusLabel,
                       _("Cancel"), volumeNode=volumeNode)

    def _segmentModel(self) -> str:
        """The Segment panel's model as the CLI names it: "default" lets the core choose per modality."""
        text = self.ui.modelComboBox.currentText
        return "default" if text in ("", self.AUTOMATIC_MODEL) else text

    def _storeSegmentChoices(self) -> None:
        """Keep the Segment panel's choices in the parameter node (saved with the scene)."""
        ui = self.ui
        self.logic.setChoices(Prompts=ui.promptsTextEdit.plainText, Model=self._segmentModel(),
                              Device=self._deviceChoice(ui.deviceComboBox), RegionCheck=ui.regionCheckBox.checked,
                              InputVolume=ui.inputVolumeSelector.currentNode(),
                              OutputSegmentation=ui.outputSegmentationSelector.currentNode())

    def _restoreSegmentChoices(self) -> None:
        """Show the parameter node's choices (a reopened scene brings back the last ones)."""
        ui, choices = self.ui, self.logic.choices()
        ui.promptsTextEdit.setPlainText(choices["Prompts"])
        index = ui.modelComboBox.findText(self.AUTOMATIC_MODEL if choices["Model"] == "default" else choices["Model"])
        if index >= 0:
            ui.modelComboBox.setCurrentIndex(index)
        deviceNames = {value: name for name, value in DEVICE_CHOICES.items()}
        ui.deviceComboBox.setCurrentIndex(max(0, ui.deviceComboBox.findText(deviceNames.get(choices["Device"], "Auto"))))
        ui.regionCheckBox.checked = choices["RegionCheck"] == "true"
        for key, selector in (("InputVolume", ui.inputVolumeSelector), ("OutputSegmentation", ui.outputSegmentationSelector)):
            node = self.logic.chosenNode(key)
            if node is not None:
                selector.setCurrentNode(node)

    def _finishSegment(self, job, context) -> None:
        result, volumeNode = job.result, context["volumeNode"]
        segmentationNode = self.ui.outputSegmentationSelector.currentNode()
        conflicts = self.logic.conflictingSegments(segmentationNode, result)
        replace = bool(conflicts) and slicer.util.confirmYesNoDisplay(
            _("The segmentation already has segments named: {names}.\nReplace them? (No keeps them and adds the "
              "new results under new names.)").format(names=", ".join(conflicts)), windowTitle=_("MedFound"))
        segmentationNode, summaries = self.logic.applySegmentation(result, volumeNode, segmentationNode, replace)
        self.ui.outputSegmentationSelector.setCurrentNode(segmentationNode)
        slicer.util.setSliceViewerLayers(background=volumeNode)
        self._fillSummary(summaries)
        found = sum(s.found for s in summaries)
        elapsed = time.perf_counter() - context["started"]
        warnings = ("\n" + "\n".join(result.warnings)) if result.warnings else ""
        self.ui.segmentStatusLabel.text = _("{found} of {total} structures found in {seconds:.1f} s.").format(
            found=found, total=len(summaries), seconds=elapsed) + warnings

    def _fillSummary(self, summaries) -> None:
        table = self.ui.summaryTable
        table.setRowCount(len(summaries))
        for row, summary in enumerate(summaries):
            cells = (summary.name, f"{summary.volume_ml:.1f}" if summary.found else "—",
                     f"{summary.confidence:.2f}" if summary.found else "—", summary.status)
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(_("Prompt: {prompt}").format(prompt=summary.prompt))
                if not summary.found:
                    item.setForeground(qt.QBrush(qt.QColor("gray")))
                table.setItem(row, column, item)

    # ---------------------------------------------------------------- Interactive panel
    def _setupInteractive(self) -> None:
        """The Interactive panel's session (MedFoundSlicerLib.interactive) and its buttons."""
        callbacks = interactive.InteractiveCallbacks(
            on_marks_changed=self._pollTimer.start, on_state=self._onInteractiveState, on_progress=self._onInteractiveProgress,
            on_updated=self._onInteractiveUpdated, on_error=self._onInteractiveError, on_failed=self._onInteractiveFailed)
        self._interactive = self.logic.interactiveSegmentation(callbacks)
        ui = self.ui
        for tool, name in self.TOOL_BUTTONS.items():
            getattr(ui, name).connect("clicked()", lambda tool=tool: self.onToolClicked(tool))
        ui.undoButton.connect("clicked()", self.onUndo)
        ui.newSegmentButton.connect("clicked()", self.onNewSegment)
        ui.resetSegmentButton.connect("clicked()", self.onResetSegment)
        ui.stopButton.connect("clicked()", self.onStopInteractive)
        ui.clickVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onInteractiveVolumeChanged)
        ui.clickOutputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onInteractiveOutputChanged)
        ui.clickModelComboBox.connect("currentIndexChanged(int)", lambda _index: self._applyInteractiveModel())
        ui.deviceComboBox.connect("currentIndexChanged(int)", lambda _index: self._applyInteractiveModel())
        interactionNode = self._interactionNode()
        if interactionNode is not None:
            self.addObserver(interactionNode, interactionNode.InteractionModeChangedEvent, self._onInteractionModeChanged)
        ui.clickProgressBar.setVisible(False)
        self._refreshInteractiveButtons()

    @staticmethod
    def _interactionNode():
        logic = slicer.app.applicationLogic() if hasattr(slicer.app, "applicationLogic") else None
        return logic.GetInteractionNode() if logic is not None else None

    def _installShortcuts(self) -> None:
        if self._shortcuts:
            return
        parent = slicer.util.mainWindow() or self.parent
        for name, keys in self.SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(keys), parent)
            shortcut.connect("activated()", getattr(self.ui, name).click)  # a disabled button ignores it
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []

    def _interactiveModel(self) -> str:
        """The Advanced model choice as the CLI names it: "default" (learned), "intensity" or a model's name."""
        text = self.ui.clickModelComboBox.currentText
        if text in ("", self.LEARNED_INTERACTIVE):
            return LEARNED_MODEL
        return INTENSITY_MODEL if text == self.INTENSITY_ONLY else text

    def _applyInteractiveModel(self) -> None:
        if self._interactive is None:
            return
        self._interactive.setModel(self._interactiveModel(), self._deviceChoice(self.ui.deviceComboBox))
        if self._interactive.pointsOnly:
            self._interactive.stopPlacing()  # a box or stroke being drawn: the intensity engine cannot use it
        self._refreshInteractiveButtons()

    def _onInteractiveVolumeChanged(self, volumeNode) -> None:
        self._interactive.setVolume(volumeNode)
        self.ui.clickStatusLabel.text = ""
        self._refreshInteractiveButtons()

    def _onInteractiveOutputChanged(self, segmentationNode) -> None:
        self._interactive.setOutput(segmentationNode)
        self._refreshInteractiveButtons()

    def onToolClicked(self, tool: str) -> None:
        """A tool button: place that kind of mark in the slice views (a second click stops placing)."""
        button = getattr(self.ui, self.TOOL_BUTTONS[tool])
        if button.checked:
            volumeNode = self.ui.clickVolumeSelector.currentNode()
            if volumeNode is None:
                button.checked = False
                slicer.util.errorDisplay(_("Select the volume to segment first."), windowTitle=_("MedFound"))
                return
            self._interactive.setVolume(volumeNode)
            self._applyInteractiveModel()
            if self._interactive.startPlacing(tool) is None:
                logging.warning("MedFound: no interaction node in the scene; marks cannot be placed with the mouse")
            with slicer.util.tryWithErrorDisplay(_("Could not start the interactive segmentation."), waitCursor=False):
                self._interactive.prepare()  # the model loads while the first mark is placed
            self._pollTimer.start()
        else:
            self._interactive.stopPlacing()
        self._refreshInteractiveButtons()

    def _onInteractionModeChanged(self, _caller=None, _event=None) -> None:
        self._refreshInteractiveButtons()  # placing ended (right-click, Esc, another module): the button follows

    def onUndo(self) -> None:
        if self._interactive.undo():
            self.ui.clickStatusLabel.text = _("Undone: the segment and the marks are as before the last update.")
        self._refreshInteractiveButtons()

    def onNewSegment(self) -> None:
        self._interactive.newSegment()
        self.ui.clickStatusLabel.text = _("New segment: the next mark starts it (the previous segment stays as it is).")
        self._refreshInteractiveButtons()

    def onResetSegment(self) -> None:
        self._interactive.reset()
        self.ui.clickStatusLabel.text = _("The marks were removed and the segment emptied (Undo brings them back).")
        self._refreshInteractiveButtons()

    def onStopInteractive(self) -> None:
        self._interactive.stop()

    def _refreshInteractiveButtons(self) -> None:
        ui, session = self.ui, self._interactive
        if session is None:
            return
        hasVolume = ui.clickVolumeSelector.currentNode() is not None
        placing = session.placingTool()
        for tool, name in self.TOOL_BUTTONS.items():
            button = getattr(ui, name)
            button.setEnabled(hasVolume and (tool in interactive.POINT_TOOLS or not session.pointsOnly))
            button.checked = tool == placing
        ui.undoButton.setEnabled(session.canUndo)
        ui.newSegmentButton.setEnabled(hasVolume)
        ui.resetSegmentButton.setEnabled(hasVolume)
        ui.stopButton.setEnabled(session.computing)

    def _onInteractiveState(self, state: str) -> None:
        ui = self.ui
        if state in (interactive.STARTING, interactive.COMPUTING):
            ui.clickProgressBar.setRange(0, 0)
            ui.clickProgressBar.setVisible(True)
            ui.clickStatusLabel.text = self.LOADING_TEXT if state == interactive.STARTING else self.UPDATING_TEXT
            self._pollTimer.start()
        else:
            ui.clickProgressBar.setVisible(False)
        if state == interactive.STOPPED:
            ui.clickStatusLabel.text = _("Stopped; the segment was not changed. The next mark starts the computation again.")
        elif state == interactive.NEEDS_INCLUDE:
            ui.clickStatusLabel.text = _("Place an include point, a box or a stroke first: exclude marks only say "
                                         "what is not part of the structure.")
        elif state == interactive.READY and ui.clickStatusLabel.text in (self.LOADING_TEXT, self.UPDATING_TEXT, ""):
            ui.clickStatusLabel.text = _("Ready: mark the structure in a slice view.")
            if self._interactive.pointsOnly and self._interactive.model == LEARNED_MODEL:
                ui.clickStatusLabel.text = _("Ready: mark the structure with include and exclude points. This is not a "
                                             "CT, so the intensity engine answers (the learned model is trained on CT).")
        self._refreshInteractiveButtons()

    def _onInteractiveProgress(self, progress) -> None:
        bar = self.ui.clickProgressBar
        if progress.total:
            bar.setRange(0, int(progress.total))
            bar.setValue(int(progress.done))
        if progress.message and (not progress.total or progress.done < progress.total):
            self.ui.clickStatusLabel.text = progress.message[:1].upper() + progress.message[1:] + "..."

    def _onInteractiveUpdated(self, update) -> None:
        ui = self.ui
        wasBlocked = ui.clickOutputSelector.blockSignals(True)
        ui.clickOutputSelector.setCurrentNode(update.segmentationNode)
        ui.clickOutputSelector.blockSignals(wasBlocked)
        self._interactive.setOutput(update.segmentationNode)
        if update.voxels == 0:
            ui.clickStatusLabel.text = _("Nothing was found there; {name} is empty. Place the point inside the structure.").format(
                name=update.name)
        else:
            ui.clickStatusLabel.text = _("Updated in {seconds:.1f} s: {name}, {volume:.1f} ml.").format(
                seconds=update.elapsed, name=update.name, volume=update.volume_ml)
        self._refreshInteractiveButtons()

    def _onInteractiveError(self, message: str) -> None:
        self.ui.clickStatusLabel.text = _("Could not update the segment: {reason}").format(reason=message)
        logging.warning("MedFound interactive: %s", message)

    def _onInteractiveFailed(self, message: str, details: str) -> None:
        self.ui.clickStatusLabel.text = message
        logging.error("MedFound interactive computation failed: %s\n%s", message, details)
        slicer.util.errorDisplay(message, windowTitle=_("MedFound"), detailedText=details or None)
        self._refreshInteractiveButtons()

    # ---------------------------------------------------------------- Train panel
    def _onTrainSourceChanged(self, fromScene: bool) -> None:
        self.ui.scenePairsWidget.setVisible(fromScene)
        self.ui.folderWidget.setVisible(not fromScene)
        self._refreshPromptMap()

    def onAddPair(self) -> None:
        volumeNode = self.ui.trainVolumeSelector.currentNode()
        segmentationNode = self.ui.trainSegmentationSelector.currentNode()
        if volumeNode is None or segmentationNode is None:
            slicer.util.errorDisplay(_("Select a volume and its segmentation."))
            return
        self._pairs.append((volumeNode, segmentationNode))
        self._refreshPairs()

    def onRemovePair(self) -> None:
        rows = sorted({index.row() for index in self.ui.pairsTable.selectedIndexes()}, reverse=True)
        for row in rows:
            del self._pairs[row]
        self._refreshPairs()

    def _refreshPairs(self) -> None:
        self._pairs = [(v, s) for v, s in self._pairs if slicer.mrmlScene.IsNodePresent(v) and slicer.mrmlScene.IsNodePresent(s)]
        table = self.ui.pairsTable
        table.setRowCount(len(self._pairs))
        for row, (volumeNode, segmentationNode) in enumerate(self._pairs):
            table.setItem(row, 0, qt.QTableWidgetItem(volumeNode.GetName()))
            table.setItem(row, 1, qt.QTableWidgetItem(segmentationNode.GetName()))
        self._refreshPromptMap()

    def _refreshPromptMap(self) -> None:
        """Show every segment (scene) or label (folder) name with its default prompt, keeping user edits."""
        edited = self._promptMap()
        mapping = {}
        with slicer.util.tryWithErrorDisplay(_("Could not read the training data."), waitCursor=True):
            if self.ui.sceneSourceRadioButton.checked:
                for _volumeNode, segmentationNode in self._pairs:
                    mapping.update(self.logic.segmentPromptMap(segmentationNode))
            elif self.ui.trainFolderPathLineEdit.currentPath:
                mapping = self.logic.folderPromptMap(self.ui.trainFolderPathLineEdit.currentPath)
        mapping.update({k: v for k, v in edited.items() if k in mapping})
        table = self.ui.promptMapTable
        table.setRowCount(len(mapping))
        for row, (name, prompt) in enumerate(sorted(mapping.items())):
            nameItem = qt.QTableWidgetItem(name)
            nameItem.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
            table.setItem(row, 0, nameItem)
            table.setItem(row, 1, qt.QTableWidgetItem(prompt))

    def _promptMap(self) -> dict:
        table = self.ui.promptMapTable
        return {table.item(row, 0).text(): (table.item(row, 1).text() if table.item(row, 1) else "")
                for row in range(table.rowCount) if table.item(row, 0)}

    def onTrain(self) -> None:
        if self._jobKind == "train":
            self._job.cancel()
            self.ui.trainStatusLabel.text = _("Stopping...")
            return
        ui = self.ui
        base = ui.baseModelComboBox.currentText
        baseModel = None if base == self.FROM_SCRATCH else (base or "default")

        def start(callbacks):
            promptMap = self._promptMap()
            if ui.sceneSourceRadioButton.checked:
                cases = self.logic.casesFromScene(self._pairs, promptMap)
            else:
                cases = self.logic.casesFromFolder(ui.trainFolderPathLineEdit.currentPath, promptMap)
            return self.logic.startTraining(cases, ui.modelNameLineEdit.text, epochs=ui.epochsSpinBox.value,
                                            lr=ui.learningRateSpinBox.value, batchSize=ui.batchSizeSpinBox.value,
                                            device=self._deviceChoice(ui.deviceComboBox), baseModel=baseModel,
                                            callbacks=callbacks)

        self._metricsTable = self._metricsChart = None
        ui.metricsLabel.text = ""
        self._startJob("train", start, ui.trainButton, ui.trainProgressBar, ui.trainStatusLabel, _("Stop"),
                       modelName=ui.modelNameLineEdit.text.strip())

    def _onMetrics(self, metrics: dict) -> None:
        self._metricsTable = self.logic.recordMetrics(self._metricsTable, metrics)
        if self._metricsChart is None and self._metricsTable.GetTable().GetNumberOfRows() >= 1:
            self._metricsChart = self.logic.metricsPlot(self._metricsTable, xColumn="step")
            slicer.modules.plots.logic().ShowChartInLayout(self._metricsChart)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        self.ui.metricsLabel.text = shown

    def _finishTrain(self, job, context) -> None:
        self.refreshModels()
        name = os.path.basename(str(job.result))
        index = self.ui.modelComboBox.findText(name)
        if index >= 0:
            self.ui.modelComboBox.setCurrentIndex(index)
        self.ui.trainStatusLabel.text = _("Model '{name}' saved to the model registry; it is selected in the Segment panel.").format(name=name)

    # ---------------------------------------------------------------- Models panel
    def _selectedModel(self):
        rows = {index.row() for index in self.ui.modelsTable.selectedIndexes()}
        models = getattr(self, "_modelInfos", [])
        return models[min(rows)] if rows and min(rows) < len(models) else None

    def _showSelectedCard(self) -> None:
        model = self._selectedModel()
        self.ui.modelCardTextEdit.setPlainText(model.description if model else "")
        self.ui.deleteModelButton.setEnabled(model is not None and not model.shipped and self._job is None)

    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import MedFound model"), "",
                                              _("MedFound model (*.safetensors)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Import failed."), waitCursor=True):
            model = self.logic.importModel(path)
            self.refreshModels()
            slicer.util.showStatusMessage(_("Imported model '{name}' (sha256 verified).").format(name=model.name), 5000)

    def onDeleteModel(self) -> None:
        model = self._selectedModel()
        if model is None or not slicer.util.confirmOkCancelDisplay(
                _("Delete model '{name}' from {path}?").format(name=model.name, path=model.path)):
            return
        with slicer.util.tryWithErrorDisplay(_("Delete failed."), waitCursor=True):
            self.logic.deleteModel(model.name)
            self.refreshModels()


#
# Test
#
class MedFoundSlicerTest(ScriptedLoadableModuleTest):
    """Self-test that needs nothing outside the extension: a small synthetic volume made here (0.2 MB),
    the shipped models, no GPU. It segments in the child process, cancels, and fine-tunes a few steps
    (also a child process) into a temporary model store. The real-data scenarios run headless from the
    repository's Testing/ folder."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        from MedFoundSlicerLib import selftest

        for message, scenario in (("segment by structure names", selftest.scenario_segment_synthetic),
                                  ("cancel leaves the scene unchanged", selftest.scenario_cancel_synthetic),
                                  ("fine-tune from scene nodes", selftest.scenario_train_synthetic)):
            self.setUp()
            self.delayDisplay(f"MedFound: {message}")
            figures = scenario(MedFoundSlicerLogic())
            logging.info("MedFound self-test, %s: %s", message, figures)
        self.delayDisplay("MedFound tests passed")
