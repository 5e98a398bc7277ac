"""Interactive segmentation on the scene: prompts placed as markups, the segment updated after each one.

The prompts are ordinary markups nodes that :class:`PromptNodes` creates and observes: include and
exclude points (two point lists), one box (an ROI) and strokes (open curves, each marked include or
exclude). Whenever a point, the box or a stroke is placed, moved or removed, :class:`InteractiveSegmentation`
takes a snapshot of all prompts (:class:`Prompts`, world RAS mm as the markups hold them) and sends it to
the volume's computation process (:mod:`.interactive_server`); the answer replaces the content of the
session's segment. Every update is one step of an undo history (the segment's previous content and
prompts). The rules of the house hold: a new segment gets a name no segment of the node has
("Segment 2"), and only the segment this session created is ever written.

What goes to the child as ``previous`` (the current mask the model refines): ``"last"`` (its own last
answer) for every ordinary interaction; nothing after *New segment* or *Reset*; the segment's content
read from the scene after *Undo*, after the computation restarted, or when the segment was edited
elsewhere (Segment Editor) since the last update. No widgets here: this runs on slicer-core.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from . import nodes
from .interactive_server import INTENSITY_MODEL, LEARNED_MODEL, POINTS_ONLY, EngineCallbacks, start_engine

PROMPT_ATTRIBUTE = "MedFound.Prompt"
INCLUDE, EXCLUDE, BOX, STROKE_INCLUDE, STROKE_EXCLUDE = "include", "exclude", "box", "stroke+", "stroke-"
TOOLS = (INCLUDE, EXCLUDE, BOX, STROKE_INCLUDE, STROKE_EXCLUDE)
POINT_TOOLS = (INCLUDE, EXCLUDE)
GREEN, RED, YELLOW = (0.2, 0.85, 0.2), (0.95, 0.2, 0.2), (0.95, 0.8, 0.1)
_NODES = {  # tool: (markups class, node name, colour)
    INCLUDE: ("vtkMRMLMarkupsFiducialNode", "MedFound include", GREEN),
    EXCLUDE: ("vtkMRMLMarkupsFiducialNode", "MedFound exclude", RED),
    BOX: ("vtkMRMLMarkupsROINode", "MedFound box", YELLOW),
    STROKE_INCLUDE: ("vtkMRMLMarkupsCurveNode", "MedFound include stroke", GREEN),
    STROKE_EXCLUDE: ("vtkMRMLMarkupsCurveNode", "MedFound exclude stroke", RED),
}
# Distinct colours for Segment 1, 2, ... (none of them the prompts' green, red or yellow).
SEGMENT_COLORS = ((0.30, 0.55, 0.95), (0.85, 0.45, 0.85), (0.25, 0.80, 0.80), (0.95, 0.55, 0.20),
                  (0.60, 0.40, 0.25), (0.55, 0.75, 0.35), (0.95, 0.60, 0.70), (0.50, 0.50, 0.80))
HISTORY_LIMIT = 30
MARKUP_EVENTS = ("PointPositionDefinedEvent", "PointEndInteractionEvent", "PointRemovedEvent")

# States reported through InteractiveCallbacks.on_state
STARTING, READY, COMPUTING, STOPPED, FAILED, NEEDS_INCLUDE = "starting", "ready", "computing", "stopped", "failed", "needs-include"

Point = Tuple[float, float, float]


@dataclass(frozen=True)
class Prompts:
    """Every prompt of the session at one moment, in world RAS mm (plain data: comparable, storable)."""

    include: Tuple[Point, ...] = ()
    exclude: Tuple[Point, ...] = ()
    box: Optional[Tuple[Point, Point]] = None  # two opposite corners
    strokes: Tuple[Tuple[Tuple[Point, ...], bool], ...] = ()  # (vertices, include)

    @property
    def hasInclude(self) -> bool:
        """Whether something says what to segment (exclude prompts alone do not)."""
        return bool(self.include) or self.box is not None or any(include for _, include in self.strokes)

    @property
    def empty(self) -> bool:
        return not (self.include or self.exclude or self.box is not None or self.strokes)

    @property
    def pointsOnly(self) -> bool:
        return self.box is None and not self.strokes

    def fields(self) -> dict:
        """The prompt fields of a ``medfound click --serve`` request."""
        return {
            "points": [[*p, True] for p in self.include] + [[*p, False] for p in self.exclude],
            "box": [list(c) for c in self.box] if self.box is not None else None,
            "scribbles": [{"points": [list(p) for p in vertices], "include": bool(include)} for vertices, include in self.strokes],
        }


def _points(node) -> Tuple[Point, ...]:
    return tuple(tuple(float(c) for c in p) for p in nodes.points_from_markups(node))


class PromptNodes:
    """The markups nodes holding the prompts; ``on_changed`` is called after each placed, moved or removed one."""

    def __init__(self, scene, on_changed: Callable[[], None]) -> None:
        self.scene = scene
        self.on_changed = on_changed
        self.include = self.exclude = self.box = None
        self.strokes: list = []
        self._observed: list = []

    # ---------------------------------------------------------------- nodes
    def present(self, node) -> bool:
        return node is not None and bool(self.scene.IsNodePresent(node))

    def node(self, tool: str):
        """The node to place ``tool`` into: the include/exclude point list (made once), a new box (an
        earlier box is removed: the model takes one) or a new stroke (an unfinished empty one is reused)."""
        if tool in POINT_TOOLS:
            current = getattr(self, tool)
            if not self.present(current):
                current = self._create(tool)
                setattr(self, tool, current)
            return current
        if tool == BOX:
            self._remove(self.box)
            self.box = self._create(BOX)
            return self.box
        if tool not in (STROKE_INCLUDE, STROKE_EXCLUDE):
            raise ValueError(f"unknown prompt tool {tool!r}")
        self.strokes = [s for s in self.strokes if self.present(s)]
        for stroke in list(self.strokes):
            if stroke.GetNumberOfControlPoints() == 0:  # started but never placed
                self.strokes.remove(stroke)
                self._remove(stroke)
        stroke = self._create(tool)
        self.strokes.append(stroke)
        return stroke

    def toolOf(self, node) -> str:
        """Which tool a node belongs to ('' for a node that is not one of this session's prompts)."""
        mine = [self.include, self.exclude, self.box, *self.strokes]
        if node is None or not any(node is n for n in mine if n is not None):
            return ""
        return node.GetAttribute(PROMPT_ATTRIBUTE) or ""

    def _create(self, tool: str, name: str = ""):
        cls, base, color = _NODES[tool]
        node = self.scene.AddNewNodeByClass(cls, self.scene.GenerateUniqueName(name or base))
        node.SetAttribute(PROMPT_ATTRIBUTE, tool)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*color)
            display.SetColor(*color)
            display.SetActiveColor(*color)
            display.SetPointLabelsVisibility(False)
            display.SetPropertiesLabelVisibility(False)
        if tool == BOX:
            node.SetSize(0.0, 0.0, 0.0)
        for event in MARKUP_EVENTS:
            self._observed.append((node, node.AddObserver(getattr(node, event), self._changed)))
        return node

    def _remove(self, node) -> None:
        if node is None:
            return
        for observed, tag in [o for o in self._observed if o[0] is node]:
            observed.RemoveObserver(tag)
            self._observed.remove((observed, tag))
        if self.present(node):
            self.scene.RemoveNode(node)

    def _changed(self, _caller, _event) -> None:
        self.on_changed()

    # ---------------------------------------------------------------- values
    def snapshot(self) -> Prompts:
        include = _points(self.include) if self.present(self.include) else ()
        exclude = _points(self.exclude) if self.present(self.exclude) else ()
        box = None
        if self.present(self.box):
            bounds = [0.0] * 6
            self.box.GetRASBounds(bounds)
            lo, hi = tuple(bounds[0::2]), tuple(bounds[1::2])
            placing = self.box.GetNumberOfControlPoints() and self.box.GetNumberOfDefinedControlPoints() < self.box.GetNumberOfControlPoints()
            if all(h - l > 0 for l, h in zip(lo, hi)) and not placing:
                box = (lo, hi)
        strokes = []
        for stroke in self.strokes:
            if self.present(stroke):
                vertices = _points(stroke)
                if len(vertices) >= 2:  # one vertex is not a stroke yet
                    strokes.append((vertices, stroke.GetAttribute(PROMPT_ATTRIBUTE) == STROKE_INCLUDE))
        return Prompts(include, exclude, box, tuple(strokes))

    def restore(self, prompts: Prompts) -> None:
        """Make the markups show ``prompts`` (after Undo); the caller mutes ``on_changed`` meanwhile."""
        import vtk

        for tool, points in ((INCLUDE, prompts.include), (EXCLUDE, prompts.exclude)):
            node = getattr(self, tool)
            if not points and not self.present(node):
                continue
            node = self.node(tool)
            node.RemoveAllControlPoints()
            for point in points:
                node.AddControlPointWorld(vtk.vtkVector3d(*point))
        self._remove(self.box)
        self.box = None
        if prompts.box is not None:
            self.box = self._create(BOX)
            lo, hi = np.array(prompts.box[0]), np.array(prompts.box[1])
            self.box.SetCenterWorld(*((lo + hi) / 2))
            self.box.SetSize(*(hi - lo))
        for stroke in self.strokes:
            self._remove(stroke)
        self.strokes = []
        for vertices, include in prompts.strokes:
            stroke = self._create(STROKE_INCLUDE if include else STROKE_EXCLUDE)
            for point in vertices:
                stroke.AddControlPointWorld(vtk.vtkVector3d(*point))
            self.strokes.append(stroke)

    def clear(self) -> None:
        """Remove every prompt (the point lists stay, empty; box and strokes go)."""
        for node in (self.include, self.exclude):
            if self.present(node):
                node.RemoveAllControlPoints()
        self._remove(self.box)
        self.box = None
        for stroke in self.strokes:
            self._remove(stroke)
        self.strokes = []

    def forget(self) -> None:
        """Stop observing (the scene is closing: its nodes go with it)."""
        for node, tag in self._observed:
            node.RemoveObserver(tag)
        self._observed = []
        self.include = self.exclude = self.box = None
        self.strokes = []


