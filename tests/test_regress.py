"""The shipped regression network: loading, speed path, agreement with the full pipeline, fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

import densemesh
from densemesh.crop import box_from_head, regressor_crop
from densemesh.detect import Detection
from densemesh.regress import WEIGHTS, Regressor, export_onnx, load_regressor


def test_weights_ship_and_load_by_default():
    assert WEIGHTS.exists() and WEIGHTS.with_suffix(".onnx").exists()
    assert WEIGHTS.stat().st_size + WEIGHTS.with_suffix(".onnx").stat().st_size <= 20e6
    with densemesh.Reconstructor(device="cpu", refine="none") as rec:
        assert rec.regressor is not None
    with densemesh.Reconstructor(device="cpu", refine="none", regressor=None) as rec:
        assert rec.regressor is None


@pytest.fixture(scope="module")
def astronaut_faces():
    image = data.astronaut()
    with densemesh.Reconstructor(device="cpu", refine="fast") as rec:
        full = rec(image)[0]
    with densemesh.Reconstructor(device="cpu", refine="none", fit=False) as rec:
        alone = rec(image)[0]
    return full, alone


def test_regressor_alone_lands_within_8_percent_of_the_full_pipeline(astronaut_faces):
    full, alone = astronaut_faces
    assert alone.source == "regressor" and full.source == "mediapipe"
    gt = full.landmarks68_2d
    norm = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
    assert np.linalg.norm(alone.landmarks68_2d - gt, axis=1).mean() / norm < 0.08
    assert abs(alone.pose.yaw - full.pose.yaw) < 15 and abs(alone.pose.roll - full.pose.roll) < 10


def test_onnx_runtime_and_pytorch_agree(tmp_path):
    crop = regressor_crop(data.astronaut(), np.array([180.0, 71.0, 270.0, 177.0])).image
    ort_out = Regressor()([crop])
    torch_out = Regressor(WEIGHTS)([crop])  # the .pt weights (float16 on disk)
    assert torch.allclose(ort_out.rotation, torch_out.rotation, atol=0.02)
    assert torch.allclose(ort_out.weak, torch_out.weak, rtol=0.02, atol=0.5)
    assert torch.allclose(ort_out.expression, torch_out.expression, atol=0.03)
    # and a fresh export of the loaded network matches the shipped file's behaviour
    path = export_onnx(load_regressor(), tmp_path / "r.onnx")
    again = Regressor(path)([crop])
    assert torch.allclose(again.rotation, ort_out.rotation, atol=0.02)


def test_head_to_box_has_the_size_of_the_landmark_box(astronaut_faces):
    """HEAD_TO_BOX (measured on UTKFace labels) gives an unseen face's fitted head a box the size
    of its MediaPipe landmark box: the crop a detector-only box is re-cut to has the training scale."""
    full, _ = astronaut_faces
    pose = full.pose
    # the weak-perspective view of the fit, taken at the face's depth (as the training labels were)
    centroid = full.vertices_camera.mean(0)
    scale = pose.focal / centroid[2]  # px per cm
    origin = pose.focal * centroid[:2] / centroid[2] + pose.principal - scale * (centroid - pose.translation)[:2]
    box = box_from_head(origin[None], np.array([scale]))[0]
    truth = full.box
    side = max(truth[2:] - truth[:2])
    assert abs((box[2] - box[0]) / side - 1) < 0.1
    assert np.abs((box[:2] + box[2:]) / 2 - (truth[:2] + truth[2:]) / 2).max() < 0.2 * side  # pitch moves it


def test_a_box_without_landmarks_gets_the_regressor(astronaut_faces):
    full, _ = astronaut_faces
    image = data.astronaut()
    with densemesh.Reconstructor(device="cpu", refine="none") as rec:
        result = rec.reconstruct_detections([image], [Detection(full.box.copy(), None, score=0.7)])[0]
    assert result.source == "regressor" and result.refine == "none" and np.isnan(result.fit_error)
    gt = full.landmarks68_2d
    norm = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
    assert np.linalg.norm(result.landmarks68_2d - gt, axis=1).mean() / norm < 0.1
    assert result.visibility.sum() > 1000


def test_regressor_start_fits_as_well_as_the_teacher(astronaut_faces):
    full, _ = astronaut_faces
    with densemesh.Reconstructor(device="cpu", refine="none") as rec, \
            densemesh.Reconstructor(device="cpu", refine="none", regressor=None) as teacher:
        a, b = rec(data.astronaut())[0], teacher(data.astronaut())[0]
    assert a.fit_error < 1.1 * b.fit_error
