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


def load_volume(path: str | os.PathLike[str], *, label: bool = False) -> Volume:
    """Read a NIfTI, NRRD, MHA/MHD file or a DICOM series folder into a :class:`Volume`.

    With ``label=True`` the voxels must be integers (an integer-valued float map is converted); any
    problem (missing, unreadable, not 3D, NaN/Inf, empty axis) raises :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        image, meta = _read_dicom_series(path)
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


def _read_file(path: Path) -> tuple[sitk.Image, dict[str, Any]]:
    if path.suffix.lower() == ".dcm":
        return _read_dicom_series(path.parent)
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


def _read_dicom_series(folder: Path) -> tuple[sitk.Image, dict[str, Any]]:
    """Read the largest DICOM series in ``folder``, slices sorted by position along the slice normal."""
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise InputError(f"{folder}: cannot scan for DICOM files ({_sitk_reason(error)})") from None
    if not series_ids:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids]
    files = max(series, key=len)
    files = _sort_by_slice_position(folder, list(files))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: the DICOM series cannot be read ({_sitk_reason(error)})") from None
    meta: dict[str, Any] = {"dicom_files": len(files)}
    if reader.HasMetaDataKey(0, "0008|0060"):
        meta["modality"] = reader.GetMetaData(0, "0008|0060").strip()
    _check_dimensions(folder, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel())
    return image, meta


def _sort_by_slice_position(folder: Path, files: list[str]) -> list[str]:
    """Order DICOM files by Image Position (Patient) projected on the slice normal."""
    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            cosines = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
        except (RuntimeError, ValueError):
            raise InputError(f"{name}: DICOM slice without a readable Image Position/Orientation (Patient)") from None
        normal = np.cross(cosines[:3], cosines[3:])
        positions.append(float(position @ normal))
    if len(set(np.round(positions, 4))) < len(positions):
        raise InputError(f"{folder}: several DICOM slices share one position; the folder mixes series or time points")
    return [name for _, name in sorted(zip(positions, files))]


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
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` only on success."""
    path = Path(path)
    suffix = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the user expects their umask
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def save_volume(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write ``volume`` as NIfTI/NRRD/MHA with its geometry; the file appears only once complete."""
    path = Path(path)
    if _suffix(path) not in WRITE_SUFFIXES:
        raise InputError(f"{path}: cannot write this format; use one of {', '.join(WRITE_SUFFIXES)}")
    image = volume.to_sitk()
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as error:
            raise InputError(f"{path}: cannot be written ({_sitk_reason(error)})") from None
    return path
