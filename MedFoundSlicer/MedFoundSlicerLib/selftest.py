"""End-to-end scenarios shared by Slicer's self-test (MedFoundSlicerTest) and the headless CI tests.

Each scenario works on the logic's MRML scene with real data and raises AssertionError on failure;
it returns the measured figures so tests and docs can report them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import nodes

# Real abdominal CT, 122x101x30 at 3 mm, TotalSegmentator labels. A crop of ts_ct_full, a patient the
# starter models were trained on: used where the plumbing is checked (training from the scene, cancel,
# the right segment on the right grid), never for a quality floor.
CASE = "totalsegmentator/ts_ct_sm"
# A patient no model was trained on (20 axial slices of 512x512 at 0.98x0.98x2 mm): quality floors go here.
HELD_OUT_CASE = "totalsegmentator/ts_ct_dicom20"
SEGMENT_PROMPTS = ("liver", "spleen")
# Lowest Dice accepted on HELD_OUT_CASE through the Logic, for the model the tests use (starter-v2): it
# measured liver 0.402 there and does not find the spleen on these 20 slices (docs/slicer.md), so only
# the liver has a floor, set clearly below the measurement.
MIN_DICE = {"liver": 0.3}
TRAIN_STEPS = 4


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def data_dir() -> Path:
    """The MedFound sample data folder (``$MEDFOUND_DATA`` or ``../shared/data``)."""
    from medfoundcore.data.paths import shared_data_dir

    return shared_data_dir()


def reference_labels(data: Path, case: str = CASE) -> tuple[np.ndarray, dict[str, int]]:
    """Reference label map (K, J, I) and name → value table of a sample case."""
    from medfoundcore.io import load_volume

    labels = load_volume(data / f"{case}_lab.nii.gz", label=True).array
    table = json.loads((data / f"{case}_labels.json").read_text())["labels"]
    return labels, {name: int(value) for value, name in table.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denominator = int(a.sum()) + int(b.sum())
    return 1.0 if denominator == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denominator


def scene_snapshot(scene) -> list[tuple]:
    """Every node with its name and modification time, plus segment names: equal snapshots = unchanged scene."""
    snapshot = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        entry = (node.GetID(), node.GetName(), node.GetMTime())
        if node.IsA("vtkMRMLSegmentationNode"):
            entry += tuple(nodes.segment_names(node))
        snapshot.append(entry)
    return snapshot


def load_case(logic, data: Path, case: str = CASE):
    return nodes.load_volume_node(logic.scene, str(data / f"{case}_img.nii.gz"))


# (K, J, I) box of HELD_OUT_CASE around its spleen (176 x 156 x 40 mm): small, so the interactive tests are quick.
# The spleen is also a structure class the interactive model never saw in training.
SPLEEN_CROP = (slice(0, 20), slice(220, 400), slice(260, 420))


def held_out_crop(logic, data: Path):
    """SPLEEN_CROP of HELD_OUT_CASE as a volume node, with its reference labels (K, J, I) and name → value table."""
    from medfoundcore.io import load_volume

    image = load_volume(data / f"{HELD_OUT_CASE}_img.nii.gz").crop(SPLEEN_CROP)
    reference, values = reference_labels(data, HELD_OUT_CASE)
    return nodes.volume_node_from_volume(logic.scene, image, "held-out CT"), reference[SPLEEN_CROP], values


def ras_of_voxel(volumeNode, kji) -> tuple:
    """World RAS (mm) of the (K, J, I) voxel index ``kji`` of a volume node."""
    return tuple(float(c) for c in nodes.volume_from_node(volumeNode).index_to_ras(np.asarray(kji, dtype=float)[::-1])[0])


def scenario_segment(logic, data: Path, model: str = "default", case: str = HELD_OUT_CASE,
                     min_dice: dict[str, float] | None = None) -> dict[str, float]:
    """Segment a real CT by text through the Logic: one summary row per prompt, named segments on the CT
    grid with the reported volumes, and Dice above ``min_dice`` (default MIN_DICE, for HELD_OUT_CASE)."""
    min_dice = MIN_DICE if min_dice is None else min_dice
    volumeNode = load_case(logic, data, case)
    started = time.perf_counter()
    segmentationNode, summaries = logic.runSegmentation(volumeNode, list(SEGMENT_PROMPTS), model=model, device="auto")
    elapsed = time.perf_counter() - started
    reference, values = reference_labels(data, case)
    segmentation = segmentationNode.GetSegmentation()
    scores = {}
    _check([s.prompt for s in summaries] == list(SEGMENT_PROMPTS), "one summary row per prompt, in order")
    _check(segmentation.GetNumberOfSegments() == sum(s.found for s in summaries), "segments differ from found prompts")
    for summary in summaries:
        if summary.name in min_dice:
            _check(summary.found, f"'{summary.prompt}' was not found")
        if not summary.found:
            _check(summary.segment_id == "" and summary.volume_ml == 0, f"'{summary.prompt}' not found but has a segment")
            continue
        segment = segmentation.GetSegment(summary.segment_id)
        _check(segment is not None and segment.GetName() == summary.name, f"no segment named '{summary.name}'")
        mask = nodes.segment_mask(segmentationNode, summary.segment_id, volumeNode)
        _check(mask.shape == reference.shape, f"segment grid {mask.shape} differs from the CT grid {reference.shape}")
        _check(abs(mask.sum() * np.prod(nodes.volume_from_node(volumeNode).spacing) / 1000 - summary.volume_ml) < 1.0,
               f"reported volume of {summary.name} does not match its segment")
        scores[summary.name] = dice(mask, reference == values[summary.name.replace(" ", "_")])
        if summary.name in min_dice:
            _check(scores[summary.name] >= min_dice[summary.name],
                   f"Dice of {summary.name} is {scores[summary.name]:.3f} < {min_dice[summary.name]}")
    scores["seconds"] = elapsed
    return scores


def cancel_segmentation(logic, volumeNode, model: str = "default") -> dict[str, float]:
    """Cancel at the first progress report; the scene (with a prior user segmentation) must not change."""
    from .jobs import JobCallbacks, JobState

    existing = nodes.create_segmentation_node(logic.scene, volumeNode, "user segmentation")
    labels = nodes.volume_from_node(volumeNode)
    nodes.write_segments(existing, labels.with_array(np.zeros(labels.shape, np.uint8)), [nodes.SegmentSpec(1, "liver", (1, 0, 0))], False)
    before = scene_snapshot(logic.scene)
    seen = []

    def on_progress(progress):
        seen.append(progress.stage)
        job.cancel()  # cancel as soon as the child reports it is under way

    job = logic.startSegmentation(volumeNode, list(SEGMENT_PROMPTS), model=model, callbacks=JobCallbacks(on_progress=on_progress))
    job.wait()
    _check(bool(seen), "the job reported no progress before it ended")
    _check(job.state is JobState.CANCELLED, f"job ended {job.state.value}, expected cancelled ({job.error})")
    _check(scene_snapshot(logic.scene) == before, "the scene changed although the job was cancelled")
    return {"cancel_latency_s": job.finished - job.started, "progress_events": float(len(seen))}


# ---------------------------------------------------------------- synthetic case (no data needed)
SYNTHETIC_SHAPE = (24, 64, 72)  # (K, J, I): 110 k voxels, 0.2 MB as int16
SYNTHETIC_SPACING = (2.5, 2.0, 3.0)  # (I, J, K) mm, deliberately anisotropic


def synthetic_volume(seed: int = 0):
    """An MRI-like volume (positive intensities, no HU) with two labelled ellipsoids, on an oblique-free LPS grid.

    Why synthetic: Slicer's build servers have no sample data; this exercises every step (node ->
    file -> child process -> label map -> segments, training from scene nodes) with known geometry.
    Returns ``(image Volume, labels array, {name: value})``.
    """
    from medfoundcore.io import Volume

    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SYNTHETIC_SHAPE), indexing="ij")
    body = ((i - 36) / 32) ** 2 + ((j - 32) / 26) ** 2 < 1
    big = ((i - 24) / 12) ** 2 + ((j - 30) / 10) ** 2 + ((k - 12) / 8) ** 2 < 1
    small = ((i - 52) / 6) ** 2 + ((j - 34) / 6) ** 2 + ((k - 12) / 5) ** 2 < 1
    image = np.where(body, 300.0, 10.0) + np.where(big, 350.0, 0.0) + np.where(small, 500.0, 0.0)
    image = (image + rng.normal(0, 20, image.shape)).clip(0).astype(np.int16)
    labels = np.zeros(SYNTHETIC_SHAPE, np.uint8)
    labels[big], labels[small] = 1, 2
    spacing = np.array(SYNTHETIC_SPACING)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-stored, as DICOM-derived volumes are
    affine[:3, 3] = (90.0, 60.0, -40.0)
    return Volume.from_affine_ras(image, affine, {"source": "medfound-selftest-synthetic"}), labels, {"liver": 1, "spleen": 2}


def synthetic_case(logic):
    """The synthetic volume as a scene node, with its reference labels and names."""
    volume, labels, names = synthetic_volume()
    return nodes.volume_node_from_volume(logic.scene, volume, "MedFound self-test volume"), labels, names


def scenario_segment_synthetic(logic, model: str = "default") -> dict[str, float]:
    """Segment the synthetic volume through the child process: a label map exactly on the volume's grid,
    one summary row per prompt, one segment per found structure with the reported volume."""
    volumeNode, _labels, _names = synthetic_case(logic)
    volume = nodes.volume_from_node(volumeNode)
    job = logic.startSegmentation(volumeNode, list(SEGMENT_PROMPTS), model=model).wait()
    _check(job.state.value == "succeeded", f"segmentation ended {job.state.value}: {job.error}")
    result = job.result
    _check(result.labels.shape == volume.shape and np.array_equal(result.labels.affine_ras, volume.affine_ras),
           "the label map is not on the volume's grid")
    segmentationNode, summaries = logic.applySegmentation(result, volumeNode)
    _check([s.prompt for s in summaries] == list(SEGMENT_PROMPTS), "one summary row per prompt, in order")
    _check(segmentationNode.GetSegmentation().GetNumberOfSegments() == sum(s.found for s in summaries),
           "segments differ from found prompts")
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    for summary in (s for s in summaries if s.found):
        mask = nodes.segment_mask(segmentationNode, summary.segment_id, volumeNode)
        _check(abs(mask.sum() * voxel_ml - summary.volume_ml) < 1.0, f"reported volume of {summary.name} does not match its segment")
    return {"found": float(sum(s.found for s in summaries)), "seconds": job.finished - job.started}


def scenario_cancel_synthetic(logic, model: str = "default") -> dict[str, float]:
    """Cancel a segmentation of the synthetic volume; the scene is unchanged."""
    volumeNode, _labels, _names = synthetic_case(logic)
    return cancel_segmentation(logic, volumeNode, model)


def scenario_train_synthetic(logic, steps: int = TRAIN_STEPS, base_model: str = "default") -> dict[str, float]:
    """Fine-tune a few steps from the synthetic volume's segments (temporary model store); the model registers and runs."""
    from .jobs import JobCallbacks, JobState

    with temporary_model_store():
        volumeNode, labels, names = synthetic_case(logic)
        segmentationNode = nodes.create_segmentation_node(logic.scene, volumeNode, "self-test reference")
        specs = [nodes.SegmentSpec(value, name, (0.8, 0.4, 0.3)) for name, value in names.items()]
        nodes.write_segments(segmentationNode, nodes.volume_from_node(volumeNode).with_array(labels), specs, replace=False)
        cases = logic.casesFromScene([(volumeNode, segmentationNode)], logic.segmentPromptMap(segmentationNode))
        metrics = []
        name = f"selftest-{int(time.time())}"
        job = logic.startTraining(cases, name, epochs=None, steps=steps, batchSize=2, device="auto", baseModel=base_model,
                                  callbacks=JobCallbacks(on_metrics=metrics.append), checkpoint_every=2, log_every=1)
        job.wait()
        _check(job.state is JobState.SUCCEEDED, f"training ended {job.state.value}: {job.error}")
        _check(any(m.name == name for m in logic.models()), f"model '{name}' is not in the registry")
        _check(len(metrics) >= 1 and all(np.isfinite(m.get("loss", np.nan)) for m in metrics), f"no finite loss reported: {metrics}")
        seg = logic.startSegmentation(volumeNode, ["liver"], model=name).wait()
        _check(seg.state is JobState.SUCCEEDED, f"the fine-tuned model did not run: {seg.error}")
        return {"train_seconds": job.finished - job.started, "last_loss": float(metrics[-1]["loss"])}


