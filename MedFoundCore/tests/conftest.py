"""Shared fixtures: the real data folder (required under CI) and an isolated model store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medfoundcore.data.datasets import find_cases
from medfoundcore.data.paths import shared_data_dir
from medfoundcore.io import load_volume, save_volume
from medfoundcore.train.ct_features import cache_cases


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$MEDFOUND_DATA``). Missing data is a failure, never a skip: tests must run on real volumes."""
    path = shared_data_dir(required=False)
    if not path.is_dir():
        pytest.fail(f"real data folder {path} is missing; set MEDFOUND_DATA (CI={os.environ.get('CI', 'unset')})")
    return path


@pytest.fixture()
def medfound_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$MEDFOUND_HOME`` so tests never touch the user's model store."""
    home = tmp_path / "medfound-home"
    monkeypatch.setenv("MEDFOUND_HOME", str(home))
    return home


@pytest.fixture()
def one_thread():
    """One intra-op thread: on a busy 2-core machine torch's default threads oversubscribe (~10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def ct_encoder_store(tmp_path_factory: pytest.TempPathFactory):
    """One store for the CT encoder's converted weights per test session (joined and verified once,
    ~5 s), shared by tests that isolate ``$MEDFOUND_HOME``."""
    root = tmp_path_factory.mktemp("backbones")
    before = os.environ.get("MEDFOUND_BACKBONES")
    os.environ["MEDFOUND_BACKBONES"] = str(root)
    yield root
    if before is None:
        os.environ.pop("MEDFOUND_BACKBONES", None)
    else:
        os.environ["MEDFOUND_BACKBONES"] = before


@pytest.fixture(scope="session")
def corrupt_file():
    """``corrupt_file(path)``: overwrite the last 16 bytes of a stored file with zeros (a damaged copy
    its card's sha256 no longer matches)."""

    def corrupt(path: Path) -> None:
        with open(path, "r+b") as handle:
            handle.seek(-16, 2)
            handle.write(b"\x00" * 16)

    return corrupt


@pytest.fixture(scope="session")
def assert_exact_resume():
    """``assert_exact_resume(train, cases, cfg, tmp_path, stop_at)``: a run of ``train(cases, work_dir,
    cfg, progress=, cancel=) -> (net, history)`` cancelled after ``stop_at`` steps and resumed ends with
    the weights of an uninterrupted run (data order, optimiser and weights restored)."""
    from medfoundcore.errors import Cancelled
    from medfoundcore.progress import CancelToken

    def check(train, cases, cfg, tmp_path: Path, stop_at: int) -> None:
        token = CancelToken()

        def stop(progress) -> None:
            if progress.done == stop_at:
                token.cancel()

        with pytest.raises(Cancelled):
            train(cases, tmp_path / "a", cfg, progress=stop, cancel=token)
        resumed, history = train(cases, tmp_path / "a", cfg)
        straight, _ = train(cases, tmp_path / "b", cfg)
        assert history["steps_done"] == cfg.steps
        for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), name

    return check


@pytest.fixture(scope="session")
def cached_crop(shared_data, tmp_path_factory):
    """40 axial slices (120 mm) of the abdominal patient ts_ct_full, cached through the real encoder
    (shared by the ct-v1 and interactive model tests; a training patient: no Dice threshold on it)."""
    root = tmp_path_factory.mktemp("ct-cache")
    (ref,) = find_cases([shared_data / "totalsegmentator" / "ts_ct_full_img.nii.gz"])
    image, labels = load_volume(ref.image_path), load_volume(ref.label_path, label=True)
    box = (slice(72, 112), slice(None), slice(None))
    crop_dir = tmp_path_factory.mktemp("crop")
    save_volume(image.crop(box), crop_dir / "abdomen_img.nii.gz")
    save_volume(labels.crop(box), crop_dir / "abdomen_lab.nii.gz")
    (crop_dir / "abdomen_labels.json").write_text(ref.label_path.with_name("ts_ct_full_labels.json").read_text())
    torch.set_num_threads(1)
    return cache_cases(find_cases([crop_dir / "abdomen_img.nii.gz"]), root)
