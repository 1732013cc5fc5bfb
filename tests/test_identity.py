"""Face quality and 1:1 comparison on real photos and video frames."""
from __future__ import annotations

import json
from pathlib import Path

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


def test_search_returns_the_enrolled_photo_first_and_builds_add_incrementally(gallery_photos, tmp_path):
    gallery = tmp_path / "gallery"
    proc = run("index", "build", gallery_photos / "lenna.png", gallery_photos / "more", "--out", gallery, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "2 photos read" in proc.stdout
    proc = run("index", "build", gallery_photos, "--out", gallery, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "3 photos read (2 unchanged)" in proc.stdout
    for query in ("lenna.png", "more/single_face.jpg"):
        proc = run("search", gallery_photos / query, "--index", gallery, "--json", "--top", "3", "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
        hits = json.loads(proc.stdout)
        assert hits[0]["file"] == str((gallery_photos / query).resolve()) and hits[0]["similarity"] > 0.99
        assert all(set(h) == {"file", "box", "similarity"} for h in hits)
        assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)


def test_a_build_that_dies_while_saving_leaves_the_previous_gallery(gallery_photos, tmp_path, comparer, monkeypatch):
    from densemesh import gallery as gallery_module
    from densemesh.gallery import Gallery, enrol, media_files, reader

    folder = tmp_path / "gallery"
    first = Gallery.empty()
    enrol(first, media_files([gallery_photos / "lenna.png"]), reader(comparer, 0.2))
    first.save(folder)
    bigger = Gallery.load(folder)
    enrol(bigger, media_files([gallery_photos / "more"]), reader(comparer, 0.2))
    real_write_json = gallery_module.write_json

    def dies_on_the_last_file(path, data):
        if Path(path).name == "files.json":
            raise KeyboardInterrupt  # as if killed between two files of the new version
        return real_write_json(path, data)

    monkeypatch.setattr(gallery_module, "write_json", dies_on_the_last_file)
    with pytest.raises(KeyboardInterrupt):
        bigger.save(folder)
    monkeypatch.undo()
    again = Gallery.load(folder)
    assert len(again.faces) == len(first.faces) == 1 and set(again.files) == set(first.files)
    bigger.save(folder)  # the next build succeeds and clears the dead one's leftovers
    assert len(Gallery.load(folder).faces) == 2 and len(list(folder.glob("v*"))) == 1


def test_search_refuses_a_damaged_or_foreign_gallery(gallery_photos, tmp_path):
    query = gallery_photos / "lenna.png"
    assert_one_line_error(run("search", query, "--index", tmp_path), "not a densemesh gallery")
    damaged = tmp_path / "damaged"
    (damaged / "v000001").mkdir(parents=True)
    (damaged / "CURRENT").write_text("v000001\n")
    (damaged / "v000001" / "vectors.npy").write_bytes(b"not an array")
    assert_one_line_error(run("search", query, "--index", damaged), "is damaged")
    foreign = tmp_path / "foreign"
    (foreign / "v000001").mkdir(parents=True)
    (foreign / "CURRENT").write_text("v000001\n")
    np.save(foreign / "v000001" / "vectors.npy", np.zeros((2, 512), np.float32))
    (foreign / "v000001" / "faces.json").write_text("[{}, {}]")
    (foreign / "v000001" / "files.json").write_text("{}")
    assert_one_line_error(run("search", query, "--index", foreign), "128-D float32")


def test_match_lists_the_pairs_of_two_galleries_that_are_one_person(gallery_photos, tmp_path, comparer):
    import csv

    from densemesh.gallery import Gallery, enrol, media_files, reader

    for name, inputs in (("a", [gallery_photos / "lenna.png", gallery_photos / "einstein.jpg"]),
                         ("b", [gallery_photos / "more", gallery_photos / "lenna.png"])):
        g = Gallery.empty()
        enrol(g, media_files(inputs), reader(comparer, 0.2))
        g.save(tmp_path / name)
    proc = run("match", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "pairs.csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "pairs.csv")))
    lenna = str((gallery_photos / "lenna.png").resolve())
    assert [(r["file_a"], r["file_b"]) for r in rows] == [(lenna, lenna)]
    assert float(rows[0]["similarity"]) > 0.99


def test_a_video_is_enrolled_frame_by_frame_and_found_by_a_later_frame(shared, tmp_path):
    import shutil

    video = tmp_path / "clip.mp4"
    shutil.copy(shared / "video" / "talking_d3.mp4", video)
    gallery = tmp_path / "gallery"
    proc = run("index", "build", video, shared / "faces" / "annotated" / "lenna.png", "--out", gallery, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    query = tmp_path / "frame.png"
    cv2.imwrite(str(query), clip_frame(shared, "talking_d3.mp4", 333)[..., ::-1])
    proc = run("search", query, "--index", gallery, "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert len(hits) >= 3 and all(h["file"] == str(video.resolve()) for h in hits), hits
    assert all(h["frame"] % 60 == 0 for h in hits)  # 30 frames/s, a frame every 2 s