@dataclass(frozen=True)
class Update:
    """The segment after one update."""

    segmentationNode: Any
    segmentId: str
    name: str
    voxels: int
    volume_ml: float
    seconds: float  # computing time in the child
    elapsed: float  # from the interaction to the segment written, waiting included
    created: bool  # this update created the segment


@dataclass
class InteractiveCallbacks:
    """What the panel hears (all on the GUI thread)."""

    on_marks_changed: Callable[[], None] | None = None  # a mark was placed, moved or removed: poll() soon
    on_state: Callable[[str], None] | None = None  # STARTING, READY, COMPUTING, STOPPED, FAILED, NEEDS_INCLUDE
    on_progress: Callable[[Any], None] | None = None  # medfoundcore.progress.Progress
    on_updated: Callable[[Update], None] | None = None
    on_error: Callable[[str], None] | None = None  # one interaction could not be computed (the session lives on)
    on_failed: Callable[[str, str], None] | None = None  # the computation process ended: (sentence, details)


@dataclass
class _Packed:
    """A mask kept for Undo: the box around its voxels, bit-packed (a 512² × 300 CT's organ is a few 100 kB)."""

    shape: tuple
    lo: tuple
    crop_shape: tuple
    bits: np.ndarray

    @staticmethod
    def of(mask: np.ndarray | None) -> "_Packed | None":
        if mask is None or not mask.any():
            return None
        where = np.nonzero(mask)
        lo = tuple(int(w.min()) for w in where)
        hi = tuple(int(w.max()) + 1 for w in where)
        crop = mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
        return _Packed(mask.shape, lo, crop.shape, np.packbits(crop.astype(bool), axis=None))

    def unpacked(self) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        count = int(np.prod(self.crop_shape))
        crop = np.unpackbits(self.bits, count=count).astype(bool).reshape(self.crop_shape)
        mask[tuple(slice(a, a + n) for a, n in zip(self.lo, self.crop_shape))] = crop
        return mask


