"""Every coordinate convention of densemesh, and every conversion between them.

Spaces (all lengths in centimetres unless stated):

* **model** - ICT-FaceKit space: right-handed, +X towards the subject's left,
  +Y up, +Z out of the face (a frontal face looks down +Z).
* **camera** - OpenCV camera space: +X right in the image, +Y down in the
  image, +Z forward, away from the camera. A posed face is
  ``camera = MODEL_TO_CAMERA @ (scale * R @ model) + t``; with ``R = I`` it looks
  straight into the camera.
* **pixels** - image pixels, OpenCV-style: x right, y down, the centre of the
  top-left pixel at (0, 0). (MediaPipe's normalised coordinates put the
  image's left edge at 0, so pixel = normalised * size - 0.5.)
* **PyTorch3D view space** - +X left, +Y up, +Z forward: camera space with X and
  Y negated. :func:`pytorch3d_cameras` folds that into the rasteriser's camera,
  so meshes are handed to PyTorch3D in camera space and nothing else needs to know.

Head pose is reported as (yaw, pitch, roll) in degrees, the intrinsic
rotations ``R = R_y(yaw) @ R_x(pitch) @ R_z(roll)`` about the model axes
(right-handed): yaw > 0 turns the face to the subject's left (the nose
moves to the image's right), pitch > 0 tips the nose down, roll > 0 turns
the face anticlockwise as the camera sees it (the subject's left side goes up).
"""
from __future__ import annotations

import numpy as np
import torch
from pytorch3d import transforms as _t3d

#: Model axes -> camera axes (a 180 degree turn about X): flips Y and Z.
MODEL_TO_CAMERA = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
EULER_CONVENTION = "YXZ"  # yaw about Y, then pitch about X, then roll about Z (intrinsic)


def euler_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """(..., 3) yaw, pitch, roll in degrees -> (..., 3, 3) rotation matrices."""
    return _t3d.euler_angles_to_matrix(torch.deg2rad(angles_deg), EULER_CONVENTION)


def matrix_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) yaw, pitch, roll in degrees."""
    return torch.rad2deg(_t3d.matrix_to_euler_angles(rotation, EULER_CONVENTION))


def yaw(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (...,) the yaw of :func:`matrix_to_euler` in degrees (for
    |pitch| < 90), without the other two angles."""
    return torch.rad2deg(torch.atan2(rotation[..., 0, 2], rotation[..., 2, 2]))


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) continuous 6D representation (first two rows) -> (..., 3, 3)."""
    return _t3d.rotation_6d_to_matrix(d6)


def matrix_to_rotation_6d(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6) continuous 6D representation."""
    return _t3d.matrix_to_rotation_6d(rotation)


#: (3, 9): v @ SKEW_BASIS is the cross-product matrix of v, flattened row by row
SKEW_BASIS = torch.zeros(3, 9)
SKEW_BASIS[[2, 1, 2, 0, 1, 0], [1, 2, 3, 5, 6, 7]] = torch.tensor([-1.0, 1.0, 1.0, -1.0, -1.0, 1.0])


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices: skew(v) @ u = v x u."""
    return (v @ SKEW_BASIS.to(v)).unflatten(-1, (3, 3))


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis * angle in radians -> (..., 3, 3), by Rodrigues' formula
    R = I + sin(t)/t K + 2 sin(t/2)^2/t^2 K^2 (K = skew(axis * angle)): a fifth of PyTorch3D's
    operations (it goes through quaternions), and the landmark fit turns every frame; smooth at
    0 (differentiable there)."""
    k = skew(axis_angle)
    angle = (axis_angle * axis_angle).sum(-1).clamp(min=1e-24).sqrt()[..., None, None]
    half = torch.sin(angle / 2) / (angle / 2)
    return torch.eye(3, dtype=k.dtype, device=k.device) + torch.sin(angle) / angle * k + 0.5 * half * half * (k @ k)


def rotation_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3), (B, 3, 3) rotations -> (B,) the angle of the turn between them, degrees."""
    return torch.rad2deg(_t3d.so3_relative_angle(a, b.to(a), cos_bound=0.0))


def nearest_rotation(matrices: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) any matrices -> the nearest rotations (SVD; determinant +1)."""
    u, _, vt = torch.linalg.svd(matrices)
    det = torch.linalg.det(u @ vt)
    return torch.cat([u[..., :2], u[..., 2:] * det[..., None, None]], -1) @ vt


