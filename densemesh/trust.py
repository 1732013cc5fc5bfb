"""Per face and per point, what decides the mesh: MediaPipe's landmarks where its face is
plausible and the point visible under the network's pose, the network alone elsewhere
(profiles; faces MediaPipe turns the wrong way)."""
from __future__ import annotations

import numpy as np
import torch

from densemesh import camera
from densemesh.detect import Detection
from densemesh.facemodel import FaceModel, vertex_facing
from densemesh.fit import FitState, mediapipe_rotations

#: Beyond this |yaw| (degrees, the network's estimate) MediaPipe's landmarks are not used: its
#: landmarker is made for faces that show both eyes, and past it the network alone scores
#: better on the AFLW validation split (tools/eval_aflw.py --trust: NME of the MediaPipe fit
#: vs the network 5.05 / 5.81 % at 40-50 degrees, 6.18 / 5.93 % at 50-60, 6.27 / 5.83 % at 60-70).
MEDIAPIPE_YAW_LIMIT = 50.0
#: The network and MediaPipe's head transform may disagree by this much yaw (degrees) before
#: MediaPipe's face is judged implausible (a face turned the wrong way, a hallucinated mesh).
YAW_DISAGREEMENT = 30.0
#: cosine between surface normal and view ray at which a point counts fully (see point_weights)
FACING_FULL_WEIGHT = 0.3


def trusted(detections: list[Detection], net: FitState | None) -> list[bool]:
    """Per face: whether MediaPipe's landmarks decide the mesh. They need to exist, and with the
    network's estimate ``net`` at hand the face has to be within MEDIAPIPE_YAW_LIMIT and
    MediaPipe's own head pose has to agree with the network's yaw (same side beyond 15 degrees,
    within YAW_DISAGREEMENT)."""
    have = np.array([d.landmarks is not None for d in detections])
    if net is None:
        return have.tolist()
    y = camera.matrix_to_euler(net.rotation)[:, 0].cpu().numpy()
    y_mp = camera.matrix_to_euler(mediapipe_rotations(detections))[:, 0].numpy()
    wrong_side = (np.abs(y) > 15) & (np.sign(y_mp) != np.sign(y))
    return (have & (np.abs(y) <= MEDIAPIPE_YAW_LIMIT) & ~wrong_side & (np.abs(y - y_mp) <= YAW_DISAGREEMENT)).tolist()


def point_weights(model: FaceModel, net: FitState) -> torch.Tensor:
    """(B, 468) weights of MediaPipe's points in the landmark fit from the network's pose:
    1 where the surface point faces the camera, falling to 0 at the silhouette and behind it
    (MediaPipe places hidden points on the visible outline, where they do not belong)."""
    cam = camera.model_to_camera(model.decode(net.identity, net.expression), net.rotation, net.translation)
    facing = model.landmarks(vertex_facing(cam, model.faces)[..., None], "mediapipe")[..., 0]
    return (-facing / FACING_FULL_WEIGHT).clamp(0.0, 1.0)
