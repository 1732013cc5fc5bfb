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
    (("--bogus",), "unrecognized"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    proc = run(*args, cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
