"""Text-prompted segmentation: speed/memory (default), held-out quality (``--heldout``) and a 3D baseline.

``medfound bench segment``: one prompt on a 512×512×200 CT, end-to-end seconds, extra-prompt overhead,
peak RSS. ``--heldout CASE...`` (also ``medfound evaluate --heldout``): per-structure Dice/HD95 of a
model on held-out cases (``metrics.evaluate``). ``--baseline CASE...``: in the same run, also train a
MONAI 3D UNet on the given training cases within ``--minutes`` of wall time, evaluate it on the same
cases and structures, and report both side by side.

The test volume is a real abdominal CT from the shared data (TotalSegmentator example, 3 mm)
resampled up to the requested grid over the same field of view, so that the anatomy is real and the
size is clinical. Each measurement runs in a fresh process so that peak RSS is that run's own.
Targets (issue 13, ct-v1 on a 512 × 512 × 300 CT): 4 prompts ≤ 60 s end to end on 2 CPU cores, ≤ 5 % per
extra prompt, peak RSS ≤ 6 GB; GPU time whenever a device is lent.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

NAME = "segment"
DEFAULT_PROMPTS = ["liver", "spleen", "left kidney", "right kidney"]
SOURCE_CASE = "totalsegmentator/ts_ct_full_img.nii.gz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the test CT (default %(default)s)")
    parser.add_argument("--slices", type=int, default=200, help="number of slices (default %(default)s)")
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS, help="prompts; the first alone, then all")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--data", default=None, help="shared data folder (default: medfoundcore.data.paths)")
    add_heldout_arguments(parser)


def add_heldout_arguments(parser) -> None:
    """The held-out quality options, shared by ``medfound bench segment`` and ``medfound evaluate``."""
    parser.add_argument("--heldout", nargs="+", help="score the model on these labelled *_img.nii.gz cases (or dataset folders)")
    parser.add_argument("--no-isd", action="store_true", help="with --heldout: keep raw masks (ISD ablation)")
    parser.add_argument("--no-region-check", action="store_true", help="with --heldout: no anatomical veto (ablation)")
    parser.add_argument("--keep-islands", action="store_true", help="with --heldout: no island removal (ablation)")
    parser.add_argument("--baseline", nargs="+", help="with --heldout: also train a MONAI 3D UNet on these cases and score it the same way")
    parser.add_argument("--minutes", type=float, default=28.0, help="the baseline's training budget, wall clock (default %(default)s)")
    parser.add_argument("--structures", nargs="+", default=None, help="structure keys to score (default: common organs the model knows)")


def test_volume(data_dir: Path, size: int, slices: int):
    """The shared abdominal CT resampled to ``size × size × slices`` over its own field of view."""
    import numpy as np
    import SimpleITK as sitk

    from ..io import Volume, load_volume

    source = load_volume(data_dir / SOURCE_CASE)
    image = source.to_sitk()
    old_size = np.array(image.GetSize(), dtype=float)
    new_size = np.array([size, size, slices], dtype=float)
    spacing = old_size * np.array(image.GetSpacing()) / new_size
    resampled = sitk.Resample(
        image, [int(s) for s in new_size], sitk.Transform(), sitk.sitkLinear,
        image.GetOrigin(), tuple(spacing), image.GetDirection(), -1024.0, sitk.sitkInt16,
    )
    return Volume.from_sitk(resampled, {"modality": "CT", "source": f"{SOURCE_CASE} resampled to {size}x{size}x{slices}"})


def _measure(queue, data_dir: str, size: int, slices: int, prompts: list[str], model: str, device: str, batch: int | None) -> None:
    from ..inference.segment import segment
    from ..inference.windows import FEATURES
    from ..io import save_volume

    volume = test_volume(Path(data_dir), size, slices)
    segment(volume, prompts[:1], model=model, device=device, batch_size=4)  # warm-up: model + text encoder loaded
    FEATURES.clear()  # ... but the timed run computes its own window features, as a first call on a new CT does
    volume_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = segment(volume, prompts, model=model, device=device, batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        save_volume(result.labels, Path(tmp) / "out.nii.gz")
    seconds = time.perf_counter() - start
    queue.put(
        {
            "prompts": len(prompts),
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_mb": round(volume_rss, 1),
            "found": {r.structure_name: r.volume_ml for r in result.reports},
        }
    )


def _in_fresh_process(*args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result


def run(args: argparse.Namespace) -> dict:
    if args.heldout:
        return quality_report(args)
    return speed_report(args)


def speed_report(args: argparse.Namespace) -> dict:
    import torch

    from ..data.paths import shared_data_dir

    data_dir = str(Path(args.data) if args.data else shared_data_dir())
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        device = "cpu"
    common = (data_dir, args.size, args.slices)
    one = _in_fresh_process(*common, args.prompts[:1], args.model, device, args.batch_size)
    many = _in_fresh_process(*common, args.prompts, args.model, device, args.batch_size)
    extra = max(1, len(args.prompts) - 1)
    overhead = (many["seconds"] - one["seconds"]) / one["seconds"] / extra * 100
    return {
        "benchmark": NAME,
        "volume": f"{args.size}x{args.size}x{args.slices} CT ({SOURCE_CASE} resampled)",
        "device": device,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "model": args.model,
        "one_prompt_s": one["seconds"],
        "all_prompts_s": many["seconds"],
        "n_prompts": len(args.prompts),
        "extra_prompt_overhead_pct": round(overhead, 1),
        "peak_rss_mb": max(one["peak_rss_mb"], many["peak_rss_mb"]),
        "runs": [one, many],
        "targets": {"all_prompts_cpu_s": 60, "extra_prompt_pct": 5, "peak_rss_mb": 6144},
    }


# ---------------------------------------------------------------------------------- held-out quality
#: Leaf structures evaluated by default (mutually exclusive, so one label map holds them all).
EVAL_KEYS = (
    "liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach", "gallbladder", "aorta",
    "inferior_vena_cava", "vertebrae", "spinal_cord", "grey_matter", "white_matter", "brainstem",
    "parotid_gland_left", "parotid_gland_right", "mandible", "urinary_bladder", "esophagus", "larynx",
)


def reference_map(case, keys: list[str]):
    """The case's label map re-indexed so that label i+1 = ``keys[i]`` (union of mapped dataset labels)."""
    import numpy as np

    from ..vocabulary import load_vocabulary, structure_values

    values = structure_values(case.names, load_vocabulary(), set(keys))
    present = [k for k in keys if k in values]
    out = np.zeros(case.labels.shape, dtype=np.uint8)
    for i, key in enumerate(present):
        out[np.isin(case.labels.array, values[key])] = i + 1
    return case.labels.with_array(out), present


