"""Interactive segmentation with the learned, class-agnostic model: include / exclude points, strokes
(scribbles) and a box in RAS millimetres → a 0/1 mask on the input grid.

A session holds one image: it is brought onto the CT encoder's grid once, the encoder runs once per
window (features cached in :data:`.windows.FEATURES`, shared with text prompts), and each further
interaction reruns the decoder only, on a region around the prompts and the current mask. The
window follows the prompts: it is centred on them, and moves (one more encoder pass) only when a
prompt falls outside it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..device import resolve_device
from ..errors import InputError, ModelError
from ..io import Volume
from ..models.backbones.ct_foundation import FEATURE_STRIDES
from ..models.prompt_encoder import Prompts, stroke_points
from ..preprocess import CT_ENCODER_MULTIPLE_ZXY, detect_modality, encoder_input, kji, pad_to_stride, resample_onto, zxy
from ..progress import CancelToken, ProgressCallback, check, report
from .windows import WINDOW_ZXY, window_features, window_size

MODEL_KIND = "ct-interactive-segmenter"
DEFAULT_MODEL = "interactive-v1"
#: Where ``default`` means the learned model: it is trained on CT only, and on MRI the intensity engine
#: scores higher from the first click (0.424 vs 0.359; from the third the learned model leads, 0.562 vs
#: 0.481: docs/interactive.md, "MRI"); elsewhere ``default`` is that engine.
LEARNED_MODALITIES = ("CT",)
#: The decoder's region: the prompts' and current mask's box plus this margin (6 mm voxels), at least
#: :data:`MIN_REGION`; a mask touching an inner face of the region grows it, at most GROW times.
MARGIN = 8
MIN_REGION = (24, 40, 40)
GROW = 2
#: A prompt closer than this to the window's edge (full-resolution voxels) moves the window.
EDGE = 4
#: Nothing within this distance of an exclude point stays in the mask.
EXCLUDE_MM = 3.0
STAGE = "interactive"


@dataclass
class Interaction:
    """Everything the user has given so far, in RAS millimetres (as 3D Slicer shows them)."""

    points: Sequence[Sequence[float]] = ()  # (R, A, S)
    include: Sequence[bool] = ()  # one per point: True = include, False = exclude
    box: Sequence[Sequence[float]] | None = None  # two opposite corners (R, A, S)
    strokes: Sequence[Sequence[Sequence[float]]] = ()  # polylines of (R, A, S) vertices
    stroke_include: Sequence[bool] = ()

    def __post_init__(self) -> None:
        if len(self.points) != len(self.include):
            raise InputError(f"{len(self.points)} points but {len(self.include)} include/exclude flags")
        if len(self.strokes) != len(self.stroke_include):
            raise InputError(f"{len(self.strokes)} strokes but {len(self.stroke_include)} include/exclude flags")
        if not any(self.include) and self.box is None and not any(self.stroke_include):
            raise InputError("give at least one include point, include stroke or box: exclude prompts alone do not say what to segment")

    def every_point(self) -> np.ndarray:
        """Every RAS position the interaction touches (to check it lies in the image)."""
        parts = [np.asarray(self.points, dtype=np.float64).reshape(-1, 3)]
        parts += [np.asarray(s, dtype=np.float64).reshape(-1, 3) for s in self.strokes]
        if self.box is not None:
            parts.append(np.asarray(self.box, dtype=np.float64).reshape(2, 3))
        return np.concatenate(parts)


@dataclass
class InteractiveModel:
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    card: object
    device: torch.device

    @property
    def tag(self) -> str:
        return self.card.name + self.card.sha256


@functools.lru_cache(maxsize=2)
def load_interactive_model(name: str, device: str) -> InteractiveModel:
    from ..models.backbones.ct_weights import shared_encoder
    from ..models.interactive_segmenter import InteractiveConfig, build_interactive_segmenter
    from ..registry import load_model

    state, card = load_model(name)
    if card.kind != MODEL_KIND:
        raise ModelError(f"model {name!r} is a {card.kind!r} model, not an interactive segmenter")
    decoder = build_interactive_segmenter(InteractiveConfig.from_dict(card.config["model"]))
    decoder.load_state_dict(state)
    dev = torch.device(device)
    pretrained = card.config.get("encoder_init", "pretrained") == "pretrained"
    return InteractiveModel(shared_encoder(str(dev), pretrained), decoder.eval().to(dev), card, dev)


@dataclass
class _Window:
    start: tuple[int, int, int]  # full-resolution voxels on the padded grid
    size: tuple[int, int, int]
    pixel: torch.Tensor = field(repr=False)  # 1 C z x y
    image: torch.Tensor = field(repr=False)  # 1 c Z X Y
    keys: list = field(repr=False)  # the similarity levels, [C, z, x, y] each

    def contains(self, points: np.ndarray, limit: Sequence[int]) -> bool:
        """Whether every point lies inside, away from an edge that is not the image's own edge."""
        lo = np.array(self.start, dtype=np.float64)
        hi = lo + np.array(self.size) - 1
        low_ok = (points >= lo + EDGE) | (lo == 0)
        high_ok = (points <= hi - EDGE) | (hi >= np.array(limit) - 1)
        inside = (points >= lo) & (points <= hi)
        return bool(np.all(inside & low_ok & high_ok))


