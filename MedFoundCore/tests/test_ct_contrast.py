"""Simulated CT appearances (contrast phases, thick slices, slabs) on a real labelled CT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from medfoundcore.data.ct_contrast import enhancement_hu, simulate_contrast, slabs, thicken_slices
from medfoundcore.errors import InputError
from medfoundcore.io import load_volume


@pytest.fixture(scope="module")
def ct_sm(shared_data):
    base = shared_data / "totalsegmentator" / "ts_ct_sm"
    names = {int(k): v for k, v in json.loads((base.parent / "ts_ct_sm_labels.json").read_text())["labels"].items()}
    return load_volume(f"{base}_img.nii.gz"), load_volume(f"{base}_lab.nii.gz", label=True), names


def _value(names, name):
    return next(v for v, n in names.items() if n == name)


def test_portal_venous_brightens_organs_by_their_enhancement_and_leaves_the_rest(ct_sm):
    image, labels, names = ct_sm
    out = simulate_contrast(image, labels, names, "portal_venous", np.random.default_rng(0), edge_sigma_mm=0.0)
    delta = out.array - image.array
    liver = binary_erosion(labels.array == _value(names, "liver"), iterations=2)
    # 50 HU × strength (0.7..1.3) × jitter (0.85..1.15)
    assert 50 * 0.7 * 0.85 - 1e-3 <= np.median(delta[liver]) <= 50 * 1.3 * 1.15 + 1e-3
    kidney = binary_erosion(labels.array == _value(names, "kidney_left"), iterations=1)
    assert np.median(delta[kidney]) > np.median(delta[liver])  # kidneys enhance more than liver
    assert np.all(delta[labels.array == 0] == 0)  # unlabelled tissue unchanged without smoothing
    assert out.spacing == image.spacing and np.allclose(out.affine_ras, image.affine_ras)


def test_arterial_phase_brightens_the_aorta_more_than_portal_venous(ct_sm):
    image, labels, names = ct_sm
    aorta = labels.array == _value(names, "aorta")
    pv = simulate_contrast(image, labels, names, "portal_venous", np.random.default_rng(1))
    art = simulate_contrast(image, labels, names, "arterial", np.random.default_rng(1))
    assert np.median(art.array[aorta]) > np.median(pv.array[aorta]) + 50


def test_gas_is_never_brightened(ct_sm):
    image, labels, names = ct_sm
    out = simulate_contrast(image, labels, names, "portal_venous", np.random.default_rng(2))
    gas = image.array < -200
    assert gas.any()
    assert np.array_equal(out.array[gas], image.array[gas].astype(np.float32))


def test_enhancement_table_and_unknown_phase():
    assert enhancement_hu("aorta", "arterial") > enhancement_hu("aorta", "portal_venous")
    assert enhancement_hu("vertebrae_L1", "portal_venous") == 0.0
    assert enhancement_hu("portal_vein_and_splenic_vein", "portal_venous") == 120.0
    with pytest.raises(InputError, match="portal_venous"):
        enhancement_hu("liver", "delayed")


def test_thick_slices_spread_one_slice_to_the_thickness(ct_sm):
    image, _, _ = ct_sm
    spike = np.zeros(image.shape, dtype=np.float32)
    spike[15] = 1000.0
    out = thicken_slices(image.with_array(spike), 9.0).array[:, 50, 50]  # 3 mm slices: FWHM 3 slices
    assert out[15] == out.max()
    assert out[14] > out[15] / 2 and out[13] < out[15] / 2  # half maximum between 1 and 2 slices away
    with pytest.raises(InputError, match="not thicker"):
        thicken_slices(image, 2.0)


def test_slabs_keep_geometry_and_hold_the_wanted_organ(ct_sm):
    image, labels, names = ct_sm
    liver = _value(names, "liver")
    pieces = slabs(image, labels, 30.0, {liver})
    assert pieces
    for img, lab in pieces:
        assert img.shape[0] == 10 and lab.shape == img.shape
        assert np.isin(lab.array, [liver]).any()
        start = int(round(image.ras_to_index(img.index_to_ras([[0, 0, 0]]))[0][2]))  # (i, j, k): k is the slice
        assert np.array_equal(img.array, image.array[start : start + 10])
