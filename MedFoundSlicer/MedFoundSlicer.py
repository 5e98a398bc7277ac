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

from MedFoundSlicerLib.install import STEPS, InstallCancelled, dependency_status, install_dependencies
from MedFoundSlicerLib.jobs import JobCallbacks, JobState
from MedFoundSlicerLib.logic import CLICK_KINDS, DEVICE_CHOICES, SEGMENT_KINDS, MedFoundLogic

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
            "Segment CT and MRI volumes by naming structures (one per line), or from include/exclude "
            "points; fine-tune models on your own segmentations and manage installed models. "
            "Segmenting, points and training run in a separate process: Slicer stays responsive, and every job can be cancelled."
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
    """The four panels: Segment, Points, Train and Models, and one Advanced section (device)."""

    POLL_INTERVAL_MS = 50
    FROM_SCRATCH = _("(train from scratch)")
    INTENSITY_ONLY = _("(no model: intensity only)")
    AUTOMATIC_MODEL = _("Automatic (chosen for the image)")  # the core's "default": per modality (CT or MRI)
    CLICK_DEBOUNCE_MS = 400
    MARKUP_EVENTS = ("PointEndInteractionEvent", "PointPositionDefinedEvent", "PointRemovedEvent")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._warmJob = None
        self._job = None
        self._jobKind = ""
        self._jobContext = {}
        self._pairs = []
        self._clickSegmentId = ""
        self._observedMarkups = []
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
                         self.ui.clickOutputSelector, self.ui.trainVolumeSelector, self.ui.trainSegmentationSelector,
                         self.ui.positivePointsWidget, self.ui.negativePointsWidget):
            selector.setMRMLScene(slicer.mrmlScene)
        self.logic = MedFoundSlicerLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._poll)
        self._clickTimer = qt.QTimer()
        self._clickTimer.setSingleShot(True)
        self._clickTimer.setInterval(self.CLICK_DEBOUNCE_MS)
        self._clickTimer.connect("timeout()", lambda: self.onClickApply(automatic=True))

        self._setupMarkupsWidgets()
        self._connectSignals()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.ui.folderWidget.setVisible(False)
        self.ui.trainFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self._refreshDependencyState()

    def _setupMarkupsWidgets(self) -> None:
        for widget, baseName, color in ((self.ui.positivePointsWidget, "include", (0.2, 0.9, 0.2)),
                                        (self.ui.negativePointsWidget, "exclude", (0.9, 0.2, 0.2))):
            widget.markupsSelectorComboBox().nodeTypes = ["vtkMRMLMarkupsFiducialNode"]
            widget.markupsSelectorComboBox().baseName = baseName
            widget.markupsSelectorComboBox().noneEnabled = True
            widget.defaultNodeColor = qt.QColor.fromRgbF(*color)
            widget.connect("markupsNodeChanged()", self._observeMarkups)

    def _connectSignals(self) -> None:
        ui = self.ui
        ui.installButton.connect("clicked()", self.onInstall)
        ui.promptLineEdit.connect("returnPressed()", self.onAddPrompt)
        ui.addPromptButton.connect("clicked()", self.onAddPrompt)
        ui.deviceComboBox.connect("currentIndexChanged(int)", lambda _index: self._updateDeviceWarning())
        ui.applyButton.connect("clicked()", self.onSegmentApply)
        ui.clickApplyButton.connect("clicked()", lambda: self.onClickApply(automatic=False))
        ui.clickVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: self._resetClickTarget())
        ui.clickOutputSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: self._resetClickTarget())
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
        """Called when the application closes: stop the worker and observers."""
        if self._job is not None:
            self._job.cancel()
        self._pollTimer.stop()
        self._clickTimer.stop()
        self.removeObservers()

    def onSceneEndImport(self, _caller, _event) -> None:
        """A scene was opened: show the choices saved in its parameter node (once the panels are ready)."""
        if self._warmJob is None and self.ui.tabWidget.enabled:
            self._restoreSegmentChoices()

    def onSceneStartClose(self, _caller, _event) -> None:
        if self._job is not None:
            self._job.cancel()
        self._pairs = []
        self._clickSegmentId = ""
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
        for combo, kinds in ((self.ui.modelComboBox, SEGMENT_KINDS), (self.ui.baseModelComboBox, SEGMENT_KINDS),
                             (self.ui.clickModelComboBox, CLICK_KINDS)):
            current = combo.currentText
            combo.clear()
            for model in (m for m in models if m.kind in kinds):
                combo.addItem(model.name)
            if combo is self.ui.modelComboBox:
                combo.insertItem(0, self.AUTOMATIC_MODEL)
            if combo is self.ui.baseModelComboBox:
                combo.addItem(self.FROM_SCRATCH)
            if combo is self.ui.clickModelComboBox:
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
        for buttonKind, button in (("segment", self.ui.applyButton), ("click", self.ui.clickApplyButton),
                                   ("train", self.ui.trainButton)):
            if buttonKind != kind:
                button.setEnabled(enabled)
        self.ui.deleteModelButton.setEnabled(enabled)
        self.ui.importModelButton.setEnabled(enabled)

    def _poll(self) -> None:
        for job in (self._warmJob, self._job):
            if job is not None:
                job.poll()
        if self._warmJob is None and self._job is None:
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
            if not context.get("automatic"):
                slicer.util.errorDisplay(job.error, windowTitle=_("MedFound"), detailedText=job.details or None)
        else:
            with slicer.util.tryWithErrorDisplay(_("Could not add the result to the scene."), waitCursor=True):
                {"segment": self._finishSegment, "click": self._finishClick, "train": self._finishTrain}[kind](job, context)
        if context.get("rerun"):
            self._clickTimer.start()

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

    # ---------------------------------------------------------------- Points panel
    def _observeMarkups(self) -> None:
        for node, tag in self._observedMarkups:
            node.RemoveObserver(tag)
        self._observedMarkups = []
        for widget in (self.ui.positivePointsWidget, self.ui.negativePointsWidget):
            node = widget.currentNode()
            if node is None:
                continue
            for event in self.MARKUP_EVENTS:
                tag = node.AddObserver(getattr(node, event), self._onPointsChanged)
                self._observedMarkups.append((node, tag))

    def _onPointsChanged(self, _caller, _event) -> None:
        if self.ui.autoUpdateCheckBox.checked and self.ui.clickVolumeSelector.currentNode() is not None:
            self._clickTimer.start()  # debounce: one run after the user stops moving points

    def _resetClickTarget(self) -> None:
        self._clickSegmentId = ""

    def onClickApply(self, automatic: bool = False) -> None:
        if self._jobKind == "click":
            self._job.cancel()
            self._jobContext["rerun"] = automatic  # a newer point set: run again once this one stops
            return
        if self._job is not None:
            return  # another panel's job runs; the user can re-run once it is done
        volumeNode = self.ui.clickVolumeSelector.currentNode()
        positive = self.ui.positivePointsWidget.currentNode()
        if volumeNode is None or positive is None or positive.GetNumberOfControlPoints() == 0:
            if not automatic:
                slicer.util.errorDisplay(_("Select a volume and place at least one include point."))
            return
        negative = self.ui.negativePointsWidget.currentNode()
        model = self.ui.clickModelComboBox.currentText
        model = None if model == self.INTENSITY_ONLY else (model or "encoder-v1")

        def start(callbacks):
            return self.logic.startClick(volumeNode, positive, negative, model,
                                         self._deviceChoice(self.ui.deviceComboBox), callbacks)

        self._startJob("click", start, self.ui.clickApplyButton, self.ui.clickProgressBar, self.ui.clickStatusLabel,
                       _("Cancel"), volumeNode=volumeNode, automatic=automatic)

    def _finishClick(self, job, context) -> None:
        segmentationNode, self._clickSegmentId = self.logic.applyClick(
            job.result, context["volumeNode"], self.ui.clickOutputSelector.currentNode(), self._clickSegmentId)
        segmentId = self._clickSegmentId
        wasBlocked = self.ui.clickOutputSelector.blockSignals(True)
        self.ui.clickOutputSelector.setCurrentNode(segmentationNode)
        self.ui.clickOutputSelector.blockSignals(wasBlocked)
        self._clickSegmentId = segmentId
        self.ui.clickStatusLabel.text = _("Updated in {seconds:.1f} s.").format(seconds=time.perf_counter() - context["started"])

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
