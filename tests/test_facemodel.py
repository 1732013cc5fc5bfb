"""The face-model asset and FaceModel: decoding, expressions, landmarks, rebuild."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT

# iBUG-68 mirror partners (standard markup symmetry), subject's right <-> left
MIRROR = ([(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
          + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
             (48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64), (61, 63), (67, 65)])
MIDLINE = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


def test_counts_and_topology(face_model, head_model):
    assert face_model.num_vertices == 7944
    assert face_model.faces.shape == (15521, 3)
    assert head_model.num_vertices == 24591
    assert face_model.num_identity == 100 and face_model.num_expression == 53
    # every face vertex is used and every index is in range
    assert torch.equal(torch.unique(face_model.faces), torch.arange(face_model.num_vertices))
    assert int(head_model.faces.max()) == head_model.num_vertices - 1
    assert face_model.face_uvs.shape == face_model.faces.shape
    assert 0.0 <= float(face_model.uvs.min()) and float(face_model.uvs.max()) <= 1.0


def test_face_is_one_clean_patch(face_model):
    import trimesh

    mesh = trimesh.Trimesh(face_model.mean.numpy(), face_model.faces.numpy(), process=False)
    assert len(mesh.split(only_watertight=False)) == 1
    edges, counts = np.unique(np.sort(mesh.edges, axis=1), axis=0, return_counts=True)
    assert counts.max() == 2
    boundary = edges[counts == 1]
    # rim + mouth + two eyes: four loops, so Euler characteristic V - E + F = 2 - 2g - b = -2
    euler = mesh.vertices.shape[0] - len(edges) + len(mesh.faces)
    assert euler == 2 - 4
    assert np.bincount(boundary.ravel()).max() == 2  # no bow-tie vertices


def test_decode_shapes_dtypes_devices(face_model):
    ident, expr = torch.randn(3, 100), torch.rand(3, 53)
    out = face_model.decode(ident, expr)
    assert out.shape == (3, 7944, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert face_model.decode().shape == (1, 7944, 3)
    assert face_model.decode(expression=expr[:2]).shape == (2, 7944, 3)
    m64 = face_model.to(torch.float64)
    try:
        assert m64.decode(ident, expr).dtype == torch.float64
    finally:
        face_model.to(torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_decode_on_gpu(face_model):
    cpu = face_model.decode(torch.ones(1, 100), torch.full((1, 53), 0.2))
    gpu = face_model.to("cuda").decode(torch.ones(1, 100).cuda(), torch.full((1, 53), 0.2).cuda())
    face_model.to("cpu")
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


def test_decode_is_linear_and_differentiable(face_model):
    a, b = torch.randn(2, 100), torch.rand(2, 53)
    zero = face_model.decode()
    both = face_model.decode(a, b) - zero
    parts = (face_model.decode(a) - zero) + (face_model.decode(expression=b) - zero)
    assert torch.allclose(both, parts, atol=1e-4)
    assert torch.allclose(face_model.decode(2 * a) - zero, 2 * (face_model.decode(a) - zero), atol=1e-4)
    coeff = torch.zeros(1, 53, requires_grad=True)
    face_model.decode(expression=coeff)[0, face_model.ibug68[8], 1].backward()
    assert coeff.grad[0, face_model.expression_names.index("jawOpen")] < -1.0


def _landmarks(model, **weights):
    return model.landmarks(model.decode(expression=model.expression_vector(weights)))[0]


def test_jaw_open_lowers_the_chin(face_model):
    rest, open_ = _landmarks(face_model), _landmarks(face_model, jawOpen=1.0)
    assert open_[8, 1] < rest[8, 1] - 1.5  # chin drops more than 1.5 cm
    gap = lambda lm: float(lm[62, 1] - lm[66, 1])  # noqa: E731  inner lips apart
    assert gap(open_) > gap(rest) + 1.0
    assert torch.allclose(open_[27], rest[27], atol=0.05)  # the nose bridge stays


def _frontal_landmarks(model, **weights):
    """68 landmarks (2D px) of a frontal face at 60 cm, lids and jaw on the visible outline."""
    from densemesh.camera import model_to_camera, project

    cam = model_to_camera(model.decode(expression=model.expression_vector(weights)), torch.eye(3)[None],
                          torch.tensor([[0.0, 0.0, 60.0]]))
    uv = project(cam, torch.tensor([2000.0]), torch.zeros(1, 2))
    return uv[0, model.contour_landmarks(cam, uv)[0]]


@pytest.mark.parametrize("side,lids,other", [("L", [(43, 47), (44, 46)], [(37, 41), (38, 40)]),
                                             ("R", [(37, 41), (38, 40)], [(43, 47), (44, 46)])])
def test_blink_closes_its_own_lids(face_model, side, lids, other):
    rest, blink = _frontal_landmarks(face_model), _frontal_landmarks(face_model, **{f"eyeBlink_{side}": 1.0})
    opening = lambda lm, pairs: sum(float(lm[d, 1] - lm[u, 1]) for u, d in pairs)  # noqa: E731  px, y down
    assert opening(rest, lids) > 40  # open eyes, about 1 cm at 2000 px / 60 cm
    assert opening(blink, lids) < 0.2 * opening(rest, lids)
    assert abs(opening(blink, other) - opening(rest, other)) < 0.05 * opening(rest, other)
    # the subject's left eye is on the image's right
    assert (rest[lids[0][0], 0] > rest[other[0][0], 0]) == (side == "L")


def test_the_visible_eye_opening_closes_in_a_blink(face_model):
    from densemesh import camera, render

    f, c = torch.tensor([2000.0]), torch.tensor([[255.5, 255.5]])
    rest = camera.project(camera.model_to_camera(face_model.mean[None], torch.eye(3)[None],
                                                 torch.tensor([[0.0, 0.0, 60.0]])), f, c)[0]
    x0, y0 = rest[face_model.ibug68[42:48]].min(0).values.long().tolist()  # the subject's left eye
    x1, y1 = rest[face_model.ibug68[42:48]].max(0).values.long().tolist()

    def hole_pixels(**weights):
        cam = camera.model_to_camera(face_model.decode(expression=face_model.expression_vector(weights)),
                                     torch.eye(3)[None], torch.tensor([[0.0, 0.0, 60.0]]))
        ras = render.rasterize(cam, face_model.faces, f, c, (512, 512))
        return (ras.pix_to_face[0, y0:y1 + 1, x0:x1 + 1] < 0).sum().item()

    assert hole_pixels(eyeBlink_L=1.0) < 0.1 * hole_pixels() and hole_pixels() > 1000


def test_smile_and_brows_move_their_landmarks(face_model):
    rest = _landmarks(face_model)
    smile = _landmarks(face_model, mouthSmile_L=1.0)
    assert smile[54, 1] > rest[54, 1] + 0.3 and smile[54, 0] > rest[54, 0]  # left corner up and out
    assert (smile[48] - rest[48]).norm() < 0.25 * (smile[54] - rest[54]).norm()
    inner = _landmarks(face_model, browInnerUp_R=1.0)
    raised = inner[:, 1] - rest[:, 1]
    assert raised[21] > 0.2 and raised[22] < 0.3 * raised[21]  # right inner brow, far less the left
    down = _landmarks(face_model, browDown_L=1.0, browDown_R=1.0)
    assert (down[17:27, 1] < rest[17:27, 1]).all()


FAMILY = {"brow": ("brow",), "eye": ("eye", "cheek"), "cheek": ("cheek", "mouth"),
          "mouth": ("mouth", "jaw", "cheek"), "jaw": ("jaw", "mouth"), "nose": ("nose", "cheek")}


def test_every_expression_moves_its_named_region_and_side(face_model):
    labels = face_model.region_labels
    x = face_model.mean[:, 0]
    for k, name in enumerate(face_model.expression_names):
        disp = face_model.expression_basis[k].norm(dim=1)
        family = next(f for f in FAMILY if name.startswith(f))
        region = face_model.region_names[int(labels[disp.argmax()])]
        assert region.startswith(FAMILY[family]), (name, region)
        if name.endswith(("_L", "_R")):
            own, other = (x > 0.5, x < -0.5) if name.endswith("_L") else (x < -0.5, x > 0.5)
            assert disp[own].sum() > 3 * disp[other].sum(), name


def test_landmarks_in_range_and_mirror_symmetric(face_model):
    ids = face_model.ibug68
    assert ids.shape == (68,) and int(ids.min()) >= 0 and int(ids.max()) < face_model.num_vertices
    lm = face_model.landmarks(face_model.mean[None])[0]
    for right, left in MIRROR:
        mirrored = lm[left] * torch.tensor([-1.0, 1.0, 1.0])
        assert (lm[right] - mirrored).norm() < 0.1, (right, left)  # 1 mm
        assert lm[right, 0] < 0 < lm[left, 0]
    assert lm[MIDLINE, 0].abs().max() < 0.1


def test_contour_lines_hold_the_landmark_and_stay_on_their_side(face_model):
    lines, mean = face_model.ibug68_contour_lines, face_model.mean
    for k in range(17):
        landmark = mean[face_model.ibug68[k]]
        assert face_model.ibug68[k] in lines[k]
        if k != 8:
            assert (torch.sign(mean[lines[k], 0]) == torch.sign(landmark[0])).all()


def test_contour_moves_hidden_jaw_points_onto_the_outline(face_model):
    from densemesh.camera import euler_to_matrix, model_to_camera, project

    def posed(yaw):
        cam = model_to_camera(face_model.mean[None], euler_to_matrix(torch.tensor([[yaw, 0.0, 0.0]])),
                              torch.tensor([[0.0, 0.0, 60.0]]))
        return cam, project(cam, torch.tensor([1000.0]), torch.zeros(1, 2))

    frontal = face_model.contour_landmarks(*posed(0.0))[0]
    fixed = [k for k in range(68) if k not in face_model.ibug68_lid_points.tolist()]
    assert torch.equal(frontal[fixed], face_model.ibug68[fixed])  # only the lids move to their edge
    ids = face_model.contour_landmarks(*posed(70.0))[0]
    # yaw > 0 turns the face to its left: the left jaw line (9-16) turns away and its points move
    # forward round the cheek to the silhouette; the right side (0-7) faces the camera and stays
    assert torch.equal(ids[:8], face_model.ibug68[:8])
    moved = ids[9:17] != face_model.ibug68[9:17]
    assert moved.sum() >= 4
    z = face_model.mean[:, 2]
    assert (z[ids[9:17][moved]] > z[face_model.ibug68[9:17][moved]]).all()


def test_mediapipe_correspondence_lands_on_matching_features(face_model):
    w = face_model.mediapipe_weights
    assert w.shape == (468, 3) and torch.allclose(w.sum(1), torch.ones(468), atol=1e-5)
    assert int(face_model.mediapipe_vertex_ids.max()) < face_model.num_vertices
    mp = face_model.landmarks(face_model.mean[None], "mediapipe")[0]
    ib = face_model.landmarks(face_model.mean[None])[0]
    # MediaPipe FaceMesh ids of features with an ICT iBUG counterpart: chin, subnasale, lips' middles
    for mp_id, ibug_id, tol_cm in [(152, 8, 0.6), (2, 33, 0.4), (0, 51, 0.4), (17, 57, 0.3), (168, 27, 0.4)]:
        assert (mp[mp_id] - ib[ibug_id]).norm() < tol_cm, (mp_id, ibug_id)
    # the canonical mesh is symmetric: x of MediaPipe's mirror pair 33/263 must mirror too
    assert abs(float(mp[33, 0] + mp[263, 0])) < 0.1


def test_eye_landmarks_lie_on_the_lid_margins(face_model):
    import trimesh

    mesh = trimesh.Trimesh(face_model.mean.numpy(), face_model.faces.numpy(), process=False)
    edges, counts = np.unique(np.sort(mesh.edges, axis=1), axis=0, return_counts=True)
    rim = set(edges[counts == 1].ravel().tolist())
    eye_ids = face_model.ibug68[36:48].tolist()
    assert all(v in rim for v in eye_ids)
    # and they sit on the eye holes, not on the outer rim or the mouth
    for v, k in zip(eye_ids, range(36, 48)):
        assert face_model.region_labels[v] == face_model.region_names.index("eye_right" if k < 42 else "eye_left")


def test_regions_cover_the_face(face_model):
    labels = face_model.region_labels
    assert (labels >= 0).all()
    for name in face_model.region_names:
        mask = face_model.region_mask(name)
        assert mask.sum() > 100, name
        if name.endswith(("_left", "_right")):
            x = face_model.mean[mask, 0]
            assert ((x > 0) if name.endswith("_left") else (x < 0)).float().mean() > 0.95, name
    with pytest.raises(ValueError):
        face_model.region_mask("ears")


def test_head_extends_the_face(face_model, head_model):
    ident, expr = torch.randn(1, 100), torch.rand(1, 53)
    face, head = face_model.decode(ident, expr), head_model.decode(ident, expr)
    assert torch.allclose(head[:, :face_model.num_vertices], face, atol=1e-5)
    assert head_model.region_labels[face_model.num_vertices:].eq(-1).all()


def test_asset_is_compact():
    size = (ROOT / "templates" / "face_model.npz").stat().st_size
    assert size <= 30e6
    assert "MIT License" in (ROOT / "templates" / "NOTICE").read_text()


def test_asset_rebuilds_identically(shared, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "build_face_model.py"),
                          "--source", str(shared / "ict-facekit"),
                          "--mediapipe-mesh", str(shared / "mediapipe" / "canonical_face_model.obj"),
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "face_model.npz") == digest(ROOT / "templates" / "face_model.npz")
    assert (tmp_path / "NOTICE").read_text() == (ROOT / "templates" / "NOTICE").read_text()
