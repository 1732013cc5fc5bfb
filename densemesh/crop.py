"""Square face crops and the pixel transform that goes with them.

A crop is described by ``(scale, offset)``: a point at image pixel ``p`` lands at crop pixel
``scale * p + offset`` (pixel centres at integers, see :mod:`densemesh.camera`). A camera with
focal ``f`` and principal point ``c`` becomes ``(scale * f, scale * c + offset)`` in the crop.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Crop:
    """image (S, S, 3) uint8; scale (crop px per image px); offset (2,) crop px."""

    image: np.ndarray
    scale: float
    offset: np.ndarray

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) image px -> crop px."""
        return points * self.scale + self.offset

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) crop px -> image px."""
        return (points - self.offset) / self.scale


def square_box(points: np.ndarray, enlarge: float = 1.25) -> np.ndarray:
    """(K, 2) px points (or a (4,) box) -> (4,) square box x0, y0, x1, y1 around them,
    ``enlarge`` times the larger side of their extent, same centre."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    center, half = (lo + hi) / 2, enlarge * float((hi - lo).max()) / 2
    return np.concatenate([center - half, center + half])


def crop_square(image: np.ndarray, box: np.ndarray, size: int) -> Crop:
    """Cut ``box`` (snapped outwards to whole pixels) out of ``image`` and resize it to
    (size, size); parts outside the image are black. Area-averaging when shrinking."""
    h, w = image.shape[:2]
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    side = max(1, int(np.ceil(max(box[2] - box[0], box[3] - box[1]))))
    window = np.zeros((side, side) + image.shape[2:], image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(window, (size, size), interpolation=interp)
    k = size / side
    # pixel edges map linearly: (x + 0.5 - x0) * k = x' + 0.5
    offset = np.array([k * (0.5 - x0) - 0.5, k * (0.5 - y0) - 0.5])
    return Crop(crop, k, offset)


#: The regression network's input: a square crop, ``REGRESSOR_ENLARGE`` times the larger side of
#: the face box (the extent of MediaPipe's landmarks, forehead to chin), resized to
#: ``REGRESSOR_SIZE`` px.
REGRESSOR_SIZE = 128
REGRESSOR_ENLARGE = 1.4
#: The 68 iBUG landmarks' box -> that landmark-extent box (MediaPipe's reaches up the forehead):
#: centre shift and size in units of the 68-point box's (width, height); medians over 396
#: frontal AFLW training faces with both (interquartile range of the height ratio 1.14-1.22).
#: The network's training crops of manually labelled faces are cut with it, and a face found as
#: a box only is re-cropped with it round the network's own first-pass landmarks, so both see
#: the crop the network learnt on.
LANDMARKS68_TO_EXTENT = {"center": (0.0, -0.085), "size": (1.03, 1.18)}


def remap_box(box: np.ndarray, rule: dict) -> np.ndarray:
    """(..., 4) boxes x0, y0, x1, y1 -> (..., 4) boxes moved by ``rule["center"]`` and scaled by
    ``rule["size"]``, both in units of each box's (width, height)."""
    lo, hi = box[..., :2], box[..., 2:]
    size = hi - lo
    center = (lo + hi) / 2 + np.asarray(rule["center"]) * size
    half = np.asarray(rule["size"]) * size / 2
    return np.concatenate([center - half, center + half], -1)


def box_from_landmarks68(points: np.ndarray) -> np.ndarray:
    """(B, K, 2) px iBUG points (any subset of the 68; NaN ignored) -> (B, 4) landmark-extent
    boxes (see LANDMARKS68_TO_EXTENT)."""
    return remap_box(np.concatenate([np.nanmin(points, 1), np.nanmax(points, 1)], 1), LANDMARKS68_TO_EXTENT)


def regressor_crop(image: np.ndarray, box: np.ndarray) -> Crop:
    """(H, W, 3) image, face box (4,) x0, y0, x1, y1 px -> the regressor's input crop."""
    return crop_square(image, square_box(box, REGRESSOR_ENLARGE), REGRESSOR_SIZE)