class InteractiveSession:
    """One image, many interactions (see module docstring). Not thread-safe: one caller at a time."""

    def __init__(self, volume: Volume, model: str = DEFAULT_MODEL, device: str | torch.device = "auto"):
        self.volume = volume
        self.model = load_interactive_model(model, str(resolve_device(device)))
        self.modality = detect_modality(volume)
        unit, _, self.grid = encoder_input(volume, modality=self.modality)
        self.grid_shape = unit.shape
        self.unit = pad_to_stride(unit)
        self.window: _Window | None = None
        self.last: np.ndarray | None = None  # the last mask on the (padded) encoder grid, for previous="last"

    # ------------------------------------------------------------------------------ coordinates
    def to_voxels(self, ras: np.ndarray) -> np.ndarray:
        """RAS mm → (Z, X, Y) voxel indices (floats) of the encoder grid."""
        ijk = self.grid.ras_to_index(np.asarray(ras, dtype=np.float64).reshape(-1, 3))
        return ijk[:, [2, 0, 1]]

    def prompts(self, interaction: Interaction) -> Prompts:
        """The interaction on the encoder grid, strokes laid out as points. A box without an include
        point gets one at its centre: from a box alone the trained model returns almost nothing
        (docs/interactive.md, "A box alone")."""
        points = self.to_voxels(np.asarray(interaction.points, dtype=np.float64).reshape(-1, 3))
        prompts = Prompts(points, np.asarray(interaction.include, dtype=bool))
        for vertices, include in zip(interaction.strokes, interaction.stroke_include):
            prompts = prompts.added(stroke_points(self.to_voxels(np.asarray(vertices))), bool(include))
        if interaction.box is not None:
            box = self.to_voxels(np.asarray(interaction.box))
            if not prompts.include.any():  # a box alone: read as the box with an include point at its centre
                prompts = prompts.added(box.mean(0, keepdims=True), True)
            prompts = Prompts(prompts.points, prompts.include, box)
        return prompts

    # ------------------------------------------------------------------------------ the window
    def _place_window(self, prompts: Prompts, progress: ProgressCallback | None) -> None:
        """Keep the window if every prompt lies well inside it, else centre a new one on the prompts
        (one encoder pass, or none when its features are cached)."""
        lo, hi = prompts.extent()
        every = np.stack([lo, hi])
        if self.window is not None and self.window.contains(every, self.grid_shape):
            return
        size = window_size(self.unit.shape, CT_ENCODER_MULTIPLE_ZXY, WINDOW_ZXY)
        centre = (lo + hi) / 2
        start = []
        for c, s, n, m in zip(centre, size, self.unit.shape, CT_ENCODER_MULTIPLE_ZXY):
            want = int(round(c - s / 2))
            start.append(int(np.clip(want - want % (m // 2), 0, n - s)))  # keep the window on a stride/2 lattice
        box = tuple(slice(a, a + s) for a, s in zip(start, size))
        report(progress, STAGE, 0, 3, "reading the image (first time on this region: about 10 s on a CPU)")
        tensor = torch.from_numpy(np.ascontiguousarray(self.unit[box], dtype=np.float32))[None, None].to(self.model.device)
        with torch.inference_mode():
            pixel, image, *keys = window_features(self.model.encoder, self.model.decoder, tensor, self.model.tag)
        self.window = _Window(tuple(start), tuple(size), pixel, image, [k[0] for k in keys])

    # ------------------------------------------------------------------------------ one interaction
    def segment(
        self, interaction: Interaction, previous: Volume | np.ndarray | str | None = None, *,
        progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
    ) -> Volume:
        """The mask for everything given so far. ``previous``: the current mask (a label map on the
        image's grid, or ``"last"`` for this session's last result), which the model refines."""
        _check_inside(self.volume, interaction.every_point())
        prompts = self.prompts(interaction)
        prior = self._previous_on_grid(previous)
        self._place_window(prompts, progress)
        check(cancel)
        window = self.window
        box = tuple(slice(a, a + s) for a, s in zip(window.start, window.size))
        report(progress, STAGE, 1, 3, "segmenting")
        with torch.inference_mode():
            mask = self._decode(prompts.shifted(window.start), None if prior is None else prior[box])
        check(cancel)
        report(progress, STAGE, 2, 3, "writing the result")
        self.last = np.zeros(self.unit.shape, dtype=bool)
        self.last[box] = mask
        out = self._to_input_grid(mask)
        report(progress, STAGE, 3, 3, "done")
        return out

    def _previous_on_grid(self, previous: Volume | np.ndarray | str | None) -> np.ndarray | None:
        """The current mask as a bool array on the (padded) encoder grid."""
        if previous is None:
            return None
        if isinstance(previous, str):
            if previous != "last":
                raise InputError(f"previous={previous!r}: give a mask, 'last' or None")
            return self.last
        if isinstance(previous, np.ndarray):
            previous = self.volume.with_array(previous)
        if previous.shape != self.volume.shape:
            raise InputError(f"the current mask has shape {previous.shape}, the image {self.volume.shape}: give a mask on the image's grid")
        on_grid = resample_onto(previous.with_array((previous.array > 0).astype(np.uint8)), self.grid, label=True).array
        return pad_to_stride(zxy(on_grid)).astype(bool)

    def _decode(self, prompts: Prompts, prior: np.ndarray | None) -> np.ndarray:
        """The decoder on a region of the window that grows while the mask touches its inner faces."""
        net, window = self.model.decoder, self.window
        up = np.array(FEATURE_STRIDES[0])
        coarse_shape = np.array(window.pixel.shape[-3:])
        prior_coarse = None
        if prior is not None:
            t = torch.from_numpy(prior.astype(np.float32))[None, None].to(window.pixel.device)
            prior_coarse = F.avg_pool3d(t, kernel_size=tuple(int(u) for u in up))[0, 0]
        similarity = net.similarity(window.keys, prompts, tuple(int(n) for n in coarse_shape), prior_coarse)
        lo, hi = _region(prompts, prior, up, coarse_shape)
        for attempt in range(GROW + 1):
            roi = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            pixel = window.pixel[(slice(None), slice(None), *roi)]
            previous = None if prior_coarse is None else prior_coarse[roi]
            maps = net.prompt_maps(prompts.shifted(lo * up), pixel.shape[-3:], previous, pixel.device)
            coarse = net.coarse_logits(pixel, maps, similarity[(slice(None), slice(None), *roi)])
            touching = _touching_faces(coarse[0, 0] > 0, lo, hi, coarse_shape)
            if not touching or attempt == GROW:
                break
            lo, hi = _grown(lo, hi, touching, coarse_shape)
        mask = np.zeros(window.size, dtype=bool)
        box = _probable_box(torch.sigmoid(coarse[0, 0]))
        if box is None:
            return mask
        full = tuple(slice(int((b.start + o) * u), int((b.stop + o) * u)) for b, o, u in zip(box, lo, up))
        image = window.image[(slice(None), slice(None), *full)]
        fine = net.refine(image, coarse[(slice(None), slice(None), *box)], maps[(slice(None), slice(None), *box)])
        mask[full] = (fine[0, 0] > 0).cpu().numpy()
        _clear_around(mask, prompts.points[~prompts.include])
        return _keep_prompted_components(mask, prompts)

    def _to_input_grid(self, mask: np.ndarray) -> Volume:
        """The window's mask as a 0/1 label map on the input's grid (only its box is resampled)."""
        out = np.zeros(self.volume.shape, dtype=np.uint8)
        if not mask.any():
            return self.volume.with_array(out, kind="label")
        where = np.nonzero(mask)
        lo = np.array([w.min() for w in where]) + np.array(self.window.start)
        hi = np.array([w.max() for w in where]) + np.array(self.window.start) + 1
        grid_box = tuple(slice(int(a), int(min(b, n))) for a, b, n in zip(lo, hi, self.grid_shape))
        on_grid = np.zeros(self.grid_shape, dtype=np.uint8)
        window_box = tuple(slice(a, min(a + s, n)) for a, s, n in zip(self.window.start, self.window.size, self.grid_shape))
        on_grid[window_box] = mask[tuple(slice(0, b.stop - b.start) for b in window_box)]
        sub_grid = self.grid.crop(tuple(reversed_kji(grid_box)))
        input_box = _input_box(self.volume, sub_grid)
        if input_box is None:
            return self.volume.with_array(out, kind="label")
        target = self.volume.crop(input_box)
        part = sub_grid.with_array(kji(on_grid[grid_box]))
        out[input_box] = resample_onto(part, target, label=True).array.astype(np.uint8)
        return self.volume.with_array(out, kind="label")


def reversed_kji(box_zxy: tuple[slice, ...]) -> tuple[slice, ...]:
    """A (Z, X, Y) box of the encoder grid as the (k, j, i) box of its volume (Z=k, X=i, Y=j)."""
    z, x, y = box_zxy
    return z, y, x


def _input_box(volume: Volume, part: Volume) -> tuple[slice, ...] | None:
    """The (k, j, i) box of ``volume`` covering ``part``'s physical extent (one voxel of margin)."""
    shape = np.array(part.shape[::-1], dtype=np.float64)
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)])
    ijk = volume.ras_to_index(part.index_to_ras(corners))
    lo = np.maximum(np.floor(ijk.min(0)) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(0)) + 2, np.array(volume.shape[::-1])).astype(int)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1]))


