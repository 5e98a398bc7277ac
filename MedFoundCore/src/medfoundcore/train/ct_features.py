"""Frozen CT-encoder features cached to disk, so that ``ct-v1`` trains on 2 CPU cores in minutes.

Each labelled CT is brought onto the encoder's grid (RAS, 1.5 × 1.5 × 3 mm, HU → [0, 1]; an MRI, for the
MRI control of docs/mri.md, from its 0.5–99.5 percentiles onto [0, 1]), cropped to
the body (and to at most :data:`MAX_ZXY` voxels around the labels), padded to a multiple of the
coarsest feature stride and passed once through the frozen encoder. Per case the cache holds
``image.npy`` (Z, X, Y), ``labels.npy`` (the case's label map on that grid), ``f1..f4.npy`` (fp16
feature maps) and ``meta.json`` (label value → structure key, what the dataset annotates, geometry).
Every file is written atomically, and a case whose ``meta.json`` exists is skipped: an interrupted
caching run resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import CaseRef
from ..errors import InputError
from ..io import atomic_path
from ..preprocess import body_box, encoder_input, pad_to_stride
from ..progress import CancelToken, ProgressCallback, check, report
from ..vocabulary import load_vocabulary

CACHE_VERSION = 1


@dataclass(frozen=True)
class CachedCase:
    """One cached case, its arrays opened lazily (memory-mapped)."""

    directory: Path
    meta: dict

    @property
    def case_id(self) -> str:
        return self.meta["case_id"]

    def array(self, name: str) -> np.ndarray:
        return np.load(self.directory / f"{name}.npy", mmap_mode="r")


def _label_keys(names: dict[int, str]) -> dict[int, str]:
    vocab = load_vocabulary()
    out = {}
    for value, name in names.items():
        structure = vocab.label_name_to_structure(name)
        if structure is not None:
            out[int(value)] = structure.key
    return out


@torch.no_grad()
def encode(encoder, unit: np.ndarray, device: torch.device) -> list[np.ndarray]:
    """The encoder's feature maps for one ``(Z, X, Y)`` block, as fp16 arrays."""
    x = torch.from_numpy(unit)[None, None].to(device)
    return [f[0].to(torch.float16).cpu().numpy() for f in encoder(x)]


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def cache_case(ref: CaseRef, encoder, root: Path, device: torch.device) -> CachedCase:
    """Cache one case (skipped when already cached); returns its handle."""
    directory = root / ref.case_id
    if (directory / "meta.json").exists():
        return CachedCase(directory, json.loads((directory / "meta.json").read_text()))
    case = ref.load()
    if case.modality not in ("CT", "MRI"):
        raise InputError(f"{ref.case_id}: the CT encoder's cache takes CT or MRI cases (this one is {case.modality})")
    unit, labels, grid = encoder_input(case.image, case.labels, case.modality)  # an MRI: percentiles onto [0, 1]
    box = body_box(unit, labels)
    unit, labels = pad_to_stride(unit[box]), pad_to_stride(labels[box])
    directory.mkdir(parents=True, exist_ok=True)
    for i, feature in enumerate(encode(encoder, unit, device), start=1):
        _save(directory / f"f{i}.npy", feature)
    _save(directory / "image.npy", unit.astype(np.float16))
    _save(directory / "labels.npy", labels)
    meta = {
        "version": CACHE_VERSION, "case_id": ref.case_id, "subject": ref.subject, "modality": case.modality,
        "label_keys": {str(k): v for k, v in _label_keys(case.names).items()},
        "grid_origin_ras": grid.index_to_ras(np.array([[box[2].start, box[1].start, box[0].start]]))[0].tolist(),
        "shape_zxy": list(unit.shape), "region": ref.meta.get("region", ""),
    }
    with atomic_path(directory / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return CachedCase(directory, meta)


def cache_cases(
    refs: Sequence[CaseRef], root: str | Path, *, device: str = "cpu", pretrained: bool = True,
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> list[CachedCase]:
    """Cache every case under ``root`` (resumable); ``pretrained=False`` caches a random encoder (control)."""
    from ..models.backbones.ct_weights import build_pretrained_encoder

    root = Path(root)
    dev = torch.device(device)
    encoder = build_pretrained_encoder(4, pretrained=pretrained).to(dev)
    cached = []
    for i, ref in enumerate(refs):
        check(cancel)
        report(progress, "caching CT features", i, len(refs), ref.case_id)
        cached.append(cache_case(ref, encoder, root, dev))
    report(progress, "caching CT features", len(refs), len(refs))
    return cached


def open_cache(root: str | Path) -> list[CachedCase]:
    """Every complete case under ``root``."""
    root = Path(root)
    return [CachedCase(d, json.loads((d / "meta.json").read_text())) for d in sorted(root.iterdir()) if (d / "meta.json").exists()]
