"""Local model store: safetensors weights + a JSON model card, verified by sha256 on every load.

Shipped models live inside the package (``medfoundcore/weights/<name>/``); models a user trains or
imports live under ``$MEDFOUND_HOME/models/<name>/`` (default ``~/.medfound``). Each directory holds
``model.safetensors`` and ``card.json``. Nothing is ever downloaded.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import InputError, ModelError
from .io import atomic_path

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
PACKAGED_DIR = Path(__file__).parent / "weights"
#: Friendly names resolved to concrete models.
ALIASES = {"default": "starter-v2", "default-ct": "ct-v1", "default-mri": "mri-v1", "encoder-default": "encoder-v1"}


@dataclass
class ModelCard:
    """Everything needed to rebuild, trust and describe a model; stored as ``card.json`` beside the weights."""

    name: str
    kind: str  # "prompted-segmenter" | "encoder3d" | "finetuned3d"
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    version: str = "1"
    structures: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {f for f in cls.__dataclass_fields__}
        extra = {k: v for k, v in data.items() if k not in known}
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.extra.update(extra)
        return card

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelError(f"{path}: model card not found; every model needs its card.json beside the weights") from None
        except (json.JSONDecodeError, TypeError) as error:
            raise ModelError(f"{path}: model card is not valid ({error})") from None


@dataclass(frozen=True)
class ModelInfo:
    """A model found in the store."""

    name: str
    path: Path
    card: ModelCard
    source: str  # "packaged" | "user"


def medfound_home() -> Path:
    """Root of the user's MedFound data (``$MEDFOUND_HOME`` or ``~/.medfound``)."""
    return Path(os.environ.get("MEDFOUND_HOME", Path.home() / ".medfound")).expanduser()


def user_models_dir() -> Path:
    return medfound_home() / "models"


def sha256_file(path: Path, chunk: int = 1 << 20, on_read: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in chunks; ``on_read(bytes_read_so_far)`` after each (progress)."""
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            done += len(block)
            if on_read is not None:
                on_read(done)
    return digest.hexdigest()


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise InputError(f"invalid model name {name!r}: use letters, digits, '-', '_' and '.'")


def save_model(
    state_dict: dict[str, torch.Tensor],
    card: ModelCard,
    directory: str | os.PathLike[str] | None = None,
    *,
    fp16: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write weights (floats as fp16 by default) and the card with its sha256; returns the model directory.

    Without ``directory`` the model goes to the user store under ``card.name``. An existing model is
    never replaced unless ``overwrite`` is set.
    """
    _check_name(card.name)
    target = Path(directory) if directory is not None else user_models_dir() / card.name
    if (target / WEIGHTS_FILE).exists() and not overwrite:
        raise InputError(f"{target}: a model is already stored there; choose another name or delete it first")
    target.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state_dict.items():
        tensor = value.detach().to("cpu").contiguous()
        if fp16 and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        tensors[key] = tensor
    with atomic_path(target / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"name": card.name, "kind": card.kind})
        card.sha256 = sha256_file(tmp)
    card.created = card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with atomic_path(target / CARD_FILE) as tmp:
        tmp.write_text(card.to_json())
    return target


def _candidates() -> list[ModelInfo]:
    found: list[ModelInfo] = []
    for source, root in (("user", user_models_dir()), ("packaged", PACKAGED_DIR)):
        if not root.is_dir():
            continue
        for directory in sorted(p for p in root.iterdir() if (p / WEIGHTS_FILE).exists()):
            try:
                card = ModelCard.read(directory / CARD_FILE)
            except ModelError:
                continue
            found.append(ModelInfo(directory.name, directory, card, source))
    return found


def list_models(kind: str | None = None) -> list[ModelInfo]:
    """Installed models (user models shadow packaged ones of the same name), optionally of one kind."""
    seen: dict[str, ModelInfo] = {}
    for info in _candidates():
        seen.setdefault(info.name, info)
    return [m for m in seen.values() if kind is None or m.card.kind == kind]


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """Directory of a model given by name, alias, directory path or path to its .safetensors file."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix == ".safetensors" and path.exists():
        return path.parent
    if path.is_dir() and (path / WEIGHTS_FILE).exists():
        return path
    name = ALIASES.get(text, text)
    for info in list_models():
        if info.name == name:
            return info.path
    known = [m.name for m in list_models()] + list(ALIASES)
    hint = difflib.get_close_matches(text, known, n=3, cutoff=0.3)
    suggestion = f"; did you mean {', '.join(hint)}?" if hint else f"; installed: {', '.join(known) or 'none'}"
    raise ModelError(f"model {text!r} not found{suggestion}")


def read_card(name_or_path: str | os.PathLike[str]) -> ModelCard:
    """A model's card alone (no weights read): enough to decide which pipeline runs it."""
    return ModelCard.read(resolve_model_dir(name_or_path) / CARD_FILE)


def resolve_default(model: str, volume) -> str:
    """``default`` means the CT model (``ct-v1``) for a CT and the MRI model (``mri-v1``) for anything
    else, each when it is installed, and the slice model otherwise."""
    if model != "default":
        return model
    from .preprocess import detect_modality

    family = "default-ct" if detect_modality(volume) == "CT" else "default-mri"
    installed = {m.name for m in list_models()}
    return family if ALIASES[family] in installed else "default"


def load_model(name_or_path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Weights (floats cast to ``dtype``) and card of a model, after checking the file's sha256 against the card."""
    directory = resolve_model_dir(name_or_path)
    card = ModelCard.read(directory / CARD_FILE)
    weights = directory / WEIGHTS_FILE
    actual = sha256_file(weights)
    if card.sha256 and actual != card.sha256:
        raise ModelError(f"{weights}: checksum mismatch (card {card.sha256[:12]}…, file {actual[:12]}…); the file is corrupt or was modified")
    if not card.sha256:
        raise ModelError(f"{directory / CARD_FILE}: the card has no sha256; refusing unverified weights")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ModelError(f"{weights}: cannot read the weights ({error})") from None
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}, card


def import_model(path: str | os.PathLike[str], name: str | None = None) -> Path:
    """Copy a model (its .safetensors and the card beside it) into the user store after verifying it."""
    source = Path(path).expanduser()
    directory = source if source.is_dir() else source.parent
    weights = source if source.suffix == ".safetensors" else directory / WEIGHTS_FILE
    if not weights.exists():
        raise InputError(f"{source}: no .safetensors weights found")
    card_path = directory / CARD_FILE if (directory / CARD_FILE).exists() else weights.with_suffix(".json")
    card = ModelCard.read(card_path)
    if sha256_file(weights) != card.sha256:
        raise ModelError(f"{weights}: sha256 does not match its card; refusing to import a corrupt or modified model")
    card.name = name or card.name
    _check_name(card.name)
    target = user_models_dir() / card.name
    if target.exists():
        raise InputError(f"a model named {card.name!r} is already installed; delete it first or import under another name")
    target.mkdir(parents=True)
    shutil.copyfile(weights, target / WEIGHTS_FILE)
    (target / CARD_FILE).write_text(card.to_json())
    return target


def delete_model(name: str) -> None:
    """Remove a user model; shipped models cannot be deleted."""
    for info in list_models():
        if info.name == name:
            if info.source != "user":
                raise InputError(f"model {name!r} ships with MedFound and cannot be deleted")
            shutil.rmtree(info.path)
            return
    raise InputError(f"model {name!r} is not installed")
