"""The shipped regression network: loading, speed path, agreement with the full pipeline, fallback."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from skimage import data

from conftest import ROOT

import densemesh
from densemesh import camera
from densemesh.crop import REGRESSOR_SIZE, box_from_landmarks68, regressor_crop
from densemesh.detect import Detection
from densemesh.facemodel import FaceModel
from densemesh.regress import WEIGHTS, Prediction, Regressor, average, export_onnx, load_regressor, unmirror

sys.path.insert(0, str(ROOT / "tools"))
import aflw  # noqa: E402


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


def test_landmarks68_box_matches_the_landmark_extent(astronaut_faces):
    """LANDMARKS68_TO_EXTENT (measured on AFLW training labels) turns an unseen face's 68 points
    into its MediaPipe landmark box: a box-only face is re-cropped at the training framing."""
    full, _ = astronaut_faces
    box = box_from_landmarks68(full.landmarks68_2d[None])[0]
    truth = full.box
    side = truth[2:] - truth[:2]
    assert np.all(np.abs((box[2:] - box[:2]) / side - 1) < 0.1)
    assert np.all(np.abs((box[:2] + box[2:]) / 2 - (truth[:2] + truth[2:]) / 2) < 0.08 * side)


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


def test_regressor_start_fits_as_well_as_the_teacher():
    """The landmark fit from the network's start (before it is averaged with the network) fits
    MediaPipe's points as well as the fit from MediaPipe's own pose (the teacher)."""
    image = data.astronaut()
    with densemesh.Reconstructor(device="cpu", refine="none") as rec, \
            densemesh.Reconstructor(device="cpu", refine="none", regressor=None) as teacher:
        dets = rec.detector.detect(image)
        state, _ = rec.fit_detections([image] * len(dets), dets, photo=False)
        a, b = rec.reconstruct_detections([image] * len(dets), dets, state=state)[0], teacher(image)[0]
        blended = rec(image)[0]
    # with the network, points hidden under its pose count less, so the RMS over all 468 points
    # (fit_error) is a little higher by design (measured 1.10x); the landmarks agree
    assert a.fit_error < 1.2 * b.fit_error
    size = np.sqrt(np.prod(b.landmarks68_2d.max(0) - b.landmarks68_2d.min(0)))
    assert np.linalg.norm(a.landmarks68_2d - b.landmarks68_2d, axis=1).mean() / size < 0.01
    # averaged with the network the mesh moves off MediaPipe's points, but not far (measured:
    # 1.5x the fit error, the 68 points 1.7 % of the face size away)
    assert blended.fit_error < 2.0 * b.fit_error
    assert np.linalg.norm(blended.landmarks68_2d - b.landmarks68_2d, axis=1).mean() / size < 0.03


def test_unmirroring_a_prediction_mirrors_its_face():
    """The parameter-level mirror (test-time mirroring) against the independent iBUG left-right
    index map: the 68 points of an unmirrored prediction are the mirror image of the original's,
    and mirroring twice gives the prediction back."""
    model = FaceModel.load()
    maps = model.mirror_maps()
    g = torch.Generator().manual_seed(3)
    rotation = camera.euler_to_matrix(torch.tensor([[50.0, -10.0, 15.0], [-75.0, 5.0, -5.0]]))
    expression = torch.zeros(2, 53)
    expression[:, model.expression_names.index("mouthSmile_L")] = 0.8
    expression[:, model.expression_names.index("eyeBlink_R")] = 1.0
    pred = Prediction(torch.randn(2, 100, generator=g), expression, rotation, torch.tensor([[6.0, 60.0, 70.0]] * 2))

    def points(p):
        verts = model.decode(p.identity, p.expression, model.ibug68)
        return camera.project_weak(verts, p.rotation, p.weak[:, 0], p.weak[:, 1:]).numpy()

    original, mirrored = points(pred), points(unmirror(pred, maps))
    expected = original[:, aflw.MIRROR_68]
    expected[..., 0] = REGRESSOR_SIZE - 1 - expected[..., 0]
    assert np.abs(mirrored - expected).max() < 0.1  # crop px (a face is ~60 px wide here)
    twice = unmirror(unmirror(pred, maps), maps)
    for field in Prediction.__dataclass_fields__:
        assert torch.allclose(getattr(twice, field), getattr(pred, field), atol=0.05), field
    mean = average(pred, twice)
    assert torch.allclose(mean.rotation, pred.rotation, atol=1e-4)
    assert torch.allclose(mean.rotation @ mean.rotation.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5)
