"""MSD Task04 Hippocampus cases: discovery, content hashes and the one preprocessing every method gets.

The MSD files mix uint8 (0-255) and float32 scales up to 1.7e6, so every image is normalised on its own:
0.5-99.5 percentile clipping to float32 [0, 255] (:func:`medfoundcore.preprocess.clip_percentiles`), for
uint8 files too, so that all 200 cases share one intensity convention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import Volume, load_volume
from ..preprocess import clip_percentiles
from ..progress import CancelToken, ProgressCallback, track
from .protocol import file_sha256

DATASET = "msd-hippocampus"
DATA_SUBDIR = "msd_hippocampus"
#: label value -> (structure key used in tables, text prompt given to MedFound's text-prompted model)
STRUCTURES: dict[int, tuple[str, str]] = {1: ("anterior", "anterior hippocampus"), 2: ("posterior", "posterior hippocampus")}


@dataclass
class BenchCase:
    """One preprocessed case: the normalised image and its manual label map on the same grid."""

    case_id: str
    image: Volume
    label: Volume


def default_data_dir() -> Path:
    """``<shared data>/msd_hippocampus`` (``$MEDFOUND_DATA`` overrides the shared folder)."""
    from ..data.paths import shared_data_dir

    return Path(shared_data_dir()) / DATA_SUBDIR


def case_files(data_dir: Path, case_id: str) -> tuple[Path, Path]:
    data_dir = Path(data_dir)
    return data_dir / f"{case_id}_img.nii.gz", data_dir / f"{case_id}_lab.nii.gz"


def discover_cases(data_dir: Path, max_cases: int | None = None) -> list[str]:
    """Case ids that have both an image and a label; ``max_cases`` keeps the first N (sorted) for smoke runs."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: MSD Hippocampus folder not found (expected <case>_img.nii.gz + <case>_lab.nii.gz)")
    ids = sorted(p.name[: -len("_img.nii.gz")] for p in data_dir.glob("*_img.nii.gz"))
    ids = [c for c in ids if case_files(data_dir, c)[1].exists()]
    if not ids:
        raise InputError(f"{data_dir}: no <case>_img.nii.gz with a matching <case>_lab.nii.gz")
    if max_cases is not None:
        if max_cases < 1:
            raise InputError(f"--max-cases must be positive, got {max_cases}")
        ids = ids[:max_cases]
    return ids


def hash_cases(data_dir: Path, case_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """sha256 of each case's image and label file, recorded in the split manifest."""
    hashes = {}
    for case_id in case_ids:
        image, label = case_files(data_dir, case_id)
        hashes[case_id] = {"image": file_sha256(image), "label": file_sha256(label)}
    return hashes


def load_case(data_dir: Path, case_id: str) -> BenchCase:
    """Load one case and apply the benchmark preprocessing (per-volume intensity normalisation)."""
    image_path, label_path = case_files(data_dir, case_id)
    image = load_volume(image_path)
    label = load_volume(label_path, label=True)
    if image.shape != label.shape:
        raise InputError(f"{label_path}: label grid {label.shape} differs from image grid {image.shape}")
    normalised = image.with_array(clip_percentiles(image.array).astype(np.float32, copy=False), modality="MRI")
    return BenchCase(case_id, normalised, label)


def load_cases(
    data_dir: Path,
    case_ids: Sequence[str],
    expected_hashes: dict[str, dict[str, str]] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[BenchCase]:
    """Load ``case_ids``; with ``expected_hashes`` refuse files whose content changed since the split was made."""
    cases = []
    for case_id in track(case_ids, "load cases", progress=progress, cancel=cancel):
        if expected_hashes is not None:
            _check_hashes(data_dir, case_id, expected_hashes[case_id])
        cases.append(load_case(data_dir, case_id))
    return cases


def _check_hashes(data_dir: Path, case_id: str, expected: dict[str, str]) -> None:
    for kind, path in zip(("image", "label"), case_files(data_dir, case_id)):
        if file_sha256(path) != expected[kind]:
            raise InputError(f"{path}: file content changed since the split manifest was written; refusing to mix data")
