"""The boundary between MRML nodes and ``medfoundcore.io.Volume`` — the only place that converts.

Everything here uses MRML/VTK classes directly (no ``slicer.util``, no ``slicer.app``) so it runs
unchanged inside Slicer and on PyPI ``slicer-core`` in CI, and it never adds temporary nodes to the
scene: a failed conversion leaves the scene as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

if TYPE_CHECKING:
    from medfoundcore.io import Volume


@dataclass(frozen=True)
class SegmentSpec:
    """How one label value of a label map becomes a segment: name, colour (RGB 0-1), terminology."""

    label: int
    name: str
    color: tuple[float, float, float]
    terminology: str = ""


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_world(volume_node) -> np.ndarray:
    """IJK→world RAS of a volume node, including a linear parent transform (non-linear is refused)."""
    from medfoundcore.errors import InputError

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    affine = _matrix_to_numpy(ijk_to_ras)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(
                f"volume '{volume_node.GetName()}' is under a non-linear transform; harden the transform first"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        affine = _matrix_to_numpy(to_world) @ affine
    return affine


def array_from_volume_node(volume_node) -> np.ndarray:
    """A ``(K, J, I)`` copy of the voxels of a scalar volume node (same layout as arrayFromVolume)."""
    from medfoundcore.errors import InputError

    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        name = volume_node.GetName() if volume_node is not None else "(none)"
        raise InputError(f"volume '{name}' has no voxel data; load or select an image volume")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume '{volume_node.GetName()}' is not a scalar volume (it has colour components)")
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(dims[::-1]).copy()


def volume_from_node(volume_node) -> Volume:
    """The node's voxels and world geometry as a :class:`medfoundcore.io.Volume`."""
    from medfoundcore.io import Volume

    array = array_from_volume_node(volume_node)
    meta = {"source": f"slicer:{volume_node.GetName()}"}
    modality = volume_node.GetAttribute("DICOM.Modality")
    if modality:
        meta["modality"] = modality
    return Volume.from_affine_ras(array, ijk_to_world(volume_node), meta)


def oriented_image_from_mask(mask: np.ndarray, affine_ras: np.ndarray):
    """A ``vtkOrientedImageData`` (uint8, 0/1) holding ``mask`` (K, J, I) on the given IJK→RAS grid."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.SetImageToWorldMatrix(_numpy_to_matrix(affine_ras))
    scalars = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(mask, dtype=np.uint8).ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR
    )
    image.GetPointData().SetScalars(scalars)
    return image


def create_segmentation_node(scene, reference_volume_node, name: str):
    """A new segmentation node with display nodes, its geometry taken from ``reference_volume_node``."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    return node


def segment_names(segmentation_node) -> list[str]:
    """Names of the segments of a segmentation node, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def unique_segment_name(segmentation_node, name: str) -> str:
    """``name`` or ``name (2)``, ``name (3)`` ... whichever is not used in the node yet."""
    taken = set(segment_names(segmentation_node))
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} ({n})", n + 1
    return candidate


def write_segments(segmentation_node, labels: Volume, specs: list[SegmentSpec], replace: bool) -> list[str]:  # noqa: F821
    """Add one segment per spec from ``labels``; return the segment IDs in spec order.

    A segment whose name already exists is replaced only when ``replace`` is True, otherwise the new
    one gets a unique name: existing user segments are never overwritten silently.
    """
    segmentation = segmentation_node.GetSegmentation()
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if segmentation.GetNumberOfSegments() == 0:
        segmentation.SetSourceRepresentationName(labelmap_name)
    array = np.asarray(labels.array)
    ids = []
    with _batch_modify(segmentation_node):
        for spec in specs:
            name = spec.name
            existing = segmentation.GetSegmentIdBySegmentName(name)
            if existing and replace:
                segmentation.RemoveSegment(existing)
            elif existing:
                name = unique_segment_name(segmentation_node, name)
            segment = slicer.vtkSegment()
            segment.SetName(name)
            segment.SetColor(*spec.color)
            if spec.terminology:
                segment.SetTerminology(spec.terminology)
            segment.AddRepresentation(labelmap_name, oriented_image_from_mask(array == spec.label, labels.affine_ras))
            if not segmentation.AddSegment(segment, existing if (existing and replace) else ""):
                raise RuntimeError(f"could not add segment '{name}' to '{segmentation_node.GetName()}'")
            ids.append(segmentation.GetSegmentIdBySegment(segment))
    return ids


class _batch_modify:
    """Group segment additions into one Modified event (fewer GUI refreshes)."""

    def __init__(self, node) -> None:
        self._node = node

    def __enter__(self):
        self._was = self._node.StartModify()

    def __exit__(self, *exc) -> None:
        self._node.EndModify(self._was)


def segment_mask(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """The segment as a (K, J, I) bool array on the grid of ``reference_volume_node``."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    labelmap = slicer.vtkOrientedImageData()
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap):
        from medfoundcore.errors import InputError

        raise InputError(f"segment '{segment_id}' of '{segmentation_node.GetName()}' has no binary labelmap")
    reference = logic.CreateOrientedImageDataFromVolumeNode(reference_volume_node)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, True
    )
    dims = resampled.GetDimensions()
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(dims[::-1])
    label_value = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return values == label_value


