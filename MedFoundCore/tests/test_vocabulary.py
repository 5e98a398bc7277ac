"""The vocabulary resolves prompts and dataset label names to one structure, with clear errors."""

from __future__ import annotations

import json
import re

import pytest

from medfoundcore.errors import InputError
from medfoundcore.vocabulary import UnknownStructureError, load_vocabulary


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


@pytest.mark.parametrize(
    ("prompt", "key"),
    [
        ("pancreas in abdominal CT", "pancreas"),
        ("Liver on MRI", "liver"),
        ("segment the spleen of the patient.", "spleen"),
        ("the liver of the patient on CT", "liver"),
        ("liver ct", "liver"),
        ("IVC", "inferior_vena_cava"),
        ("GB", "gallbladder"),
        ("gall bladder", "gallbladder"),
        ("oesophagus", "esophagus"),
        ("brain tumour", "brain_tumor"),
        ("grey matter on T1 MRI", "grey_matter"),
        ("brain gray matter", "grey_matter"),
        ("white matter", "white_matter"),
        ("spinal cord in cervical spine MRI", "spinal_cord"),
        ("vertebrae", "vertebrae"),
        ("the L1 vertebra", "vertebra_L1"),
    ],
)
def test_templates_and_synonyms(vocab, prompt, key):
    assert vocab.normalize_prompt(prompt).key == key


@pytest.mark.parametrize(
    ("prompt", "key", "side"),
    [
        ("left kidney", "kidney_left", "left"),
        ("kidney left", "kidney_left", "left"),
        ("L kidney", "kidney_left", "left"),
        ("Rt. kidney in abdominal CT", "kidney_right", "right"),
        ("kidneys", "kidney", "both"),
        ("left and right kidney", "kidney", "both"),
        ("upper lobe of left lung", "lung_upper_lobe_left", "left"),
        ("right parotid", "parotid_gland_right", "right"),
    ],
)
def test_laterality(vocab, prompt, key, side):
    structure = vocab.normalize_prompt(prompt)
    assert (structure.key, structure.laterality) == (key, side)


def test_lateral_structures_carry_snomed_modifier_and_parent(vocab):
    left = vocab.get("kidney_left")
    assert left.snomed == ("SCT^123037004^Anatomical Structure", "SCT^64033007^Kidney", "SCT^7771000^Left")
    assert left.part_of == "kidney"
    assert vocab.get("lung_upper_lobe_left").part_of == "lung_left"
    assert {s.key for s in vocab.parts("kidney")} == {"kidney_left", "kidney_right"}
    assert vocab.get("liver").snomed[2] is None
    entry = left.slicer_terminology_entry.split("~")
    assert entry[1:4] == list(left.snomed) and len(entry) == 7


def test_unknown_prompt_suggests_nearest(vocab):
    with pytest.raises(UnknownStructureError) as info:
        vocab.normalize_prompt("livr in CT")
    assert isinstance(info.value, InputError)
    assert info.value.suggestions[0] == "liver"
    assert "livr in CT" in str(info.value) and "liver" in str(info.value)


def test_laterality_on_unpaired_structure_is_unknown(vocab):
    with pytest.raises(UnknownStructureError) as info:
        vocab.normalize_prompt("left liver")
    assert "liver" in info.value.suggestions


@pytest.mark.parametrize("prompt", ["", "   ", "\t\n", None])
def test_empty_prompt(vocab, prompt):
    with pytest.raises(InputError, match="empty prompt"):
        vocab.normalize_prompt(prompt)


def test_every_structure_is_well_formed(vocab):
    keys = {s.key for s in vocab}
    assert {"liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach", "gallbladder", "aorta",
            "inferior_vena_cava", "vertebrae", "spinal_cord", "grey_matter", "white_matter"} <= keys
    triplet = re.compile(r"^SCT\^\d+\^\S.*$")
    for s in vocab:
        assert triplet.match(s.snomed[0]) and triplet.match(s.snomed[1]), s.key
        assert len(s.color) == 3 and all(0 <= c <= 255 for c in s.color), s.key
        assert s.modalities and set(s.modalities) <= {"CT", "MRI"}, s.key
        assert s.part_of is None or s.part_of in keys, s.key
        assert vocab.normalize_prompt(s.name).key == s.key, s.key  # display names round-trip
    assert vocab.names() == sorted(vocab.names()) and "left kidney" in vocab.names()


