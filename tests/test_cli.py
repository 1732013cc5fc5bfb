"""The command line: help, version, model info/export, and one-line errors with exit code 2."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "densemesh", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_and_version():
    from densemesh import __version__

    assert run("--version").stdout.strip() == f"densemesh {__version__}"
    out = run("--help").stdout
    assert "reconstruct" in out and "model" in out


def test_model_info_lists_counts_and_names():
    out = run("model", "info").stdout
    assert "7944" in out and "15521" in out and "jawOpen" in out and "MIT" in out
    assert "24591" in run("model", "info", "--head").stdout


def test_model_export_writes_an_expressive_mesh(tmp_path, face_model):
    import trimesh

    proc = run("model", "export", "--expression", "jawOpen=1", "--expression", "eyeBlink_L=1",
               "--out", tmp_path / "open.obj")
    assert proc.returncode == 0, proc.stderr
    assert run("model", "export", "--out", tmp_path / "rest.ply").returncode == 0
    opened = trimesh.load(tmp_path / "open.obj", process=False, maintain_order=True).vertices
    rest = trimesh.load(tmp_path / "rest.ply", process=False).vertices
    chin = int(face_model.ibug68[8])
    assert opened[chin, 1] < rest[chin, 1] - 1.5
    assert np.allclose(rest, face_model.mean.numpy(), atol=1e-5)


def test_model_export_identity_seed_is_reproducible(tmp_path):
    import trimesh

    for name in ("a", "b"):
        assert run("model", "export", "--identity-seed", 3, "--head", "--out", tmp_path / f"{name}.ply").returncode == 0
    a, b = (trimesh.load(tmp_path / f"{n}.ply", process=False).vertices for n in ("a", "b"))
    assert a.shape == (24591, 3) and np.array_equal(a, b)


@pytest.mark.parametrize("args,needle", [
    (("model", "export", "--expression", "jawOpen=wide", "--out", "x.obj"), "not a number"),
    (("model", "export", "--expression", "jawOpn=1", "--out", "x.obj"), "unknown expression"),
    (("model", "export", "--expression", "jawOpen", "--out", "x.obj"), "NAME=VALUE"),
    (("model", "export", "--out", "x.stl"), ".obj or .ply"),
    (("reconstruct", "missing.jpg", "--out", "out"), "not found"),
    (("reconstruct", "missing.jpg"), "--out"),
    (("reconstruct", ".", "--out", "out"), "no images"),
    (("reconstruct", ".", "--out", "out", "--format", "obj,stl"), "unknown format"),
    (("--bogus",), "unrecognized"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    proc = run(*args, cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("in") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_reconstruct_writes_every_output(tmp_path, astronaut_png):
    import json

    import trimesh

    proc = run("reconstruct", astronaut_png, "--out", tmp_path / "out", "--refine", "none")
    assert proc.returncode == 0, proc.stderr
    face = tmp_path / "out" / "face_00"
    names = {p.name for p in face.iterdir()}
    assert names == {"mesh.obj", "mesh.mtl", "texture.png", "mesh.ply", "result.npz", "landmarks.json"}
    assert str(face / "mesh.obj") in proc.stdout
    mesh = trimesh.load(face / "mesh.obj", process=False, maintain_order=True)
    assert mesh.vertices.shape == (7944, 3) and np.asarray(mesh.visual.material.image).shape[2] in (3, 4)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["faces"]) == 1 and summary["faces"][0]["folder"] == "face_00"
    lm = json.loads((face / "landmarks.json").read_text())
    assert np.asarray(lm["landmarks68_2d"]).shape == (68, 2) and "yaw" in lm["pose"]
    with np.load(face / "result.npz") as z:
        assert z["vertices"].shape == (7944, 3) and z["visibility"].dtype == bool
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 10_000


def test_reconstruct_formats_and_camera_space(tmp_path, astronaut_png):
    proc = run("reconstruct", astronaut_png, "--out", tmp_path, "--refine", "none", "--format", "ply",
               "--space", "camera", "--no-overlay")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "face_00").iterdir()} == {"mesh.ply"}
    assert not (tmp_path / "overlay.png").exists()


def test_reconstruct_bad_images(tmp_path, astronaut_png):
    data = astronaut_png.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    proc = run("reconstruct", tmp_path / "cut.png", "--out", tmp_path / "out")
    assert_one_line_error(proc, "cut.png")
    assert not (tmp_path / "out").exists()
    # a folder keeps going past a bad file, reports it, and says so in the exit code
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "a.png").write_bytes(data)
    (folder / "b.png").write_bytes(data[:100])
    proc = run("reconstruct", folder, "--out", tmp_path / "batch_out", "--refine", "none")
    assert proc.returncode == 2
    import json

    report = json.loads((tmp_path / "batch_out" / "summary.json").read_text())["images"]
    assert [r.get("faces") for r in report] == [1, None] and "error" in report[1]
    assert (tmp_path / "batch_out" / "a" / "face_00" / "mesh.ply").exists()


def test_reconstruct_no_face_is_not_an_error(tmp_path, shared):
    import json

    proc = run("reconstruct", shared / "faces" / "misc" / "free-mountain-vector-01.jpg", "--out", tmp_path,
               "--refine", "none")
    assert proc.returncode == 0, proc.stderr
    assert "no face" in proc.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["faces"] == []
