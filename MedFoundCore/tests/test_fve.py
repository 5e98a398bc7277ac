"""FVE: the vectorised encoder equals a direct transcription of Algorithm 1, and decoding inverts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfoundcore.errors import InputError
from medfoundcore.fve import (
    context_indices,
    decode_image,
    downsample_half,
    encode_volume,
    fractal_encode,
    pixel_mix,
    slices_per_image,
    slices_per_side,
    stored_level,
)
from medfoundcore.io import load_volume
from medfoundcore.preprocess import normalize_intensity


@pytest.fixture(scope="module")
def real_ct(shared_data: Path) -> np.ndarray:
    """A 20-slice 512×512 abdominal CT window, normalised as the model sees it."""
    volume = load_volume(shared_data / "totalsegmentator/ts_ct_dicom20_img.nii.gz")
    return normalize_intensity(volume.array, "CT")


def algorithm1_reference(volume: np.ndarray, focal: int, k: int) -> np.ndarray:
    """Direct, loop-based transcription of §3.2: per side, slices by distance, edge-repeated, then Algorithm 1."""
    n, last = 3 * k - 2, volume.shape[0] - 1
    lower = [volume[max(focal - d, 0)] for d in range(1, n + 1)]
    higher = [volume[min(focal + d, last)] for d in range(1, n + 1)]
    return np.stack([fractal_encode(lower, k), volume[focal].astype(np.float32), fractal_encode(higher, k)])


def test_slice_counts_follow_the_paper() -> None:
    assert [slices_per_side(k) for k in (1, 2, 3, 4)] == [1, 4, 7, 10]
    assert [slices_per_image(k) for k in (1, 2, 3)] == [3, 9, 15]
    with pytest.raises(InputError):
        slices_per_side(0)


def test_pixel_mix_definition() -> None:
    m = [np.full((2, 3), float(v)) for v in (1, 2, 3, 4)]
    mixed = pixel_mix(*m)
    assert mixed.shape == (4, 6)
    assert (mixed[0::2, 0::2] == 1).all() and (mixed[0::2, 1::2] == 2).all()
    assert (mixed[1::2, 0::2] == 3).all() and (mixed[1::2, 1::2] == 4).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_vectorised_encoding_matches_algorithm1_on_real_ct(real_ct: np.ndarray, k: int) -> None:
    encoded = encode_volume(real_ct, k)
    assert encoded.shape == (real_ct.shape[0], 3, *real_ct.shape[1:]) and encoded.dtype == np.float32
    for focal in range(real_ct.shape[0]):  # every slice, edges included
        np.testing.assert_array_equal(encoded[focal], algorithm1_reference(real_ct, focal, k))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_index_mapping_with_slice_ids(k: int) -> None:
    """A volume whose slice s holds the value s shows which slice lands in which decoded position."""
    num = 11
    volume = np.broadcast_to(np.arange(num, dtype=np.float32)[:, None, None], (num, 8, 8)).copy()
    encoded = encode_volume(volume, k)
    for focal in range(num):
        decoded = decode_image(encoded[focal], k)
        assert (decoded.focal == focal).all()
        for distance, (low, high) in enumerate(zip(decoded.lower, decoded.higher), start=1):
            assert (low == max(focal - distance, 0)).all(), "lower side repeats slice 0 past the edge"
            assert (high == min(focal + distance, num - 1)).all(), "higher side repeats the last slice past the edge"
            assert low.shape[-1] == 8 // 2 ** stored_level(distance - 1, k)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_round_trip_recovers_focal_and_context_on_real_ct(real_ct: np.ndarray, k: int) -> None:
    """decode(encode(V)) gives back the focal slice exactly and each context slice at its stored resolution."""
    encoded = encode_volume(real_ct, k)
    lower_idx, higher_idx = context_indices(real_ct.shape[0], k)
    for focal in (0, 7, real_ct.shape[0] - 1):
        decoded = decode_image(encoded[focal], k)
        np.testing.assert_array_equal(decoded.focal, real_ct[focal])
        assert len(decoded.lower) == len(decoded.higher) == slices_per_side(k)
        for position in range(slices_per_side(k)):
            for side, idx in ((decoded.lower, lower_idx), (decoded.higher, higher_idx)):
                expected = real_ct[idx[focal, position]].astype(np.float32)
                for _ in range(stored_level(position, k)):
                    expected = downsample_half(expected)
                np.testing.assert_array_equal(side[position], expected)


def test_in_plane_size_must_suit_the_order() -> None:
    with pytest.raises(InputError, match="divisible by 4"):
        encode_volume(np.zeros((5, 10, 12), np.float32), 3)
    with pytest.raises(InputError):
        encode_volume(np.zeros((0, 8, 8), np.float32), 1)
