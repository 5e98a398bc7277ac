"""Labelled 3D cases from disk: the shared ``*_img/*_lab/*_labels.json`` layout and nnU-Net/MSD raw layout.

A :class:`Case` is one image with its label map (same grid) and the label value -> name table.
:class:`CaseRef` is the unloaded form (paths + metadata) so that hundreds of cases can be listed,
split by subject and then loaded one at a time (a 240-patient dataset does not fit in memory at once).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io import Volume, load_volume

IMG_SUFFIX = "_img.nii.gz"
LAB_SUFFIX = "_lab.nii.gz"
LABELS_SUFFIX = "_labels.json"

# Trailing sequence names: the same patient imaged with several MRI sequences is one subject.
_SEQUENCE_SUFFIX = re.compile(r"_(flair|t1c|t1ce|t1gd|t1w?|t2w?|t2star|pd|mton|mtoff|adc|dwi)$", re.IGNORECASE)
_SAME_PATIENT = re.compile(r"same (?:patient|subject) as (?:the )?([A-Za-z0-9_\-]+)", re.IGNORECASE)


@dataclass
class Case:
    """One labelled image: ``labels`` shares ``image``'s grid; ``names`` maps label value -> dataset name."""

    case_id: str
    subject: str
    image: Volume
    labels: Volume
    names: dict[int, str]
    modality: str
    meta: dict = field(default_factory=dict)


@dataclass
class CaseRef:
    """An unloaded case: where its files are and what its labels are called."""

    case_id: str
    subject: str
    image_path: Path
    label_path: Path
    names: dict[int, str]
    modality: str
    meta: dict = field(default_factory=dict)

    def load(self) -> Case:
        """Read image and label map; a label map on another grid than the image is an InputError."""
        image = load_volume(self.image_path)
        labels = load_volume(self.label_path, label=True)
        if labels.shape != image.shape:
            raise InputError(
                f"{self.label_path}: label map shape {labels.shape} differs from image shape {image.shape}"
            )
        return Case(self.case_id, self.subject, image, labels, dict(self.names), self.modality, dict(self.meta))


def modality_from_text(text: str) -> str:
    """Map a free-text modality ('CT (contrast)', 'MRI T1w', 'MR', 'FLAIR') to ``"CT"`` or ``"MRI"``."""
    upper = text.strip().upper()
    if upper.startswith("CT") or "COMPUTED TOMOGRAPHY" in upper:
        return "CT"
    return "MRI"


# ---------------------------------------------------------------- shared ``*_img/*_lab`` layout
def _shared_ref(img_path: Path) -> CaseRef:
    stem = img_path.name[: -len(IMG_SUFFIX)]
    lab_path = img_path.with_name(stem + LAB_SUFFIX)
    json_path = img_path.with_name(stem + LABELS_SUFFIX)
    for p in (lab_path, json_path):
        if not p.is_file():
            raise InputError(f"{img_path}: expected companion file {p.name} next to it")
    info = json.loads(json_path.read_text())
    names = {int(k): str(v) for k, v in info.get("labels", {}).items() if int(k) != 0}
    meta = {k: v for k, v in info.items() if k != "labels"}
    meta.setdefault("dataset", img_path.parent.name)
    subject = str(info.get("subject") or _SEQUENCE_SUFFIX.sub("", stem))
    return CaseRef(stem, subject, img_path, lab_path, names, modality_from_text(str(info.get("modality", "MRI"))), meta)


# ---------------------------------------------------------------- nnU-Net v2 / MSD raw layout
def _nnunet_labels(info: dict, root: Path) -> dict[int, str]:
    raw = info.get("labels", {})
    names: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit() and not key.isdigit()):
            names[int(value)] = str(key)  # nnU-Net v2: name -> value
        elif str(key).isdigit():
            names[int(key)] = str(value)  # MSD: value -> name
        else:
            raise InputError(f"{root / 'dataset.json'}: label {key!r} is region-based; only plain label maps are supported")
    return {k: v for k, v in names.items() if k != 0}


def _nnunet_modality(info: dict) -> str:
    channels = info.get("channel_names") or info.get("modality") or {"0": "MRI"}
    return modality_from_text(str(channels.get("0", next(iter(channels.values())))))


