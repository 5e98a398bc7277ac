"""Measure how long MedFound's worker path blocks the GUI thread, and the GUI-side overhead of a job.

A stand-in GUI loop on the main thread does what Slicer's QTimer does (poll the job every 50 ms) and
records every gap between iterations; any gap beyond the timer interval is time the GUI could not
respond. Run on real data (headless, slicer-core + the test shim):

    OMP_NUM_THREADS=1 python Testing/Python/bench_gui_latency.py --job segment
    OMP_NUM_THREADS=1 python Testing/Python/bench_gui_latency.py --job click
    OMP_NUM_THREADS=1 python Testing/Python/bench_gui_latency.py --job train --steps 6

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


def run(args) -> dict:
    logic = MedFoundSlicerLogic(slicer.vtkMRMLScene())
    warm = logic.startWarmUp()  # what the Widget does when the module opens
    warm_loop = gui_loop(warm)
    data = selftest.data_dir()
    volume_node = selftest.load_case(logic, data)
    metrics = []
    if args.job == "segment":
        t0 = time.perf_counter()
        job = logic.startSegmentation(volume_node, list(selftest.SEGMENT_PROMPTS), model=args.model or "default")
    elif args.job == "click":
        reference, values = selftest.reference_labels(data)
        volume = nodes.volume_from_node(volume_node)
        centre = volume.index_to_ras(np.argwhere(reference == values["liver"]).mean(axis=0)[::-1])[0]
        points = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        points.AddControlPoint(vtk.vtkVector3d(*centre), "p")
        t0 = time.perf_counter()
        job = logic.startClick(volume_node, points, None, model=args.model)
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
    elif args.job == "click":
        t1 = time.perf_counter()
        logic.applyClick(job.result, volume_node)
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
    parser.add_argument("--job", choices=("segment", "click", "train"), default="segment")
    parser.add_argument("--model", default=None, help="model name (default: the job's default; click: intensity only)")
    parser.add_argument("--steps", type=int, default=6, help="training steps for --job train")
    print(json.dumps(run(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main()
