"""The benchmark protocol: which cases, which folds, which preprocessing — fixed by one hashed manifest.

Every method of a run trains and is evaluated on the folds of one :class:`SplitManifest`. The manifest
is written once per output folder; its sha256 covers the case list, the content hash of every image and
label file, the fold assignment and the preprocessing, and every worker re-checks it before training,
so two methods can never silently see different splits or different data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_path

MANIFEST_NAME = "split_manifest.json"
MANIFEST_VERSION = 1

# The one preprocessing every method receives (see cases.py); recorded in the manifest hash.
PREPROCESSING = {
    "intensity": "per-volume medfoundcore.preprocess.normalize_intensity(array, 'MRI') -> float32 [0, 255]",
    "geometry": "native grid (all MSD Task04 crops are 1 mm isotropic); no resampling, no cropping",
    "labels": {"1": "anterior hippocampus", "2": "posterior hippocampus"},
}


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: the cases a method may train on and the cases it is scored on."""

    index: int
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass
class SplitManifest:
    """The split of a benchmark run, identified by :attr:`sha256`."""

    dataset: str
    seed: int
    n_folds: int
    files: dict[str, dict[str, str]]  # case_id -> {"image": sha256, "label": sha256}
    folds: list[Fold]
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(PREPROCESSING))
    version: int = MANIFEST_VERSION

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.files)

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON content: the identity every method checks."""
        return hashlib.sha256(_canonical(self._content())).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def fold(self, index: int) -> Fold:
        if not 0 <= index < len(self.folds):
            raise InputError(f"fold {index} does not exist; the split has folds 0..{len(self.folds) - 1}")
        return self.folds[index]

    def _content(self) -> dict[str, Any]:
        content = asdict(self)
        content["folds"] = [{"index": f.index, "train": list(f.train), "test": list(f.test)} for f in self.folds]
        return content

    def to_json(self) -> dict[str, Any]:
        return {**self._content(), "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitManifest:
        folds = [Fold(int(f["index"]), tuple(f["train"]), tuple(f["test"])) for f in data["folds"]]
        manifest = cls(
            dataset=data["dataset"],
            seed=int(data["seed"]),
            n_folds=int(data["n_folds"]),
            files={k: dict(v) for k, v in data["files"].items()},
            folds=folds,
            preprocessing=data["preprocessing"],
            version=int(data.get("version", MANIFEST_VERSION)),
        )
        if "sha256" in data and data["sha256"] != manifest.sha256:
            raise InputError("split manifest was edited: its recorded sha256 does not match its content")
        return manifest


def make_manifest(
    dataset: str, files: dict[str, dict[str, str]], n_folds: int = 5, seed: int = 0
) -> SplitManifest:
    """K-fold split by case: a seeded permutation dealt round-robin, so fold sizes differ by at most one."""
    case_ids = sorted(files)
    if n_folds < 2:
        raise InputError(f"--folds must be at least 2 for cross-validation, got {n_folds}")
    if len(case_ids) < n_folds:
        raise InputError(f"{dataset}: {len(case_ids)} cases cannot be split into {n_folds} folds")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    buckets: list[list[str]] = [[] for _ in range(n_folds)]
    for position, case_index in enumerate(order):
        buckets[position % n_folds].append(case_ids[case_index])
    folds = []
    for index, test in enumerate(buckets):
        train = sorted(c for c in case_ids if c not in set(test))
        folds.append(Fold(index, tuple(train), tuple(sorted(test))))
    return SplitManifest(dataset, seed, n_folds, {k: dict(files[k]) for k in case_ids}, folds)


def save_manifest(manifest: SplitManifest, out_dir: Path) -> Path:
    """Write the manifest to ``out_dir``; refuse if a different split already lives there."""
    path = Path(out_dir) / MANIFEST_NAME
    if path.exists():
        existing = load_manifest(path)
        if existing.sha256 != manifest.sha256:
            raise InputError(
                f"{path}: this output folder already holds results for split {existing.short_hash}, "
                f"but this run's split is {manifest.short_hash} (different cases, folds, seed or data); "
                "use a new --out folder instead of mixing splits"
            )
        return path
    write_text_atomic(path, json.dumps(manifest.to_json(), indent=1))
    return path


def load_manifest(path: Path) -> SplitManifest:
    """Read and integrity-check a manifest file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the split manifest ({exc})") from exc
    try:
        return SplitManifest.from_json(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def verify_manifest(path: Path, expected_sha256: str) -> SplitManifest:
    """Load the manifest and refuse to go on unless it is exactly the split the run was started with."""
    manifest = load_manifest(path)
    if manifest.sha256 != expected_sha256:
        raise InputError(
            f"{path}: split {manifest.short_hash} differs from the run's split {expected_sha256[:12]}; "
            "refusing to mix splits"
        )
    return manifest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the complete new one, never a partial one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
