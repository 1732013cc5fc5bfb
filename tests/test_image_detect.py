"""Image loading (formats, depths, EXIF) and face detection on real photos."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from densemesh.image import ImageError, load_image, to_rgb


def test_array_layouts_and_depths():
    rgb = data.astronaut()
    assert np.array_equal(load_image(rgb), rgb)
    assert np.array_equal(load_image(rgb[..., ::-1].copy(), channel_order="bgr"), rgb)
    gray = to_rgb(rgb[..., 0])
    assert gray.shape == rgb.shape and np.array_equal(gray[..., 1], rgb[..., 0])
    sixteen = to_rgb(rgb.astype(np.uint16) * 257)
    assert np.abs(sixteen.astype(int) - rgb).max() <= 1
    assert np.abs(to_rgb(rgb / 255.0).astype(int) - rgb).max() <= 1
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.array_equal(to_rgb(rgba), rgb)
    for bad in (np.zeros((4, 4, 2)), np.zeros((0, 3, 3)), np.full((4, 4), np.nan)):
        with pytest.raises(ImageError):
            to_rgb(bad)


def test_files_exif_16bit_and_broken(tmp_path):
    rgb = data.astronaut()[:, :400]  # not square, so a rotation shows
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "rot.jpg").shape == (400, 512, 3)
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "deep.png")
    deep = load_image(tmp_path / "deep.png")
    assert deep.shape == (512, 400, 3) and np.abs(deep[..., 0].astype(int) - rgb[..., 0]).max() <= 1
    img.save(tmp_path / "full.jpg", quality=95)
    data_bytes = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data_bytes[: len(data_bytes) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.jpg", "text.jpg", "missing.jpg"):
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / name)
        assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def detector():
    from densemesh.detect import MediaPipeDetector

    with MediaPipeDetector() as det:
        yield det


def test_astronaut_one_face_with_landmarks(detector):
    from densemesh.detect import MEDIAPIPE_BLENDSHAPES

    faces = detector.detect(data.astronaut())
    assert len(faces) == 1
    f = faces[0]
    assert f.landmarks.shape == (478, 3) and f.blendshapes.shape == (len(MEDIAPIPE_BLENDSHAPES),)
    # the face is in the upper middle of the photo; eyes above the mouth; right eye on image left
    assert 150 < f.box[0] < f.box[2] < 300 and 50 < f.box[1] < f.box[3] < 200
    assert f.landmarks[33, 1] < f.landmarks[13, 1] and f.landmarks[33, 0] < f.landmarks[263, 0]
    assert f.score > 0.6
    assert f.blendshapes[MEDIAPIPE_BLENDSHAPES.index("mouthSmileLeft")] > 0.5  # she smiles


def test_small_faces_need_the_thorough_search(shared):
    from densemesh.detect import MediaPipeDetector

    image = load_image(shared / "faces" / "misc" / "multi_face.jpg")
    with MediaPipeDetector(search="fast") as fast:
        n_fast = len(fast.detect(image))
    with MediaPipeDetector(search="thorough") as thorough:
        boxes = [d.box for d in thorough.detect(image)]
    assert len(boxes) == 5 > n_fast
    centers = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in boxes])
    gaps = np.linalg.norm(centers[:, None] - centers[None], axis=-1) + np.eye(5) * 1e9
    assert gaps.min() > 50  # five different faces, no duplicates


def test_no_face_and_grayscale(shared, detector):
    assert detector.detect(load_image(shared / "faces" / "misc" / "free-mountain-vector-01.jpg")) == []
    gray = to_rgb(np.asarray(Image.fromarray(data.astronaut()).convert("L")))
    assert len(detector.detect(gray)) == 1


def test_overlapping_quiet_blocks_give_stderr_back():
    """A video's detection and fit threads both silence MediaPipe's native log lines; blocks that
    overlap (A starts, B starts, A ends, B ends) must leave file descriptor 2 where it was, not on
    /dev/null (the CLI's one-line errors go there)."""
    import os
    import threading

    from densemesh.detect import quiet_native_logs

    before = os.fstat(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside_b = []

    def a():
        with quiet_native_logs():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with quiet_native_logs():
            b_in.set()
            a_out.wait(5)
            inside_b.append(os.fstat(2).st_ino)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    after = os.fstat(2)
    assert inside_b and inside_b[0] != before.st_ino  # still silenced while B runs
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_the_helper_thread_changes_no_detection(shared):
    """The face-detector runs shared with the helper thread (its own detector) give exactly what
    one thread gives: boxes, scores and landmarks, for the thorough search with profile boxes."""
    from densemesh.detect import MediaPipeDetector

    images = [data.astronaut(), load_image(shared / "faces" / "misc" / "multi_face.jpg"),
              load_image(shared / "faces" / "annotated" / "einstein.jpg")]
    with MediaPipeDetector(boxes_without_landmarks=True, side_view=None) as det:
        shared_runs = [det.detect(im) for im in images]
        det._helper = None  # every run on this thread
        alone = [det.detect(im) for im in images]
    assert [len(f) for f in shared_runs] == [len(f) for f in alone] and sum(map(len, alone)) >= 7
    for a, b in zip(sum(shared_runs, []), sum(alone, [])):
        assert np.array_equal(a.box, b.box) and a.score == b.score
        assert (a.landmarks is None) == (b.landmarks is None)
        assert a.landmarks is None or np.array_equal(a.landmarks, b.landmarks)
