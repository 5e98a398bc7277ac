"""The benchmark split: a seeded partition by case, identified by a hash that every consumer checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medfoundcore.benchmark.cases import DATASET, case_files, discover_cases, hash_cases, load_cases
from medfoundcore.benchmark.protocol import load_manifest, make_manifest, save_manifest, verify_manifest
from medfoundcore.errors import InputError


@pytest.fixture(scope="module")
def hippocampus(shared_data: Path) -> Path:
    return shared_data / "msd_hippocampus"


def test_five_folds_partition_all_200_cases(hippocampus: Path) -> None:
    ids = discover_cases(hippocampus)
    assert len(ids) == 200
    manifest = make_manifest(DATASET, hash_cases(hippocampus, ids), n_folds=5, seed=0)
    tested = [c for f in manifest.folds for c in f.test]
    assert sorted(tested) == ids  # every case is tested exactly once
    assert {len(f.test) for f in manifest.folds} == {40}
    for fold in manifest.folds:
        assert not set(fold.train) & set(fold.test)
        assert sorted(fold.train + fold.test) == ids


def test_split_hash_is_deterministic_and_sensitive(hippocampus: Path) -> None:
    files = hash_cases(hippocampus, discover_cases(hippocampus, max_cases=12))
    a = make_manifest(DATASET, files, 3, seed=0)
    assert make_manifest(DATASET, files, 3, seed=0).sha256 == a.sha256
    assert make_manifest(DATASET, files, 3, seed=1).sha256 != a.sha256
    assert make_manifest(DATASET, files, 4, seed=0).sha256 != a.sha256
    fewer = dict(list(files.items())[:-1])
    assert make_manifest(DATASET, fewer, 3, seed=0).sha256 != a.sha256


def test_output_folder_refuses_a_second_split(hippocampus: Path, tmp_path: Path) -> None:
    files = hash_cases(hippocampus, discover_cases(hippocampus, max_cases=10))
    first = make_manifest(DATASET, files, 5, seed=0)
    path = save_manifest(first, tmp_path)
    assert save_manifest(first, tmp_path) == path  # the same split may be re-used
    with pytest.raises(InputError, match="mixing splits"):
        save_manifest(make_manifest(DATASET, files, 5, seed=7), tmp_path)
    assert load_manifest(path).sha256 == first.sha256


def test_edited_manifest_is_rejected(hippocampus: Path, tmp_path: Path) -> None:
    files = hash_cases(hippocampus, discover_cases(hippocampus, max_cases=10))
    manifest = make_manifest(DATASET, files, 5, seed=0)
    path = save_manifest(manifest, tmp_path)
    data = json.loads(path.read_text())
    moved = data["folds"][0]["test"].pop()
    data["folds"][0]["train"].append(moved)  # leak a test case into training
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="edited"):
        verify_manifest(path, manifest.sha256)


def test_changed_data_is_rejected(hippocampus: Path, tmp_path: Path) -> None:
    ids = discover_cases(hippocampus, max_cases=2)
    for case_id in ids:
        for path in case_files(hippocampus, case_id):
            shutil.copy(path, tmp_path / path.name)
    hashes = hash_cases(tmp_path, ids)
    assert len(load_cases(tmp_path, ids, hashes)) == 2
    shutil.copy(case_files(hippocampus, "hippocampus_004")[1], case_files(tmp_path, ids[0])[1])
    with pytest.raises(InputError, match="content changed"):
        load_cases(tmp_path, ids, hashes)


def test_every_scale_is_normalised_per_volume(hippocampus: Path) -> None:
    # 001 is uint8 with max 139, 181 is float32 up to ~5e5: both must land on the same [0, 255] convention
    cases = load_cases(hippocampus, ["hippocampus_001", "hippocampus_181"])
    for case in cases:
        array = case.image.array
        assert array.dtype == np.float32
        assert array.min() == 0.0 and array.max() == 255.0
        assert 5.0 < float(np.median(array)) < 250.0
        assert case.label.shape == case.image.shape
        assert set(np.unique(case.label.array)) == {0, 1, 2}
