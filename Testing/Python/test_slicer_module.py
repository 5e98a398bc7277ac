"""The module's classes construct under base classes that chain ``__init__`` as Slicer 5.8's do,
and the parameter node keeps the panel's choices through a scene save and reload."""

from __future__ import annotations

import types

import slicer


def test_logic_constructs_through_the_cooperative_init_chain():
    from MedFoundSlicer import MedFoundSlicerLogic
    from MedFoundSlicerLib.logic import MODULE_NAME

    logic = MedFoundSlicerLogic()
    assert logic.scene is slicer.mrmlScene and logic.moduleName == MODULE_NAME
    scene = slicer.vtkMRMLScene()
    assert MedFoundSlicerLogic(scene).scene is scene


def test_module_sets_its_metadata_over_the_base_class_template():
    import MedFoundSlicer

    parent = types.SimpleNamespace()
    module = MedFoundSlicer.MedFoundSlicer(parent)
    assert module.moduleName == "MedFoundSlicer" and parent.title == "MedFound"
    assert parent.contributors and parent.helpText


def test_parameter_node_is_slicers_and_survives_a_scene_save(tmp_path, monkeypatch):
    from MedFoundSlicer import MedFoundSlicerLogic

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene)
    logic = MedFoundSlicerLogic()
    node = logic.parameterNode()
    assert logic.getParameterNode().GetID() == node.GetID()  # the node Slicer's own lookup finds
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    logic.setChoices(Prompts="liver\nspleen", Device="cpu", RegionCheck=False, InputVolume=volume)
    assert logic.choices()["Model"] == "default"  # never set: the default
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(tmp_path / "scene.mrml"))
    assert reopened.Connect()
    again = MedFoundSlicerLogic(reopened)
    choices = again.choices()
    assert (choices["Prompts"], choices["Device"], choices["RegionCheck"]) == ("liver\nspleen", "cpu", "false")
    assert again.chosenNode("InputVolume").GetName() == "CT"


def test_text_encoder_loads_offline_without_process_wide_environment(monkeypatch):
    import os

    from medfoundcore.text import TextEncoder

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    vectors = TextEncoder().encode(["liver", "spleen"])
    assert tuple(vectors.shape) == (2, 384)
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
