"""Measure how long MedFound's worker path blocks the GUI thread, and the GUI-side overhead of a job.

A stand-in GUI loop on the main thread does what Slicer's QTimer does (poll the job every 50 ms) and
records every gap between iterations; any gap beyond the timer interval is time the GUI could not
respond. Run on real data (headless, slicer-core + the test shim):

    OMP_NUM_THREADS=1 python Testing/Python/bench_gui_latency.py --job segment
    OMP_NUM_THREADS=1 python Testing/Python/bench_gui_latency.py --job interactive [--model intensity] [--full]
    OMP_NUM_THREADS=1 python Testing/Python/bench_gui_latency.py --job train --steps 6

``--job interactive`` runs one interactive session (the Interactive panel's Logic) on the held-out CT
``ts_ct_dicom20`` (``selftest.SPLEEN_CROP`` around the spleen; ``--full``: all 512 x 512 x 20 voxels) and
reports, per interaction (first include point, a second one, an exclude point, a box, a stroke), the
time from the markups event to the segment written, the child's own computing time and the time the GUI
thread spent making the request (the event and the next timer tick); Undo's GUI-thread time; and the
GUI loop's lateness and poll() durations over the whole session (a poll that reads an answer also
writes the segment).

Prints one JSON object (numbers in milliseconds unless named *_s). Timings are not asserted in unit
tests; docs/slicer.md quotes this script's output with its command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "MedFoundSlicer"))
sys.path.insert(0, str(HERE))

import slicer_shim  # noqa: E402

slicer_shim.install()

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402

from MedFoundSlicer import MedFoundSlicerLogic  # noqa: E402
from MedFoundSlicerLib import nodes, selftest  # noqa: E402
from MedFoundSlicerLib.jobs import JobCallbacks, JobState  # noqa: E402

INTERVAL_S = 0.050  # the Widget's QTimer interval


def gui_loop(job, interval_s: float = INTERVAL_S) -> dict:
    """Poll like the QTimer would; return the gaps between iterations and the poll() durations (ms)."""
    gaps, polls = [], []
    last = time.perf_counter()
    while True:
        time.sleep(interval_s)
        now = time.perf_counter()
        gaps.append((now - last - interval_s) * 1000.0)  # lateness beyond the timer interval
        start = time.perf_counter()
        done = job.poll()
        polls.append((time.perf_counter() - start) * 1000.0)
        last = time.perf_counter()
        if done:
            return {"gaps": np.array(gaps), "polls": np.array(polls)}


def summary(values: np.ndarray) -> dict:
    return {"max": round(float(values.max()), 2), "p99": round(float(np.percentile(values, 99)), 2),
            "median": round(float(np.median(values)), 2), "n": int(values.size)}


def interactive_run(args) -> dict:
    """One interactive session: prompts placed as markups, the segment updated after each (see the docstring)."""
    from MedFoundSlicerLib.interactive import BOX, EXCLUDE, INCLUDE, STROKE_INCLUDE, InteractiveCallbacks

    logic = MedFoundSlicerLogic(slicer.vtkMRMLScene())
    data = selftest.data_dir()
    if args.full:
        volume_node = selftest.load_case(logic, data, selftest.HELD_OUT_CASE)
        reference, values = selftest.reference_labels(data, selftest.HELD_OUT_CASE)
    else:
        volume_node, reference, values = selftest.held_out_crop(logic, data)
    updates, errors = [], []
    session = logic.interactiveSegmentation(InteractiveCallbacks(on_updated=updates.append, on_error=errors.append,
                                                                 on_failed=lambda m, d: errors.append(m)))
    session.setVolume(volume_node)
    session.setModel(args.model or "default")
    spleen = np.argwhere(reference == values["spleen"])
    centre = spleen.mean(axis=0).round()
    ras = lambda kji: selftest.ras_of_voxel(volume_node, kji)  # noqa: E731
    gaps, polls, rows = [], [], []

    def interaction(name: str, act) -> None:
        before = len(updates)
        t0 = time.perf_counter()
        act()  # the markups events (only mark the session dirty)
        session.poll()  # the timer's next tick: snapshot of the marks, the request written (first time: export, start)
        handler_s = time.perf_counter() - t0  # on the GUI thread
        last = time.perf_counter()
        while session.busy:
            time.sleep(INTERVAL_S)
            now = time.perf_counter()
            gaps.append((now - last - INTERVAL_S) * 1000.0)
            start = time.perf_counter()
            session.poll()
            polls.append((time.perf_counter() - start) * 1000.0)
            last = time.perf_counter()
        update = updates[-1] if len(updates) > before else None
        rows.append({"interaction": name, "gui_thread_ms": round(handler_s * 1000, 1),
                     "to_segment_s": round(update.elapsed, 3) if update else None,
                     "child_s": round(update.seconds, 3) if update else None,
                     "voxels": update.voxels if update else None, "error": errors[-1] if errors and not update else ""})

    include = session.promptNode(INCLUDE)
    interaction("first include point (the first request: process start, loading)",
                lambda: include.AddControlPointWorld(vtk.vtkVector3d(*ras(centre))))
    interaction("second include point", lambda: include.AddControlPointWorld(vtk.vtkVector3d(*ras(spleen[len(spleen) // 3]))))
    if not session.pointsOnly:
        interaction("exclude point", lambda: session.promptNode(EXCLUDE).AddControlPointWorld(
            vtk.vtkVector3d(*ras(spleen[np.argmax(spleen[:, 2])]))))

        def box() -> None:
            node = session.promptNode(BOX)
            node.AddControlPointWorld(vtk.vtkVector3d(*ras(spleen.min(axis=0))))
            node.AddControlPointWorld(vtk.vtkVector3d(*ras(spleen.max(axis=0))))

        interaction("box", box)

        def stroke() -> None:
            node = session.promptNode(STROKE_INCLUDE)
            for offset in (-6, 0, 6):
                node.AddControlPointWorld(vtk.vtkVector3d(*ras(centre + [0, offset, offset])))

        interaction("stroke (3 vertices)", stroke)
    t0 = time.perf_counter()
    session.undo()
    undo_s = time.perf_counter() - t0
    session.close()
    return {"job": "interactive", "model": args.model or "default", "volume": list(nodes.volume_from_node(volume_node).shape),
            "interactions": rows, "undo_on_gui_thread_s": round(undo_s, 4),
            "gui_lateness_ms": summary(np.array(gaps or [0.0])), "poll_ms": summary(np.array(polls or [0.0])),
            "omp_threads": os.environ.get("OMP_NUM_THREADS", "default")}


def run(args) -> dict:
    if args.job == "interactive":
        return interactive_run(args)
    logic = MedFoundSlicerLogic(slicer.vtkMRMLScene())
    warm = logic.startWarmUp()  # what the Widget does when the module opens
    warm_loop = gui_loop(warm)
    data = selftest.data_dir()
    volume_node = selftest.load_case(logic, data)
    metrics = []
    if args.job == "segment":
        t0 = time.perf_counter()
        job = logic.startSegmentation(volume_node, list(selftest.SEGMENT_PROMPTS), model=args.model or "default")
    else:
        segmentation = nodes.create_segmentation_node(logic.scene, volume_node, "reference")
        reference, values = selftest.reference_labels(data)
        image = nodes.volume_from_node(volume_node)
        nodes.write_segments(segmentation, image.with_array(reference), [nodes.SegmentSpec(values["liver"], "liver", (1, 0, 0))], False)
        cases = logic.casesFromScene([(volume_node, segmentation)], {"liver": "liver"})
        t0 = time.perf_counter()
        with selftest.temporary_model_store():
            job = logic.startTraining(cases, "bench-latency", epochs=None, steps=args.steps, batchSize=2,
                                      baseModel=args.model or "default", callbacks=JobCallbacks(on_metrics=metrics.append),
                                      log_every=1, checkpoint_every=args.steps)
            started = time.perf_counter() - t0
            loop = gui_loop(job)
    if args.job != "train":
        started = time.perf_counter() - t0
        loop = gui_loop(job)
    if job.state is not JobState.SUCCEEDED:
        raise SystemExit(f"job {job.state.value}: {job.error}")
    worker_s = job.finished - job.started
    apply_s = 0.0
    if args.job == "segment":
        t1 = time.perf_counter()
        logic.applySegmentation(job.result, volume_node)
        apply_s = time.perf_counter() - t1
    end_to_end = time.perf_counter() - t0
    return {
        "job": args.job,
        "warm_up_lateness_ms": summary(warm_loop["gaps"]),
        "gui_lateness_ms": summary(loop["gaps"]),
        "poll_ms": summary(loop["polls"]),
        "start_on_gui_thread_s": round(started, 4),
        "worker_s": round(worker_s, 3),
        "apply_on_gui_thread_s": round(apply_s, 4),
        "end_to_end_s": round(end_to_end, 3),
        "gui_overhead_s": round(end_to_end - worker_s, 3),
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=("segment", "interactive", "train"), default="segment")
    parser.add_argument("--model", default=None, help="model name (default: the job's default; interactive: 'intensity' for the classical engine)")
    parser.add_argument("--full", action="store_true", help="--job interactive on the whole held-out CT instead of the crop")
    parser.add_argument("--steps", type=int, default=6, help="training steps for --job train")
    print(json.dumps(run(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main()