def _rows(case_id: str, pred, ref, present: list[str]) -> list[dict]:
    from ..metrics import evaluate

    rows = evaluate(pred, ref, {i + 1: k for i, k in enumerate(present)})
    return [{"case": case_id, **r} for r in rows]


def quality_report(args: argparse.Namespace) -> dict:
    """``--heldout`` (with optional ``--baseline``) as one report: the model's held-out evaluation, and
    with a baseline both models' results and a side-by-side comparison on the same (case, structure) pairs."""
    from ..data.datasets import find_cases

    refs = find_cases(args.heldout)
    inference = {"use_isd": not args.no_isd, "region_check": not args.no_region_check, "keep_islands": args.keep_islands}
    report = heldout_report(refs, args.model, args.structures, device=args.device, **inference)
    if not args.baseline:
        return report
    baseline = baseline_report(find_cases(args.baseline), refs, report["structures"], args.minutes)
    return {"model": report, "baseline": baseline, "comparison": compare(report["rows"], baseline["rows"])}


def evaluated_keys(card, structures: list[str] | None) -> list[str]:
    """The structures a held-out evaluation scores: those asked for (default EVAL_KEYS) that the model
    of ``card`` knows."""
    trained = {s["key"] for s in card.structures}
    return [k for k in (structures or EVAL_KEYS) if k in trained]


def compare(model_rows: list[dict], baseline_rows: list[dict]) -> dict:
    """Per structure and overall: mean Dice (and median HD95) of both models on the pairs both scored."""
    ours = {(r["case"], r["name"]): r for r in model_rows}
    theirs = {(r["case"], r["name"]): r for r in baseline_rows}
    shared = sorted(ours.keys() & theirs.keys())
    return {"pairs": len(shared), "model": summarize([ours[k] for k in shared]), "baseline": summarize([theirs[k] for k in shared])}


