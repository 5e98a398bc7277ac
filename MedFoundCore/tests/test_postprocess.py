"""Island removal for one-piece organs (``inference/postprocess.py``)."""

from __future__ import annotations

import numpy as np

from medfoundcore.inference.postprocess import MIN_ISLAND_FRACTION, drop_vetoed_pieces, remove_islands
from medfoundcore.vocabulary import load_vocabulary


def _structures(*keys: str):
    vocab = load_vocabulary()
    return [vocab.get(k) for k in keys]


def test_small_islands_of_a_one_piece_organ_are_removed_and_nothing_else():
    labels = np.zeros((30, 40, 40), np.uint8)
    labels[5:20, 5:25, 5:25] = 1  # liver: 6 000 voxels
    labels[25:27, 30:35, 30:35] = 1  # a 50-voxel "liver" far away: below 10 %
    labels[10:12, 30:38, 30:38] = 2  # vertebrae: many pieces are normal
    labels[20:21, 30:32, 30:32] = 2
    before = labels.copy()
    remove_islands(labels, _structures("liver", "vertebrae"))
    assert (labels[25:27, 30:35, 30:35] == 0).all()
    assert np.array_equal(labels[:25], before[:25])  # the main body and the vertebrae are untouched


def test_pieces_of_comparable_size_are_kept():
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[5:15, 5:15, 5:15] = 1  # right kidney
    labels[5:15, 25:33, 25:33] = 1  # left kidney, 64 % of the right one
    labels[5:6, 36:38, 36:38] = 1  # 4 voxels: an island
    remove_islands(labels, _structures("kidney"))
    assert (labels == 1).sum() == 1000 + 640


def test_diagonal_neighbours_are_one_piece():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[6, 6, 6] = 1  # touches the cube at a corner only (26-connectivity)
    labels[9, 0, 0] = 1  # touches nothing
    remove_islands(labels, _structures("spleen"), min_fraction=MIN_ISLAND_FRACTION)
    assert labels[6, 6, 6] == 1 and labels[9, 0, 0] == 0


def test_labels_of_other_prompts_and_empty_prompts_are_left_alone():
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[0, 0, 0] = 2  # a one-voxel spleen and nothing for the liver
    remove_islands(labels, _structures("liver", "spleen"))
    assert labels[0, 0, 0] == 2  # a single piece is the main body, however small


def test_a_piece_goes_only_when_most_of_its_slices_are_vetoed():
    labels = np.zeros((16, 20, 20), np.uint8)
    labels[0:10, 2:8, 2:8] = 1  # a hippocampus vetoed on 2 of its 10 slices: it stays whole
    labels[12:15, 2:8, 2:8] = 1  # a separate piece vetoed on 2 of its 3 slices: it goes
    labels[0:16, 12:18, 12:18] = 2  # another prompt, never vetoed
    vetoed = np.zeros((16, 2), bool)
    vetoed[[2, 3, 12, 13], 0] = True
    before = labels.copy()
    dropped = drop_vetoed_pieces(labels, vetoed)
    assert (labels[12:15] != 1).all() and np.array_equal(labels[:12], before[:12])
    assert np.flatnonzero(dropped[:, 0]).tolist() == [12, 13, 14] and not dropped[:, 1].any()
    assert (labels == 2).sum() == (before == 2).sum()


def test_pieces_are_found_on_pooled_blocks_of_large_slices():
    """A 512² slice is examined on 4 × 4 blocks: pieces one block apart merge, pieces further apart do
    not, and removal is exact to the voxel."""
    labels = np.zeros((6, 512, 512), np.uint8)
    labels[1:5, 100:300, 100:300] = 1  # the liver
    labels[1:5, 301:303, 301:303] = 1  # 1 voxel gap: within one block of the body, kept
    labels[1:3, 450:452, 450:454] = 1  # far away and tiny: removed
    labels[1:3, 450:452, 454:456] = 2  # another label in the same block as the island: untouched
    remove_islands(labels, _structures("liver", "spleen"))
    assert (labels[1:5, 301:303, 301:303] == 1).all()
    assert (labels[1:3, 450:452, 450:454] == 0).all() and (labels[1:3, 450:452, 454:456] == 2).all()
    assert (labels == 1).sum() == 4 * 200 * 200 + 4 * 4


def test_an_organ_on_one_inner_slice_goes_only_when_slices_are_thin_enough():
    """Two 6.5 mm spacings (13 mm) are shorter than any one-piece organ: a liver on one slice, with both
    neighbours empty, is a hallucination. At the volume's edge the organ may continue outside; with 10 mm
    slices, or when the spacing is not given (not axial), nothing is decided."""
    labels = np.zeros((25, 30, 30), np.uint8)
    labels[5, 5:25, 5:25] = 1  # "liver" on one inner slice
    labels[0, 2:8, 2:8] = 2  # a spleen on the first slice only: may continue below the scan
    labels[10:12, 10:20, 10:20] = 2  # and a two-slice spleen piece: thin, but not one slice
    labels[20, 5:25, 5:25] = 3  # vertebrae: may be thin, not a one-piece organ
    structures = _structures("liver", "spleen", "vertebrae")
    for spacing in (None, 10.0):
        kept = labels.copy()
        remove_islands(kept, structures, axial_spacing_mm=spacing)
        assert np.array_equal(kept, labels)
    remove_islands(labels, structures, axial_spacing_mm=6.5)
    assert not (labels == 1).any()
    assert (labels == 2).sum() == 36 + 200 and (labels == 3).sum() == 400


def test_an_organ_seen_on_several_separate_slices_stays():
    """A weak model's ISD may skip slices of a true organ: one-slice pieces on different slices are
    evidence from several slices, and the larger of them stays."""
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[8, 0:30, 0:30] = 1
    labels[11, 0:30, 0:30] = 1
    remove_islands(labels, _structures("liver"), axial_spacing_mm=3.0)
    assert (labels == 1).sum() == 2 * 900
