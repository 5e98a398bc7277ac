"""What every whole-volume model family (``ct-v1``, ``mri-v1``) shares around its own inference: the
prompt bookkeeping of :func:`~medfoundcore.inference.prompts.plan_prompts`, the label-map refusal, a
warning when the image is not the modality the model was trained on, the GPU out-of-memory fallback
to the CPU, and one :class:`~medfoundcore.inference.segment.PromptReport` per structure."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..io import Volume, refuse_label_map
from ..preprocess import detect_modality
from ..vocabulary import load_vocabulary
from .prompts import plan_prompts

#: ``run(structures, device)`` → label map on the volume's grid (label i+1 = structures[i]) and
#: statistics holding ``presence``: the mean probability of each structure over its voxels.
Runner = Callable[[Sequence, torch.device], tuple[np.ndarray, dict]]


def volumetric_result(
    volume: Volume, prompts: Sequence[str], card, run: Runner, device: torch.device, *,
    modality: str, best_effort: bool = False, force: bool = False,
):
    """Plan the prompts against ``card``'s structures, run the model, and report per structure."""
    from .segment import PromptReport, SegmentationResult

    vocab = load_vocabulary()
    plan = plan_prompts(list(prompts), vocab, {s["key"] for s in card.structures}, best_effort, f"model {card.name!r}")
    refuse_label_map(volume, force)
    warnings = [*volume.meta.get("warnings", []), *plan.warnings]
    if detect_modality(volume) != modality:
        warnings.append(f"model {card.name!r} is trained on {modality} only; this image does not look like one (the result is unreliable)")
    try:
        labels, stats = run(plan.structures, device)
    except torch.cuda.OutOfMemoryError:  # a GPU too small for one window: the CPU always fits
        torch.cuda.empty_cache()
        warnings.append(f"the GPU ran out of memory; {card.name} ran on the CPU instead (slower, same result)")
        labels, stats = run(plan.structures, torch.device("cpu"))
    counts = np.stack([np.bincount(plane.ravel(), minlength=len(plan.structures) + 1) for plane in labels])
    reports = []
    for i, s in enumerate(plan.structures):
        n = int(counts[:, i + 1].sum())
        reports.append(PromptReport(
            prompt=plan.prompts_of[i][0], structure_key=s.key, structure_name=s.name, color=tuple(int(c) for c in s.color),
            label=i + 1, found=n > 0, volume_ml=round(n * volume.voxel_volume_ml, 3), slices_present=int((counts[:, i + 1] > 0).sum()),
            mean_presence=stats["presence"][i], prompts=list(plan.prompts_of[i]), known_to_model=s.key not in plan.untrained,
            status="found" if n else "not present",
        ))  # fmt: skip
    result = volume.with_array(labels)
    result.meta = {**volume.meta, "modality": "label", "prompts": [str(p) for p in prompts], "label_of_prompt": plan.label_of}
    return SegmentationResult(result, reports, warnings, card.name)
