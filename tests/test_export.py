"""File formats: OBJ / PLY round trips through trimesh and open3d, NPZ / JSON, atomic writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from densemesh import export


@pytest.fixture(scope="module")
def smile(face_model):
    with torch.no_grad():
        return face_model.decode(torch.randn(1, 100), face_model.expression_vector({"mouthSmile_L": 0.8}))[0].numpy()


def test_fixed_point_lines_match_percent_formatting():
    """The array formatter of OBJ vertex lines writes what %-formatting writes."""
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.standard_normal((500, 3)) * s for s in (1e-7, 1e-3, 1.0, 30.0, 4e4)])
    rows[:4] = [[0.0, -0.0, -1e-9], [0.5, -0.5, 999.999999], [1e-6, -1e-6, 12.0], [100.0, -10.0, 7.25]]
    lines = export.fixed_point_lines("v", rows, (6, 6, 6)).decode().splitlines()
    expected = ["v %.6f %.6f %.6f" % tuple(r) for r in rows]
    differ = [(a, b) for a, b in zip(lines, expected) if a != b]
    assert len(lines) == len(rows) and not differ, differ[:3]
    mixed = np.hstack([rows[:50], rng.random((50, 3))])
    assert export.fixed_point_lines("v", mixed, (6, 6, 6, 4, 4, 4)).decode() == \
        "".join("v %.6f %.6f %.6f %.4f %.4f %.4f\n" % tuple(r) for r in mixed)
    odd = np.array([[np.nan, 1.0], [np.inf, 2e9]])  # not finite or huge: %-formatted
    assert export.fixed_point_lines("x", odd, (2, 1)) == b"x nan 1.0\nx inf 2000000000.0\n"


def test_obj_round_trip(tmp_path, face_model, smile):
    import open3d as o3d
    import trimesh

    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, (face_model.num_vertices, 3), dtype=np.uint8)
    texture = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    paths = export.write_obj(tmp_path / "mesh.obj", smile, face_model.faces.numpy(), face_model.uvs.numpy(),
                             face_model.face_uvs.numpy(), colors=colors, texture=texture,
                             texture_name="texture.png")
    assert {p.name for p in paths} == {"mesh.obj", "mesh.mtl", "texture.png"}
    faces, uv = face_model.faces.numpy(), face_model.uvs.numpy()[face_model.face_uvs.numpy()]

    tm = trimesh.load(tmp_path / "mesh.obj", process=False, maintain_order=True)
    assert tm.vertices.shape == smile.shape and np.allclose(tm.vertices, smile, atol=1e-5)
    assert np.array_equal(tm.faces, faces)
    assert np.asarray(tm.visual.material.image).shape[:2] == (64, 64)

    om = o3d.io.read_triangle_mesh(str(tmp_path / "mesh.obj"))
    assert np.allclose(np.asarray(om.vertices), smile, atol=1e-5)
    assert np.array_equal(np.asarray(om.triangles), faces)
    # open3d keeps UVs per triangle corner
    assert np.allclose(np.asarray(om.triangle_uvs).reshape(-1, 3, 2), uv, atol=1e-5)
    assert np.allclose(np.asarray(om.vertex_colors), colors / 255.0, atol=1e-3)


def test_ply_round_trip_with_colours_and_attributes(tmp_path, face_model, smile):
    import open3d as o3d
    import trimesh

    colors = np.tile(np.array([[0.2, 0.5, 0.9]]), (face_model.num_vertices, 1))
    visible = np.arange(face_model.num_vertices) % 3 == 0
    export.write_ply(tmp_path / "mesh.ply", smile, face_model.faces.numpy(), colors=colors,
                     attributes={"visibility": visible})
    tm = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert np.allclose(tm.vertices, smile, atol=1e-5) and np.array_equal(tm.faces, face_model.faces.numpy())
    assert np.array_equal(tm.visual.vertex_colors[:, :3], np.round(colors * 255).astype(np.uint8))
    raw = tm.metadata["_ply_raw"]["vertex"]["data"]
    assert np.array_equal(raw["visibility"].astype(bool), visible)
    om = o3d.io.read_triangle_mesh(str(tmp_path / "mesh.ply"))
    assert np.allclose(np.asarray(om.vertices), smile, atol=1e-5)
    assert np.array_equal(np.asarray(om.triangles), face_model.faces.numpy())
    assert (tmp_path / "mesh.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")


def test_write_mesh_dispatches_by_suffix(tmp_path, head_model):
    verts = head_model.mean.numpy()
    assert [p.name for p in export.write_mesh(tmp_path / "head.obj", verts, head_model)] == ["head.obj"]
    export.write_mesh(tmp_path / "head.ply", verts, head_model)
    with pytest.raises(ValueError, match="unsupported"):
        export.write_mesh(tmp_path / "head.stl", verts, head_model)


def test_npz_and_json(tmp_path):
    export.write_npz(tmp_path / "a.npz", vertices=torch.ones(2, 3), names=np.array(["a", "b"]))
    with np.load(tmp_path / "a.npz") as z:
        assert z["vertices"].shape == (2, 3) and list(z["names"]) == ["a", "b"]
    export.write_json(tmp_path / "a.json", {"pose": np.eye(3), "score": np.float32(0.5), "t": torch.zeros(2)})
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["pose"][1] == [0.0, 1.0, 0.0] and data["score"] == 0.5 and data["t"] == [0.0, 0.0]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with export.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with export.atomic_write(target) as f:
            f.write(b"new")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
