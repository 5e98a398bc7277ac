"""The Slicer module's Logic on a real vtkMRMLScene (PyPI slicer-core) with real CT data."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import vtk

from MedFoundSlicerLib import nodes, selftest
from MedFoundSlicerLib.jobs import Job, JobCallbacks, JobState
from MedFoundSlicerLib.logic import terminology_entry, write_training_cases

# The Dice floors of selftest were measured with the slice model; "default" may pick another model for CT.
SLICE_MODEL = "starter-v2"


# ---------------------------------------------------------------- module and boundary
def test_module_loads_without_qt_and_describes_itself():
    import MedFoundSlicer

    parent = types.SimpleNamespace()
    MedFoundSlicer.MedFoundSlicer(parent)
    assert parent.title == "MedFound" and parent.categories == ["Segmentation"]
    assert "cancel" in parent.helpText


def test_volume_from_node_matches_medfoundcore_reader(logic, shared_data):
    from medfoundcore.io import load_volume

    path = shared_data / f"{selftest.CASE}_img.nii.gz"
    node = nodes.load_volume_node(logic.scene, str(path))
    volume = nodes.volume_from_node(node)
    reference = load_volume(path)
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine_ras, reference.affine_ras, atol=1e-4)


def test_volume_under_linear_transform_uses_world_geometry(logic, shared_data):
    node = selftest.load_case(logic, shared_data)
    plain = nodes.volume_from_node(node).affine_ras
    transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    rotation = np.array([[0, -1, 0, 10], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)  # 90° about S, 10 mm right
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, rotation[r, c])
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = nodes.volume_from_node(node).affine_ras
    np.testing.assert_allclose(moved, rotation @ plain, atol=1e-6)


def test_segments_round_trip_on_the_volume_grid(logic, shared_data):
    node = selftest.load_case(logic, shared_data)
    reference, values = selftest.reference_labels(shared_data)
    image = nodes.volume_from_node(node)
    liver = logic.vocabulary.normalize_prompt("liver")
    spec = nodes.SegmentSpec(values["liver"], liver.name, liver.color_float, terminology_entry(liver))
    segmentation = nodes.create_segmentation_node(logic.scene, node, "out")
    (segment_id,) = nodes.write_segments(segmentation, image.with_array(reference), [spec], replace=False)
    mask = nodes.segment_mask(segmentation, segment_id, node)
    np.testing.assert_array_equal(mask, reference == values["liver"])
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "liver"
    np.testing.assert_allclose(segment.GetColor(), liver.color_float, atol=1e-6)
    assert "10200004" in segment.GetTerminology()  # SNOMED CT code of liver, from the vocabulary
    # an existing segment is never replaced unless asked
    (kept_id,) = nodes.write_segments(segmentation, image.with_array(reference), [spec], replace=False)
    assert nodes.segment_names(segmentation) == ["liver", "liver (2)"]
    nodes.write_segments(segmentation, image.with_array(np.zeros_like(reference)), [spec], replace=True)
    assert nodes.segment_names(segmentation) == ["liver (2)", "liver"]
    assert not nodes.segment_mask(segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName("liver"), node).any()
    assert nodes.segment_mask(segmentation, kept_id, node).sum() == (reference == values["liver"]).sum()


def test_prompts_are_checked_against_the_vocabulary(logic):
    from medfoundcore.errors import InputError

    assert logic.parsePrompts("liver\n\n  left kidney \n") == ["liver", "left kidney"]
    with pytest.raises(InputError, match="livr"):
        logic.parsePrompts("livr")
    with pytest.raises(InputError, match="at least one"):
        logic.parsePrompts("  \n")


def test_device_report_warns_without_gpu(logic):
    import torch

    report = logic.deviceReport("auto")
    if torch.cuda.is_available():
        assert report.device == "cuda"
    else:
        assert report.device == "cpu" and "CPU" in report.warning
    assert "No CUDA GPU" in logic.deviceReport("cuda").warning or torch.cuda.is_available()


# ---------------------------------------------------------------- the warm-up's thread job
def test_job_reports_readable_errors_and_runs_callbacks_on_the_polling_thread():
    import threading

    from medfoundcore.errors import InputError

    def bad_input(progress, cancel, metrics):
        raise InputError("prompt 'xyz': unknown structure")

    def crash(progress, cancel, metrics):
        return 1 / 0

    done_threads = []
    callbacks = JobCallbacks(on_done=lambda job: done_threads.append(threading.current_thread()))
    failed = Job("segment", bad_input, callbacks).start().wait()
    assert failed.state is JobState.FAILED and failed.error == "prompt 'xyz': unknown structure"
    crashed = Job("segment", crash).start().wait()
    assert crashed.state is JobState.FAILED and "ZeroDivisionError" in crashed.error and "Traceback" in crashed.details
    assert done_threads == [threading.current_thread()]


def test_job_delivers_progress_and_metrics_in_order():
    from medfoundcore.progress import Progress, check

    def work(progress, cancel, metrics):
        for step in range(1, 4):
            check(cancel)
            metrics({"step": step, "loss": 1.0 / step})
            progress(Progress("training", step, 3))
        return "model"

    seen, progress = [], []
    job = Job("train", work, JobCallbacks(on_metrics=seen.append, on_progress=progress.append)).start().wait()
    assert job.state is JobState.SUCCEEDED and job.result == "model"
    assert [m["step"] for m in seen] == [1, 2, 3]
    assert progress[-1].done == 3


# ---------------------------------------------------------------- text-prompted, shipped model
def test_text_prompted_segmentation_through_the_logic(logic, shared_data):
    scores = selftest.scenario_segment(logic, shared_data, model=SLICE_MODEL)
    print("Dice", scores)


def test_anatomical_check_is_a_logic_option_and_the_summary_says_what_it_removed(logic, shared_data):
    """Held-out brain MRI prompted for "liver": with the check most of the false liver is removed and the
    summary row says so; without it the row reports the unchecked volume."""
    volume_node = nodes.load_volume_node(logic.scene, str(shared_data / "pyradiomics" / "brain1_img.nii.gz"))
    _, (unchecked,) = logic.runSegmentation(volume_node, ["liver"], device="cpu", regionCheck=False)
    _, (checked,) = logic.runSegmentation(volume_node, ["liver"], device="cpu")
    assert unchecked.slices_ruled_out == 0 and unchecked.status == "found"
    assert checked.slices_ruled_out >= 3 and checked.volume_ml < 0.5 * unchecked.volume_ml
    assert "distant body region" in checked.status


def test_training_cases_reach_the_child_as_a_folder_it_reads(logic, shared_data, tmp_path):
    """What startTraining hands to ``train-seg``: scene cases as NIfTI, folder cases linked, names as mapped."""
    from medfoundcore.data.datasets import find_cases

    volume_node = selftest.load_case(logic, shared_data)
    reference, values = selftest.reference_labels(shared_data)
    segmentation = nodes.create_segmentation_node(logic.scene, volume_node, "reference")
    nodes.write_segments(segmentation, nodes.volume_from_node(volume_node).with_array(reference), [nodes.SegmentSpec(values["spleen"], "Segment 1", (0, 1, 0))], False)
    scene = logic.casesFromScene([(volume_node, segmentation)], {"Segment 1": "spleen"})
    folder = logic.casesFromFolder(str(shared_data / "dcmqi_ct3slice"), {"liver": "liver", "heart": "heart", "spine (vertebra)": ""})
    written = write_training_cases(scene + folder, tmp_path / "cases")
    back = {ref.case_id: ref for ref in find_cases([written])}
    assert sorted(back) == sorted(["scene00_ts_ct_sm_img", folder[0].case_id])
    from_scene, from_folder = back["scene00_ts_ct_sm_img"], back[folder[0].case_id]
    assert from_scene.names == {1: "spleen"} and from_scene.modality == "CT"
    loaded = from_scene.load()
    np.testing.assert_array_equal(loaded.image.array, scene[0].image.array)
    np.testing.assert_allclose(loaded.image.affine_ras, scene[0].image.affine_ras, atol=1e-4)
    assert (loaded.labels.array == 1).sum() == (reference == values["spleen"]).sum()
    assert from_folder.names == {1: "liver", 3: "heart"} and from_folder.subject == folder[0].subject
    assert from_folder.meta["dataset"] == folder[0].meta["dataset"]  # the same training group as read directly
    assert os.path.samefile(from_folder.image_path, folder[0].image_path)  # linked, not copied
    assert json.loads(written.joinpath("scene00_ts_ct_sm_img_labels.json").read_text())["dataset"] == "slicer-scene"


def test_fine_tune_from_scene_nodes_registers_a_usable_model(logic, shared_data):
    figures = selftest.scenario_train(logic, shared_data)
    print("train", figures)


def test_failed_job_is_readable_and_leaves_the_scene_unchanged(logic, shared_data):
    volume_node = selftest.load_case(logic, shared_data)
    before = selftest.scene_snapshot(logic.scene)
    job = logic.startSegmentation(volume_node, ["liver"], model="no-such-model").wait()
    assert job.state is JobState.FAILED
    assert "no-such-model" in job.error and "Traceback" not in job.error
    assert selftest.scene_snapshot(logic.scene) == before


def test_stopped_training_resumes_under_the_same_name(logic, shared_data, pid_alive):
    volume_node = selftest.load_case(logic, shared_data)
    reference, values = selftest.reference_labels(shared_data)
    segmentation = nodes.create_segmentation_node(logic.scene, volume_node, "reference")
    image = nodes.volume_from_node(volume_node)
    nodes.write_segments(segmentation, image.with_array(reference), [nodes.SegmentSpec(values["spleen"], "Segment_1", (0, 1, 0))], False)
    cases = logic.casesFromScene([(volume_node, segmentation)], {"Segment_1": "spleen"})
    assert cases[0].names == {1: "spleen"} and (cases[0].labels.array == 1).sum() == (reference == values["spleen"]).sum()
    first = []

    def stop_after_two(metrics):
        first.append(metrics["step"])
        if metrics["step"] >= 2:
            job.cancel()

    options = dict(epochs=None, steps=6, batchSize=2, baseModel=None, checkpoint_every=1, log_every=1)
    before = selftest.scene_snapshot(logic.scene)
    job = logic.startTraining(cases, "resumable", callbacks=JobCallbacks(on_metrics=stop_after_two), **options)
    assert "train-seg" in job.command and job.pid != os.getpid()
    job.wait()
    assert job.state is JobState.CANCELLED and job.returncode is None  # killed mid-run
    assert not pid_alive(job.pid) and not job.workdir.exists()
    assert first[-1] == 2 and selftest.scene_snapshot(logic.scene) == before
    assert not any(m.name == "resumable" for m in logic.models())
    second = []
    job = logic.startTraining(cases, "resumable", callbacks=JobCallbacks(on_metrics=lambda m: second.append(m["step"])), **options).wait()
    assert job.state is JobState.SUCCEEDED, job.error
    assert second and second[0] > 1 and second[-1] == 6, f"did not resume: first run {first}, second run {second}"
    assert any(m.name == "resumable" for m in logic.models())


def test_train_panel_fine_tunes_mri_v1_in_its_own_family(logic, shared_data, tmp_path):
    """Starting from mri-v1 trains the 3D MRI family (train-seg --model mri), epochs counted in cases."""
    import torch
    from medfoundcore.errors import InputError
    from medfoundcore.registry import load_model

    folder = tmp_path / "team-cases"
    folder.mkdir()
    for case in ("hippocampus_001", "hippocampus_004"):
        for suffix in ("_img.nii.gz", "_lab.nii.gz", "_labels.json"):
            (folder / f"{case}{suffix}").symlink_to(shared_data / "msd_hippocampus" / f"{case}{suffix}")
    mapping = logic.folderPromptMap(str(folder))
    assert sorted(mapping.values()) == ["hippocampus body and tail", "hippocampus head"]  # vocabulary names mri-v1 knows
    cases = logic.casesFromFolder(str(folder), mapping)
    assert logic.trainingFamily("mri-v1") == "mri" and logic.trainingFamily(None) == "text2d"
    with pytest.raises(InputError, match="encoder-v1' is a Points"):
        logic.startTraining(cases, "bad-base", epochs=1, baseModel="encoder-v1")
    job = logic.startTraining(cases, "team-hippo", epochs=2, lr=1e-4, batchSize=2, baseModel="mri-v1", checkpoint_every=1)
    command = " ".join(job.command)
    assert "--model mri" in command and "--steps 2" in command and "--epochs" not in command  # 2 epochs x 2 cases / 2 crops
    job.wait()
    assert job.state is JobState.SUCCEEDED, job.error
    tuned, card = load_model("team-hippo")
    base, _ = load_model("mri-v1")
    assert card.kind == "mri-text-segmenter" and card.training_data["base_model"] == "mri-v1"
    assert "team-hippo" in [m.name for m in logic.models(("mri-text-segmenter",))]  # the Segment panel lists it
    changed = [k for k in base if not torch.equal(base[k].float(), tuned[k].float())]
    assert changed and all(torch.allclose(base[k].float(), tuned[k].float(), atol=0.05) for k in base)  # moved a little from mri-v1


def test_train_panel_fine_tunes_ct_v1_on_the_ct_encoder_features(logic, shared_data):
    """Starting from ct-v1 trains the ct family (its decoder on the pretrained CT encoder's features)."""
    cases = logic.casesFromFolder(str(shared_data / "dcmqi_ct3slice"), logic.folderPromptMap(str(shared_data / "dcmqi_ct3slice")))
    job = logic.startTraining(cases, "team-ct", epochs=1, batchSize=2, baseModel="ct-v1")
    assert "--model ct" in " ".join(job.command) and "--steps 1" in " ".join(job.command)
    job.wait()
    assert job.state is JobState.SUCCEEDED, job.error
    info = next(m for m in logic.models() if m.name == "team-ct")
    assert info.kind == "ct-text-segmenter" and logic.trainingFamily("team-ct") == "ct"  # and it can be fine-tuned again


def test_models_import_checks_sha256_and_delete_removes(logic, tmp_path):
    import torch
    from medfoundcore.errors import MedFoundError
    from medfoundcore.registry import ModelCard, save_model

    exported = save_model({"w": torch.linspace(0, 1, 64)}, ModelCard(name="shared-liver", kind="prompted-segmenter", prompts=["liver"]),
                          tmp_path / "exported")
    imported = logic.importModel(str(exported / "model.safetensors"))
    assert (imported.name, imported.kind, imported.prompts, imported.shipped) == ("shared-liver", "prompted-segmenter", ("liver",), False)
    assert "shared-liver" in [m.name for m in logic.models(("prompted-segmenter",))]
    logic.deleteModel("shared-liver")
    assert "shared-liver" not in [m.name for m in logic.models()]
    weights = exported / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(MedFoundError, match="sha256"):
        logic.importModel(str(weights))
    assert "shared-liver" not in [m.name for m in logic.models()]
    shipped = [m for m in logic.models() if m.shipped]
    for model in shipped[:1]:
        with pytest.raises(MedFoundError, match="cannot be deleted"):
            logic.deleteModel(model.name)