def format_quality(report: dict) -> str:
    """:func:`quality_report`'s result as Markdown: Dice/HD95 per structure (beside the baseline's when
    there is one) and the absent-structure line."""
    with_baseline = "comparison" in report
    model = report["model"] if with_baseline else report
    columns = [report["comparison"]["model"], report["comparison"]["baseline"]] if with_baseline else [model["summary"]]
    header = "| structure | cases | model Dice | model HD95 (mm) |" + (" baseline Dice | baseline HD95 (mm) |" if with_baseline else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in (k for k in columns[0] if k != "mean_dice"):
        cells = " | ".join(f"{c[name]['dice']:.3f} | {c[name]['hd95_mm'] if c[name]['hd95_mm'] is not None else '—'}" for c in columns)
        lines.append(f"| {name} | {columns[0][name]['n']} | {cells} |")
    if columns[0]["mean_dice"] is not None:
        means = " | ".join(f"**{c['mean_dice']:.3f}** |" for c in columns)
        lines.append(f"| **mean** | | {means} |")
    absent = model["absent_summary"]
    lines.append(f"\nabsent structures prompted alone: {absent['n_not_empty']} of {absent['n']} returned something ({absent['total_ml']} ml in total)")
    return "\n".join(lines)


def heldout_report(refs, model: str, structures: list[str] | None, *, device: str = "cpu", **inference: bool) -> dict:
    """Dice/HD95 per (case, structure) of ``model`` on held-out cases (all structures prompted at once),
    and what it returns for structures that cannot be in the image (``absent``: should be 0 ml).
    ``inference`` holds :func:`~medfoundcore.inference.segment.segment`'s switches (``use_isd``,
    ``region_check``, ``keep_islands``) for ablations; the report repeats those that were given."""
    from ..inference.segment import segment
    from ..registry import read_card, resolve_default

    rows, absent, names, keys = [], [], [], []
    for ref in refs:
        case = ref.load()
        name = resolve_default(model, case.image)  # "default": the CT model for a CT, the MRI model otherwise
        card = read_card(name)
        case_keys = evaluated_keys(card, structures)
        names.append(card.name)
        keys += [k for k in case_keys if k not in keys]
        gt, present = reference_map(case, case_keys)
        if present:
            result = segment(case.image, present, model=name, device=device, **inference)
            rows += _rows(case.case_id, result.labels, gt, present)
        absent += absent_rows(case, [k for k in case_keys if k not in present], name, device, inference)
    label = " / ".join(dict.fromkeys(names)) or model
    return {"model": label, "inference": inference, "structures": keys, "rows": rows, "summary": summarize(rows), "absent": absent, "absent_summary": summarize_absent(absent)}


def distant_keys(case) -> set[str]:
    """Structures of a body region distant from every region the case's labels cover (liver for a
    brain MRI): they cannot be in the image."""
    from ..vocabulary import load_vocabulary, structure_values

    vocab = load_vocabulary()
    regions = {vocab.get(k).region for k in structure_values(case.names, vocab, None)}
    return {s.key for s in vocab.distant_from(regions)}


def absent_rows(case, keys: list[str], model: str, device: str, inference: dict[str, bool]) -> list[dict]:
    """Volume returned for each of ``keys`` that lies in a body region distant from the case's labels
    (liver on a brain MRI); each is prompted alone so that no other prompt can suppress it."""
    from ..inference.segment import segment

    distant = distant_keys(case)
    out = []
    for key in (k for k in keys if k in distant):
        report = segment(case.image, [key], model=model, device=device, **inference).reports[0]
        out.append({"case": case.case_id, "name": key, "volume_ml": report.volume_ml, "slices": report.slices_present})
    return out


def summarize_absent(rows: list[dict]) -> dict:
    """How many (case, absent structure) prompts returned anything, their total and largest false volumes."""
    found = sorted((r for r in rows if r["volume_ml"] > 0), key=lambda r: -r["volume_ml"])
    total = round(sum(r["volume_ml"] for r in found), 1)
    return {"n": len(rows), "n_not_empty": len(found), "total_ml": total, "worst": found[:5]}


def summarize(rows: list[dict]) -> dict:
    """Mean Dice and median HD95 per structure over cases, plus the overall mean Dice."""
    import math

    import numpy as np

    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    out = {}
    for name, rs in sorted(by.items()):
        hd = [r["hd95_mm"] for r in rs if math.isfinite(r["hd95_mm"])]
        out[name] = {"n": len(rs), "dice": round(float(np.mean([r["dice"] for r in rs])), 4), "hd95_mm": round(float(np.median(hd)), 2) if hd else None}
    out["mean_dice"] = round(float(np.mean([r["dice"] for r in rows])), 4) if rows else None
    return out


# ---------------------------------------------------------------------------------- 3D UNet baseline
BASELINE_SPACING = 3.0  # mm, isotropic: coarse enough for 1 CPU thread, what ts_ct_full already has
PATCH = 64


def _baseline_volume(case, keys: list[str], spacing: float = BASELINE_SPACING):
    """(image [0,1] float32, class map) resampled to ``spacing`` mm; classes = 1 + index in ``keys``."""
    import numpy as np

    from ..preprocess import normalize_intensity, resample_to_spacing

    gt, present = reference_map(case, keys)
    remap = np.zeros(len(present) + 1, dtype=np.uint8)
    for i, k in enumerate(present):
        remap[i + 1] = keys.index(k) + 1
    classes = gt.with_array(remap[gt.array])
    image = case.image.with_array(normalize_intensity(case.image.array, case.modality) / 255.0)
    image = resample_to_spacing(image, spacing)
    classes = resample_to_spacing(classes, spacing, label=True)
    labelled = [0] + [keys.index(k) + 1 for k in present]
    return image.array.astype(np.float32), classes.array.astype(np.int64), labelled


def _crop(image, classes, rng):
    """A PATCH³ crop (zero-padded at random sides: ``preprocess.pad_randomly``), centred on foreground
    two times out of three."""
    import numpy as np

    from ..preprocess import pad_randomly

    (image, classes), _ = pad_randomly((image, classes), (PATCH,) * 3, lambda n: int(rng.integers(n + 1)))
    fg = np.argwhere(classes > 0)
    if fg.size and rng.random() < 0.67:
        centre = fg[rng.integers(len(fg))]
    else:
        centre = np.array([rng.integers(s) for s in image.shape])
    start = [int(np.clip(c - PATCH // 2, 0, s - PATCH)) for c, s in zip(centre, image.shape)]
    sl = tuple(slice(a, a + PATCH) for a in start)
    return image[sl], classes[sl]


def _marginal_loss(logits, target, labelled: list[int]):
    """Cross-entropy where classes not labelled in this case count as background (partial labels)."""
    import torch

    probs = torch.softmax(logits, dim=0)
    n = logits.shape[0]
    unlabelled = [c for c in range(n) if c not in labelled]
    merged = probs[labelled].clone()
    merged[0] = merged[0] + probs[unlabelled].sum(0) if unlabelled else merged[0]
    index = torch.zeros(n, dtype=torch.long)
    index[labelled] = torch.arange(len(labelled))
    return torch.nn.functional.nll_loss(torch.log(merged.clamp_min(1e-6))[None], index[target][None])


def train_baseline(train_refs, keys: list[str], minutes: float, spacing: float = BASELINE_SPACING, balance: bool = False):
    """A MONAI 3D UNet trained on PATCH³ crops for ``minutes`` of wall time (1 sample per step).
    ``balance`` draws cases by data set as ``mri-v1`` does (``train.mri_segment.dataset_weights``), not uniformly."""
    import numpy as np
    import torch
    from monai.networks.nets import UNet

    from ..train.mri_segment import dataset_weights

    loaded = [(r, _baseline_volume(r.load(), keys, spacing)) for r in train_refs]
    loaded = [(r, d) for r, d in loaded if len(d[2]) > 1]
    data = [d for _, d in loaded]
    groups = [str(r.meta.get("dataset", r.case_id)) for r, _ in loaded]
    weights = np.array(dataset_weights(groups, [set(d[2]) for d in data]) if balance else [1.0] * len(data))
    if not data:
        from ..errors import InputError

        raise InputError(f"no baseline training case has labels for any of: {', '.join(keys)}")
    net = UNet(3, 1, len(keys) + 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    deadline, steps = time.monotonic() + minutes * 60, 0
    while time.monotonic() < deadline:
        image, classes, labelled = data[rng.choice(len(data), p=weights / weights.sum()) if balance else rng.integers(len(data))]
        x, y = _crop(image, classes, rng)
        logits = net(torch.from_numpy(x)[None, None])[0]
        loss = _marginal_loss(logits, torch.from_numpy(y), labelled)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


def predict_baseline(net, case, keys: list[str], spacing: float = BASELINE_SPACING):
    """The baseline's class map on ``case``'s grid: class i+1 = ``keys[i]``."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from ..preprocess import resample_like, resample_to_spacing

    image, _, _ = _baseline_volume(case, keys, spacing)
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(image)[None, None], (PATCH,) * 3, 2, net, overlap=0.25, padding_mode="constant")
    classes = logits[0].argmax(0).numpy().astype(np.uint8)
    grid = resample_to_spacing(case.image, spacing)
    return resample_like(grid.with_array(classes), case.labels, label=True)


def baseline_report(train_refs, heldout_refs, keys: list[str], minutes: float, spacing: float = BASELINE_SPACING, balance: bool = False) -> dict:
    """Train the 3D UNet baseline (:func:`train_baseline`), then Dice/HD95 on the held-out cases
    (prediction resampled back)."""
    import numpy as np

    net, steps = train_baseline(train_refs, keys, minutes, spacing, balance)
    rows = []
    for ref in heldout_refs:
        case = ref.load()
        gt, present = reference_map(case, keys)
        if not present:
            continue
        classes = predict_baseline(net, case, keys, spacing)
        remap = np.zeros(len(keys) + 1, dtype=np.uint8)
        for i, k in enumerate(present):
            remap[keys.index(k) + 1] = i + 1
        rows += _rows(case.case_id, classes.with_array(remap[classes.array]), gt, present)
    return {"model": f"MONAI 3D UNet (16-32-64-128, {spacing:g} mm, 64^3 patches)", "train_minutes": minutes, "steps": steps, "rows": rows, "summary": summarize(rows)}
