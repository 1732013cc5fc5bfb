"""Face quality: how far a reconstructed face can be trusted for recognition, as a score in
[0, 1] with the parts it comes from (see :class:`Quality`). The score is the weakest part's
score: a face is as good as its worst factor (blur, size, pose, occlusion, a poor fit)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Laplacian variance (grey levels^2) of a face resampled to SHARPNESS_SIDE px at which blur no
#: longer counts against it (measured on annotated, UTKFace and AFLW photos: sharp ones 60-1900,
#: the same blurred by a Gaussian of 3 px 2-30 where the face is 75-180 px)
SHARP_ENOUGH = 60.0
SHARPNESS_SIDE = 112
#: face size (px, side of the landmark box) from which on size no longer counts (the
#: recognition network's chip is 150 px for the face and its margin) and below which it is 0
SIZE_ENOUGH, SIZE_ZERO = 80.0, 20.0
#: |yaw| and |pitch| (degrees) up to which pose does not count, and at which it reaches 0
YAW_FREE, YAW_ZERO = 30.0, 90.0
PITCH_FREE, PITCH_ZERO = 20.0, 60.0
#: fraction of the mesh's vertices seen (frontal faces show 0.6-0.7, profiles 0.4) from which on
#: occlusion by the head itself no longer counts
VISIBLE_ENOUGH = 0.35
#: fit error (RMS, face sizes) up to which the landmark fit counts as good, and at which it is
#: 0; a face the network alone reconstructed (no fit error) scores FIT_UNKNOWN
FIT_GOOD, FIT_ZERO, FIT_UNKNOWN = 0.03, 0.12, 0.6


@dataclass
class Quality:
    """score in [0, 1]: the smallest of the parts' scores (``parts()``). Measurements:
    sharpness: Laplacian variance of the grey face resampled to 112 px; size_px: side of the
    landmark box; yaw, pitch: degrees; visible_fraction: share of vertices the camera sees;
    fit_error: RMS distance to MediaPipe's points in face sizes (NaN: the network alone)."""

    score: float
    sharpness: float
    size_px: float
    yaw: float
    pitch: float
    visible_fraction: float
    fit_error: float

    def parts(self) -> dict[str, float]:
        """Each factor's score in [0, 1] (1: does not limit the face)."""
        ramp = lambda x, full, zero: float(np.clip((x - zero) / (full - zero), 0.0, 1.0))  # noqa: E731
        return {"sharpness": ramp(self.sharpness, SHARP_ENOUGH, 0.0),
                "size": ramp(self.size_px, SIZE_ENOUGH, SIZE_ZERO),
                "yaw": ramp(abs(self.yaw), YAW_FREE, YAW_ZERO),
                "pitch": ramp(abs(self.pitch), PITCH_FREE, PITCH_ZERO),
                "visibility": ramp(self.visible_fraction, VISIBLE_ENOUGH, 0.0),
                "fit": FIT_UNKNOWN if not np.isfinite(self.fit_error) else ramp(self.fit_error, FIT_GOOD, FIT_ZERO)}

    def to_dict(self) -> dict:
        return {**asdict(self), "parts": self.parts()}


def sharpness(image: np.ndarray, points_2d: np.ndarray) -> float:
    """Laplacian variance (grey levels^2) of the square round ``points_2d`` (K, 2) px in
    ``image`` (H, W, 3) uint8, resampled to SHARPNESS_SIDE px (so it does not grow with size)."""
    import cv2

    from densemesh.crop import crop_square, square_box

    crop = crop_square(image, square_box(points_2d, 1.0), SHARPNESS_SIDE)
    grey = cv2.cvtColor(crop.image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def face_quality(image: np.ndarray, landmarks68_2d: np.ndarray, yaw: float, pitch: float,
                 visible_fraction: float, fit_error: float) -> Quality:
    """Quality of one face: image (H, W, 3) uint8; landmarks68_2d (68, 2) px; angles degrees."""
    lo, hi = landmarks68_2d.min(0), landmarks68_2d.max(0)
    q = Quality(0.0, sharpness(image, landmarks68_2d), float(np.sqrt(np.prod(hi - lo))), yaw, pitch,
                visible_fraction, fit_error)
    q.score = min(q.parts().values())
    return q
