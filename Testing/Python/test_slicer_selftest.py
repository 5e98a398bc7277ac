"""The module's registered self-test (MedFoundSlicerTest) runs with no sample data anywhere, as on a
Slicer build server: MEDFOUND_DATA points at an empty folder for the whole run."""

from __future__ import annotations

import numpy as np
import slicer


def test_selftest_needs_no_shared_data(tmp_path, monkeypatch, model_store):
    monkeypatch.setenv("MEDFOUND_DATA", str(tmp_path / "no-data-here"))
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene())
    from MedFoundSlicer import MedFoundSlicerTest

    MedFoundSlicerTest().runTest()
    assert not (tmp_path / "no-data-here").exists()


def test_synthetic_volume_round_trips_through_a_node_with_its_geometry(logic):
    from MedFoundSlicerLib import nodes, selftest

    volume, labels, names = selftest.synthetic_volume()
    assert volume.array.nbytes < 4 * 2**20 and set(np.unique(labels)) == {0, *names.values()}
    node, _, _ = selftest.synthetic_case(logic)
    back = nodes.volume_from_node(node)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine_ras, volume.affine_ras, atol=1e-9)