def _nnunet_pairs(info: dict, root: Path) -> list[tuple[str, Path, Path]]:
    if info.get("training"):  # MSD lists its pairs
        return [
            (Path(t["label"]).name.split(".")[0], root / t["image"], root / t["label"])
            for t in info["training"]
        ]
    ending = info.get("file_ending", ".nii.gz")
    pairs = []
    for lab in sorted((root / "labelsTr").glob(f"*{ending}")):
        case_id = lab.name[: -len(ending)]
        img = root / "imagesTr" / f"{case_id}_0000{ending}"
        if not img.is_file():
            raise InputError(f"{lab}: no image {img.name} in imagesTr/")
        pairs.append((case_id, img, lab))
    return pairs


def nnunet_refs(root: Path) -> list[CaseRef]:
    """Cases of one nnU-Net v2 (``imagesTr/X_0000``) or MSD (``training`` list) dataset folder."""
    root = Path(root)
    info_path = root / "dataset.json"
    if not info_path.is_file():
        raise InputError(f"{root}: not an nnU-Net/MSD dataset (no dataset.json)")
    info = json.loads(info_path.read_text())
    names, modality = _nnunet_labels(info, root), _nnunet_modality(info)
    meta = {"source": str(root), "dataset": info.get("name", root.name), "license": info.get("licence", info.get("license", ""))}
    return [CaseRef(cid, _SEQUENCE_SUFFIX.sub("", cid), img, lab, names, modality, dict(meta)) for cid, img, lab in _nnunet_pairs(info, root)]


# ---------------------------------------------------------------- discovery
def find_cases(paths: Iterable[str | Path]) -> list[CaseRef]:
    """All cases under ``paths``: nnU-Net/MSD folders, shared-layout folders (recursive) or ``*_img`` files.

    Subjects are linked across cases whose notes say "same patient as X", so that a split never
    puts one patient on both sides.
    """
    refs: list[CaseRef] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_file():
            if not p.name.endswith(IMG_SUFFIX):
                raise InputError(f"{p}: expected a '*{IMG_SUFFIX}' image or a dataset folder")
            refs.append(_shared_ref(p))
        elif (p / "dataset.json").is_file():
            refs.extend(nnunet_refs(p))
        else:
            found = sorted(p.rglob(f"*{IMG_SUFFIX}"))
            found = [f for f in found if f.with_name(f.name[: -len(IMG_SUFFIX)] + LAB_SUFFIX).is_file()]
            if not found:
                raise InputError(f"{p}: no labelled cases found (neither dataset.json nor *{IMG_SUFFIX} + *{LAB_SUFFIX})")
            refs.extend(_shared_ref(f) for f in found)
    _link_same_patient(refs)
    return refs


def _link_same_patient(refs: list[CaseRef]) -> None:
    by_id = {r.case_id: r for r in refs}
    for r in refs:
        match = _SAME_PATIENT.search(str(r.meta.get("note", "")))
        if match and match.group(1) in by_id:
            other = by_id[match.group(1)]
            shared = min(r.subject, other.subject)
            for x in refs:
                if x.subject in (r.subject, other.subject):
                    x.subject = shared


def load_cases(paths: Iterable[str | Path]) -> list[Case]:
    """Find and load every case under ``paths`` (convenient for small datasets)."""
    return [ref.load() for ref in find_cases(paths)]


def split_by_subject(
    cases: Sequence[CaseRef | Case],
    holdout: float | Iterable[str] = 0.2,
    seed: int = 0,
) -> tuple[list, list]:
    """Split into (train, held-out) so that all cases of one subject fall on the same side.

    ``holdout`` is a fraction of subjects (drawn with ``seed``) or an explicit list of subjects.
    """
    subjects = sorted({c.subject for c in cases})
    if isinstance(holdout, (float, int)):
        n = int(round(len(subjects) * float(holdout)))
        if not 0 < n < len(subjects) and len(subjects) > 1:
            n = 1
        held = set(random.Random(seed).sample(subjects, n))
    else:
        held = set(holdout)
        unknown = held - set(subjects)
        if unknown:
            raise InputError(f"held-out subjects not found among the cases: {sorted(unknown)}")
    return [c for c in cases if c.subject not in held], [c for c in cases if c.subject in held]
