"""Interactive segmentation through the Logic: prompts placed as real markups in a real MRML scene, the
real ``medfound click --serve`` child (the shipped learned model) answering, segments written by Slicer's
own segmentation code. The case is ``selftest.SPLEEN_CROP`` of ``ts_ct_dicom20``, a patient no model was
trained on; the spleen is also a structure class the interactive model never saw in training.
Nothing is timed here (speed: ``bench_gui_latency.py --job interactive``)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import vtk

from MedFoundSlicerLib import nodes, selftest
from MedFoundSlicerLib.interactive import EXCLUDE, INCLUDE, InteractiveCallbacks

# Lowest Dice of the spleen from one include point at its centre. Measured 0.146 with the shipped
# interactive-v1 (docs/slicer.md: it under-segments this unseen organ from one click); the floor sits below.
MIN_SPLEEN_DICE = 0.1
LIMIT_S = 600  # only stops a hang
held_out_crop, ras = selftest.held_out_crop, selftest.ras_of_voxel


class Recorder:
    """What the session told the panel."""

    def __init__(self) -> None:
        self.states, self.updates, self.errors, self.failures, self.progress = [], [], [], [], []

    def callbacks(self) -> InteractiveCallbacks:
        return InteractiveCallbacks(on_state=self.states.append, on_updated=self.updates.append, on_error=self.errors.append,
                                    on_failed=lambda message, details: self.failures.append((message, details)),
                                    on_progress=self.progress.append)


def settle(session, until=None) -> None:
    """Poll as the panel's timer does until the session is idle (or ``until()`` holds)."""
    deadline = time.monotonic() + LIMIT_S
    while (until() if until is not None else not session.busy) is not True:
        assert time.monotonic() < deadline, "the interactive session never settled"
        session.poll()
        time.sleep(0.02)


def place(session, node, point) -> None:
    """A click in place mode (the markups widget adds a defined control point: PointPositionDefinedEvent),
    then one tick of the panel's timer (the request is made at the next poll)."""
    node.AddControlPointWorld(vtk.vtkVector3d(*point))
    session.poll()


def near(mask, kji, radius_mm: float, spacing_kji) -> int:
    """Voxels of ``mask`` within ``radius_mm`` of voxel ``kji``."""
    grid = np.indices(mask.shape).reshape(3, -1).T
    close = np.linalg.norm((grid - np.asarray(kji)) * np.asarray(spacing_kji), axis=1) <= radius_mm
    return int(mask.reshape(-1)[close].sum())


@pytest.fixture
def session(logic, shared_data):
    recorder = Recorder()
    session = logic.interactiveSegmentation(recorder.callbacks())
    volume_node, reference, values = held_out_crop(logic, shared_data)
    session.setVolume(volume_node)
    session.recorder, session.reference, session.values = recorder, reference, values
    yield session
    session.close()


