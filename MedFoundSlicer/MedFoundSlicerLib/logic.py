"""Scene-level MedFound operations, free of widgets: what the Slicer Logic class is made of.

Every long operation is split in three so the scene is only touched on the GUI thread and only on
success: ``start*`` converts nodes to plain volumes, writes them to a private folder and starts the
``medfound`` CLI there as a :class:`~.process.ProcessJob` (the child never sees a node); the caller
polls the job; ``apply*`` turns the finished result into nodes. A cancelled or failed job therefore
leaves the scene exactly as it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import nodes
from .jobs import Job, JobCallbacks, JobState
from .process import ProcessJob, medfound_command

SEGMENT_KINDS = ("prompted-segmenter", "ct-text-segmenter", "mri-text-segmenter")  # selectable in the Segment panel
# What the Train panel fine-tunes, and the ``train-seg --model`` family that fine-tunes each kind
FINETUNE_FAMILIES = {"prompted-segmenter": "text2d", "ct-text-segmenter": "ct", "mri-text-segmenter": "mri"}
FINETUNE_KINDS = tuple(FINETUNE_FAMILIES)
INTERACTIVE_KINDS = ("ct-interactive-segmenter",)
KIND_LABELS = {"prompted-segmenter": "Structure names", "ct-text-segmenter": "Structure names (CT)", "mri-text-segmenter": "Structure names (MRI)",
               "encoder3d": "Points (image features)", "ct-interactive-segmenter": "Points, boxes and strokes"}
DEVICE_CHOICES = {"Auto": "auto", "GPU (CUDA)": "cuda", "CPU": "cpu"}
LOW_VRAM_GIB = 4.0


@dataclass(frozen=True)
class DeviceReport:
    """Which device a choice resolves to, and a warning for the user when it will be slow or fail."""

    device: str
    warning: str = ""


@dataclass(frozen=True)
class PromptSummary:
    """One row of the Segment panel's summary table."""

    prompt: str
    name: str
    found: bool
    volume_ml: float
    confidence: float
    segment_id: str = ""
    slices_ruled_out: int = 0  # slices where the anatomical check removed it (a distant body region is there)

    @property
    def status(self) -> str:
        state = "found" if self.found else "not found"
        if self.slices_ruled_out:
            state += f"; removed from {self.slices_ruled_out} slice(s) showing a distant body region"
        return state


@dataclass(frozen=True)
class ModelInfo:
    """A registry model as the panels show it (the card's fields, flattened)."""

    name: str
    kind: str
    version: str
    prompts: tuple[str, ...]
    source: str
    path: str
    card: dict

    @property
    def shipped(self) -> bool:
        return self.source != "user"

    @property
    def kindLabel(self) -> str:
        """The model type in words ("Structure names", "Points"), not the card's internal kind."""
        return KIND_LABELS.get(self.kind, self.kind)

    @property
    def description(self) -> str:
        """What the Models panel shows: a few plain sentences from the card (never the raw JSON)."""
        card = self.card
        lines = [f"{self.name} (version {self.version or 'unknown'}): segments from {self.kindLabel.lower()}."]
        if self.prompts:
            lines.append("Structures: " + ", ".join(self.prompts) + ".")
        trained = _training_summary(card.get("training_data"))
        if trained:
            lines.append(f"Trained on {trained}.")
        lines.append("Shipped with MedFound." if self.shipped else f"Your model, stored in {self.path}.")
        lines.append("Research use only; not for clinical decisions.")
        return "\n".join(lines)


def _training_summary(data) -> str:
    """'12 cases from brats2013, msd_hippocampus' from a card's training_data (dict of cases/volumes/folders)."""
    if not isinstance(data, dict):
        return str(data) if data else ""
    cases = data.get("cases")
    count = len(cases) if isinstance(cases, (list, tuple)) else data.get("volumes") or data.get("cases")
    folders = [Path(str(f)).name for f in data.get("folders", []) if str(f)]
    words = f"{count} volumes" if count else ""
    if folders:
        shown = ", ".join(folders[:6]) + (f" and {len(folders) - 6} more" if len(folders) > 6 else "")
        words = f"{words} from {shown}" if words else shown
    return words


