"""The one volume type (:class:`Volume`) and its readers/writers.

Geometry follows ITK: the array is indexed ``[k, j, i]`` (slices, rows, columns) exactly as
SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` return it; ``spacing`` is given in
``(i, j, k)`` order; ``origin``/``direction`` are in LPS millimetres. ``affine_ras`` is the 4x4 IJK→RAS
matrix that Slicer calls IJKToRAS and nibabel calls ``img.affine``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


@dataclass
class Volume:
    """A 3D image or label map with its physical geometry; the only volume type in MedFound."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InputError(f"a Volume needs a 3D array, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if min(self.spacing) <= 0:
            raise InputError(f"voxel spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(K, J, I)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping ``(i, j, k, 1)`` to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping ``(i, j, k, 1)`` to RAS millimetres (Slicer's IJKToRAS)."""
        affine = self.affine_lps
        affine[:3, :] = LPS_TO_RAS @ affine[:3, :]
        return affine

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """A new volume on the same grid (same geometry) holding ``array``."""
        if tuple(array.shape) != self.shape:
            raise InputError(f"array shape {array.shape} does not match the volume grid {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), {**self.meta, **meta})

    def crop(self, box: tuple[slice, slice, slice]) -> Volume:
        """The sub-volume ``array[box]`` (``(k, j, i)`` slices with steps of 1) with its own geometry: the
        same spacing and direction, the origin moved to the box's first voxel. The array is a view."""
        corner = np.array([box[2].start or 0, box[1].start or 0, box[0].start or 0], dtype=np.float64)
        origin = self.affine_lps[:3, :3] @ corner + self.affine_lps[:3, 3]
        return Volume(self.array[box], self.spacing, tuple(origin), self.direction.copy(), dict(self.meta))

    def index_to_ras(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous ``(N, 3)`` voxel indices ``(i, j, k)`` → ``(N, 3)`` RAS millimetres."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.affine_ras[:3, :3].T + self.affine_ras[:3, 3]

    def ras_to_index(self, ras: np.ndarray) -> np.ndarray:
        """``(N, 3)`` RAS millimetres → continuous ``(N, 3)`` voxel indices ``(i, j, k)``."""
        ras = np.atleast_2d(np.asarray(ras, dtype=np.float64))
        inverse = np.linalg.inv(self.affine_ras)
        return ras @ inverse[:3, :3].T + inverse[:3, 3]

    def contains_index(self, ijk: np.ndarray) -> np.ndarray:
        """Whether each ``(i, j, k)`` row lies inside the voxel grid (rounded to the nearest voxel)."""
        rounded = np.rint(np.atleast_2d(ijk))
        upper = np.array(self.shape[::-1]) - 1
        return np.all((rounded >= 0) & (rounded <= upper), axis=1)

    def to_sitk(self) -> sitk.Image:
        """The SimpleITK image with the same voxels and geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: dict[str, Any] | None = None) -> Volume:
        """A volume from a 3D scalar SimpleITK image."""
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            np.array(image.GetDirection()).reshape(3, 3),
            dict(meta or {}),
        )

    @classmethod
    def from_affine_ras(cls, array: np.ndarray, affine_ras: np.ndarray, meta: dict[str, Any] | None = None) -> Volume:
        """A volume from a ``(K, J, I)`` array and an IJK→RAS matrix (Slicer's IJKToRAS, nibabel's affine)."""
        affine_ras = np.asarray(affine_ras, dtype=np.float64)
        linear = LPS_TO_RAS @ affine_ras[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise InputError("the IJK-to-RAS matrix is singular (a zero-length voxel axis)")
        return cls(array, tuple(spacing), tuple(LPS_TO_RAS @ affine_ras[:3, 3]), linear / spacing, dict(meta or {}))


# ----------------------------------------------------------------------------------------- reading


def load_volume(path: str | os.PathLike[str], *, label: bool = False, series: str | None = None) -> Volume:
    """Read a NIfTI, NRRD, MHA/MHD file or a DICOM series folder into a :class:`Volume`.

    A DICOM folder must hold one series, or ``series`` (SeriesInstanceUID or 1-based index in the
    listing of the error) picks one; a ``.dcm`` file reads its own series. Unevenly spaced slices are
    resampled to their true positions, with a warning in ``meta["warnings"]``.

    With ``label=True`` the voxels must be integers (an integer-valued float map is converted); any
    problem (missing, unreadable, not 3D, NaN/Inf, empty axis) raises :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        image, meta = _read_dicom_series(path, series)
    elif path.suffix.lower() == ".dcm":
        image, meta = _read_dicom_series(path.parent, series if series is not None else _series_of_file(path))
    else:
        image, meta = _read_file(path)
    meta["source"] = str(path)
    _check_geometry(path, image)
    volume = Volume.from_sitk(image, meta)
    if label:
        volume.array = _as_label_array(path, volume.array)
    else:
        _check_finite(path, volume.array)
    return volume


def _series_of_file(path: Path) -> str | None:
    """The SeriesInstanceUID GDCM groups ``path`` under (None: it is in no series of its folder)."""
    target = path.resolve()
    for s in dicom_series(path.parent):
        if any(Path(f).resolve() == target for f in s.files):
            return s.uid
    return None


def _read_file(path: Path) -> tuple[sitk.Image, dict[str, Any]]:
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)")
    if path.name.lower().endswith(".gz"):
        _check_gzip_complete(path)
    if _suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_dimensions(path, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents())
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as a medical image ({_sitk_reason(error)}); supported: {', '.join(READ_SUFFIXES)} or a DICOM folder") from None
    meta: dict[str, Any] = {}
    if reader.HasMetaDataKey("0008|0060"):
        meta["modality"] = reader.GetMetaData("0008|0060").strip()
    return image, meta


def _check_nifti_header(path: Path) -> None:
    """ITK reads a NIfTI axis of length 0 as length 1; the header tells the truth."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = image.shape
    except Exception as error:  # nibabel raises many types for broken headers
        raise InputError(f"{path}: cannot be read as NIfTI ({str(error).splitlines()[0][:200]})") from None
    if 0 in shape:
        raise InputError(f"{path}: has a zero-length axis (size {'x'.join(map(str, shape))})")
    if np.issubdtype(image.get_data_dtype(), np.floating):
        # ITK's NIfTI reader turns NaN/Inf into 0 silently; check the stored values themselves.
        _check_finite(path, np.asarray(image.dataobj))


def _check_gzip_complete(path: Path, chunk: int = 1 << 22) -> None:
    """Stream through a gzip file: ITK silently zero-fills a truncated one, so check the stream ends and its CRC."""
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                decompressor.decompress(block, 0)
                while decompressor.unused_data and decompressor.eof:  # concatenated gzip members
                    rest = decompressor.unused_data
                    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    decompressor.decompress(rest, 0)
    except zlib.error as error:
        raise InputError(f"{path}: cannot be read: corrupt gzip data ({error})") from None
    if not decompressor.eof:
        raise InputError(f"{path}: cannot be read: the file is truncated (incomplete gzip stream)")


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder, as listed when the folder holds several."""

    uid: str
    description: str
    files: tuple[str, ...]
    orientation: str

    def describe(self, index: int) -> str:
        return f"[{index}] {self.uid or '(no SeriesInstanceUID)'} '{self.description}' {len(self.files)} slices {self.orientation}"


def dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """Every DICOM series in ``folder`` (GDCM's grouping by SeriesInstanceUID), largest first."""
    folder = Path(folder)
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise InputError(f"{folder}: cannot scan for DICOM files ({_sitk_reason(error)})") from None
    found = []
    for uid in ids:
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        tags = _dicom_tags(files[0], ("0008|103e", "0020|0037"))
        found.append(DicomSeries(uid, tags.get("0008|103e", "").strip(), files, _orientation_name(tags.get("0020|0037", ""))))
    return sorted(found, key=lambda s: -len(s.files))


def _dicom_tags(name: str, keys: tuple[str, ...]) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {k: reader.GetMetaData(k) for k in keys if reader.HasMetaDataKey(k)}


def _orientation_name(cosines: str) -> str:
    """'axial' / 'coronal' / 'sagittal' / 'oblique' from Image Orientation (Patient)."""
    try:
        values = np.array([float(v) for v in cosines.split("\\")])
        normal = np.abs(np.cross(values[:3], values[3:]))
    except (ValueError, IndexError):
        return "orientation unknown"
    if normal.max() < 0.99:
        return "oblique"
    return ("sagittal", "coronal", "axial")[int(normal.argmax())]


def _choose_series(folder: Path, series: list[DicomSeries], wanted: str | None) -> tuple[DicomSeries, list[str]]:
    """The one series to read: the only one, or the one ``wanted`` names (UID or 1-based index)."""
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    listing = "; ".join(s.describe(i + 1) for i, s in enumerate(series))
    if wanted is None:
        if len(series) == 1:
            return series[0], []
        raise InputError(f"{folder}: holds {len(series)} DICOM series; pick one with --series UID or --series INDEX: {listing}")
    for i, s in enumerate(series):
        if wanted in (s.uid, str(i + 1)):
            others = [f"{folder} holds {len(series)} DICOM series; read {s.describe(i + 1)} as asked"] if len(series) > 1 else []
            return s, others
    raise InputError(f"{folder}: no DICOM series {wanted!r}; the folder holds: {listing}")


def _read_dicom_series(folder: Path, wanted: str | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    """Read one DICOM series of ``folder`` onto a uniform grid at the slices' true positions."""
    chosen, warnings = _choose_series(folder, dicom_series(folder), wanted)
    files, positions = _slice_positions(folder, list(chosen.files))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: the DICOM series cannot be read ({_sitk_reason(error)})") from None
    _check_dimensions(folder, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel())
    image, gap_warning = _uniform_slices(folder, image, positions)
    meta: dict[str, Any] = {
        "dicom_files": len(files),
        "dicom_series": {"uid": chosen.uid, "description": chosen.description, "slices": len(files), "orientation": chosen.orientation},
        "warnings": warnings + ([gap_warning] if gap_warning else []),
    }
    if reader.HasMetaDataKey(0, "0008|0060"):
        meta["modality"] = reader.GetMetaData(0, "0008|0060").strip()
    return image, meta


def _slice_positions(folder: Path, files: list[str]) -> tuple[list[str], np.ndarray]:
    """Files ordered along the slice normal (GDCM's order, checked) and their positions (mm) there,
    from Image Position (Patient): the only trustworthy source of the slice spacing."""
    positions = []
    for name in files:
        tags = _dicom_tags(name, ("0020|0032", "0020|0037"))
        try:
            position = np.array([float(v) for v in tags["0020|0032"].split("\\")])
            cosines = np.array([float(v) for v in tags["0020|0037"].split("\\")])
        except (KeyError, ValueError):
            raise InputError(f"{name}: DICOM slice without a readable Image Position/Orientation (Patient)") from None
        positions.append(float(position @ np.cross(cosines[:3], cosines[3:])))
    order = np.argsort(positions, kind="stable")
    positions = np.asarray(positions)[order]
    if len(positions) > 1 and np.min(np.diff(positions)) < 1e-4:
        raise InputError(f"{folder}: several DICOM slices share one position; the folder mixes series or time points")
    return [files[i] for i in order], positions


def _uniform_slices(folder: Path, image: sitk.Image, positions: np.ndarray, tolerance: float = 0.05) -> tuple[sitk.Image, str | None]:
    """ITK stacks slices as if evenly spaced; where they are not (missing slices, mixed spacing) the
    stack is resampled by linear interpolation onto a uniform grid at the smallest step, so every
    voxel sits at its true position. Returns the image and a warning (None when already uniform)."""
    if len(positions) < 3:
        return image, None
    steps = np.diff(positions)
    step = float(steps.min())
    if np.all(np.abs(steps - step) <= tolerance * step):
        return image, None
    count = int(round((positions[-1] - positions[0]) / step)) + 1
    if count > 4 * len(positions):
        raise InputError(f"{folder}: DICOM slice positions are too irregular to resample ({len(positions)} slices, steps {steps.min():.3g}-{steps.max():.3g} mm)")
    source = sitk.GetArrayFromImage(image).astype(np.float32)
    target = positions[0] + step * np.arange(count)
    lower = np.clip(np.searchsorted(positions, target, side="right") - 1, 0, len(positions) - 2)
    weight = ((target - positions[lower]) / (positions[lower + 1] - positions[lower])).astype(np.float32)[:, None, None]
    out = sitk.GetImageFromArray((1 - weight) * source[lower] + weight * source[lower + 1])
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    out.SetSpacing((*image.GetSpacing()[:2], step))
    gaps = [f"{positions[i]:.1f}-{positions[i + 1]:.1f} mm" for i in np.flatnonzero(steps > (1 + tolerance) * step)]
    warning = (
        f"{folder}: DICOM slices are not evenly spaced (steps {steps.min():.3g}-{steps.max():.3g} mm; gaps at {', '.join(gaps[:5])}"
        f"{' ...' if len(gaps) > 5 else ''}): resampled to {count} slices {step:.3g} mm apart, "
        f"{count - len(positions)} of them interpolated from their neighbours"
    )
    return out, warning


def _check_dimensions(path: Path, dimension: int, size: tuple[int, ...], components: int) -> None:
    if dimension == 2 or (dimension == 3 and size[2] == 1 and path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")):
        raise InputError(f"{path}: is a 2D image ({'x'.join(map(str, size[:2]))}); MedFound needs a 3D volume")
    if dimension == 4:
        if size[3] == 1:
            return
        raise InputError(f"{path}: is a 4D image ({'x'.join(map(str, size))}: {size[3]} volumes); extract one 3D volume first")
    if dimension != 3:
        raise InputError(f"{path}: has {dimension} dimensions; MedFound needs a 3D volume")
    if components != 1:
        raise InputError(f"{path}: has {components} values per voxel (colour or vector image); MedFound needs one scalar per voxel")
    if 0 in size:
        raise InputError(f"{path}: has a zero-length axis (size {'x'.join(map(str, size))})")


def _check_geometry(path: Path, image: sitk.Image) -> None:
    if image.GetDimension() == 4:  # a 4D file with a single volume: drop the trivial axis
        raise InputError(f"{path}: is stored as a 4D image; save it as a 3D volume")
    if 0 in image.GetSize():
        raise InputError(f"{path}: has a zero-length axis (size {'x'.join(map(str, image.GetSize()))})")
    if min(image.GetSpacing()) <= 0:
        raise InputError(f"{path}: has non-positive voxel spacing {image.GetSpacing()}")


def _check_finite(path: Path, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{path}: contains {bad} NaN/Inf voxels; replace them (e.g. with the background value) before segmenting")


def _as_label_array(path: Path, array: np.ndarray) -> np.ndarray:
    """Integer label array, refusing float maps with fractional or non-finite values."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(f"{path}: label map contains NaN/Inf values")
        if not np.all(array == np.round(array)):
            raise InputError(f"{path}: is a float image with fractional values, not a label map (expected integer labels)")
    if array.size and array.min() < 0:
        raise InputError(f"{path}: label map has negative labels (min {array.min()})")
    top = int(array.max()) if array.size else 0
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    return array.astype(dtype, copy=False)


LABEL_MAP_MAX_VALUES = 128  # label maps seen: <= 117 values; real images: >= 225 (8-bit MRI) and thousands (CT)


def label_map_reason(volume: Volume) -> str | None:
    """Why ``volume`` looks like a label map rather than an image (None: it looks like an image):
    integer values only, few of them, and neighbouring voxels of a structure mostly equal."""
    array = volume.array
    sample = array.ravel()[:: max(1, array.size // 200_000)]
    if np.unique(sample).size > LABEL_MAP_MAX_VALUES:
        return None
    values = np.unique(array)
    if values.size > LABEL_MAP_MAX_VALUES or not np.all(values == np.round(values)):
        return None
    both = (array[..., 1:] != 0) & (array[..., :-1] != 0)
    if both.sum() and np.count_nonzero((array[..., 1:] == array[..., :-1]) & both) < 0.8 * both.sum():
        return None
    return f"it holds only {values.size} integer values ({', '.join(f'{v:g}' for v in values[:8])}{' ...' if values.size > 8 else ''}) in uniform patches"


def refuse_label_map(volume: Volume, force: bool = False) -> None:
    """Segmenting a label map gives confident nonsense ("liver 48.2 ml"): refuse it unless forced."""
    reason = None if force else label_map_reason(volume)
    if reason:
        source = volume.meta.get("source", "the image")
        raise InputError(f"{source}: looks like a label map, not an image ({reason}); give the CT/MRI image itself, or pass --force (force=True) if it really is one")


def _sitk_reason(error: Exception) -> str:
    """The most telling line of a (long, multi-line) ITK exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "description" in line.lower() or "unable" in line.lower() or "error" in line.lower():
            return line.split(":", 1)[-1].strip()[:200]
    return (lines[-1] if lines else type(error).__name__)[:200]


# ----------------------------------------------------------------------------------------- writing


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); move it onto ``path`` only on success.
    With ``overwrite=False`` an existing ``path`` is never replaced, even one created meanwhile."""
    with atomic_outputs([path], overwrite=overwrite) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(paths: list[str | os.PathLike[str]], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """Temporary paths for several outputs, published together when the block succeeds: if any cannot
    be published, those already published are removed again, so either all appear or none. Without
    ``overwrite`` the final step is a hard link (``os.link`` fails on an existing name), so a file
    another process wrote meanwhile is never silently replaced."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    published: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{_suffix(path)}", dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for tmp, path in zip(temps, targets):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the user expects their umask
            _publish(tmp, path, overwrite)
            published.append(path)
    except BaseException:
        for path in published:
            path.unlink(missing_ok=True)
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move ``tmp`` onto ``path``; without ``overwrite`` fail if ``path`` exists at that very moment."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise InputError(f"{path}: was created by another process while this one ran; not replaced (pass --overwrite to replace it)") from None
    except OSError:  # no hard links on this file system: claim the name exclusively, then fill it
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise InputError(f"{path}: was created by another process while this one ran; not replaced (pass --overwrite to replace it)") from None
        os.replace(tmp, path)


def check_writable(path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Fail now, before a long computation, if ``path`` cannot be written (or exists without ``overwrite``)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; choose another path or pass --overwrite")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{path}: cannot be written: {folder} is a file, not a folder")
    if not path.parent.exists():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{path}: cannot be written: no permission to create folders in {folder}")
        return
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        raise InputError(f"{path}: cannot be written ({error.strerror or error})") from None
    os.close(fd)
    os.unlink(name)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def save_volume(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True, overwrite: bool = True) -> Path:
    """Write ``volume`` as NIfTI/NRRD/MHA with its geometry; the file appears only once complete."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        write_volume(volume, tmp, path, compress=compress)
    return path


def write_volume(volume: Volume, tmp: Path, path: Path, *, compress: bool = True) -> None:
    """Write ``volume`` to ``tmp`` in the format of ``path`` (the name errors report)."""
    if _suffix(path) not in WRITE_SUFFIXES:
        raise InputError(f"{path}: cannot write this format; use one of {', '.join(WRITE_SUFFIXES)}")
    try:
        sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=compress)
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be written ({_sitk_reason(error)})") from None
