"""Every file format densemesh writes. Every write is atomic: a temporary name in the target
folder, then a rename, so a reader (or an interrupted run) never sees half a file.

Units: mesh files (OBJ, PLY) and arrays hold model- or camera-space vertices in
**centimetres** (ICT-FaceKit's and MediaPipe's unit); 2D points are pixels; angles degrees.
UVs follow OBJ/OpenGL (v = 0 at the bottom of the texture image).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb"):
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _colors_uint8(colors: np.ndarray) -> np.ndarray:
    """(N, 3|4) floats in [0, 1] or uint8 -> (N, 3|4) uint8."""
    colors = np.asarray(colors)
    if colors.dtype == np.uint8:
        return colors
    return np.clip(np.round(colors * 255.0), 0, 255).astype(np.uint8)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """(H, W, 3|4) uint8 RGB(A) or (H, W) gray image -> PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray,
              uvs: np.ndarray | None = None, face_uvs: np.ndarray | None = None,
              colors: np.ndarray | None = None, texture: np.ndarray | None = None,
              texture_name: str | None = None) -> list[Path]:
    """Wavefront OBJ: ``v x y z [r g b]``, ``vt u v``, ``f v/vt`` (1-based), vertex order kept.

    vertices (N, 3) cm, faces (T, 3), uvs (U, 2), face_uvs (T, 3) uv ids per corner, colors (N, 3)
    in [0, 1] or uint8 (the common ``v x y z r g b`` extension), texture (H, W, 3) uint8: also
    writes ``<stem>.mtl`` and the texture PNG (``texture_name``, default ``<stem>.png``).
    Returns the paths written.
    """
    path = Path(path)
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    if (uvs is None) != (face_uvs is None):
        raise ValueError("uvs and face_uvs go together")
    if texture is not None and uvs is None:
        raise ValueError("a texture needs uvs")
    written = []
    lines = ["# densemesh OBJ; units: centimetres"]
    if texture is not None:
        texture_name = texture_name or f"{path.stem}.png"
        mtl = path.with_suffix(".mtl")
        with atomic_write(mtl, "w") as f:
            f.write(f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_name}\n")
        written += [write_png(path.parent / texture_name, texture), mtl]
        lines += [f"mtllib {mtl.name}", "usemtl face"]
    buf = io.StringIO()
    buf.write("\n".join(lines) + "\n")
    if colors is not None:
        rgb = _colors_uint8(colors)[:, :3] / 255.0
        np.savetxt(buf, np.hstack([vertices, rgb]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(buf, vertices, fmt="v %.6f %.6f %.6f")
    if uvs is not None:
        np.savetxt(buf, np.asarray(uvs, np.float64), fmt="vt %.6f %.6f")
        corners = np.stack([faces + 1, np.asarray(face_uvs, np.int64) + 1], -1).reshape(len(faces), 6)
        np.savetxt(buf, corners, fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(buf, faces + 1, fmt="f %d %d %d")
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())
    return [path] + written


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray,
              colors: np.ndarray | None = None,
              attributes: dict[str, np.ndarray] | None = None) -> Path:
    """Binary little-endian PLY via trimesh, vertex order kept.

    vertices (N, 3) cm, faces (T, 3), colors (N, 3|4) in [0, 1] or uint8, attributes: extra
    per-vertex scalar properties, e.g. {"visibility": (N,) bool} (bools are stored as uint8).
    """
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64),
                           vertex_colors=None if colors is None else _colors_uint8(colors),
                           process=False)
    for name, values in (attributes or {}).items():
        values = np.asarray(values)
        mesh.vertex_attributes[name] = values.astype(np.uint8) if values.dtype == bool else values
    data = trimesh.exchange.ply.export_ply(mesh, encoding="binary", include_attributes=True)
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_npz(path: str | Path, **arrays) -> Path:
    """Arrays (numpy or torch) -> compressed ``.npz`` (loads with ``np.load``, no pickle)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: _to_numpy(v) for k, v in arrays.items()})
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def write_json(path: str | Path, data) -> Path:
    """JSON with numpy / torch values turned into lists and numbers, 2-space indent."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.write("\n")
    return Path(path)


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _json_default(value):
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
        return _to_numpy(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_mesh(path: str | Path, vertices: np.ndarray, model, colors: np.ndarray | None = None,
               attributes: dict[str, np.ndarray] | None = None,
               texture: np.ndarray | None = None) -> list[Path]:
    """Write vertices (N, 3) cm on ``model``'s topology as .obj (with its UVs) or .ply, by suffix."""
    path = Path(path)
    faces = model.faces.cpu().numpy()
    if path.suffix.lower() == ".obj":
        return write_obj(path, vertices, faces, model.uvs.cpu().numpy(), model.face_uvs.cpu().numpy(),
                         colors=colors, texture=texture)
    if path.suffix.lower() == ".ply":
        return [write_ply(path, vertices, faces, colors=colors, attributes=attributes)]
    raise ValueError(f"unsupported mesh format {path.suffix!r}; use .obj or .ply")


FACE_FORMATS = ("obj", "ply", "npz", "json")


def write_face(folder: str | Path, result, model, formats=FACE_FORMATS, space: str = "model") -> list[Path]:
    """One reconstructed face (:class:`densemesh.result.FaceResult`) into ``folder``:
    ``mesh.obj`` (+ ``mesh.mtl`` and ``texture.png`` when the result has a texture, else vertex
    colours), ``mesh.ply`` (vertex colours + visibility), ``result.npz`` (every array) and
    ``landmarks.json`` (68 points, pose, expressions). ``space`` "model" writes the frontal
    model-space mesh, "camera" the posed one (both cm). Returns the paths written."""
    if space not in ("model", "camera"):
        raise ValueError(f"space must be 'model' or 'camera', got {space!r}")
    folder = Path(folder)
    verts = result.vertices if space == "model" else result.vertices_camera
    faces = model.faces.cpu().numpy()
    written = []
    if "obj" in formats:
        texture = result.texture
        written += write_obj(folder / "mesh.obj", verts, faces, model.uvs.cpu().numpy(),
                             model.face_uvs.cpu().numpy(), colors=None if texture is not None else result.colors,
                             texture=texture, texture_name="texture.png")
    if "ply" in formats:
        written.append(write_ply(folder / "mesh.ply", verts, faces, colors=result.colors,
                                 attributes={"visibility": result.visibility}))
    if "npz" in formats:
        written.append(write_npz(folder / "result.npz", **result.arrays()))
    if "json" in formats:
        written.append(write_json(folder / "landmarks.json", {
            "units": {"2d": "pixels", "3d": "camera-space centimetres", "angles": "degrees"},
            "landmarks68_2d": result.landmarks68_2d, "landmarks68_3d": result.landmarks68_3d,
            **result.summary(), "expressions": result.expressions}))
    return written