def test_include_exclude_undo_new_segment_stop_and_a_crash(session, logic, pid_alive):
    """One session through its life: the first include point starts the child and creates Segment 1; an
    exclude point shrinks it; Undo restores it exactly; New segment starts Segment 2 and leaves
    Segment 1 alone; marks placed while the child computes are merged; Stop during a request and a
    crashed child leave the scene as it was. (One scenario, so the child's start-up is paid once.)"""
    recorder, volume_node = session.recorder, session.volumeNode
    spleen = session.reference == session.values["spleen"]
    centre = np.argwhere(spleen).mean(axis=0).round().astype(int)
    include = session.promptNode(INCLUDE)

    # one include point: the child starts, loads the model, and the segment appears
    place(session, include, ras(volume_node, centre))
    server = session.engine
    assert server is not None and server.pid != os.getpid() and "--serve" in server.command
    settle(session)
    assert not recorder.errors and not recorder.failures, (recorder.errors, recorder.failures)
    assert server.sent[0]["previous"] is None  # a new segment: nothing to refine
    (update,) = recorder.updates
    segmentation = session.segmentationNode
    assert update.created and update.name == "Segment 1" and nodes.segment_names(segmentation) == ["Segment 1"]
    first = nodes.segment_mask(segmentation, update.segmentId, volume_node)
    assert first.shape == spleen.shape and first.sum() == update.voxels > 0
    score = selftest.dice(first, spleen)
    print(f"spleen Dice from one include point: {score:.3f}")
    assert score >= MIN_SPLEEN_DICE, score

    # an exclude point on part of the result (three quarters of the way to its far edge): the model refines
    # its own last answer and the segment shrinks, around the point too
    inside = np.argwhere(first)
    far = inside[np.argmax(np.linalg.norm((inside - centre) * [2.0, 0.98, 0.98], axis=1))]  # mm-weighted
    exclude_at = np.round(centre + 0.75 * (far - centre)).astype(int)
    assert first[tuple(exclude_at)]
    place(session, session.promptNode(EXCLUDE), ras(volume_node, exclude_at))
    settle(session)
    assert server.sent[-1]["previous"] == "last" and server.sent[-1]["points"][-1][3] is False
    second = nodes.segment_mask(segmentation, update.segmentId, volume_node)
    assert len(recorder.updates) == 2 and not recorder.updates[-1].created
    spacing = nodes.volume_from_node(volume_node).spacing[::-1]
    print("exclude point: voxels", first.sum(), "->", second.sum(), "; within 15 mm", near(first, exclude_at, 15, spacing),
          "->", near(second, exclude_at, 15, spacing), "; its own voxel kept:", bool(second[tuple(exclude_at)]))
    assert second.sum() < first.sum() and near(second, exclude_at, 15, spacing) < near(first, exclude_at, 15, spacing)
    assert not second[tuple(exclude_at)]  # nothing the exclude point touches stays
    assert nodes.segment_names(segmentation) == ["Segment 1"]

    # Undo: the segment is exactly as before, the exclude point is gone, and the next request refines
    # the restored mask (sent as a file), not the child's last answer
    assert session.undo()
    np.testing.assert_array_equal(nodes.segment_mask(segmentation, update.segmentId, volume_node), first)
    assert session.prompts.snapshot().exclude == () and len(session.prompts.snapshot().include) == 1
    moved = centre + [0, 3, 0]
    include.SetNthControlPointPositionWorld(0, *ras(volume_node, moved))
    include.InvokeEvent(include.PointEndInteractionEvent)  # the end of a drag
    settle(session)
    assert str(server.sent[-1]["previous"]).endswith(".nrrd")
    assert nodes.segment_names(segmentation) == ["Segment 1"] and len(recorder.updates) == 3
    kept = nodes.segment_mask(segmentation, update.segmentId, volume_node)

    # New segment: marks cleared; the next point starts Segment 2 from nothing; Segment 1 is untouched.
    # Three points in a row while the first is computed: the newest waiting request replaces the older one.
    session.newSegment()
    assert session.prompts.snapshot().empty and not session.canUndo
    stomach = np.argwhere(session.reference == session.values["stomach"])
    points = [stomach[len(stomach) // 2], stomach[len(stomach) // 3], stomach[2 * len(stomach) // 3]]
    sent_before = len(server.sent)
    for point in points:  # one timer tick after each: the first is sent, the second waits, the third replaces it
        place(session, include, ras(volume_node, point))
    settle(session)
    assert len(server.sent) == sent_before + 2  # the first, then only the newest of the other two
    assert server.sent[sent_before]["previous"] is None and len(server.sent[-1]["points"]) == 3
    assert nodes.segment_names(segmentation) == ["Segment 1", "Segment 2"]
    np.testing.assert_array_equal(nodes.segment_mask(segmentation, update.segmentId, volume_node), kept)
    assert recorder.updates[-1].name == "Segment 2" and server.pid == session.engine.pid  # the same process all along

    # Stop while the child computes: it is killed with everything it started; the answer never comes
    updates = len(recorder.updates)
    place(session, include, ras(volume_node, stomach[len(stomach) // 4]))
    assert server.busy and pid_alive(server.pid)
    before = selftest.scene_snapshot(logic.scene)
    session.stop()
    assert not pid_alive(server.pid) and session.engine is None and recorder.states[-1] == "stopped"
    assert not server.workdir.exists() and not session.busy
    settle(session, until=lambda: True)
    assert selftest.scene_snapshot(logic.scene) == before and len(recorder.updates) == updates

    # The next mark starts a new child; killed from outside, it is a readable failure and nothing changes
    place(session, include, ras(volume_node, stomach[len(stomach) // 5]))
    crashed = session.engine
    assert crashed is not None and crashed.pid != server.pid
    before = selftest.scene_snapshot(logic.scene)
    os.kill(crashed.pid, signal.SIGKILL)
    settle(session, until=lambda: bool(recorder.failures))
    (message, _details), = recorder.failures
    assert "stopped unexpectedly" in message and "SIGKILL" in message and "Slicer was not affected" in message
    assert recorder.states[-1] == "failed" and session.engine is None and not crashed.workdir.exists()
    assert selftest.scene_snapshot(logic.scene) == before and len(recorder.updates) == updates
    assert nodes.segment_names(segmentation) == ["Segment 1", "Segment 2"]
    np.testing.assert_array_equal(nodes.segment_mask(segmentation, update.segmentId, volume_node), kept)


def test_the_intensity_engine_takes_points_only(session, logic):
    """The classical engine (no learning): one ``medfound click`` child per interaction, from the points
    alone; a box is refused with a sentence saying what to choose instead, and nothing is written for it."""
    from MedFoundSlicerLib.interactive import BOX

    recorder, volume_node = session.recorder, session.volumeNode
    session.setModel("intensity")
    assert session.pointsOnly
    spleen = session.reference == session.values["spleen"]
    place(session, session.promptNode(INCLUDE), ras(volume_node, np.argwhere(spleen).mean(axis=0).round()))
    engine = session.engine
    settle(session)
    assert not recorder.errors and not recorder.failures, (recorder.errors, recorder.failures)
    (update,) = recorder.updates
    assert update.created and update.voxels > 0
    assert engine.sent[0]["previous"] is None and len(engine.sent) == 1
    mask = nodes.segment_mask(session.segmentationNode, update.segmentId, volume_node)
    assert mask.sum() == update.voxels and selftest.dice(mask, spleen) > 0.5  # measured 0.857 (docs/slicer.md)
    before = selftest.scene_snapshot(logic.scene)
    box = session.promptNode(BOX)
    box.SetCenterWorld(*ras(volume_node, np.argwhere(spleen).mean(axis=0)))
    box.SetSize(60.0, 60.0, 20.0)
    box.InvokeEvent(box.PointEndInteractionEvent)
    settle(session)
    assert recorder.errors and "points only" in recorder.errors[-1] and len(engine.sent) == 1  # no child for it
    segments = [n for n in selftest.scene_snapshot(logic.scene) if n[0].startswith("vtkMRMLSegmentationNode")]
    assert segments == [n for n in before if n[0].startswith("vtkMRMLSegmentationNode")] and len(recorder.updates) == 1


def test_an_mri_gets_the_intensity_engine_by_default(logic, shared_data):
    """The learned model is trained on CT: on an MRI the default's serving child answers with the
    intensity engine, says so when ready, and the session becomes points only (a box is refused)."""
    from medfoundcore.io import load_volume
    from MedFoundSlicerLib.interactive import BOX

    folder = shared_data / "totalsegmentator"
    volume_node = nodes.volume_node_from_volume(logic.scene, load_volume(folder / "ts_mr_sm_img.nii.gz"), "MRI")
    spleen = load_volume(folder / "ts_mr_sm_lab.nii.gz", label=True).array == 1
    recorder = Recorder()
    session = logic.interactiveSegmentation(recorder.callbacks())
    try:
        session.setVolume(volume_node)
        assert not session.pointsOnly  # not known before the child has looked at the image
        place(session, session.promptNode(INCLUDE), ras(volume_node, np.argwhere(spleen).mean(axis=0).round()))
        server = session.engine
        settle(session)
        assert not recorder.errors and not recorder.failures, (recorder.errors, recorder.failures)
        assert "--serve" in server.command and server.ready_info["model"] == "intensity" and session.pointsOnly
        (update,) = recorder.updates
        mask = nodes.segment_mask(session.segmentationNode, update.segmentId, volume_node)
        assert selftest.dice(mask, spleen) > 0.5
        box = session.promptNode(BOX)
        box.SetCenterWorld(*ras(volume_node, np.argwhere(spleen).mean(axis=0)))
        box.SetSize(40.0, 40.0, 20.0)
        box.InvokeEvent(box.PointEndInteractionEvent)
        settle(session)
        assert recorder.errors and "points only" in recorder.errors[-1] and len(server.sent) == 1
    finally:
        session.close()