def set_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, affine_ras: np.ndarray) -> None:
    """Replace the content of one existing segment by ``mask`` (K, J, I, on the IJK→RAS grid ``affine_ras``).

    Its name, colour, ID and place in the list stay; other segments are untouched. Only the box around
    the mask's voxels is handed to Slicer (``SetBinaryLabelmapToSegment`` in replace mode), so a small
    structure in a large CT costs little; an empty mask empties the segment.
    """
    mask = np.asarray(mask)
    where = np.nonzero(mask)
    if len(where[0]):
        lo = [int(w.min()) for w in where]
        hi = [int(w.max()) + 1 for w in where]
    else:
        lo, hi = [0, 0, 0], [1, 1, 1]
    crop = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] > 0
    image = oriented_image_from_mask(crop, affine_ras)
    image.SetExtent(lo[2], hi[2] - 1, lo[1], hi[1] - 1, lo[0], hi[0] - 1)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(f"could not write segment '{segment_id}' of '{segmentation_node.GetName()}'")


def labels_from_segmentation(segmentation_node, segment_ids: list[str], reference_volume_node) -> np.ndarray:
    """A (K, J, I) uint16 label map on the reference grid: segment ``segment_ids[n]`` gets label n+1."""
    shape = array_from_volume_node(reference_volume_node).shape
    labels = np.zeros(shape, dtype=np.uint16)
    for value, segment_id in enumerate(segment_ids, start=1):
        labels[segment_mask(segmentation_node, segment_id, reference_volume_node) & (labels == 0)] = value
    return labels


def points_from_markups(markups_node) -> np.ndarray:
    """World RAS positions (N, 3) of the defined control points of a markups node (empty if None)."""
    if markups_node is None:
        return np.zeros((0, 3))
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        if hasattr(markups_node, "GetNthControlPointPositionStatus") and (
            markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined
        ):
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position)
        points.append(position)
    return np.array(points, dtype=np.float64).reshape(-1, 3)


def volume_node_from_volume(scene, volume: Volume, name: str):  # noqa: F821
    """A new scalar volume node holding ``volume`` (voxels and world geometry): the reverse of volume_from_node."""
    array = np.ascontiguousarray(volume.array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(_numpy_to_matrix(volume.affine_ras))
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    return node


def load_volume_node(scene, path: str, name: str | None = None, label: bool = False):
    """Read an image file into a new volume node through Slicer's own storage node (ITK readers)."""
    from medfoundcore.errors import InputError

    volume_class = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(volume_class, name or "")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"could not read image file '{path}'")
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not name:
        node.SetName(scene.GenerateUniqueName(_stem(path)))
    return node


def _stem(path: str) -> str:
    base = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base
