"""The AFLW faces with manual MERL-RAV 68-point labels (``../shared/faces/aflw``): loading, the
seeded train / validation split, mirroring, and the padded frames the detectors see.

Shared by tools/prepare_aflw.py (training shards), tools/eval_aflw.py (validation) and the tests.
Coordinates are crop pixels with the centre of the top-left pixel at (0, 0), as in densemesh.
Visibility: 1 visible, 2 externally occluded (position estimated by the annotator), 0
self-occluded (no position: NaN).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AFLW = ROOT.parent / "shared" / "faces" / "aflw"
SPLIT_SEED = 20261201
VAL_FRACTION = 0.08
YAW_BINS = ((0, 30), (30, 60), (60, 90))
#: iBUG-68 index of each point's mirror image (left <-> right).
MIRROR_68 = np.array([*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
                      45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
                      54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


def available() -> bool:
    return (AFLW / "labels.npz").exists()


def load_labels() -> dict[str, np.ndarray]:
    """labels.npz as plain arrays (see its README)."""
    with np.load(AFLW / "labels.npz") as z:
        return {k: z[k] for k in z.files}


def labels_and_split() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(labels, train rows, validation rows) for a tool's main; without the data, one error line
    and exit code 2."""
    if not available():
        print(f"error: AFLW labels not found in {AFLW}", file=sys.stderr)
        raise SystemExit(2)
    labels = load_labels()
    return (labels, *split(labels))


def load_image(name: str) -> np.ndarray:
    """(120, 120, 3) uint8 RGB."""
    from PIL import Image

    return np.asarray(Image.open(AFLW / "images" / f"{name}.jpg").convert("RGB"))


def split(labels: dict) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices: a seeded VAL_FRACTION of every MERL-RAV pose class held out."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, val = [], []
    for pose in sorted(set(labels["merl_pose"])):
        rows = rng.permutation(np.flatnonzero(labels["merl_pose"] == pose))
        k = max(1, round(len(rows) * VAL_FRACTION))
        val.append(rows[:k])
        train.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def yaw_bin(yaw_deg: float) -> int:
    """Index into YAW_BINS of |yaw| (a fit past 90 degrees counts as 60-90)."""
    a = abs(yaw_deg)
    return 0 if a <= 30 else 1 if a <= 60 else 2


def mirror(image: np.ndarray, points: np.ndarray, visibility: np.ndarray, yaw_deg: float):
    """Left-right mirror of a labelled face: image (H, W, 3), points (68, 2) px, visibility (68,)."""
    w = image.shape[1]
    pts = points[MIRROR_68].copy()
    pts[:, 0] = w - 1 - pts[:, 0]
    return image[:, ::-1].copy(), pts, visibility[MIRROR_68].copy(), -yaw_deg


def padded_frame(image: np.ndarray, factor: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The tight crop in the middle of a ``factor`` times larger frame of the crop's mean border
    colour with mild noise (detectors need context round a face; stretching the crop's own
    border instead smears face-coloured streaks that fool them), the seam softened.
    Returns (frame, (2,) offset px of the crop in the frame)."""
    import cv2

    h, w = image.shape[:2]
    py, px = (factor - 1) * h // 2, (factor - 1) * w // 2
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    rng = np.random.default_rng(0)
    frame = border.mean(0) + rng.normal(0, 6, (factor * h, factor * w, 3))
    frame[py:py + h, px:px + w] = image
    soft = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 2.0)
    seam = np.ones((factor * h, factor * w), bool)
    seam[py + 3:py + h - 3, px + 3:px + w - 3] = False
    seam[: py - 3] = seam[py + h + 3:] = False
    seam[:, : px - 3] = seam[:, px + w + 3:] = False
    frame[seam] = soft[seam]
    return np.clip(frame, 0, 255).astype(np.uint8), np.array([px, py], float)


def nme(pred: np.ndarray, points: np.ndarray, visibility: np.ndarray) -> float:
    """Mean distance over the positioned points (visible or externally occluded) / sqrt(w h) of
    their box: (68, 2) prediction and label -> NME (fraction)."""
    keep = visibility > 0
    gt = points[keep]
    w, h = gt.max(0) - gt.min(0)
    return float(np.linalg.norm(pred[keep] - gt, axis=1).mean() / np.sqrt(w * h))
