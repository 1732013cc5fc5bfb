"""Face quality and 1:1 comparison on real photos and video frames."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def comparer():
    from densemesh.identity import Comparer

    with Comparer(device="cpu") as c:
        yield c


def clip_frame(shared, name: str, index: int) -> np.ndarray:
    from densemesh.video import VideoReader

    reader = VideoReader(shared / "video" / name)
    try:
        return next(f.image for f in reader.frames(index))
    finally:
        reader.close()


def test_the_same_person_across_frames_scores_above_the_threshold_and_others_below(shared, comparer):
    first, later = clip_frame(shared, "talking_d3.mp4", 0), clip_frame(shared, "talking_d3.mp4", 300)
    other = clip_frame(shared, "talking_d18.mp4", 100)
    same = comparer.compare(first, later)
    assert same.same and same.similarity >= same.threshold, same
    different = comparer.compare(first, other)
    assert not different.same and different.similarity < different.threshold, different
    photo = comparer.compare(shared / "faces" / "annotated" / "lenna.png", shared / "faces" / "annotated" / "einstein.jpg")
    assert not photo.same


def test_quality_falls_with_blur_and_with_a_turned_head(shared, comparer):
    image = cv2.imread(str(shared / "faces" / "misc" / "single_face.jpg"))[..., ::-1].copy()
    sharp = comparer.reconstructor(image)[0].quality
    blurred = comparer.reconstructor(cv2.GaussianBlur(image, (0, 0), 4))[0].quality
    assert sharp.score > 0.8 and sharp.parts()["sharpness"] == 1.0
    assert blurred.sharpness < sharp.sharpness / 4 and blurred.score < 0.5
    assert 0 <= blurred.score == min(blurred.parts().values()) <= 1
    profile = comparer.reconstructor(shared / "faces" / "annotated" / "breakingbad.jpg")
    turned = max(profile, key=lambda r: abs(r.pose.yaw)).quality
    assert abs(turned.yaw) > 45 and turned.parts()["yaw"] < 1.0


def test_compare_cli_prints_the_json_object(shared):
    frames = shared / "faces" / "annotated"
    proc = run("compare", frames / "lenna.png", frames / "lenna.png", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"similarity", "same", "threshold"}
    assert out["same"] is True and out["similarity"] > 0.99


def test_compare_refuses_a_photo_without_a_face_and_a_poor_face(shared, tmp_path):
    lenna = shared / "faces" / "annotated" / "lenna.png"
    assert_one_line_error(run("compare", shared / "faces" / "misc" / "free-mountain-vector-01.jpg", lenna),
                          "no face found")
    blurred = tmp_path / "blurred.png"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(cv2.imread(str(lenna)), (0, 0), 4))
    assert_one_line_error(run("compare", blurred, lenna, "--min-quality", "0.5"), "too poor to compare")
    assert_one_line_error(run("compare", tmp_path / "missing.jpg", lenna), "photo not found")


def test_the_python_api_compares_arrays_and_raises_on_no_face(shared, comparer):
    import densemesh
    from densemesh.identity import NoFaceError

    image = cv2.imread(str(shared / "faces" / "misc" / "single_face.jpg"))[..., ::-1].copy()
    result = comparer.compare(image, image[:, ::-1].copy())  # the mirror image: the same person
    assert result.same and result.threshold == densemesh.identity.SAME_PERSON_THRESHOLD
    with pytest.raises(NoFaceError, match="no face found"):
        comparer.compare(np.zeros((240, 320, 3), np.uint8), image)