def test_modality_mismatch_warning(vocab):
    gm = vocab.get("grey_matter")
    assert vocab.modality_mismatch(gm, "MR") is None
    warning = vocab.modality_mismatch(gm, "CT")
    assert warning and "brain grey matter" in warning and "CT" in warning
    assert vocab.modality_mismatch(vocab.get("liver"), "CT") is None


def test_every_shared_data_label_maps_or_is_knowingly_unmapped(vocab, shared_data):
    label_files = sorted(shared_data.rglob("*_labels.json"))
    assert len(label_files) > 400  # brats, hippocampus, openkbp, totalsegmentator ... all present
    names = {n for f in label_files for n in json.loads(f.read_text())["labels"].values()}
    unmapped = {n for n in names if vocab.label_name_to_structure(n) is None}
    unexplained = {n for n in unmapped if vocab.unmapped_reason(n) is None}
    assert not unexplained
    # the known-unmapped set is only atlas parcels and undocumented phantom ROIs
    assert all(re.match(r"^(\w+_[LR]|Cerebelum_\w+|Vermis_\w+|ROI label \d+ .*)$", n) for n in unmapped)
    expected = {
        "kidney_left": "kidney_left", "SpinalCord": "spinal_cord", "RightParotid": "parotid_gland_right",
        "hippocampus_anterior (head)": "hippocampus_anterior", "Hippocampus_L": "hippocampus_left",
        "vertebrae_L1": "vertebra_L1", "rib_left_6": "rib_6_left", "iliac_vena_left": "iliac_vein_left",
        "left lung upper third": "lung_upper_third_left", "non-enhancing tumor": "non_enhancing_tumor",
        "spine (vertebra)": "vertebrae", "grey matter": "grey_matter", "Precentral_L": None,
    }
    for label, key in expected.items():
        found = vocab.label_name_to_structure(label)
        assert (found.key if found else None) == key, label


def test_structures_distant_from_a_field_of_view():
    vocab = load_vocabulary()
    for_brain = {s.key for s in vocab.distant_from({"brain"})}
    assert {"liver", "spleen", "kidney_left", "urinary_bladder", "aorta"} <= for_brain  # thorax and below: never in a head scan
    assert not {"mandible", "parotid_gland", "vertebrae", "grey_matter"} & for_brain  # neighbour, spanning, own
    for_abdomen = {s.key for s in vocab.distant_from({"abdomen", "thorax"})}
    assert {"grey_matter", "hippocampus", "brainstem"} <= for_abdomen and "mandible" not in for_abdomen
    assert vocab.distant_from({"spine"}) == []  # a spine-only label says nothing about the field of view
    assert "aorta" not in {s.key for s in vocab.distant_from({"pelvis"})}  # it spans the abdomen, down to L4


def test_structures_that_never_share_an_axial_slice():
    vocab = load_vocabulary()
    apart = vocab.never_in_one_axial_slice
    liver, aorta = vocab.get("liver"), vocab.get("aorta")
    assert apart(liver, vocab.get("grey_matter")) and apart(vocab.get("grey_matter"), liver)
    assert apart(aorta, vocab.get("hippocampus"))  # thorax and abdomen are both far from the brain
    assert not apart(liver, vocab.get("lung_right"))  # the liver dome and the lung bases share slices
    assert not apart(aorta, vocab.get("iliac_artery_left"))  # the bifurcation
    assert not apart(liver, vocab.get("vertebrae"))  # the spine runs through every region


def test_brain_tumour_sub_regions_follow_the_brats_conventions():
    """Whole tumour = all four labels; tumour core = necrosis + non-enhancing + enhancing (not oedema)."""
    from medfoundcore.inference.prompts import plan_prompts
    from medfoundcore.vocabulary import ancestors

    vocab = load_vocabulary()
    assert vocab.normalize_prompt("tumour core").key == vocab.normalize_prompt("TC").key == "tumor_core"
    assert vocab.normalize_prompt("whole tumour").key == "brain_tumor"
    assert vocab.normalize_prompt("oedema").key == "peritumoral_edema"
    for part in ("tumor_necrosis", "non_enhancing_tumor", "enhancing_tumor"):
        assert ancestors(part, vocab) == ["tumor_core", "brain_tumor"]
    assert ancestors("peritumoral_edema", vocab) == ["brain_tumor"]
    with pytest.raises(InputError, match="overlap"):
        plan_prompts(["tumour core", "enhancing tumour"], vocab, None)
    plan = plan_prompts(["tumour core", "oedema"], vocab, None)  # disjoint: one label map holds both
    assert [s.key for s in plan.structures] == ["tumor_core", "peritumoral_edema"]
