"""The one sliding-window engine for the CT encoder: windows with Gaussian blending (MONAI's
``sliding_window_inference``) and a feature cache, so each window's encoder pass happens once per
volume and is reused by every prompt and every later call on the same image.

The cache key is a digest of the window's voxels, so it needs no bookkeeping of volumes or offsets
and can never serve features of another image. It holds decoder-ready pixel features (fp16) and is
bounded in bytes; the oldest entries go first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..device import autocast
from ..errors import Cancelled
from ..progress import CancelToken, ProgressCallback, report

#: The encoder's native window (Z, X, Y): 480 × 336 × 336 mm at 3 × 1.5 × 1.5 mm.
WINDOW_ZXY = (160, 224, 224)
OVERLAP = 0.25
CACHE_BYTES = 1 << 30


def window_digest(window: torch.Tensor, tag: str) -> str:
    """Content digest of one window (plus the model ``tag``): equal voxels give equal keys."""
    data = window.detach().to("cpu", torch.float16).contiguous().numpy().tobytes()
    return hashlib.blake2b(data + tag.encode(), digest_size=16).hexdigest()


class FeatureCache:
    """Byte-bounded LRU of per-window features; thread-safe (Slicer's worker may share it)."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(value: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in value)

    def get(self, key: str) -> list[torch.Tensor] | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: list[torch.Tensor]) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: Shared by text prompts and clicks within one process.
FEATURES = FeatureCache()


def window_features(encoder: torch.nn.Module, decoder: torch.nn.Module, window: torch.Tensor, tag: str) -> list[torch.Tensor]:
    """What a decoder keeps of one window ``[1, 1, Z, X, Y]`` (its ``window_outputs``: pixel features,
    image features, ...), from :data:`FEATURES` when the same voxels were seen before by the same
    model (``tag``): another prompt, another click, another call on the same CT. The first call returns
    the stored fp16 values too, so a later call from the cache gives the same result."""
    key = window_digest(window, tag)
    cached = FEATURES.get(key)
    if cached is None:
        with autocast(window.device):
            outputs = decoder.window_outputs(encoder(window), window)
        cached = [t.to("cpu", torch.float16) for t in outputs]
        FEATURES.put(key, cached)
    return [t.to(window.device).float() for t in cached]


def window_size(shape: Sequence[int], multiple: Sequence[int], window: Sequence[int] = WINDOW_ZXY) -> tuple[int, ...]:
    """The window for a block of ``shape``: the native window, or the block itself rounded up to
    the encoder's stride when it is smaller (a small CT is one pass, not a padded 160-slice one)."""
    return tuple(min(w, -(-s // m) * m) for s, w, m in zip(shape, window, multiple))


def sliding_windows(
    block: np.ndarray,
    predict: Callable[[torch.Tensor], torch.Tensor],
    multiple: Sequence[int],
    *,
    device: torch.device,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Blend ``predict`` (``[1, 1, Z, X, Y]`` → ``[1, K, Z, X, Y]``) over ``block`` (Z, X, Y).

    Returns the blended ``[K, Z, X, Y]`` float32 on the CPU; progress per window, cancel between
    windows. The blend buffer stays on the CPU, so GPU memory holds one window at a time.
    """
    from monai.inferers import sliding_window_inference

    roi = window_size(block.shape, multiple)
    count = [0]
    total = _window_count(block.shape, roi)

    def run(window: torch.Tensor) -> torch.Tensor:
        if cancel is not None and cancel.cancelled:
            raise Cancelled("segmentation cancelled")
        out = predict(window.to(device)).float().cpu()
        count[0] += 1
        report(progress, "segmenting", count[0], total, f"window {count[0]} of {total}")
        return out

    x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))[None, None]
    with torch.inference_mode():
        out = sliding_window_inference(
            x, roi, 1, run, overlap=OVERLAP, mode="gaussian", padding_mode="constant", cval=0.0, sw_device="cpu", device="cpu",
        )
    return out[0]


def _window_count(shape: Sequence[int], roi: Sequence[int]) -> int:
    n = 1
    for s, r in zip(shape, roi):
        step = max(1, int(r * (1 - OVERLAP)))
        n *= 1 if s <= r else -(-(s - r) // step) + 1
    return n
