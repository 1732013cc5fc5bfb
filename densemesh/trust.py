"""Per face and per point, what decides the mesh: where MediaPipe's face is plausible, the fit to
its landmarks (points weighted by visibility under the network's pose) averaged with the
network's answer; the network alone elsewhere (profiles; faces MediaPipe turns the wrong way),
on a box the side-view detector finds where MediaPipe's landmarks are rejected."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from densemesh import camera
from densemesh.detect import Detection
from densemesh.facemodel import FaceModel, vertex_facing
from densemesh.fit import FitState, mediapipe_rotations

#: Beyond this |yaw| (degrees, the network's estimate) MediaPipe's landmarks are not used: its
#: landmarker is made for faces that show both eyes, and past it the network alone scores
#: better on the AFLW validation split (tools/eval_aflw.py --trust, v5 network, fit not averaged:
#: NME of the MediaPipe fit vs the network 5.06 / 5.28 % at 40-50 degrees, 5.46 / 4.70 % at 50-60).
MEDIAPIPE_YAW_LIMIT = 50.0
#: The network and MediaPipe's head transform may disagree by this much yaw (degrees) before
#: MediaPipe's face is judged implausible (a face turned the wrong way, a hallucinated mesh).
YAW_DISAGREEMENT = 30.0
#: ... or by this much head rotation (degrees, the whole turn between the two): on the AFLW split
#: the one trusted face beyond 45 degrees (66) had MediaPipe's landmarks wrong (fit NME 44 %, the
#: network 8 %); the next largest disagreement among trusted faces was 34 degrees.
ROTATION_DISAGREEMENT = 45.0
#: cosine between surface normal and view ray at which a point counts fully (see point_weights)
FACING_FULL_WEIGHT = 0.3
#: The landmark fit's share when it is averaged with the network's answer (:func:`blend`). Two
#: independent estimates average out: on the AFLW validation split (tools/eval_aflw.py, refine
#: none) the pipeline's bin mean NME is 5.21 % with the fit alone, 4.98 % at 0.6, 4.99 % at 0.5.
MEDIAPIPE_SHARE = 0.6
#: Head rotations of fit and network this far apart (degrees, geodesic) mean one of them is wrong,
#: and then the fit alone answers (from 20 to 25 degrees the fit's share ramps from
#: MEDIAPIPE_SHARE to 1). On the AFLW split all 5 trusted faces beyond 20 degrees had the network
#: wrong (NME 8-18 %, the fit 4-6 %); on the annotated photos the two such faces (a strong
#: expression, an old black-and-white print) too: averaging them costs 1.5 % NME each.
ROTATION_AGREEMENT = (20.0, 25.0)


def trusted(detections: list[Detection], net: FitState | None) -> list[bool]:
    """Per face: whether MediaPipe's landmarks decide the mesh. They need to exist, and with the
    network's estimate ``net`` at hand the face has to be within MEDIAPIPE_YAW_LIMIT and
    MediaPipe's own head pose has to agree with the network's (yaw on the same side beyond 15
    degrees and within YAW_DISAGREEMENT, the whole rotation within ROTATION_DISAGREEMENT)."""
    have = np.array([d.landmarks is not None for d in detections])
    if net is None:
        return have.tolist()
    y = camera.yaw(net.rotation).cpu().numpy()
    r_mp = mediapipe_rotations(detections)
    y_mp = camera.yaw(r_mp).numpy()
    turned = camera.rotation_angle(r_mp, net.rotation).cpu().numpy() > ROTATION_DISAGREEMENT
    wrong_side = (np.abs(y) > 15) & (np.sign(y_mp) != np.sign(y))
    return (have & (np.abs(y) <= MEDIAPIPE_YAW_LIMIT) & ~wrong_side & ~turned
            & (np.abs(y - y_mp) <= YAW_DISAGREEMENT)).tolist()


def point_weights(model: FaceModel, net: FitState) -> torch.Tensor:
    """(B, 468) weights of MediaPipe's points in the landmark fit from the network's pose:
    1 where the surface point faces the camera, falling to 0 at the silhouette and behind it
    (MediaPipe places hidden points on the visible outline, where they do not belong)."""
    part = model.mediapipe_part()
    cam = camera.model_to_camera(part.decode(net.identity, net.expression), net.rotation, net.translation)
    corners = vertex_facing(cam, part.faces)[:, part.local[model.mediapipe_vertex_ids]]  # (B, 468, 3)
    facing = (corners * model.mediapipe_weights).sum(-1)
    return (-facing / FACING_FULL_WEIGHT).clamp(0.0, 1.0)


def blend(fitted: FitState, net: FitState, identity: bool = True) -> FitState:
    """The landmark fit ``fitted`` averaged with the network's answer ``net`` for the same faces
    (:meth:`FitState.blend`): MEDIAPIPE_SHARE for the fit where their rotations agree, the fit
    alone where they do not (ROTATION_AGREEMENT); ``identity`` False keeps the fit's identity."""
    angle = camera.rotation_angle(fitted.rotation, net.rotation)
    lo, hi = ROTATION_AGREEMENT
    share = MEDIAPIPE_SHARE + (1.0 - MEDIAPIPE_SHARE) * ((angle - lo) / (hi - lo)).clamp(0.0, 1.0)
    return fitted.blend(net, share, identity)