def _region(prompts: Prompts, prior: np.ndarray | None, up: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's first region (6 mm voxels): prompts and current mask plus :data:`MARGIN`."""
    lo, hi = prompts.extent()
    if prior is not None and prior.any():
        where = np.nonzero(prior)
        lo = np.minimum(lo, [w.min() for w in where])
        hi = np.maximum(hi, [w.max() for w in where])
    lo = np.floor(lo / up).astype(int) - MARGIN
    hi = np.floor(hi / up).astype(int) + 1 + MARGIN
    return _fitted(lo, hi, shape)


def _fitted(lo: np.ndarray, hi: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` widened to at least MIN_REGION, to a multiple of the U-Net's 4, inside ``shape``."""
    from ..models.interactive_segmenter import DEPTH

    multiple = 2**DEPTH
    size = np.maximum(hi - lo, MIN_REGION)
    size = np.minimum(-(-size // multiple) * multiple, shape)
    centre = (lo + hi) // 2
    lo = np.clip(centre - size // 2, 0, shape - size)
    return lo, lo + size


def _touching_faces(mask: torch.Tensor, lo: np.ndarray, hi: np.ndarray, shape: np.ndarray) -> list[tuple[int, int]]:
    """(axis, side) of every region face the mask touches that is not the window's own face."""
    faces = []
    for axis in range(3):
        for side, index in ((0, 0), (1, -1)):
            at_edge = lo[axis] == 0 if side == 0 else hi[axis] == shape[axis]
            if not at_edge and bool(mask.select(axis, index).any()):
                faces.append((axis, side))
    return faces


def _grown(lo: np.ndarray, hi: np.ndarray, faces: list[tuple[int, int]], shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = lo.copy(), hi.copy()
    for axis, side in faces:
        if side == 0:
            lo[axis] = max(0, lo[axis] - MARGIN)
        else:
            hi[axis] = min(shape[axis], hi[axis] + MARGIN)
    return _fitted(lo, hi, shape)


def _probable_box(prob: torch.Tensor, margin: int = 1) -> tuple[slice, ...] | None:
    """Box (6 mm voxels, with margin) of where the coarse probability exceeds 0.2."""
    where = torch.nonzero(prob > 0.2)
    if not len(where):
        return None
    lo = (where.min(0).values - margin).clamp_min(0).tolist()
    hi = [min(int(h) + 1 + margin, n) for h, n in zip(where.max(0).values.tolist(), prob.shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _clear_around(mask: np.ndarray, points: np.ndarray, radius_mm: float = EXCLUDE_MM) -> None:
    """An exclude point is a hard constraint: nothing within ``radius_mm`` of it stays in the mask
    (the model learns to remove the whole leak; this guarantees what the point touches goes)."""
    from ..models.prompt_encoder import VOXEL_MM_ZXY

    mm = np.asarray(VOXEL_MM_ZXY)
    reach = np.ceil(radius_mm / mm).astype(int)
    for point in points:
        centre = np.rint(point).astype(int)
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, mask.shape)
        if np.any(hi <= lo):
            continue
        grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        near = sum(((g - p) * m) ** 2 for g, p, m in zip(grid, point, mm)) <= radius_mm**2
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask[box] &= ~near


def _keep_prompted_components(mask: np.ndarray, prompts: Prompts) -> np.ndarray:
    """Drop pieces that no include prompt touches (a click means "this", not "everything like it");
    with a box alone, the pieces inside the box are kept."""
    if not mask.any():
        return mask
    components, n = ndi.label(mask)
    if n <= 1:
        return mask
    keep: set[int] = set()
    points = np.rint(prompts.points[prompts.include]).astype(int)
    inside = np.all((points >= 0) & (points < np.array(mask.shape)), axis=1) if len(points) else np.zeros(0, bool)
    keep |= {int(components[tuple(p)]) for p in points[inside]} - {0}
    if prompts.box is not None:
        lo = np.clip(np.floor(prompts.box[0]).astype(int), 0, None)
        hi = np.ceil(prompts.box[1]).astype(int) + 1
        keep |= set(np.unique(components[tuple(slice(a, b) for a, b in zip(lo, hi))]).tolist()) - {0}
    if not keep:  # include prompts all fell just outside the mask: keep the largest piece
        keep = {int(np.argmax(np.bincount(components.ravel())[1:])) + 1}
    return np.isin(components, sorted(keep))


def _check_inside(volume: Volume, ras: np.ndarray) -> None:
    from .click import _validated_points

    _validated_points(volume, ras, "prompt")


def click(
    volume: Volume, points: Sequence[Sequence] = (), *, box: Sequence[Sequence[float]] | None = None,
    scribbles: Sequence[tuple[Sequence[Sequence[float]], bool]] = (), previous: Volume | np.ndarray | None = None,
    model: str = "default", device: str = "auto",
    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> Volume:
    """Segment the structure the prompts point at; a 0/1 label map on ``volume``'s grid.

    ``points``: ``(R, A, S)`` (include) or ``(R, A, S, include)`` in RAS mm; ``box``: two opposite
    RAS corners; ``scribbles``: ``(polyline, include)`` pairs; ``previous``: the current mask to
    refine. ``model``: ``"default"`` (the learned interactive model on a CT, the intensity engine on
    an MRI), a model name, or ``"intensity"`` (the classical engine, points only).
    """
    coords, include = _split_points(points)
    interaction = Interaction(coords, include, box, [s[0] for s in scribbles], [bool(s[1]) for s in scribbles])
    return open_session(volume, model, device).segment(interaction, previous, progress=progress, cancel=cancel)


def open_session(volume: Volume, model: str = "default", device: str | torch.device = "auto") -> InteractiveSession | IntensitySession:
    """The session for ``model`` on ``volume``: ``default`` is the learned model on a CT and the
    intensity engine on any other modality (:data:`LEARNED_MODALITIES`); a name picks either."""
    if model == "default":
        model = DEFAULT_MODEL if detect_modality(volume) in LEARNED_MODALITIES else "intensity"
    if is_intensity_engine(model):
        return IntensitySession(volume, model, device)
    return InteractiveSession(volume, model, device)


def is_intensity_engine(model: str) -> bool:
    """``intensity`` / ``none`` (intensity alone) or a pretrained 3D encoder's name: the classical engine."""
    return model in ("intensity", "none") or (model != "default" and _is_encoder_model(model))


class IntensitySession:
    """The classical intensity engine (:mod:`.click`) behind the session interface: include and
    exclude points only, nothing cached between interactions. Kept as the baseline of issue 14."""

    def __init__(self, volume: Volume, model: str = "intensity", device: str | torch.device = "auto"):
        self.volume = volume
        self.encoder = None if model in ("intensity", "none") else model
        self.device = str(device)

    def segment(
        self, interaction: Interaction, previous: Volume | np.ndarray | str | None = None, *,
        progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
    ) -> Volume:
        from .click import click as intensity_click

        if interaction.box is not None or interaction.strokes or (previous is not None and previous != "last"):
            raise InputError(
                "the intensity engine (the default for an MRI) takes include/exclude points only; for boxes, strokes and "
                f"a current mask choose the learned model (--model {DEFAULT_MODEL}, trained on CT)")
        positives = [p for p, i in zip(interaction.points, interaction.include) if i]
        negatives = [p for p, i in zip(interaction.points, interaction.include) if not i]
        return intensity_click(self.volume, positives, negatives, model=self.encoder, device=self.device, progress=progress, cancel=cancel)


def _split_points(points: Sequence[Sequence]) -> tuple[list[tuple[float, float, float]], list[bool]]:
    coords, include = [], []
    for p in points:
        if len(p) not in (3, 4):
            raise InputError(f"point {tuple(p)!r}: expected (R, A, S) or (R, A, S, include)")
        coords.append(tuple(float(v) for v in p[:3]))
        include.append(bool(p[3]) if len(p) == 4 else True)
    return coords, include


def _is_encoder_model(model: str) -> bool:
    from ..registry import read_card

    try:
        return read_card(model).kind == "encoder3d"
    except Exception:  # noqa: BLE001 - an unknown name is reported by the learned path's loader
        return False