@contextmanager
def temporary_model_store():
    """Point MEDFOUND_HOME at a temporary folder so a test never touches the user's models."""
    previous = os.environ.get("MEDFOUND_HOME")
    with tempfile.TemporaryDirectory(prefix="medfound-selftest-") as home:
        os.environ["MEDFOUND_HOME"] = home
        try:
            yield Path(home)
        finally:
            if previous is None:
                os.environ.pop("MEDFOUND_HOME", None)
            else:
                os.environ["MEDFOUND_HOME"] = previous


def scenario_train(logic, data: Path, steps: int = TRAIN_STEPS, base_model: str = "default") -> dict[str, float]:
    """Fine-tune from scene nodes; the new model is registered, listed, and segments the CT.

    Runs against a temporary model store, so the user's registry is never touched.
    """
    with temporary_model_store():
        return _train(logic, data, steps, base_model)


def _train(logic, data: Path, steps: int, base_model: str) -> dict[str, float]:
    from .jobs import JobCallbacks, JobState

    volumeNode = load_case(logic, data)
    reference, values = reference_labels(data)
    image = nodes.volume_from_node(volumeNode)
    segmentationNode = nodes.create_segmentation_node(logic.scene, volumeNode, "reference")
    specs = [nodes.SegmentSpec(values[name], f"{name} (reference)", (0.8, 0.4, 0.3)) for name in SEGMENT_PROMPTS]
    nodes.write_segments(segmentationNode, image.with_array(reference), specs, replace=False)
    promptMap = logic.segmentPromptMap(segmentationNode)
    _check(all(promptMap[f"{n} (reference)"] == n for n in SEGMENT_PROMPTS), f"segment names not mapped to prompts: {promptMap}")
    cases = logic.casesFromScene([(volumeNode, segmentationNode)], promptMap)
    _check(int((cases[0].labels.array > 0).sum()) == int(np.isin(reference, [values[n] for n in SEGMENT_PROMPTS]).sum()),
           "the training labels exported from the scene differ from the reference segments")
    metrics, progress = [], []
    name = f"selftest-{int(time.time())}"
    job = logic.startTraining(cases, name, epochs=None, steps=steps, batchSize=2, device="auto", baseModel=base_model,
                              callbacks=JobCallbacks(on_metrics=metrics.append, on_progress=progress.append),
                              checkpoint_every=2, log_every=1)
    job.wait()
    _check(job.state is JobState.SUCCEEDED, f"training ended {job.state.value}: {job.error}")
    _check(any(m.name == name for m in logic.models()), f"model '{name}' is not in the registry")
    _check(len(metrics) >= 1 and all(np.isfinite(m.get("loss", np.nan)) for m in metrics), f"no finite loss reported: {metrics}")
    _check(bool(progress) and (progress[-1].stage, progress[-1].done) == ("training", steps), f"training progress not reported: {progress}")
    table = logic.recordMetrics(None, metrics[0])
    _check(table.GetTable().GetNumberOfRows() == 1, "metrics table not filled")
    segmentationOut, summaries = logic.runSegmentation(volumeNode, ["liver"], model=name)
    _check(segmentationOut.GetSegmentation().GetNumberOfSegments() == sum(s.found for s in summaries),
           "the fine-tuned model's result was not written as segments")
    return {"train_seconds": job.finished - job.started, "metric_events": float(len(metrics)), "last_loss": float(metrics[-1]["loss"])}
