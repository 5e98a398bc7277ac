"""Interactive segmentation: per-click speed (default) and held-out quality with simulated clicks
(``--heldout``), beside the classical baselines in the same run.

``medfound bench click``: the first interaction (encoder + decoder) and each further click (decoder
only) on a 512×512×300 CT, seconds and peak RSS. Target (issue 14): each further click ≤ 1 s on 2
CPU cores.

``medfound bench click --heldout CASE...``: for every labelled structure of each held-out case, a
user is simulated: the first click at the structure's deepest voxel, then a corrective click at the
deepest voxel of the largest error (include in missed tissue, exclude in a leak), up to ``--clicks``.
Dice after each click for the learned model (``--model``), the classical intensity engine
(``inference.click``, same clicks), SimpleITK ConfidenceConnected region growing from the first
click (multiplier 2.5, as Slicer's region growing), and the text model where it knows the
structure. Structures are split into classes the model was trained on and classes it never saw
(held out of training, or in no training label).
"""

from __future__ import annotations

import argparse
import json
import sys
import multiprocessing as mp
import resource
import time
from pathlib import Path

NAME = "click"
ARMS = ("learned", "intensity", "region-growing", "text")
#: A row's scores: Dice after each click (lists) and Dice from the first click / the text prompt alone.
CLICK_SCORES = ("learned", "intensity")
SINGLE_SCORES = ("region_growing", "text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="interactive-v1", help="the learned interactive model (default %(default)s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--size", type=int, default=512, help="speed: in-plane size of the test CT (default %(default)s)")
    parser.add_argument("--slices", type=int, default=300, help="speed: number of slices (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="speed: further clicks timed (default %(default)s)")
    parser.add_argument("--data", default=None, help="shared data folder (default: medfoundcore.data.paths)")
    parser.add_argument("--heldout", nargs="+", help="quality: labelled *_img.nii.gz cases the model never saw")
    parser.add_argument("--clicks", type=int, default=5, help="quality: clicks per structure (default %(default)s)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="quality: which methods to run (default: all)")
    parser.add_argument("--structures", nargs="+", default=None, help="quality: only these vocabulary keys")
    parser.add_argument("--min-ml", type=float, default=1.0, help="quality: skip structures smaller than this in the case (default %(default)s)")
    parser.add_argument("--join", nargs="+", metavar="REPORT", help="merge --heldout reports (arms run in separate processes) and print their tables")


def run(args: argparse.Namespace) -> dict:
    if args.join:
        report = joined([json.loads(Path(p).read_text()) for p in args.join])
        print(format_quality(report), file=sys.stderr)
        return report
    if args.heldout:
        from ..data.datasets import find_cases

        return quality_report(find_cases(args.heldout), args.model, arms=args.arms, clicks=args.clicks,
                              structures=args.structures, min_ml=args.min_ml, device=args.device)
    return speed_report(args)


# ------------------------------------------------------------------------------------------ speed
def _measure_speed(queue, data_dir: str, size: int, slices: int, model: str, device: str, repeats: int) -> None:
    import numpy as np

    from ..inference.interactive import Interaction, InteractiveSession
    from ..io import load_volume
    from .segment import test_volume

    volume = test_volume(Path(data_dir), size, slices)
    source = load_volume(Path(data_dir) / "totalsegmentator/ts_ct_full_lab.nii.gz", label=True)
    liver = np.argwhere(source.array == 5)
    centre = source.index_to_ras(liver.mean(0)[::-1][None])[0]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    session = InteractiveSession(volume, model, device)
    loaded = time.perf_counter() - start
    first = time.perf_counter()
    session.segment(Interaction([centre], [True]))
    first = time.perf_counter() - first
    points, include, further = [centre], [True], []
    for i in range(repeats):
        points.append(centre + rng.normal(0, 15, 3))
        include.append(i % 2 == 0)
        t = time.perf_counter()
        session.segment(Interaction(points, include), "last")
        further.append(time.perf_counter() - t)
    queue.put({
        "load_seconds": round(loaded, 2), "first_interaction_seconds": round(first, 2),
        "further_click_seconds": [round(s, 3) for s in further], "further_click_median": round(float(np.median(further)), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })


def speed_report(args: argparse.Namespace) -> dict:
    import torch

    from ..data.paths import shared_data_dir

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    data_dir = str(Path(args.data) if args.data else shared_data_dir())
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure_speed, args=(queue, data_dir, args.size, args.slices, args.model, device, args.repeats))
    process.start()
    result = queue.get()
    process.join()
    return {
        "benchmark": NAME, "volume": f"{args.size}x{args.size}x{args.slices} CT (ts_ct_full resampled)", "device": device,
        "threads": torch.get_num_threads(), "model": args.model, **result,
        "target": "each further click <= 1 s on 2 CPU cores (issue 14)",
    }


# ---------------------------------------------------------------------------------------- quality
def simulated_clicks(segment_fn, target, spacing, clicks: int) -> tuple[list[float], list[float], list]:
    """Dice and seconds after each simulated click: ``segment_fn(points_ras_index, include)`` returns a
    bool mask; clicks follow :mod:`medfoundcore.data.interaction`. Also returns the click list."""
    from ..data import interaction
    from ..metrics import dice

    points = [interaction.centre_point(target, spacing)]
    include = [True]
    dices, seconds = [], []
    for _ in range(clicks):
        start = time.perf_counter()
        mask = segment_fn(points, include)
        seconds.append(time.perf_counter() - start)
        dices.append(dice(mask, target))
        nxt = interaction.corrective_click(target, mask, spacing)
        if nxt is None:
            dices += [dices[-1]] * (clicks - len(dices))
            break
        points.append(nxt[0])
        include.append(nxt[1])
    return dices, seconds, list(zip(points, include))


def region_growing(image, seed_kji, multiplier: float = 2.5):
    """SimpleITK ConfidenceConnected from one seed (Slicer's classical region growing)."""
    import numpy as np
    import SimpleITK as sitk

    sitk_image = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    seed = [int(v) for v in np.rint(seed_kji[::-1])]
    grown = sitk.ConfidenceConnected(sitk_image, seedList=[seed], numberOfIterations=1, multiplier=multiplier,
                                     initialNeighborhoodRadius=1, replaceValue=1)
    return sitk.GetArrayFromImage(grown).astype(bool)


def _targets(case, structures, min_ml: float) -> dict:
    """Structure key → label values of the case (one labelled structure each), big enough to click."""
    import numpy as np

    from ..vocabulary import load_vocabulary

    vocab = load_vocabulary()
    out = {}
    counts = np.bincount(case.labels.array.ravel())
    for value, name in case.names.items():
        structure = vocab.label_name_to_structure(name)
        if structure is None or (structures and structure.key not in structures):
            continue
        if value < len(counts) and counts[value] * case.image.voxel_volume_ml >= min_ml:
            out[structure.key] = int(value)
    return out


def trained_classes(card) -> set[str]:
    """The structure classes the interactive model was trained on (from its card)."""
    names = card.extra.get("history", {}).get("structures", [])
    return {n.split("#")[0] for n in names}


def quality_report(
    refs, model: str, *, arms=ARMS, clicks: int = 5, structures=None, min_ml: float = 1.0, device: str = "cpu",
) -> dict:
    """Simulated clicks on every labelled structure of the held-out cases ``refs`` (see module docstring)."""
    from ..device import resolve_device
    from ..inference.click import click_segment
    from ..inference.interactive import Interaction, InteractiveSession
    from ..registry import read_card

    card = read_card(model)
    trained = trained_classes(card)
    rows = []
    for ref in refs:
        case = ref.load()
        image, spacing = case.image, case.image.spacing[::-1]
        targets = _targets(case, structures, min_ml)
        session = InteractiveSession(image, model, resolve_device(device)) if "learned" in arms else None
        text = _text_dice(case, targets, device) if "text" in arms else {}
        for key, value in sorted(targets.items()):
            target = case.labels.array == value
            row = {"case": case.case_id, "name": key, "class": "trained" if key in trained else "unseen", "voxels": int(target.sum())}

            def to_ras(points):
                return [image.index_to_ras(p[::-1][None])[0] for p in points]

            if session is not None:
                def learned(points, include):
                    previous = "last" if len(points) > 1 else None
                    return session.segment(Interaction(to_ras(points), include), previous).array > 0

                row["learned"], seconds, given = simulated_clicks(learned, target, spacing, clicks)
                row["learned_seconds"] = [round(s, 3) for s in seconds]
                row["first_click_ras"] = [round(float(v), 1) for v in to_ras([given[0][0]])[0]]
            if "intensity" in arms:
                def intensity(points, include):
                    ras = to_ras(points)
                    positives = [r for r, i in zip(ras, include) if i]
                    negatives = [r for r, i in zip(ras, include) if not i]
                    return click_segment(image, positives, negatives, model=None).mask.array > 0

                row["intensity"], seconds, _ = simulated_clicks(intensity, target, spacing, clicks)
                row["intensity_seconds"] = [round(s, 3) for s in seconds]
            if "region-growing" in arms:
                from ..data.interaction import centre_point
                from ..metrics import dice

                row["region_growing"] = dice(region_growing(image, centre_point(target, spacing)), target)
            if key in text:
                row["text"] = text[key]
            rows.append(row)
            print(_row_text(row), file=sys.stderr, flush=True)
    return {"benchmark": NAME, "model": card.name, "clicks": clicks, "rows": rows, "summary": summarize(rows, clicks)}


def _text_dice(case, targets: dict, device: str) -> dict:
    """Dice of the text model (``default``: ct-v1 for a CT) on each structure it knows, all prompted at once."""
    from ..inference.segment import segment
    from ..metrics import dice
    from ..registry import read_card, resolve_default

    card = read_card(resolve_default("default", case.image))
    known = [k for k in targets if k in {s["key"] for s in card.structures}]
    if not known:
        return {}
    labels = segment(case.image, known, model="default", device=device).labels.array
    return {k: dice(labels == i + 1, case.labels.array == targets[k]) for i, k in enumerate(known)}


def _row_text(row: dict) -> str:
    parts = [f"{row['case']} {row['name']} ({row['class']})"]
    for arm in CLICK_SCORES:
        if arm in row:
            parts.append(f"{arm} " + "/".join(f"{d:.2f}" for d in row[arm]))
    for arm in SINGLE_SCORES:
        if arm in row:
            parts.append(f"{arm} {row[arm]:.2f}")
    return "  ".join(parts)


def summarize(rows: list[dict], clicks: int) -> dict:
    """Mean Dice per class group (trained / unseen) and per structure, after 1, 3 and ``clicks`` clicks."""
    marks = sorted({1, min(3, clicks), clicks})
    out: dict = {}
    for group in ("unseen", "trained"):
        members = [r for r in rows if r["class"] == group]
        by: dict[str, list[dict]] = {}
        for r in members:
            by.setdefault(r["name"], []).append(r)
        out[group] = {"pairs": len(members), "mean": _means(members, marks), "structures": {k: {"n": len(v), **_means(v, marks)} for k, v in sorted(by.items())}}
    return out


def _means(rows: list[dict], marks: list[int]) -> dict:
    import numpy as np

    out = {}
    for arm in CLICK_SCORES:
        have = [r[arm] for r in rows if arm in r]
        if have:
            for m in marks:
                out[f"{arm}@{m}"] = round(float(np.mean([d[m - 1] for d in have])), 3)
    for arm in SINGLE_SCORES:
        have = [r[arm] for r in rows if arm in r]
        if have:
            out[arm] = round(float(np.mean(have)), 3)
    return out


def joined(reports: list[dict]) -> dict:
    """Several reports as one. Reports of the same arms (e.g. the slow intensity arm run case by case)
    add their rows; reports of different arms merge the arms of each (case, structure) pair, and pairs
    not scored by every arm are left out. Clicks: the fewest any report ran."""
    by_arms: dict[tuple, dict] = {}
    for report in reports:
        rows = {(r["case"], r["name"]): r for r in report["rows"]}
        arms = tuple(sorted({k for r in rows.values() for k in r if k in CLICK_SCORES + SINGLE_SCORES}))
        by_arms.setdefault(arms, {}).update(rows)
    shared = sorted(set.intersection(*(set(rows) for rows in by_arms.values())))
    rows = [{k: v for group in by_arms.values() for k, v in group[pair].items()} for pair in shared]
    clicks = min(report["clicks"] for report in reports)
    return {"benchmark": NAME, "model": reports[0]["model"], "clicks": clicks, "rows": rows, "summary": summarize(rows, clicks)}


def format_quality(report: dict) -> str:
    """The summary as Markdown tables (one per class group)."""
    lines = []
    for group, data in report["summary"].items():
        if not data["pairs"]:
            continue
        columns = list(data["mean"])
        lines += [f"\n**{group} classes** ({data['pairs']} structure–patient pairs)\n", "| structure | n | " + " | ".join(columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for name, values in data["structures"].items():
            lines.append(f"| {name} | {values['n']} | " + " | ".join(f"{values[c]:.3f}" if c in values else "–" for c in columns) + " |")
        lines.append("| **mean** | | " + " | ".join(f"**{data['mean'][c]:.3f}**" for c in columns) + " |")
    return "\n".join(lines)