MODULE_NAME = "MedFoundSlicer"  # Slicer's moduleName for MedFoundSlicerLogic: the parameter node's singleton tag
# The panel's choices kept in the parameter node (saved with the scene); values are strings, as MRML stores them.
PARAMETER_DEFAULTS = {"Prompts": "", "Model": "default", "Device": "auto", "RegionCheck": "true",
                      "ClickModel": "default", "TrainModelName": "", "Epochs": "5"}
PARAMETER_REFERENCES = ("InputVolume", "OutputSegmentation")


class MedFoundLogic:
    """All MedFound work on one MRML scene. No widgets, no ``slicer.app``: runs on slicer-core."""

    def __init__(self, scene=None) -> None:
        # Cooperative: in Slicer this class sits after ScriptedLoadableModuleLogic in the MRO, whose
        # __init__ calls super().__init__() without arguments, so ``scene`` must be optional.
        super().__init__()
        self.scene = scene
        self._vocabulary = None

    # ------------------------------------------------------------------ parameter node
    def parameterNode(self):
        """The scene's MedFound parameter node, created on first use.

        The same singleton ``vtkMRMLScriptedModuleNode`` that Slicer's ``getParameterNode()`` returns
        (tag and ModuleName attribute = the module name), looked up in ``self.scene`` so headless
        code works on any scene. It is saved with the scene, so a reopened scene keeps the choices.
        """
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        return node

    def choices(self) -> dict[str, str]:
        """The stored panel choices, defaults filled in for those never set."""
        node = self.parameterNode()
        return {key: node.GetParameter(key) or default for key, default in PARAMETER_DEFAULTS.items()}

    def setChoices(self, **values) -> None:
        """Store panel choices: strings/bools/numbers by PARAMETER_DEFAULTS key, nodes by PARAMETER_REFERENCES."""
        node = self.parameterNode()
        wasModifying = node.StartModify()
        try:
            for key, value in values.items():
                if key in PARAMETER_REFERENCES:
                    node.SetNodeReferenceID(key, value.GetID() if value is not None else None)
                elif key in PARAMETER_DEFAULTS:
                    node.SetParameter(key, str(value).lower() if isinstance(value, bool) else str(value))
                else:
                    raise KeyError(f"unknown MedFound parameter {key!r}")
        finally:
            node.EndModify(wasModifying)

    def chosenNode(self, key: str):
        """The node stored under a PARAMETER_REFERENCES key (None when unset or deleted)."""
        return self.parameterNode().GetNodeReference(key)

    # ------------------------------------------------------------------ environment
    @property
    def vocabulary(self):
        """MedFoundCore's vocabulary (loaded once): the one source of names, colours, terminology."""
        if self._vocabulary is None:
            from medfoundcore.vocabulary import load_vocabulary

            self._vocabulary = load_vocabulary()
        return self._vocabulary

    def startWarmUp(self, callbacks: JobCallbacks | None = None) -> Job:
        """Import torch and the MedFoundCore modules the Logic itself uses, on a worker thread, when the module opens.

        Why: first imports run long C initialisers that hold the GIL; done here, they happen while
        the user picks inputs. Segmentation, points and training run in child processes and load
        their models there, so no model is loaded into Slicer here. This is the one job that still
        runs in a thread (:mod:`.jobs`): it must warm up Slicer's own interpreter.
        """
        def work(progress, cancel, _metrics):
            import importlib

            for name in ("torch", "medfoundcore.registry", "medfoundcore.io", "medfoundcore.data.datasets", "medfoundcore.preprocess"):
                importlib.import_module(name)
            return self.vocabulary

        return Job("warm-up", work, callbacks or JobCallbacks()).start()

    def vocabularyNames(self) -> list[str]:
        """Structure names for prompt completion."""
        return sorted(self.vocabulary.names())

    def parsePrompts(self, text: str) -> list[str]:
        """One prompt per non-empty line; every line must name a known structure (InputError otherwise)."""
        from medfoundcore.errors import InputError

        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise InputError("enter at least one structure to segment (one per line)")
        for prompt in prompts:
            self.vocabulary.normalize_prompt(prompt)
        return prompts

    def deviceReport(self, choice: str) -> DeviceReport:
        """Resolve a device choice ('auto', 'cuda', 'cpu') and warn about missing GPU or little VRAM."""
        import torch

        if choice == "cpu":
            return DeviceReport("cpu", "CPU selected: segmentation takes minutes rather than seconds.")
        if not torch.cuda.is_available():
            if choice == "cuda":
                return DeviceReport("cuda", "No CUDA GPU is available: choose Auto or CPU.")
            return DeviceReport("cpu", "No CUDA GPU found: MedFound will run on the CPU (slower).")
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name(0)
        if free / 2**30 < LOW_VRAM_GIB:
            return DeviceReport("cuda", f"{name}: only {free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB free; large volumes may not fit.")
        return DeviceReport("cuda", "")

    def models(self, kinds: tuple[str, ...] | None = None) -> list[ModelInfo]:
        """Installed models (shipped and user-trained), optionally only those of some card kinds."""
        from medfoundcore import registry

        infos = [_model_info(info) for info in registry.list_models()]
        return [m for m in infos if kinds is None or m.kind in kinds]

    def importModel(self, path: str) -> ModelInfo:
        """Copy a .safetensors model (its card.json beside it) into the user store; the sha256 is checked."""
        from medfoundcore import registry

        directory = registry.import_model(path)
        return next(m for m in self.models() if Path(m.path) == Path(directory))

    def deleteModel(self, name: str) -> None:
        """Remove a user model from the store (shipped models are refused by the registry)."""
        from medfoundcore import registry

        registry.delete_model(name)

    # ------------------------------------------------------------------ text-prompted segmentation
    def startSegmentation(self, volumeNode, prompts: list[str], model: str = "default", device: str = "auto",
                          callbacks: JobCallbacks | None = None, *, regionCheck: bool = True) -> ProcessJob:
        """Start text-prompted segmentation of ``volumeNode`` in a child process; the scene is not touched.

        The volume goes to the ``medfound segment`` CLI as a NRRD file with its world geometry; the
        label map and the JSON report come back as files (see :func:`read_segment_result`).
        ``model="default"`` lets the core pick its default model for the image's modality.
        ``regionCheck=False`` keeps structures on slices where the model sees a distant body region
        (the anatomical veto of ``medfoundcore.inference.region_veto``)."""
        from medfoundcore.io import save_volume

        volume = nodes.volume_from_node(volumeNode)
        workdir = job_folder("segment", lambda folder: save_volume(volume, folder / "input.nrrd", compress=False))
        args = segment_arguments(workdir, prompts, model, device, regionCheck)
        return ProcessJob("segment", medfound_command(*args), workdir, collect=lambda: read_segment_result(workdir, volume),
                          callbacks=callbacks).start()

    def conflictingSegments(self, segmentationNode, result) -> list[str]:
        """Names the result would write that already exist in ``segmentationNode`` (ask before replacing)."""
        if segmentationNode is None:
            return []
        existing = set(nodes.segment_names(segmentationNode))
        return [r.structure_name for r in result.reports if r.found and r.structure_name in existing]

    def applySegmentation(self, result, volumeNode, segmentationNode=None, replace: bool = False):
        """Write the found structures of a ``SegmentationResult`` as named, coloured segments.

        Returns ``(segmentationNode, [PromptSummary])``; a new segmentation node is created when none
        is given. Prompts the model rejected ("not found") get a summary row but no segment.
        """
        found = [(r.label, r) for r in result.reports if r.found]
        if segmentationNode is None:
            segmentationNode = nodes.create_segmentation_node(self.scene, volumeNode, f"{volumeNode.GetName()} MedFound")
        specs = [self._segmentSpec(value, r) for value, r in found]
        ids = dict(zip([value for value, _ in found], nodes.write_segments(segmentationNode, result.labels, specs, replace)))
        summaries = [
            PromptSummary(r.prompt, r.structure_name, bool(r.found), float(r.volume_ml), float(r.mean_presence),
                          ids.get(r.label, ""), int(r.slices_ruled_out))
            for r in result.reports
        ]
        return segmentationNode, summaries

    def _segmentSpec(self, label: int, report) -> nodes.SegmentSpec:
        structure = self.vocabulary.get(report.structure_key)
        color = tuple(float(c) / 255.0 for c in (report.color or structure.color))
        return nodes.SegmentSpec(label, report.structure_name, color, terminology_entry(structure))

    def runSegmentation(self, volumeNode, prompts: list[str], model: str = "default", device: str = "auto",
                        segmentationNode=None, replace: bool = False, *, regionCheck: bool = True):
        """Blocking convenience for scripts and tests: start, wait (polling), apply; raises on failure."""
        job = _finished(self.startSegmentation(volumeNode, prompts, model, device, regionCheck=regionCheck).wait())
        return self.applySegmentation(job.result, volumeNode, segmentationNode, replace)

    # ------------------------------------------------------------------ interactive (points, box, strokes)
    def interactiveSegmentation(self, callbacks=None):
        """A new interactive session on this scene (:class:`~.interactive.InteractiveSegmentation`):
        include/exclude points, a box and strokes placed as markups, the segment updated after each."""
        from .interactive import InteractiveSegmentation

        return InteractiveSegmentation(self.scene, callbacks)

    # ------------------------------------------------------------------ training
    def segmentPromptMap(self, segmentationNode) -> dict[str, str]:
        """Default segment name → prompt mapping: the vocabulary's name when it knows the segment, else ''."""
        return {name: self._defaultPrompt(name) for name in nodes.segment_names(segmentationNode)}

    def _defaultPrompt(self, name: str) -> str:
        structure = self.vocabulary.label_name_to_structure(name)
        return structure.name if structure is not None else ""

    def casesFromScene(self, pairs, promptMap: dict[str, str]) -> list:
        """Training cases from (volume node, segmentation node) pairs; segments mapped to prompts.

        Segments whose prompt is empty are left out; a pair with no mapped segment is an InputError.
        """
        from medfoundcore.data.datasets import Case
        from medfoundcore.errors import InputError
        from medfoundcore.preprocess import detect_modality

        cases = []
        for index, (volumeNode, segmentationNode) in enumerate(pairs):
            segmentation = segmentationNode.GetSegmentation()
            chosen = [(segmentation.GetSegmentIdBySegmentName(n), promptMap[n]) for n in nodes.segment_names(segmentationNode) if promptMap.get(n, "").strip()]
            if not chosen:
                raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segment mapped to a prompt")
            image = nodes.volume_from_node(volumeNode)
            labels = image.with_array(nodes.labels_from_segmentation(segmentationNode, [sid for sid, _ in chosen], volumeNode))
            names = {value: prompt for value, (_, prompt) in enumerate(chosen, start=1)}
            case_id = f"scene{index:02d}_{volumeNode.GetName()}"
            cases.append(Case(case_id, case_id, image, labels, names, detect_modality(image), {"source": "slicer-scene"}))
        return cases

    def folderPromptMap(self, folder: str) -> dict[str, str]:
        """Label names of a dataset folder → default prompts (vocabulary name, or '' when unknown)."""
        from medfoundcore.data.datasets import find_cases

        names = {name for ref in find_cases([folder]) for name in ref.names.values()}
        return {name: self._defaultPrompt(name) for name in names}

    def casesFromFolder(self, folder: str, promptMap: dict[str, str] | None = None) -> list:
        """Unloaded cases of a folder (nnU-Net/MSD or *_img/*_lab layout), label names mapped to prompts.

        The images are not read here: the training process reads them one at a time, so a large
        dataset never blocks the GUI (:func:`write_training_cases` only links the files).
        """
        from medfoundcore.data.datasets import find_cases

        refs = find_cases([folder])
        if promptMap:
            for ref in refs:
                ref.names = {v: promptMap[n].strip() for v, n in ref.names.items() if promptMap.get(n, "").strip()}
        return refs

    def trainingWorkDir(self, outputName: str) -> Path:
        """Where a run keeps its checkpoints: the same name resumes the interrupted run."""
        from medfoundcore.registry import medfound_home

        home = medfound_home()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in outputName.strip())
        return home / "training" / safe

    def startTraining(self, cases: list, outputName: str, epochs: float | None = 5, lr: float = 1e-4, batchSize: int = 2,
                      device: str = "auto", baseModel: str | None = "default", callbacks: JobCallbacks | None = None,
                      **config) -> ProcessJob:
        """Fine-tune ``baseModel`` (None: the slice model from scratch) on ``cases`` in a child process (``medfound train-seg``).

        The cases are written to the job's folder in the ``*_img/*_lab/*_labels.json`` layout (see
        :func:`write_training_cases`); metrics arrive through ``callbacks.on_metrics``. The job's
        result is the new model's directory in the user model store. ``epochs`` None trains
        ``config['steps']`` steps instead. A 3D base model (ct-v1, mri-v1 and their fine-tunes) trains in its
        own family, where an epoch is every case once (``batchSize`` crops per step). Extra keyword arguments are the ``TrainConfig`` fields of
        :data:`TRAIN_OPTIONS`. Re-starting with the same ``outputName`` resumes from its checkpoints
        (:meth:`trainingWorkDir`); a cancel kills the process, and the run resumes from its last checkpoint.
        """
        from medfoundcore.errors import InputError

        name = outputName.strip()
        if not name:
            raise InputError("give the new model a name")
        if not cases:
            raise InputError("no training cases: add volume + segmentation pairs or choose a folder")
        unknown = sorted(set(config) - set(TRAIN_OPTIONS))
        if unknown:
            raise TypeError(f"startTraining: unknown option(s) {', '.join(unknown)}; known: {', '.join(TRAIN_OPTIONS)}")
        family = self.trainingFamily(baseModel)
        if family != "text2d" and epochs is not None and config.get("steps") is None:
            config = {**config, "steps": steps_for_epochs(epochs, len(cases), batchSize)}
            epochs = None
        workdir = job_folder("train", lambda folder: write_training_cases(cases, folder / "cases"))
        args = train_arguments(workdir / "cases", name, self.trainingWorkDir(name), epochs, lr, batchSize, device, baseModel, config, family)
        return ProcessJob("train", medfound_command(*args), workdir, collect=lambda: trained_model_dir(name),
                          callbacks=callbacks).start()

    def trainingFamily(self, baseModel: str | None) -> str:
        """The ``train-seg --model`` family that fine-tunes ``baseModel`` (None or "default": the slice model)."""
        from medfoundcore.errors import InputError

        if not baseModel or baseModel == "default":
            return "text2d"
        kinds = {m.name: m.kind for m in self.models()}
        if kinds.get(baseModel) not in FINETUNE_FAMILIES:
            usable = ", ".join(sorted(n for n, k in kinds.items() if k in FINETUNE_FAMILIES))
            problem = "is not installed" if baseModel not in kinds else f"is a {KIND_LABELS.get(kinds[baseModel], kinds[baseModel])} model"
            raise InputError(f"'{baseModel}' {problem}; the Train panel fine-tunes {usable}")
        return FINETUNE_FAMILIES[kinds[baseModel]]

    def recordMetrics(self, tableNode, metrics: dict):
        """Append one epoch's metrics to a table node (created on first use; drives the live plot)."""
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("MedFound training metrics"))
        table = tableNode.GetTable()
        keys = [k for k, v in metrics.items() if isinstance(v, (int, float))]
        import vtk

        for key in keys:
            if table.GetColumnByName(key) is None:
                column = vtk.vtkDoubleArray()
                column.SetName(key)
                column.SetNumberOfTuples(table.GetNumberOfRows())
                column.Fill(float("nan"))
                table.AddColumn(column)
        row = table.InsertNextBlankRow(float("nan"))
        for key in keys:
            table.SetValueByName(row, key, vtk.vtkVariant(float(metrics[key])))
        tableNode.Modified()
        return tableNode

    def metricsPlot(self, tableNode, xColumn: str = "step", yColumns: tuple[str, ...] = ("loss", "dice")):
        """A plot chart node with one series per metric column of ``tableNode`` (loss and Dice by default)."""
        chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{tableNode.GetName()} chart")
        chart.SetTitle("MedFound training")
        chart.SetXAxisTitle(xColumn)
        table = tableNode.GetTable()
        for index in range(table.GetNumberOfColumns()):
            name = table.GetColumnName(index)
            if name == xColumn or (yColumns and name not in yColumns):
                continue
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName(xColumn)
            series.SetYColumnName(name)
            series.SetPlotType(series.PlotTypeScatter)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart


def _finished(job: Job) -> Job:
    """Re-raise a failed or cancelled job's outcome as the MedFound error type the user would see."""
    from medfoundcore.errors import Cancelled, MedFoundError

    if job.state is JobState.CANCELLED:
        raise Cancelled(job.error or "cancelled")
    if job.state is JobState.FAILED:
        raise MedFoundError(job.error)
    return job


def _model_info(info) -> ModelInfo:
    card = dataclasses.asdict(info.card)
    prompts = card.get("prompts") or [s.get("name", s.get("key", "")) for s in card.get("structures", [])]
    return ModelInfo(info.name, str(card.get("kind", "")), str(card.get("version", "")), tuple(map(str, prompts)),
                     info.source, str(info.path), card)


def terminology_entry(structure) -> str:
    """Slicer's serialized terminology entry for a vocabulary structure (DICOM master list codes).

    The vocabulary stores (category, type, modifier) as ``"SCT^code^meaning"`` triplets, the form
    Slicer's terminology uses; an entry without them yields '' (the segment keeps name and colour).
    """
    import slicer

    category, type_, modifier = (tuple(structure.snomed) + (None, None, None))[:3]
    if not category or not type_:
        return ""

    def code(triplet: str | None) -> tuple[str, str, str]:
        scheme, value, meaning = (triplet.split("^") + ["", "", ""])[:3] if triplet else ("", "", "")
        return value, scheme, meaning

    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        "Segmentation category and type - DICOM master list",
        *code(category), *code(type_), *code(modifier),
        "Anatomic codes - DICOM master list", "", "", "", "", "", "",
    )


