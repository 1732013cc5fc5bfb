"""FaceResult: everything densemesh knows about one reconstructed face (numpy arrays).

Units: model / camera space in centimetres (axes in :mod:`densemesh.camera`), 2D points in
image pixels (centre of the top-left pixel at (0, 0)), angles in degrees.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from densemesh.quality import Quality


@dataclass
class Pose:
    """Head pose: ``camera = MODEL_TO_CAMERA @ rotation @ model + translation``.

    yaw, pitch, roll degrees (convention in :mod:`densemesh.camera`); rotation (3, 3);
    translation (3,) cm; focal px and principal (2,) px of the pinhole camera used.
    """

    yaw: float
    pitch: float
    roll: float
    rotation: np.ndarray
    translation: np.ndarray
    focal: float
    principal: np.ndarray

    def to_dict(self) -> dict:
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll,
                "rotation": self.rotation.tolist(), "translation_cm": self.translation.tolist(),
                "focal_px": self.focal, "principal_px": self.principal.tolist()}


@dataclass
class FaceResult:
    """One face.

    vertices (N, 3) model space cm (identity + expression, no pose);
    vertices_camera (N, 3) camera cm; vertices_2d (N, 2) px; visibility (N,) bool from the z-buffer;
    landmarks68_2d (68, 2) px, jaw points on the visible outline (the 300-W / MERL-RAV manual
    convention); landmarks68_3d (68, 3) camera cm (the same vertices); landmarks68_projected
    (68, 2) px, the projection of the 68 fixed landmark vertices, hidden ones included, jaw on the
    mandible (the AFLW2000-3D / 300W-LP convention 3DMM benchmarks score); pose; identity (100,); expression (53,) weights for ``expression_names``;
    box (4,) x0, y0, x1, y1 px; score in [0, 1]: face-detector confidence; fit_error: RMS distance
    between the fitted surface and MediaPipe's 468 points, in face sizes (0.01 = 1 %; NaN without
    them); colors (N, 3) uint8 sampled from the photo (hidden vertices get the mean visible
    colour); texture (H, W, 3) uint8 UV texture or None; source: what decided the mesh
    ("mediapipe": fitted to MediaPipe's landmarks, the points hidden under the network's pose
    left out; "regressor": the network alone - a face MediaPipe boxes but cannot landmark, or one
    whose MediaPipe landmarks the pipeline does not trust at that pose); refine: refinement level used; image_size (H, W);
    quality: how far the face can be trusted for recognition (:class:`densemesh.quality.Quality`).
    """

    vertices: np.ndarray
    vertices_camera: np.ndarray
    vertices_2d: np.ndarray
    visibility: np.ndarray
    landmarks68_2d: np.ndarray
    landmarks68_3d: np.ndarray
    landmarks68_projected: np.ndarray
    pose: Pose
    identity: np.ndarray
    expression: np.ndarray
    expression_names: list[str]
    box: np.ndarray
    score: float
    fit_error: float
    colors: np.ndarray
    image_size: tuple[int, int]
    quality: Quality | None = None
    source: str = "mediapipe"
    refine: str = "none"
    texture: np.ndarray | None = None
    timings: dict = field(default_factory=dict)

    @property
    def expressions(self) -> dict[str, float]:
        """{ICT expression name: weight}."""
        return {n: float(w) for n, w in zip(self.expression_names, self.expression)}

    def summary(self) -> dict:
        """Small JSON-ready description (no per-vertex arrays)."""
        return {"box": self.box.tolist(), "score": self.score, "fit_error": self.fit_error,
                "source": self.source, "refine": self.refine,
                "pose": self.pose.to_dict(), "visible_vertices": int(self.visibility.sum()),
                "quality": None if self.quality is None else self.quality.to_dict(),
                "num_vertices": int(len(self.vertices))}

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, for ``result.npz``."""
        p = self.pose
        out = {"vertices": self.vertices, "vertices_camera": self.vertices_camera,
               "vertices_2d": self.vertices_2d, "visibility": self.visibility,
               "landmarks68_2d": self.landmarks68_2d, "landmarks68_3d": self.landmarks68_3d,
               "landmarks68_projected": self.landmarks68_projected, "identity": self.identity, "expression": self.expression,
               "expression_names": np.asarray(self.expression_names), "box": self.box,
               "score": np.float32(self.score), "fit_error": np.float32(self.fit_error), "colors": self.colors,
               "rotation": p.rotation, "translation": p.translation,
               "euler_yaw_pitch_roll": np.array([p.yaw, p.pitch, p.roll]),
               "focal": np.float32(p.focal), "principal": p.principal,
               "image_size": np.asarray(self.image_size)}
        if self.texture is not None:
            out["texture"] = self.texture
        return out
