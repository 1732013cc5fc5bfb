"""Coordinate conventions, rasterisers and barycentrics agree with each other."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from densemesh import camera, render
from densemesh.facemodel import vertex_normals


def test_euler_round_trip_and_meaning():
    angles = torch.tensor([[30.0, -20.0, 10.0], [-75.0, 40.0, -5.0]])
    assert torch.allclose(camera.matrix_to_euler(camera.euler_to_matrix(angles)), angles, atol=1e-3)
    assert torch.allclose(camera.yaw(camera.euler_to_matrix(angles)), angles[:, 0], atol=1e-3)
    nose = torch.tensor([0.0, 0.0, 1.0])
    # yaw > 0: the nose moves to the image's right (+x camera); pitch > 0: the nose tips down (+y camera)
    yawed = camera.model_to_camera(nose.view(1, 1, 3), camera.euler_to_matrix(torch.tensor([[30.0, 0, 0]])), torch.zeros(1, 3))
    pitched = camera.model_to_camera(nose.view(1, 1, 3), camera.euler_to_matrix(torch.tensor([[0, 30.0, 0]])), torch.zeros(1, 3))
    assert yawed[0, 0, 0] > 0.4 and pitched[0, 0, 1] > 0.4
    # a frontal face looks at the camera: model +Z -> camera -Z, model +Y -> camera -Y (image up)
    assert torch.allclose(camera.model_to_camera(torch.tensor([[[0.0, 1.0, 1.0]]]), torch.eye(3)[None], torch.zeros(1, 3)),
                          torch.tensor([[[0.0, -1.0, -1.0]]]))


def test_model_camera_round_trip_and_projections():
    pts = torch.randn(2, 50, 3)
    rot = camera.euler_to_matrix(torch.tensor([[10.0, 5, -3], [-40, 0, 20]]))
    t = torch.tensor([[1.0, 2.0, 60.0], [-3.0, 0.5, 80.0]])
    cam = camera.model_to_camera(pts, rot, t)
    assert torch.allclose(camera.camera_to_model(cam, rot, t), pts, atol=1e-4)
    uv = camera.project(cam, torch.tensor([800.0, 900.0]), torch.tensor([[320.0, 240.0], [100.0, 50.0]]))
    assert torch.allclose(uv[0, 0], 800 * cam[0, 0, :2] / cam[0, 0, 2] + torch.tensor([320.0, 240.0]))
    # weak perspective = perspective with every depth replaced by the face's distance
    f, c = torch.tensor([800.0, 900.0]), torch.tensor([[320.0, 240.0], [100.0, 50.0]])
    weak = camera.project_weak(pts, rot, f / t[:, 2], c + f[:, None] * t[:, :2] / t[:, 2:])
    assert torch.allclose(weak, f[:, None, None] * cam[..., :2] / t[:, None, 2:] + c[:, None], atol=1e-3)
    px = camera.normalized_to_pixels(np.array([[0.0, 0.0], [1.0, 1.0]]), 640, 480)
    assert np.allclose(px, [[-0.5, -0.5], [639.5, 479.5]])


def test_axis_angle_rotations_turn_about_the_axis_by_the_angle():
    axes = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    for angle in (0.0, 1e-7, 1e-3, 0.5, 3.0):
        r = camera.axis_angle_to_matrix(axes * angle)
        assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(6, 3, 3), atol=1e-6)
        assert torch.allclose(torch.linalg.det(r), torch.ones(6), atol=1e-6)
        assert torch.allclose((r @ axes[..., None])[..., 0], axes, atol=1e-6)  # the axis stays put
        if angle:
            assert torch.allclose(camera.rotation_angle(r, torch.eye(3).expand(6, 3, 3)),
                                  torch.full((6,), np.degrees(angle)), atol=2e-2)
    u, v = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose((camera.skew(u) @ v[..., None])[..., 0], torch.linalg.cross(u, v), atol=1e-6)
    # differentiable at 0 (the refinement starts there): d(R v)/d(axis angle) = -skew(v)
    w = torch.zeros(3, requires_grad=True)
    x = torch.tensor([1.0, 2.0, 3.0])
    jac = torch.autograd.functional.jacobian(lambda a: camera.axis_angle_to_matrix(a) @ x, w)
    assert torch.allclose(jac, -camera.skew(x), atol=1e-6)


@pytest.fixture(scope="module")
def posed(face_model):
    verts = face_model.decode(torch.randn(1, 100) * 0.5, face_model.expression_vector({"jawOpen": 0.3}))
    cam = camera.model_to_camera(verts, camera.euler_to_matrix(torch.tensor([[25.0, -10.0, 5.0]])),
                                 torch.tensor([[1.0, -2.0, 55.0]]))
    return cam, torch.tensor([300.0]), torch.tensor([[70.3, 61.7]]), (128, 144)


def test_rasterisers_agree(face_model, posed):
    cam, f, c, size = posed
    a = render.rasterize(cam, face_model.faces, f, c, size, backend="open3d")
    b = render.rasterize(cam, face_model.faces, f, c, size, backend="pytorch3d")
    covered = (a.pix_to_face >= 0) | (b.pix_to_face >= 0)
    assert covered.sum() > 2000
    assert (a.pix_to_face == b.pix_to_face)[covered].float().mean() > 0.98
    both = (a.pix_to_face >= 0) & (a.pix_to_face == b.pix_to_face)
    assert (a.depth - b.depth)[both].abs().max() < 1e-3
    assert (a.bary - b.bary)[both].abs().max() < 1e-3


def test_differentiable_barycentrics_match_the_rasteriser(face_model, posed):
    cam, f, c, size = posed
    ras = render.rasterize(cam, face_model.faces, f, c, size)
    verts = cam.clone().requires_grad_(True)
    bary = render.barycentrics(verts, face_model.faces, f, c, ras.pix_to_face)
    valid = ras.pix_to_face >= 0
    assert (bary - ras.bary)[valid].abs().max() < 1e-3
    # the barycentric point reprojects onto the pixel centre
    point = render.interpolate(ras.pix_to_face, bary, face_model.faces, verts)
    uv = camera.project(point[valid][None], f, c)[0]
    ys, xs = torch.nonzero(valid[0], as_tuple=True)
    assert (uv - torch.stack([xs, ys], -1).float()).abs().max() < 1e-2
    bary.sum().backward()
    assert torch.isfinite(verts.grad).all() and verts.grad.abs().sum() > 0


def test_vertices_project_where_the_rasteriser_draws_them(face_model, posed):
    cam, f, c, size = posed
    ras = render.rasterize(cam, face_model.faces, f, c, size)
    vis = render.visibility(cam, face_model.faces, f, c, size)[0]
    uv = camera.project(cam, f, c)[0].round().long()
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < size[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < size[0])
    hit = ras.pix_to_face[0, uv[inside, 1], uv[inside, 0]] >= 0
    assert hit.float().mean() > 0.95  # the rest sit on the rim, between pixel centres
    # turned 25 deg to its left: the subject's right cheek faces the camera, the left ear does not
    x = face_model.mean[:, 0]
    assert vis[(x < -5)].float().mean() > vis[(x > 5)].float().mean() + 0.3
    assert vis[face_model.ibug68[30]]  # nose tip


def test_ray_visibility_is_the_fine_z_buffer_limit(face_model, posed):
    """The CPU's ray per vertex agrees with the z-buffer test, and more so the finer the raster
    (the z-buffer's pixel-sized depth steps hide sloped skin that the exact test keeps)."""
    cam, f, c, size = posed
    rays = render.visibility(cam, face_model.faces, f, c, size, backend="open3d")[0]
    disagree = []
    for k in (1, 4):
        zbuf = render.visibility(cam, face_model.faces, f * k, c * k, (size[0] * k, size[1] * k), backend="pytorch3d")[0]
        disagree.append((rays != zbuf).float().mean().item())
        assert (zbuf & ~rays).float().mean() < 0.01  # what the z-buffer sees, a ray sees
    assert disagree[1] < 0.5 * disagree[0] and disagree[1] < 0.05, disagree
    assert 0.3 < rays.float().mean() < 0.9


def test_the_ray_caster_child_answers_as_this_process_does_and_a_dead_one_is_replaced(face_model, posed):
    """A video casts the visibility rays in a child process (densemesh.raycast.RayCaster): the
    same answer as casting here; when the child dies, this process casts, with the same answer."""
    from densemesh import raycast
    from densemesh.raycast import RayCaster

    cam, f, c, size = posed
    here = render.visibility(cam, face_model.faces, f, c, size, backend="open3d")
    with RayCaster(face_model.faces.numpy()) as caster:
        child = caster._child
        assert torch.equal(render.visibility(cam, face_model.faces, f, c, size, backend="open3d", caster=caster), here)
        child.kill()
        child.wait()
        assert torch.equal(render.visibility(cam, face_model.faces, f, c, size, backend="open3d", caster=caster), here)
        assert caster._child is None
    with RayCaster(face_model.faces.numpy()) as caster:
        child = caster._child
        np.testing.assert_array_equal(caster.unoccluded(cam.numpy()), raycast.unoccluded(cam.numpy(), face_model.faces.numpy()))
        assert caster._child is child  # the child answered
    assert child.poll() is not None  # closed with its caster


def test_prefetched_rays_answer_the_vertices_they_were_sent_for(face_model, posed):
    """describe() sends a face's vertices to the ray-casting child before it computes the rest; the
    answer must belong to the vertices asked about, also when other vertices are asked first, or
    the child dies in between."""
    from densemesh import raycast
    from densemesh.raycast import RayCaster

    faces = face_model.faces.numpy()
    a = posed[0].numpy()
    centre = a.mean(1, keepdims=True)  # the head turned round its centre: other vertices hidden
    b = (a - centre) @ camera.euler_to_matrix(torch.tensor([[40.0, 0.0, 0.0]]))[0].numpy().T + centre
    want_a, want_b = raycast.unoccluded(a, faces), raycast.unoccluded(b, faces)
    assert (want_a != want_b).sum() > 100
    with RayCaster(faces) as caster:
        caster.prefetch(a)
        np.testing.assert_array_equal(caster.unoccluded(a), want_a)
        caster.prefetch(a)
        np.testing.assert_array_equal(caster.unoccluded(b), want_b)  # a's answer is read and dropped
        caster.prefetch(b)
        caster.prefetch(a)  # b's answer is never asked for
        np.testing.assert_array_equal(caster.unoccluded(a), want_a)
        np.testing.assert_array_equal(caster.unoccluded(b), want_b)
        caster.prefetch(b)
        caster._child.kill()
        caster._child.wait()
        np.testing.assert_array_equal(caster.unoccluded(b), want_b)
        assert caster._child is None


def test_an_embedded_interpreter_casts_the_rays_in_its_own_process(face_model, posed, monkeypatch):
    """Inside e.g. Blender, sys.executable is not a Python that runs ``-m densemesh.raycast``."""
    from densemesh.raycast import RayCaster

    cam, f, c, size = posed
    monkeypatch.setattr("sys.executable", "/opt/blender/blender")
    with RayCaster(face_model.faces.numpy()) as caster:
        assert caster._child is None
        assert torch.equal(render.visibility(cam, face_model.faces, f, c, size, backend="open3d", caster=caster),
                           render.visibility(cam, face_model.faces, f, c, size, backend="open3d"))


def test_vertex_normals_sum_the_adjacent_face_normals(face_model, posed):
    cam = posed[0]
    tri = cam[:, face_model.faces]
    face_n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    summed = torch.zeros_like(cam)
    for corner in range(3):
        summed = summed.index_add(1, face_model.faces[:, corner], face_n)
    expected = summed / summed.norm(dim=-1, keepdim=True)
    assert torch.allclose(vertex_normals(cam, face_model.faces), expected, atol=1e-5)


def test_sh_shading_is_lambertian_in_band_one():
    normals = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]])
    sh = torch.zeros(1, 9, 3)
    sh[0, 2] = 1.0  # linear term along z
    out = render.shade(torch.ones(1, 2, 3), normals, sh)
    assert out[0, 0, 0] > 0 > out[0, 1, 0]