def job_folder(kind: str, write) -> Path:
    """A new private temporary folder with the job's inputs, written by ``write(folder)``; removed if that fails.

    (A started :class:`~.process.ProcessJob` removes its folder itself, however it ends.)
    """
    folder = Path(tempfile.mkdtemp(prefix=f"medfound-{kind}-"))
    try:
        write(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def segment_arguments(workdir: Path, prompts: list[str], model: str, device: str, regionCheck: bool) -> list[str]:
    """``medfound segment`` arguments for a job folder holding ``input.nrrd`` (outputs beside it)."""
    args = ["segment", str(workdir / "input.nrrd"), "-o", str(workdir / "labels.nrrd"), "--json", str(workdir / "report.json"),
            "--model", model or "default", "--device", device, "--progress-json"]
    for prompt in prompts:
        args += ["-p", prompt]
    return args + ([] if regionCheck else ["--no-region-check"])


def read_label_map(path: Path, volume):
    """A label map the CLI wrote for ``volume``, as a Volume on ``volume``'s exact grid.

    It must have the input's shape and (to 1e-3 mm) its geometry; the array is then put on the
    input's own affine, so no rounding from the file round trip reaches the scene.
    """
    from medfoundcore.io import load_volume

    labels = load_volume(path, label=True)
    if labels.shape != volume.shape or not np.allclose(labels.affine_ras, volume.affine_ras, atol=1e-3):
        raise RuntimeError(f"the label map's grid {labels.shape} differs from the input's {volume.shape}")
    return volume.with_array(labels.array)


def read_segment_result(workdir: Path, volume):
    """The CLI's label map and JSON report as a ``SegmentationResult`` on ``volume``'s exact grid."""
    from medfoundcore.inference.segment import PromptReport, SegmentationResult

    labels = read_label_map(workdir / "labels.nrrd", volume)
    report = json.loads((workdir / "report.json").read_text())
    reports = [PromptReport(**{**r, "color": tuple(r["color"])}) for r in report["prompts"]]
    return SegmentationResult(labels, reports, list(report.get("warnings", [])), str(report.get("model", "")))


def _ras(point) -> str:
    """``R,A,S`` with every digit of the float (repr round-trips exactly)."""
    return ",".join(repr(float(c)) for c in point)


def click_arguments(image: Path, output: Path, include, exclude, model: str | None, device: str) -> list[str]:
    """One-shot ``medfound click`` arguments (the intensity engine's way); points in world RAS mm."""
    args = ["click", str(image), "-o", str(output), "--model", model or "intensity", "--device", device, "--progress-json"]
    args += [f"--point={_ras(p)}" for p in include]  # the = form: a negative R is not read as an option
    return args + [f"--negative={_ras(p)}" for p in exclude]


# TrainConfig fields startTraining passes on to ``medfound train-seg`` (as --steps, --checkpoint-every, ...)
TRAIN_OPTIONS = ("steps", "checkpoint_every", "log_every", "seed", "max_minutes", "preset", "image_size", "fve_k",
                 "prompts_per_image", "synth_fraction")


def steps_for_epochs(epochs: float, cases: int, batchSize: int) -> int:
    """Training steps of a 3D model for ``epochs`` passes over ``cases`` (each step draws ``batchSize`` crops)."""
    return max(1, math.ceil(epochs * cases / max(1, batchSize)))


def train_arguments(cases: Path, name: str, workDir: Path, epochs: float | None, lr: float, batchSize: int, device: str,
                    baseModel: str | None, config: dict, family: str = "text2d") -> list[str]:
    """``medfound train-seg`` arguments: the run keeps its checkpoints in ``workDir`` and always resumes them."""
    args = ["train-seg", str(cases), "--out-name", name, "--work-dir", str(workDir), "--resume", "--model", family,
            "--lr", repr(float(lr)), "--batch-size", str(int(batchSize)), "--device", device, "--progress-json"]
    if epochs is not None:
        args += ["--epochs", repr(float(epochs))]
    if baseModel:
        args += ["--base-model", baseModel]
    for key, value in config.items():
        if value is not None:  # None: the CLI's default
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _file_stem(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in str(text)) or "case"


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` names ``source``'s bytes: a symbolic link, else a hard link, else a copy (Windows without rights)."""
    for make in (os.symlink, os.link):
        try:
            make(source.resolve(), target)
            return
        except (OSError, NotImplementedError):
            continue
    shutil.copyfile(source, target)


def write_training_cases(cases: list, folder: Path) -> Path:
    """The training cases as a ``*_img.nii.gz / *_lab.nii.gz / *_labels.json`` folder that ``train-seg`` reads.

    In-memory cases (from scene nodes) are written as NIfTI with their geometry; unloaded cases (from a
    dataset folder) whose files are already NIfTI are linked, not copied, and others converted. Each
    ``_labels.json`` holds the case's label names as mapped to prompts, its modality, subject and
    metadata, so the child trains on exactly the cases, names and groups the caller chose. File names
    come from the case ids (made file-safe and unique), so the same cases give the same names and an
    interrupted run resumes on them.
    """
    from medfoundcore.data.datasets import IMG_SUFFIX, LAB_SUFFIX, LABELS_SUFFIX, CaseRef
    from medfoundcore.io import load_volume, save_volume

    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for case in cases:
        stem = base = _file_stem(case.case_id)
        copy = 1
        while stem in used:
            copy += 1
            stem = f"{base}_{copy}"
        used.add(stem)
        image, labels = folder / f"{stem}{IMG_SUFFIX}", folder / f"{stem}{LAB_SUFFIX}"
        if isinstance(case, CaseRef):
            for source, target, label in ((case.image_path, image, False), (case.label_path, labels, True)):
                if Path(source).name.lower().endswith(".nii.gz"):
                    _link_or_copy(Path(source), target)
                else:
                    save_volume(load_volume(source, label=label), target)
        else:
            save_volume(case.image, image)
            save_volume(case.labels, labels)
        meta = dict(case.meta)
        meta["dataset"] = meta.get("dataset") or meta.get("group") or "slicer-scene"  # the training group, as the caller's
        info = {**meta, "labels": {str(value): name for value, name in case.names.items()}, "modality": case.modality,
                "subject": case.subject}
        (folder / f"{stem}{LABELS_SUFFIX}").write_text(json.dumps(info, indent=1, default=str))
    return folder


def trained_model_dir(name: str) -> Path:
    """The model ``train-seg --out-name name`` stored in the user model store (a RuntimeError if it is not there)."""
    from medfoundcore.registry import CARD_FILE, user_models_dir

    directory = user_models_dir() / name
    if not (directory / CARD_FILE).is_file():
        raise RuntimeError(f"the new model '{name}' is not in the model store ({directory})")
    return directory