@dataclass
class _Step:
    """One update, as Undo needs it: where it wrote, what was there before, and the prompts before."""

    segmentationNode: Any
    segmentId: str
    created: bool
    before: _Packed | None
    prompts: Prompts


class InteractiveSegmentation:
    """One interactive session on a scene (see the module docstring).

    Use: :meth:`setVolume` (and :meth:`setOutput`, :meth:`setModel`); place prompts into
    :meth:`promptNode` (or :meth:`startPlacing` for Slicer's place mode); call :meth:`poll` from a
    timer. :meth:`undo`, :meth:`newSegment`, :meth:`reset`, :meth:`stop` are the panel's buttons;
    :meth:`close` ends the session (scene close, module cleanup).
    """

    def __init__(self, scene, callbacks: InteractiveCallbacks | None = None) -> None:
        self.scene = scene
        self.callbacks = callbacks or InteractiveCallbacks()
        self.prompts = PromptNodes(scene, self._marksChanged)
        self.volumeNode = None
        self.outputNode = None  # the segmentation the user chose; None: one is created on the first update
        self.model, self.device = LEARNED_MODEL, "auto"
        self.engine = None
        self.segmentationNode = None  # where the session's segment is
        self.segmentId = ""
        self.history: list = []
        self._engineKey = None
        self._engineModel = ""  # what the serving child says it runs: "default" is the intensity engine on an MRI
        self._previous: str | None = None  # "last", "segment" or None: see the module docstring
        self._applied = Prompts()  # the prompts behind the segment's current content
        self._submitted: Prompts | None = None  # the prompts of the last request (never sent twice)
        self._generation = 0  # answers to requests of an earlier generation (before Undo etc.) are dropped
        self._stamp = None
        self._muted = False
        self._dirty = False  # marks changed since the last request was made

    # ---------------------------------------------------------------- configuration
    def setVolume(self, volumeNode) -> None:
        """Work on ``volumeNode``: another volume stops the computation process and starts a new segment."""
        if volumeNode is self.volumeNode:
            return
        self._stopEngine()
        self.volumeNode = volumeNode
        self.newSegment()

    def setOutput(self, segmentationNode) -> None:
        """Write into ``segmentationNode`` (None: a new node); another node starts a new segment there."""
        if segmentationNode is self.outputNode or (segmentationNode is not None and segmentationNode is self.segmentationNode):
            self.outputNode = segmentationNode
            return
        self.outputNode = segmentationNode
        self.segmentationNode = segmentationNode
        self.newSegment()

    def setModel(self, model: str, device: str = "auto") -> None:
        """``model``: "default" (the learned model), "intensity" (points only) or a model name."""
        model = model or LEARNED_MODEL
        if (model, device) == (self.model, self.device):
            return
        self._stopEngine()
        self.model, self.device = model, device
        self._submitted = None

    @property
    def pointsOnly(self) -> bool:
        """The intensity engine takes include/exclude points only (chosen, or the default on an MRI)."""
        return INTENSITY_MODEL in (self.model, self._engineModel)

    # ---------------------------------------------------------------- prompts
    def promptNode(self, tool: str):
        """The markups node into which a prompt of ``tool`` goes (see :meth:`PromptNodes.node`)."""
        with self._mutedPrompts():
            return self.prompts.node(tool)

    def startPlacing(self, tool: str, interactionNode=None, selectionNode=None):
        """Slicer's place mode for ``tool``: clicks in the views add to its node. Points and strokes stay
        in place mode (many clicks); a box ends after its two corners. Returns the node (None without
        the scene's interaction node)."""
        interactionNode = interactionNode or self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        selectionNode = selectionNode or self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        if interactionNode is None or selectionNode is None:
            return None
        node = self.promptNode(tool)
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode.SetPlaceModePersistence(0 if tool == BOX else 1)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)
        return node

    def placingTool(self, interactionNode=None, selectionNode=None) -> str:
        """The tool being placed now ('' when Slicer is not in place mode for one of this session's nodes)."""
        interactionNode = interactionNode or self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        selectionNode = selectionNode or self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        if interactionNode is None or selectionNode is None or interactionNode.GetCurrentInteractionMode() != interactionNode.Place:
            return ""
        placed = self.scene.GetNodeByID(selectionNode.GetActivePlaceNodeID() or "")
        return self.prompts.toolOf(placed)

    def stopPlacing(self, interactionNode=None) -> None:
        interactionNode = interactionNode or self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if interactionNode is not None and self.placingTool(interactionNode):
            interactionNode.SetCurrentInteractionMode(interactionNode.ViewTransform)

    # ---------------------------------------------------------------- the computation
    def prepare(self) -> None:
        """Start the computation process ahead of the first prompt (it loads the model meanwhile)."""
        if self.volumeNode is not None:
            self._ensureEngine()

    @property
    def busy(self) -> bool:
        """Changed marks wait for the next :meth:`poll`, or the computation loads or computes."""
        return self._dirty or (self.engine is not None and self.engine.busy)

    @property
    def computing(self) -> bool:
        """The computation process loads the model or computes (what Stop would end)."""
        return self.engine is not None and self.engine.busy

    @property
    def canUndo(self) -> bool:
        return bool(self.history)

    def poll(self) -> None:
        """Send the marks if they changed, and hand over what the computation said. Call it from the GUI's
        timer while :attr:`busy` (or :attr:`engine` lives)."""
        if self._dirty:
            self.update()
        if self.engine is not None:
            self.engine.poll()

    def _marksChanged(self) -> None:
        """A markups event. The request is made at the next poll(), not here: one user action fires several
        events, and some come before the node is consistent (a box's second corner is reported before
        the box takes its new bounds)."""
        if self._muted:
            return
        self._dirty = True
        if self.callbacks.on_marks_changed:
            self.callbacks.on_marks_changed()

    def update(self) -> None:
        """Ask for the segment of all current marks now (poll() calls it after the marks changed)."""
        self._dirty = False
        if self._muted or self.volumeNode is None or not self.scene.IsNodePresent(self.volumeNode):
            return
        prompts = self.prompts.snapshot()
        if prompts == self._submitted:
            return
        if not prompts.hasInclude:
            if not prompts.empty:
                self._state(NEEDS_INCLUDE)
            return
        if self.pointsOnly and not prompts.pointsOnly:
            self._submitted = prompts
            self._error(POINTS_ONLY)
            return
        try:
            engine = self._ensureEngine()
            previous = None if self.pointsOnly else self._previousForRequest()
            self._submitted = prompts
            engine.submit(prompts.fields(), previous, tag=(self._generation, prompts, time.perf_counter()))
        except Exception as error:  # noqa: BLE001 - from a markups observer: reported, never raised into VTK
            import traceback

            self._onFailed(f"The MedFound computation could not be started: {error}", traceback.format_exc())
            return
        self._state(COMPUTING if engine.busy else READY)

    def _key(self):
        image = self.volumeNode.GetImageData()
        return (self.volumeNode.GetID(), image.GetMTime() if image is not None else 0,
                tuple(np.round(nodes.ijk_to_world(self.volumeNode), 6).ravel()), self.model, self.device)

    def _ensureEngine(self):
        key = self._key()
        if self.engine is not None and self.engine.alive and key == self._engineKey:
            return self.engine
        self._stopEngine()
        volume = nodes.volume_from_node(self.volumeNode)
        callbacks = EngineCallbacks(on_ready=self._onReady, on_progress=self._onProgress, on_result=self._onResult,
                                    on_error=self._onError, on_failed=self._onFailed)
        self.engine = start_engine(volume, self.model, self.device, callbacks)
        self._engineKey = key
        self._state(STARTING if self.engine.state.value == STARTING else READY)
        return self.engine

    def _stopEngine(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self.engine = None
        self._engineModel = ""
        self._submitted = None
        if self._previous == "last":  # a new process has no last answer: it gets the segment itself
            self._previous = "segment"

    def _previousForRequest(self):
        mode = self._previous
        if mode == "last" and self._stamp != self._segmentStamp():
            mode = "segment"  # edited elsewhere since our last update
        if mode == "segment":
            mask = self._segmentMask()
            return mask if mask is not None and mask.any() else None
        return mode

    # ---------------------------------------------------------------- answers (GUI thread, from poll)
    def _onReady(self, info: dict) -> None:
        self._engineModel = info.get("model", "")
        self._state(COMPUTING if self.busy else READY)

    def _onProgress(self, progress) -> None:
        if self.callbacks.on_progress:
            self.callbacks.on_progress(progress)

    def _onResult(self, answer) -> None:
        generation, prompts, interacted = answer.tag
        if generation != self._generation or self.volumeNode is None or not self.scene.IsNodePresent(self.volumeNode):
            return
        segmentationNode = self._targetNode()
        mask = np.asarray(answer.mask.array) > 0
        created = not self._segmentPresent()
        if created:
            name, color = self._newSegmentName(segmentationNode)
            labels = answer.mask.with_array(mask.astype(np.uint8))
            (self.segmentId,) = nodes.write_segments(segmentationNode, labels, [nodes.SegmentSpec(1, name, color)], replace=False)
            before = None
        else:
            before = _Packed.of(self._segmentMask())
            nodes.set_segment_mask(segmentationNode, self.segmentId, mask, answer.mask.affine_ras)
        self.history.append(_Step(segmentationNode, self.segmentId, created, before, self._applied))
        del self.history[:-HISTORY_LIMIT]
        self._applied, self._previous, self._stamp = prompts, "last", self._segmentStamp()
        segment = segmentationNode.GetSegmentation().GetSegment(self.segmentId)
        update = Update(segmentationNode, self.segmentId, segment.GetName(), int(mask.sum()),
                        float(mask.sum()) * float(np.prod(answer.mask.spacing)) / 1000.0, answer.seconds,
                        time.perf_counter() - interacted, created)
        if self.callbacks.on_updated:
            self.callbacks.on_updated(update)
        self._state(COMPUTING if self.busy else READY)

    def _onError(self, answer) -> None:
        generation = answer.tag[0] if isinstance(answer.tag, tuple) else self._generation
        if generation == self._generation:
            self._error(answer.error)
        self._state(COMPUTING if self.busy else READY)

    def _onFailed(self, message: str, details: str) -> None:
        if self.engine is not None and self.engine.alive:
            self.engine.cancel()
        self.engine = None
        self._submitted = None
        if self._previous == "last":
            self._previous = "segment"
        if self.callbacks.on_failed:
            self.callbacks.on_failed(message, details)
        self._state(FAILED)

    # ---------------------------------------------------------------- the panel's buttons
    def undo(self) -> bool:
        """Put the segment and the prompts back as they were before the last update; False if there was none."""
        if not self.history:
            return False
        step = self.history.pop()
        self._newGeneration()
        with self._mutedPrompts():
            self.prompts.restore(step.prompts)
        self._applied = self._submitted = step.prompts
        node = step.segmentationNode
        if self.scene.IsNodePresent(node) and node.GetSegmentation().GetSegment(step.segmentId) is not None:
            if step.created:
                node.GetSegmentation().RemoveSegment(step.segmentId)
            else:
                before = step.before.unpacked() if step.before is not None else np.zeros(self._shape(), dtype=bool)
                nodes.set_segment_mask(node, step.segmentId, before, nodes.ijk_to_world(self.volumeNode))
        self.segmentationNode = node
        self.segmentId = "" if step.created else step.segmentId
        self._previous = None if step.created else "segment"  # the restored mask, written for the next request
        self._stamp = self._segmentStamp()
        self._state(COMPUTING if self.busy else READY)
        return True

    def newSegment(self) -> None:
        """Clear the prompts; the next interaction starts a new segment (the current one stays as it is)."""
        self._newGeneration()
        with self._mutedPrompts():
            self.prompts.clear()
        self.history = []
        self.segmentId = ""
        self._previous, self._applied, self._submitted, self._stamp = None, Prompts(), None, None
        if self.engine is not None:
            self._state(COMPUTING if self.busy else READY)

    def reset(self) -> None:
        """Clear the prompts and empty the current segment (Undo brings both back)."""
        self._newGeneration()
        if self._segmentPresent():
            before = _Packed.of(self._segmentMask())
            if before is not None:
                self.history.append(_Step(self.segmentationNode, self.segmentId, False, before, self._applied))
                nodes.set_segment_mask(self.segmentationNode, self.segmentId, np.zeros(self._shape(), dtype=bool),
                                       nodes.ijk_to_world(self.volumeNode))
        with self._mutedPrompts():
            self.prompts.clear()
        self._previous, self._applied, self._submitted = None, Prompts(), None
        self._stamp = self._segmentStamp()
        if self.engine is not None:
            self._state(COMPUTING if self.busy else READY)

    def stop(self) -> None:
        """Kill the computation process (and what it started) now: the update it was computing is not
        applied, the scene stays as it is. The next interaction starts a new process."""
        if self.engine is not None:
            self.engine.cancel()
        self.engine = None
        self._newGeneration()
        self._submitted = None
        if self._previous == "last":
            self._previous = "segment"
        self._state(STOPPED)

    def close(self) -> None:
        """End the session: the process quits, the prompts are no longer observed, the history is dropped."""
        self._stopEngine()
        self.stopPlacing()
        self.prompts.forget()
        self.volumeNode = self.outputNode = self.segmentationNode = None
        self.segmentId = ""
        self.history = []
        self._previous, self._applied, self._submitted, self._stamp = None, Prompts(), None, None

    # ---------------------------------------------------------------- internals
    def _newGeneration(self) -> None:
        self._generation += 1
        self._dirty = False
        if self.engine is not None:
            self.engine.discard()

    @contextmanager
    def _mutedPrompts(self):
        was, self._muted = self._muted, True
        try:
            yield
        finally:
            self._muted = was

    def _state(self, state: str) -> None:
        if self.callbacks.on_state:
            self.callbacks.on_state(state)

    def _error(self, message: str) -> None:
        if self.callbacks.on_error:
            self.callbacks.on_error(message)

    def _shape(self) -> tuple:
        """The volume's (K, J, I) shape."""
        return tuple(self.volumeNode.GetImageData().GetDimensions()[::-1])

    def _targetNode(self):
        if self.segmentationNode is None or not self.scene.IsNodePresent(self.segmentationNode):
            output = self.outputNode if self.outputNode is not None and self.scene.IsNodePresent(self.outputNode) else None
            self.segmentationNode = output or nodes.create_segmentation_node(
                self.scene, self.volumeNode, f"{self.volumeNode.GetName()} MedFound")
            self.segmentId = ""
        return self.segmentationNode

    def _segmentPresent(self) -> bool:
        node = self.segmentationNode
        return bool(self.segmentId) and node is not None and bool(self.scene.IsNodePresent(node)) and (
            node.GetSegmentation().GetSegment(self.segmentId) is not None)

    def _segmentMask(self) -> np.ndarray | None:
        if not self._segmentPresent():
            return None
        return nodes.segment_mask(self.segmentationNode, self.segmentId, self.volumeNode)

    def _segmentStamp(self):
        """Changes whenever the segment's voxels change (its labelmap's modification time)."""
        if not self._segmentPresent():
            return None
        import slicer

        segment = self.segmentationNode.GetSegmentation().GetSegment(self.segmentId)
        labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        return labelmap.GetMTime() if labelmap is not None else None

    @staticmethod
    def _newSegmentName(segmentationNode) -> tuple:
        taken = set(nodes.segment_names(segmentationNode))
        number = len(taken) + 1
        while f"Segment {number}" in taken:
            number += 1
        return f"Segment {number}", SEGMENT_COLORS[(number - 1) % len(SEGMENT_COLORS)]