def reframe_rejected(side_view, regressor, images: list[np.ndarray], detections: list[Detection],
                     net: FitState, camera_distance_cm: float) -> FitState:
    """Where the network's answer ``net`` rejects MediaPipe's landmarks (:func:`trusted`) they may
    sit on hair or an ear: ``side_view`` (:class:`densemesh.detect.DlibFaceDetector`) looks round
    the face, and ``regressor`` answers again on the box it finds. Those entries of
    ``detections`` get the new box (MediaPipe's landmarks stay, to be judged again); returns
    ``net`` with those faces redone (at its focal)."""
    ok = trusted(detections, net)
    found = {i: side_view.near(images[i], d.box) for i, d in enumerate(detections) if d.landmarks is not None and not ok[i]}
    rows = [i for i, box in found.items() if box is not None]
    if not rows:
        return net
    for i in rows:
        detections[i] = replace(detections[i], box=found[i])
    again = regressor.state([images[i] for i in rows], np.stack([found[i] for i in rows]), float(net.focal[0]),
                            camera_distance_cm)
    return net.with_rows(rows, again)


def decide(regressor, images: list[np.ndarray], detections: list[Detection], focal: float | None,
           camera_distance_cm: float, start: FitState | None = None, side_view=None, judge=trusted,
           landmarks: bool = True) -> tuple[FitState | None, torch.Tensor]:
    """The network's answer for every detection (None without a ``regressor``) and (B,) bool:
    where MediaPipe's landmarks decide (``judge``, default :func:`trusted`; never when
    ``landmarks`` is False). start: a previous frame's fit of the same faces stands in for the
    network, which then runs only where the landmarks are rejected; side_view: rejected faces
    are re-framed first (:func:`reframe_rejected`, photos; those ``detections`` change)."""
    net = None
    if regressor is not None:
        net = start if start is not None else regressor.state(
            images, np.stack([d.box for d in detections]), focal, camera_distance_cm)
        if side_view is not None:
            net = reframe_rejected(side_view, regressor, images, detections, net, camera_distance_cm)
    device = net.rotation.device if net is not None else None
    fitted = torch.tensor(judge(detections, net), device=device) & landmarks
    if net is None and not fitted.all():
        raise ValueError("detections without landmarks need the regressor")
    redo = (~fitted).nonzero()[:, 0].tolist() if start is not None and regressor is not None else []
    if redo:
        net = net.with_rows(redo, regressor.state([images[i] for i in redo], np.stack([detections[i].box for i in redo]),
                                                  float(net.focal[0]), camera_distance_cm))
    return net, fitted