def weak_to_pinhole(scale: torch.Tensor, point_px: torch.Tensor, principal: torch.Tensor,
                    focal: torch.Tensor) -> torch.Tensor:
    """Where a weak-perspective camera puts a point, in a pinhole camera: scale (B,) px per cm,
    point_px (B, 2) the point's pixel, principal (B, 2) px, focal (B,) px -> (B, 3) camera cm,
    at the depth where ``focal`` gives ``scale`` px per cm, on the ray through ``point_px``."""
    depth = focal / scale
    return torch.cat([(point_px - principal) * (depth / focal)[:, None], depth[:, None]], 1)


def model_to_camera(vertices: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                    scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Pose model-space points into camera space.

    vertices (B, N, 3) model cm, rotation (B, 3, 3), translation (B, 3) camera cm,
    scale (B,) or float -> (B, N, 3) camera cm.
    """
    flip = MODEL_TO_CAMERA.to(vertices)
    turned = vertices @ (flip @ rotation).transpose(-1, -2)
    if not isinstance(scale, float):
        scale = scale[:, None, None]
    return scale * turned + translation[:, None, :]


def camera_to_model(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                    scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Inverse of :func:`model_to_camera`. points (B, N, 3) camera cm -> (B, N, 3) model cm."""
    flip = MODEL_TO_CAMERA.to(points)
    if not isinstance(scale, float):
        scale = scale[:, None, None]
    return ((points - translation[:, None, :]) / scale) @ (flip @ rotation)


def view_direction_model(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) pose -> (B, 3) unit vector in model space pointing from the face to the camera
    (for an orthographic view; perspective callers use :func:`camera_to_model` on the origin)."""
    to_camera = torch.tensor([0.0, 0.0, -1.0]).to(rotation)
    return (to_camera @ (MODEL_TO_CAMERA.to(rotation) @ rotation))


def project(points: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """Pinhole projection. points (B, N, 3) camera cm, focal (B,) px, principal (B, 2) px
    -> (B, N, 2) pixels."""
    z = points[..., 2:3].clamp(min=1e-3)
    return focal[:, None, None] * points[..., :2] / z + principal[:, None, :]


def project_weak(vertices: torch.Tensor, rotation: torch.Tensor, scale: torch.Tensor,
                 offset: torch.Tensor) -> torch.Tensor:
    """Weak-perspective (scaled orthographic) projection of model points.

    vertices (B, N, 3) model cm, rotation (B, 3, 3), scale (B,) px/cm, offset (B, 2) px
    -> (B, N, 2) pixels: ``scale * (MODEL_TO_CAMERA @ R @ v)[:2] + offset``.
    """
    cam = vertices @ (MODEL_TO_CAMERA.to(vertices) @ rotation).transpose(-1, -2)
    return scale[:, None, None] * cam[..., :2] + offset[:, None, :]


def normalized_to_pixels(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 2) coordinates in [0, 1] between the image edges (MediaPipe) -> pixel coordinates."""
    return np.asarray(xy, np.float64) * [width, height] - 0.5


def pytorch3d_cameras(focal: torch.Tensor, principal: torch.Tensor, image_size: tuple[int, int]):
    """PyTorch3D cameras for meshes given in (OpenCV) camera space: a vertex lands on the pixel
    :func:`project` gives. focal (B,) px, principal (B, 2) px, image_size (height, width).

    PyTorch3D's own view space is X and Y negated; its OpenCV helper folds that flip into the
    camera's rotation, and samples pixel centres at +0.5 (hence the shift of the principal point).
    """
    from pytorch3d.utils import cameras_from_opencv_projection

    b = focal.shape[0]
    k = torch.zeros(b, 3, 3).to(focal)
    k[:, 0, 0] = k[:, 1, 1] = focal
    k[:, :2, 2] = principal + 0.5
    k[:, 2, 2] = 1.0
    eye = torch.eye(3).to(focal).expand(b, 3, 3)
    size = torch.tensor([list(image_size)] * b, device=focal.device)
    return cameras_from_opencv_projection(eye, torch.zeros(b, 3).to(focal), k, size)
