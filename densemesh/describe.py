"""Fitted parameters -> :class:`~densemesh.result.FaceResult`: the one place where photos and video
frames turn a :class:`~densemesh.fit.FitState` into results (vertices in every space,
visibility, both 68-point conventions, fit error, quality, colours, texture)."""
from __future__ import annotations

import numpy as np
import torch

from densemesh import camera, render
from densemesh.crop import square_box
from densemesh.detect import Detection
from densemesh.facemodel import FaceModel, vertex_facing
from densemesh.fit import FitState
from densemesh.quality import face_quality
from densemesh.raycast import RayCaster
from densemesh.result import FaceResult, Pose

#: z-buffer resolution (px, square crop round each face) for per-vertex visibility on a GPU (the
#: CPU casts a ray per vertex instead, see densemesh.render.visibility)
VISIBILITY_SIZE = 256


@torch.no_grad()
def describe(model: FaceModel, images: list[np.ndarray], detections: list[Detection], state: FitState,
             texture: bool = False, caster: RayCaster | None = None) -> list[FaceResult]:
    """One FaceResult per detection; images: the (H, W, 3) uint8 RGB image of each (one size).
    ``state.fitted`` (B,) bool says what decided each face (``FaceResult.source``); caster: the
    CPU's visibility rays in a child process (the reconstructor's)."""
    vertices = model.decode(state.identity, state.expression)
    cam = camera.model_to_camera(vertices, state.rotation, state.translation)
    if caster is not None:  # the child casts the visibility rays while this thread goes on
        caster.prefetch(cam.cpu().numpy())
    uv = camera.project(cam, state.focal, state.principal)
    facing = vertex_facing(cam, model.faces)
    ids68 = model.contour_landmarks(cam, uv, facing)
    rows = torch.arange(len(detections), device=cam.device)[:, None]
    fitted = state.fitted.tolist() if state.fitted is not None else [True] * len(detections)
    error = fit_error(model, uv, detections, fitted)
    euler = camera.matrix_to_euler(state.rotation)
    visible = visibility(model, cam, uv, state, images[0].shape[:2], facing, caster)
    results = []
    for i, det in enumerate(detections):
        pose = Pose(*(float(a) for a in euler[i]), state.rotation[i].cpu().numpy(),
                    state.translation[i].cpu().numpy(), float(state.focal[i]), state.principal[i].cpu().numpy())
        lm68 = uv[rows, ids68][i].cpu().numpy()
        quality = face_quality(images[i], lm68, pose.yaw, pose.pitch, float(visible[i].float().mean()), float(error[i]))
        result = FaceResult(
            vertices=vertices[i].cpu().numpy(), vertices_camera=cam[i].cpu().numpy(),
            vertices_2d=uv[i].cpu().numpy(), visibility=visible[i].cpu().numpy(),
            landmarks68_2d=lm68, landmarks68_3d=cam[rows, ids68][i].cpu().numpy(),
            landmarks68_projected=uv[i, model.ibug68].cpu().numpy(),
            pose=pose, identity=state.identity[i].cpu().numpy(), expression=state.expression[i].cpu().numpy(),
            expression_names=list(model.expression_names), box=det.box.copy(),
            score=det.score, fit_error=float(error[i]), colors=vertex_colors(images[i], uv[i], visible[i]),
            image_size=tuple(images[i].shape[:2]), quality=quality, source="mediapipe" if fitted[i] else "regressor")
        if texture:
            result.texture = render.bake_texture(images[i], uv[i].cpu(), visible[i].cpu(), model.faces.cpu(),
                                                 model.uvs.cpu(), model.face_uvs.cpu())
        results.append(result)
    return results


def fit_error(model: FaceModel, uv: torch.Tensor, detections: list[Detection], fitted: list[bool]) -> torch.Tensor:
    """(B,) RMS distance between the fitted surface's MediaPipe points (uv (B, N, 2) px of every
    vertex) and MediaPipe's 468, in face sizes; NaN where the face was not fitted to them."""
    rms = torch.full((len(detections),), float("nan"))
    rows = [i for i, (d, f) in enumerate(zip(detections, fitted)) if f and d.landmarks is not None]
    if rows:
        target = torch.tensor(np.stack([detections[i].landmarks[:468, :2] for i in rows]),
                              dtype=torch.float32, device=uv.device)
        mp_uv = model.landmarks(uv[rows], "mediapipe")
        size = (target.max(1).values - target.min(1).values).prod(1).sqrt()
        rms[rows] = (((mp_uv - target).norm(dim=-1) ** 2).mean(1).sqrt() / size).cpu()
    return rms


def visibility(model: FaceModel, cam: torch.Tensor, uv: torch.Tensor, state: FitState,
               image_hw: tuple[int, int], facing: torch.Tensor, caster: RayCaster | None = None) -> torch.Tensor:
    """(B, N) bool visibility inside the image (:func:`densemesh.render.visibility`), per face in
    a square crop of VISIBILITY_SIZE px (a GPU's z-buffer: bounded cost on huge images). cam
    (B, N, 3) cm, uv (B, N, 2) px."""
    boxes = [square_box(uv[i].cpu().numpy(), 1.05) for i in range(len(uv))]
    k = torch.tensor([VISIBILITY_SIZE / (b[2] - b[0]) for b in boxes], dtype=cam.dtype, device=cam.device)
    origin = torch.tensor(np.stack([b[:2] for b in boxes]), dtype=cam.dtype, device=cam.device)
    crop_vis = render.visibility(cam, model.faces, state.focal * k, (state.principal - origin) * k[:, None],
                                 (VISIBILITY_SIZE, VISIBILITY_SIZE), facing, caster=caster)
    h, w = image_hw
    inside = (uv[..., 0] > -0.5) & (uv[..., 0] < w - 0.5) & (uv[..., 1] > -0.5) & (uv[..., 1] < h - 0.5)
    return crop_vis & inside


def vertex_colors(image: np.ndarray, uv: torch.Tensor, visible: torch.Tensor) -> np.ndarray:
    """Per-vertex colours (N, 3) uint8 sampled bilinearly at uv (N, 2) px; hidden vertices get
    the mean visible colour."""
    import cv2

    pts = uv.cpu().numpy().astype(np.float32)
    c = cv2.remap(image, pts[None, :, 0], pts[None, :, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
    vis = visible.cpu().numpy()
    c[~vis] = c[vis].mean(0).round() if vis.any() else 128
    return c
