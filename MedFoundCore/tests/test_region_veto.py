"""The anatomical veto: which structures rule a prompt out of an axial slice, and when slices are axial."""

from __future__ import annotations

import numpy as np
import torch

from medfoundcore.inference.region_veto import (
    WITNESS_CONFIDENCE,
    RegionVeto,
    rivals_seen,
    slices_are_axial,
    vetoed_slices,
)
from medfoundcore.io import Volume
from medfoundcore.vocabulary import load_vocabulary

KNOWN = {"liver", "spleen", "kidney", "kidney_left", "kidney_right", "grey_matter", "brainstem", "mandible",
         "hippocampus_anterior", "spinal_cord"}


def _veto(prompts: list[str], modality: str) -> RegionVeto:
    vocab = load_vocabulary()
    return RegionVeto.build([vocab.get(k) for k in prompts], KNOWN, vocab, modality)


def test_witnesses_are_known_whole_structures_of_distant_regions_trusted_on_the_modality():
    on_mri = [w.key for w in _veto(["liver"], "MRI").witnesses]
    assert set(on_mri) == {"grey_matter", "brainstem", "mandible"}  # not spleen (same region), spinal cord
    # (every region), kidney_left (a side of `kidney`) or hippocampus_anterior (part of the hippocampus)
    on_ct = [w.key for w in _veto(["liver"], "CT").witnesses]
    assert set(on_ct) == {"brainstem", "mandible"}  # grey matter is an MRI structure: not trusted on CT
    brain = _veto(["grey_matter"], "MRI")
    assert {w.key for w in brain.witnesses} == {"liver", "spleen", "kidney"}


def test_a_prompt_that_is_not_trusted_on_the_modality_vetoes_nothing():
    veto = _veto(["liver", "grey_matter"], "CT")
    names = ["liver", "grey_matter", *(w.key for w in veto.witnesses)]
    assert not veto.rivals[0, names.index("grey_matter")]  # hallucinated grey matter cannot remove the liver
    assert veto.rivals[1, names.index("liver")]  # the liver can remove grey matter
    assert veto.rivals[0, names.index("brainstem")]


def test_a_prompt_is_ruled_out_by_a_confident_rival_seen_on_the_slice():
    veto = _veto(["liver", "spleen"], "MRI")
    names = ["liver", "spleen", *(w.key for w in veto.witnesses)]
    grey = names.index("grey_matter")
    omega = torch.full((5, len(names)), 0.1)
    seen = torch.zeros_like(omega, dtype=torch.bool)
    omega[:, 0] = torch.tensor([0.7, 0.95, 0.7, 0.7, 0.7])  # liver
    omega[:, grey] = torch.tensor([0.92, 0.92, 0.92, 0.6, 0.85])
    seen[:, grey] = torch.tensor([True, True, False, True, True])
    omega[3, 1], seen[3, 1] = 0.99, True  # a confident spleen is no rival of the liver
    assert WITNESS_CONFIDENCE == 0.9
    candidate = np.ones((5, 2), bool)
    ruled = vetoed_slices(veto.best_rival(omega, seen).numpy(), omega[:, :2].numpy(), candidate)
    # beaten / more confident than the rival / rival not on the slice / rival weaker / rival not confident
    assert ruled[:, 0].tolist() == [True, False, False, False, False]
    assert ruled[:, 1].tolist() == [True, True, False, False, False]  # spleen, ω 0.1
    seen[0, names.index("brainstem")], omega[0, names.index("brainstem")] = True, 0.6  # seen, not confident
    assert rivals_seen(veto, omega.numpy(), seen.numpy(), ruled, 0, names) == ["grey_matter"]
    candidate[0, 0] = False  # no mask on that slice: nothing to rule out
    assert not vetoed_slices(veto.best_rival(omega, seen).numpy(), omega[:, :2].numpy(), candidate)[0, 0]


def test_no_veto_has_no_witnesses_and_rules_nothing_out():
    veto = RegionVeto.none(2)
    rival = veto.best_rival(torch.rand(3, 2), torch.ones(3, 2, dtype=torch.bool)).numpy()
    assert veto.witnesses == () and not rival.any()


def test_axial_slicing_follows_the_direction_matrix():
    array = np.zeros((4, 5, 6), np.float32)
    assert slices_are_axial(Volume(array), 0)  # k runs head-feet
    assert not slices_are_axial(Volume(array), 1)  # slicing along j gives coronal slices
    sagittal_stack = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)  # columns: i -> P, j -> S, k -> L
    assert [slices_are_axial(Volume(array, direction=sagittal_stack), axis) for axis in (0, 1, 2)] == [False, True, False]
