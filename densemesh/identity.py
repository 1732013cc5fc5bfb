"""Face identity: one 128-D unit vector per face and 1:1 comparison.

The network is dlib's ResNet face-recognition model (``dlib_face_recognition_resnet_model_v1``,
public domain, Davis King; weights from the ``face_recognition_models`` package; 99.38 % on LFW
by its author's figure). Its 150 px chip is aligned from densemesh's own 68 landmarks
(``FaceResult.landmarks68_2d``, the convention dlib's aligner expects), so no second landmark
detector runs; a chip frontalised through the 3D mesh was measured and rejected more same-person
pairs at every yaw difference (``tools/compare_chips.py``, README). Similarity is the cosine of
two vectors (1: the same vector).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densemesh.image import load_image
from densemesh.result import FaceResult

#: cosine similarity at or above which two faces count as the same person; calibrated by
#: ``python tools/calibrate_identity.py`` (see README: measured false-accept / false-reject rates)
SAME_PERSON_THRESHOLD = 0.94
#: faces whose quality score (:mod:`densemesh.quality`) is below this are refused by default
MIN_QUALITY = 0.2
EMBEDDING_SIZE = 128


class FaceQualityError(ValueError):
    """A face is too poor to compare or enrol (one-line message for the user)."""


class NoFaceError(ValueError):
    """A photo holds no face (one-line message for the user)."""


class FaceEmbedder:
    """dlib's face-recognition ResNet on chips aligned from densemesh's 68 landmarks."""

    def __init__(self):
        import dlib
        import face_recognition_models

        self._dlib = dlib
        self._net = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def embed(self, image: np.ndarray, faces: list[FaceResult]) -> np.ndarray:
        """(F, 128) float32 unit vectors of ``faces`` found in ``image`` (H, W, 3) uint8 RGB."""
        if not faces:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        dlib = self._dlib
        shapes = dlib.full_object_detections()
        for face in faces:
            x0, y0, x1, y1 = (int(round(v)) for v in face.box)
            points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks68_2d])
            shapes.append(dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), points))
        vectors = np.asarray(self._net.compute_face_descriptor(np.ascontiguousarray(image), shapes), np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


@dataclass
class Comparison:
    """similarity: cosine of the two faces' vectors, in [-1, 1]; same: similarity >= threshold;
    quality: the two faces' quality scores."""

    similarity: float
    same: bool
    threshold: float
    quality: tuple[float, float]

    def to_dict(self) -> dict:
        return {"similarity": self.similarity, "same": self.same, "threshold": self.threshold}


class Comparer:
    """Keeps the reconstruction and recognition models loaded for many comparisons.

    threshold: see SAME_PERSON_THRESHOLD; min_quality: faces scoring less are refused
    (FaceQualityError); other options go to :class:`densemesh.pipeline.Reconstructor` (refine
    "none" by default: the chip only needs the landmarks)."""

    def __init__(self, threshold: float = SAME_PERSON_THRESHOLD, min_quality: float = MIN_QUALITY, **options):
        from densemesh.pipeline import Reconstructor

        self.threshold, self.min_quality = threshold, min_quality
        self.reconstructor = Reconstructor(**{"refine": "none", **options})
        self.embedder = FaceEmbedder()

    def close(self) -> None:
        self.reconstructor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def faces(self, image) -> tuple[list[FaceResult], np.ndarray]:
        """Every face of a photo (path or (H, W, 3) RGB array), largest first, and their (F, 128)
        vectors."""
        rgb = load_image(image)
        faces = self.reconstructor(rgb)
        return faces, self.embedder.embed(rgb, faces)

    def face(self, image, index: int = 0) -> tuple[FaceResult, np.ndarray]:
        """The ``index``-th largest face of a photo and its (128,) vector; NoFaceError if there is
        none, FaceQualityError if it is below ``min_quality``."""
        name = image if isinstance(image, (str, Path)) else "the image"
        faces, vectors = self.faces(image)
        if not faces:
            raise NoFaceError(f"no face found in {name}")
        if index >= len(faces):
            raise NoFaceError(f"{name} has {len(faces)} face(s), no face number {index + 1}")
        q = faces[index].quality
        if q.score < self.min_quality:
            weakest = min(q.parts().items(), key=lambda kv: kv[1])[0]
            raise FaceQualityError(f"the face in {name} is too poor to compare: quality {q.score:.2f} < "
                                   f"{self.min_quality:.2f} (weakest: {weakest})")
        return faces[index], vectors[index]

    def compare(self, a, b, face_a: int = 0, face_b: int = 0) -> Comparison:
        """Is the face in photo ``a`` the person in photo ``b``? (paths or RGB arrays; the
        largest face of each unless ``face_a`` / ``face_b`` say otherwise)."""
        fa, va = self.face(a, face_a)
        fb, vb = self.face(b, face_b)
        similarity = float(va @ vb)
        return Comparison(similarity, similarity >= self.threshold, self.threshold,
                          (fa.quality.score, fb.quality.score))


def compare(a, b, **options) -> Comparison:
    """One-off 1:1 comparison: ``compare("a.jpg", "b.jpg").same``; options as for :class:`Comparer`
    (use a Comparer for many comparisons: it loads the models once)."""
    with Comparer(**options) as comparer:
        return comparer.compare(a, b)
