"""Every file format densemesh writes. Every write is atomic: a temporary name in the target
folder, then a rename, so a reader (or an interrupted run) never sees half a file.

Units: mesh files (OBJ, PLY) and arrays hold model- or camera-space vertices in
**centimetres** (ICT-FaceKit's and MediaPipe's unit); 2D points are pixels; angles degrees.
UVs follow OBJ/OpenGL (v = 0 at the bottom of the texture image).
"""
from __future__ import annotations

import contextlib
import functools
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
    with atomic_write(path) as f:
        f.write(("\n".join(lines) + "\n").encode())
        f.write(_obj_vertices(vertices, colors))
        f.write(_obj_topology(faces, uvs, face_uvs))
    return [path] + written


def _obj_vertices(vertices: np.ndarray, colors: np.ndarray | None = None) -> bytes:
    """``v x y z [r g b]`` lines (positions %.6f, colours %.4f in [0, 1]), ASCII."""
    rows = np.asarray(vertices, np.float64)
    decimals = (6, 6, 6)
    if colors is not None:
        rows = np.hstack([rows, _colors_uint8(colors)[:, :3] / 255.0])
        decimals += (4, 4, 4)
    return fixed_point_lines("v", rows, decimals)


def fixed_point_lines(prefix: str, rows: np.ndarray, decimals: tuple[int, ...]) -> bytes:
    """One ASCII line per row of ``rows`` (N, C): ``prefix``, then each value as ``" %.{d}f"`` with
    ``decimals[c]`` digits, then a newline - what %-formatting writes (the last digit may differ
    where a value lies within 1e-16 of a rounding tie), built by array operations: a video
    writes 8k vertex lines a frame, and %-formatting them held Python's lock for 12 ms."""
    rows = np.asarray(rows, np.float64)
    n, d = len(rows), max(decimals)
    if not np.isfinite(rows).all() or np.abs(rows).max(initial=0) >= 1e9:
        line = prefix + "".join(f" %.{k}f" for k in decimals) + "\n"
        return "".join(line % tuple(r) for r in rows).encode()
    short = d - np.asarray(decimals)  # a column with fewer decimals: trailing zero digits, left out
    fixed = np.round(np.abs(rows) * 10.0 ** (d - short)) * 10.0 ** short  # (N, C) whole numbers < 1e15
    width = max(1, len(str(int(fixed.max(initial=0) // 10 ** d))))  # digits before the point
    powers = 10.0 ** np.arange(width + d - 1, -1, -1)
    digits = np.floor(fixed[..., None] / powers)  # (N, C, width + d): exact (floats divide faster than ints)
    digits[..., 1:] -= 10 * digits[..., :-1]
    field = np.empty((n, rows.shape[1], 3 + width + d), np.uint8)  # " -123.456789"
    field[..., 0], field[..., 1], field[..., 2 + width] = ord(" "), ord("-"), ord(".")
    field[..., 2:2 + width], field[..., 3 + width:] = 48 + digits[..., :width], 48 + digits[..., width:]
    keep = np.ones(field.shape, bool)
    keep[..., 1] = np.signbit(rows)
    keep[..., 2:1 + width] = fixed[..., None] >= powers[: width - 1]  # no leading zeros
    keep[..., 3 + width:] = np.arange(d) < d - short[:, None]
    text = np.concatenate([np.frombuffer(prefix.encode(), np.uint8)[None].repeat(n, 0), field.reshape(n, -1),
                           np.full((n, 1), ord("\n"), np.uint8)], 1)
    mask = np.concatenate([np.ones((n, len(prefix)), bool), keep.reshape(n, -1), np.ones((n, 1), bool)], 1)
    return text[mask].tobytes()


def _obj_topology(faces: np.ndarray, uvs: np.ndarray | None, face_uvs: np.ndarray | None) -> bytes:
    """The ``vt`` and ``f`` lines of an OBJ (the same for every file of a topology), ASCII."""
    as_bytes = lambda a, dtype: None if a is None else np.ascontiguousarray(a, dtype).tobytes()  # noqa: E731
    return _topology_lines(as_bytes(faces, np.int64), as_bytes(uvs, np.float64), as_bytes(face_uvs, np.int64))


@functools.lru_cache(maxsize=4)
def _topology_lines(faces: bytes, uvs: bytes | None, face_uvs: bytes | None) -> bytes:
    """:func:`_obj_topology` of the arrays' bytes (int64 faces (T, 3), float64 uvs (U, 2),
    int64 face_uvs (T, 3)), cached: formatting them costs 50 ms a file."""
    buf = io.BytesIO()
    faces = np.frombuffer(faces, np.int64).reshape(-1, 3)
    if uvs is not None:
        np.savetxt(buf, np.frombuffer(uvs, np.float64).reshape(-1, 2), fmt="vt %.6f %.6f")
        corners = np.stack([faces + 1, np.frombuffer(face_uvs, np.int64).reshape(-1, 3) + 1], -1).reshape(len(faces), 6)
        np.savetxt(buf, corners, fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(buf, faces + 1, fmt="f %d %d %d")
    return buf.getvalue()


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
            "landmarks68_projected": result.landmarks68_projected,
            **result.summary(), "expressions": result.expressions}))
    return written


# ----------------------------------------------------------------------------- sequences (video)
class NpyStream:
    """An ``.npy`` file of shape (T, *row_shape) grown one row at a time: memory stays flat and the
    file is a valid array (``np.load(path, mmap_mode="r")``) after every :meth:`flush`.

    The header is written with room for a 20-digit row count and rewritten in place on flush.
    ``resume=N`` reopens an existing stream, keeps its first N rows and appends after them.
    """

    HEADER = 128  # bytes, a multiple of 64 as the format asks

    def __init__(self, path: str | Path, row_shape: tuple[int, ...], dtype, resume: int | None = None):
        self.path, self.row_shape, self.dtype = Path(path), tuple(row_shape), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            arr = np.load(self.path, mmap_mode="r")
            if arr.shape[1:] != self.row_shape or arr.dtype != self.dtype or arr.shape[0] < resume:
                raise ValueError(f"cannot resume {self.path}: holds {arr.dtype} {arr.shape}")
            self.count = resume
            del arr
            self._file = open(self.path, "r+b")
            self._file.seek(self.HEADER + self.count * self.dtype.itemsize * int(np.prod(self.row_shape)))
            self._file.truncate()
        else:
            self.count = 0
            self._file = open(self.path, "wb")
            self._write_header()

    def _write_header(self) -> None:
        shape = (self.count, *self.row_shape)
        text = f"{{'descr': '{self.dtype.str}', 'fortran_order': False, 'shape': {shape}, }}"
        text = text.ljust(self.HEADER - 10 - 1) + "\n"
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1"))
        self._file.seek(0, os.SEEK_END)

    def append(self, row: np.ndarray) -> None:
        row = np.asarray(row, dtype=self.dtype)
        if row.shape != self.row_shape:
            raise ValueError(f"{self.path.name}: row of shape {row.shape}, expected {self.row_shape}")
        self._file.write(np.ascontiguousarray(row).tobytes())
        self.count += 1

    def flush(self) -> None:
        """Make the file on disk a complete array of the rows written so far."""
        self._write_header()
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


#: ARKit's 52 blendshapes in Live Link Face CSV order, then its 9 head / eye rotation columns.
ARKIT_COLUMNS = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose",
    "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight",
    "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft",
    "MouthStretchRight", "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft",
    "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft",
    "NoseSneerRight", "TongueOut", "HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
    "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
EYE_LOOK_RANGE_RAD = np.radians(30.0)  # eye rotation at a full eyeLook* weight (approximation)


def ict_to_arkit(expression: np.ndarray, names: list[str]) -> np.ndarray:
    """(..., 53) ICT weights -> (..., 52) ARKit weights in ARKIT_COLUMNS order.

    ICT's ``X_L`` / ``X_R`` are ARKit's ``XLeft`` / ``XRight`` (the subject's sides); ARKit's
    ``browInnerUp`` and ``cheekPuff`` are the means of ICT's two halves; ICT has no ``tongueOut`` (0).
    """
    expression = np.asarray(expression, np.float64)
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros(expression.shape[:-1] + (52,))
    for j, column in enumerate(ARKIT_COLUMNS[:52]):
        base = column[0].lower() + column[1:]
        for suffix, ict in (("Left", "_L"), ("Right", "_R")):
            if base.endswith(suffix) and base[: -len(suffix)] + ict in index:
                out[..., j] = expression[..., index[base[: -len(suffix)] + ict]]
                break
        else:
            if base in index:
                out[..., j] = expression[..., index[base]]
            elif base + "_L" in index:
                out[..., j] = (expression[..., index[base + "_L"]] + expression[..., index[base + "_R"]]) / 2
    return out


def live_link_row(time_s: float, fps: float, arkit: np.ndarray, yaw_pitch_roll_deg: np.ndarray) -> list[str]:
    """One Live Link Face CSV row: timecode HH:MM:SS:FF.mmm, BlendShapeCount (61), the 52 weights,
    head yaw / pitch / roll (radians) and eye yaw / pitch / roll (radians, from the eyeLook weights)."""
    frames = time_s * fps
    whole = int(frames)
    hh, rem = divmod(int(time_s), 3600)
    mm, ss = divmod(rem, 60)
    timecode = f"{hh:02d}:{mm:02d}:{ss:02d}:{whole % max(1, round(fps)):02d}.{int(round((frames - whole) * 1000)) % 1000:03d}"
    a = dict(zip(ARKIT_COLUMNS, arkit))
    eyes = []
    for side in ("Left", "Right"):
        eyes += [(a[f"EyeLookOut{side}"] - a[f"EyeLookIn{side}"]) * EYE_LOOK_RANGE_RAD * (1 if side == "Left" else -1),
                 (a[f"EyeLookUp{side}"] - a[f"EyeLookDown{side}"]) * EYE_LOOK_RANGE_RAD, 0.0]
    head = np.radians(np.asarray(yaw_pitch_roll_deg, np.float64))
    values = list(arkit) + list(head) + eyes
    return [timecode, str(len(ARKIT_COLUMNS))] + [f"{v:.6f}" for v in values]


def _per_vertex_uv_layout(faces: np.ndarray, face_uvs: np.ndarray, uvs: np.ndarray):
    """Split vertices on UV seams (glTF has one UV per vertex).
    -> source vertex id per new vertex (V,), new faces (T, 3), new uvs (V, 2)."""
    pairs = np.stack([faces.ravel(), face_uvs.ravel()], 1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return unique[:, 0], inverse.reshape(faces.shape), uvs[unique[:, 1]]


def write_glb(path: str | Path, base: np.ndarray, normals: np.ndarray, faces: np.ndarray, uvs: np.ndarray,
              face_uvs: np.ndarray, targets: np.ndarray, target_names: list[str], times: np.ndarray,
              weights: np.ndarray, rotations: np.ndarray, translations: np.ndarray) -> Path:
    """Binary glTF 2.0: one mesh with morph targets and one animation.

    base (N, 3) model-space vertices, cm; normals (N, 3) their unit normals; targets (K, N, 3)
    morph-target offsets, cm; times (T,)
    seconds; weights (T, K); rotations (T, 3, 3) head rotations (model axes); translations (T, 3)
    OpenCV camera space, cm. glTF is in metres with +Y up and +Z towards the viewer: the node
    carries the head pose as seen from a camera at the origin looking down -Z (so the camera-space
    translation has Y and Z negated). Morph-target names are in ``mesh.extras.targetNames``.
    """
    from pygltflib import (ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, FLOAT, GLTF2, SCALAR, UNSIGNED_INT,
                           VEC2, VEC3, VEC4, Accessor, Animation, AnimationChannel,
                           AnimationChannelTarget, AnimationSampler, Asset, Attributes, Buffer,
                           BufferView, Mesh, Node, Primitive, Scene)
    from scipy.spatial.transform import Rotation

    source, new_faces, new_uvs = _per_vertex_uv_layout(np.asarray(faces), np.asarray(face_uvs), np.asarray(uvs))
    positions = (np.asarray(base)[source] * 0.01).astype(np.float32)
    unit_normals = np.asarray(normals)[source].astype(np.float32)
    offsets = (np.asarray(targets)[:, source] * 0.01).astype(np.float32)
    tex = np.stack([new_uvs[:, 0], 1.0 - new_uvs[:, 1]], 1).astype(np.float32)  # glTF: v down
    quats = Rotation.from_matrix(np.asarray(rotations, np.float64)).as_quat().astype(np.float32)  # x, y, z, w
    trans = (np.asarray(translations) * np.array([0.01, -0.01, -0.01])).astype(np.float32)
    blobs, views, accessors = [], [], []

    def add(array: np.ndarray, kind: str, target: int | None = None, minmax: bool = False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        offset = sum(len(b) for b in blobs)
        blobs.append(data + b"\0" * (-len(data) % 4))
        views.append(BufferView(buffer=0, byteOffset=offset, byteLength=len(data), target=target))
        comp = UNSIGNED_INT if array.dtype == np.uint32 else FLOAT
        acc = Accessor(bufferView=len(views) - 1, componentType=comp, count=len(array), type=kind)
        if minmax:
            acc.min = np.asarray(array).reshape(len(array), -1).min(0).tolist()
            acc.max = np.asarray(array).reshape(len(array), -1).max(0).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    pos = add(positions, VEC3, ARRAY_BUFFER, minmax=True)
    nrm = add(unit_normals, VEC3, ARRAY_BUFFER)
    uv = add(tex, VEC2, ARRAY_BUFFER)
    idx = add(new_faces.astype(np.uint32).ravel(), SCALAR, ELEMENT_ARRAY_BUFFER)
    morphs = [Attributes(POSITION=add(o, VEC3, ARRAY_BUFFER, minmax=True)) for o in offsets]
    t_in = add(np.asarray(times, np.float32), SCALAR, minmax=True)
    w_out = add(np.asarray(weights, np.float32).ravel(), SCALAR)
    r_out = add(quats, VEC4)
    p_out = add(trans, VEC3)
    mesh = Mesh(name="face", primitives=[Primitive(attributes=Attributes(POSITION=pos, NORMAL=nrm, TEXCOORD_0=uv), indices=idx,
                                                   targets=morphs)],
                weights=[0.0] * len(offsets), extras={"targetNames": list(target_names)})
    samplers = [AnimationSampler(input=t_in, output=o, interpolation="LINEAR") for o in (w_out, r_out, p_out)]
    channels = [AnimationChannel(sampler=i, target=AnimationChannelTarget(node=0, path=p))
                for i, p in enumerate(("weights", "rotation", "translation"))]
    gltf = GLTF2(asset=Asset(generator="densemesh", version="2.0"), scene=0, scenes=[Scene(nodes=[0])],
                 nodes=[Node(name="face", mesh=0, rotation=quats[0].tolist(), translation=trans[0].tolist())],
                 meshes=[mesh], accessors=accessors, bufferViews=views,
                 buffers=[Buffer(byteLength=sum(len(b) for b in blobs))],
                 animations=[Animation(name="performance", samplers=samplers, channels=channels)])
    gltf.set_binary_blob(b"".join(blobs))
    with atomic_write(path) as f:
        f.write(b"".join(gltf.save_to_bytes()))
    return Path(path)


SEQUENCE_FORMATS = ("obj", "ply")  # per-frame mesh files; the other track files are always written


class TrackWriter:
    """Every file of one video track, written as frames arrive; memory stays flat in video length.

    ``resume=N`` reopens a track's files and continues after their first N frames.
    ``folder/``: ``frames/NNNNNN.obj|ply`` (NNNNNN = video frame number, one topology),
    ``vertices.npy`` (T, N, 3) float32 cm, ``coefficients.csv`` (frame, time s, yaw / pitch / roll
    deg, translation cm, the 53 expression weights), ``arkit.csv`` (Live Link Face layout), and on
    :meth:`close` ``landmarks.npz`` (frame_index, time, landmarks68_2d, landmarks68_projected,
    vertices_2d, visibility) and
    ``animation.glb``. The ``.stream_*.npy`` files are the unfinished parts of landmarks.npz; they
    stay until the track is closed for good, so an interrupted run can resume.
    """

    def __init__(self, folder: str | Path, model, expression_names: list[str], fps: float,
                 mesh_format: str | None = "obj", space: str = "model", resume: int | None = None):
        if mesh_format not in (*SEQUENCE_FORMATS, None):
            raise ValueError(f"mesh_format must be one of {SEQUENCE_FORMATS} or None")
        self.folder, self.model, self.fps = Path(folder), model, fps
        self.names, self.mesh_format, self.space = list(expression_names), mesh_format, space
        n = model.num_vertices
        self.vertices = NpyStream(self.folder / "vertices.npy", (n, 3), np.float32, resume)
        self._streams = {
            "frame_index": NpyStream(self.folder / ".stream_frame_index.npy", (), np.int64, resume),
            "time": NpyStream(self.folder / ".stream_time.npy", (), np.float64, resume),
            "landmarks68_2d": NpyStream(self.folder / ".stream_landmarks68_2d.npy", (68, 2), np.float32, resume),
            "landmarks68_projected": NpyStream(self.folder / ".stream_landmarks68_projected.npy", (68, 2),
                                               np.float32, resume),
            "vertices_2d": NpyStream(self.folder / ".stream_vertices_2d.npy", (n, 2), np.float32, resume),
            "visibility": NpyStream(self.folder / ".stream_visibility.npy", (n,), np.bool_, resume),
        }
        self._coeffs = self._csv("coefficients.csv", ["frame", "time", "yaw", "pitch", "roll",
                                                       "tx", "ty", "tz", *self.names], resume)
        self._arkit = self._csv("arkit.csv", ["Timecode", "BlendShapeCount", *ARKIT_COLUMNS], resume)
        if mesh_format == "obj":
            self._topology = _obj_topology(model.faces.cpu().numpy(), model.uvs.cpu().numpy(),
                                           model.face_uvs.cpu().numpy())

    def _csv(self, name: str, header: list[str], resume: int | None):
        path = self.folder / name
        if resume is not None:
            with open(path) as f:
                kept = f.readlines()[: 1 + resume]
            f = open(path, "w")
            f.writelines(kept)
            return f
        f = open(path, "w")
        f.write(",".join(header) + "\n")
        return f

    @property
    def count(self) -> int:
        return self.vertices.count

    def write(self, frame_index: int, time_s: float, result) -> None:
        """Append one frame's :class:`densemesh.result.FaceResult`."""
        verts = result.vertices if self.space == "model" else result.vertices_camera
        if self.mesh_format == "obj":
            with atomic_write(self.folder / "frames" / f"{frame_index:06d}.obj") as f:
                f.write(b"# densemesh OBJ; units: centimetres\n")
                f.write(_obj_vertices(verts))
                f.write(self._topology)
        elif self.mesh_format == "ply":
            write_ply(self.folder / "frames" / f"{frame_index:06d}.ply", verts, self.model.faces.cpu().numpy())
        self.vertices.append(verts)
        for name, value in (("frame_index", frame_index), ("time", time_s),
                            ("landmarks68_2d", result.landmarks68_2d),
                            ("landmarks68_projected", result.landmarks68_projected), ("vertices_2d", result.vertices_2d),
                            ("visibility", result.visibility)):
            self._streams[name].append(np.asarray(value))
        p = result.pose
        self._coeffs.write(",".join([str(frame_index), f"{time_s:.6f}", f"{p.yaw:.4f}", f"{p.pitch:.4f}",
                                     f"{p.roll:.4f}", *(f"{v:.4f}" for v in p.translation),
                                     *(f"{v:.5f}" for v in result.expression)]) + "\n")
        arkit = ict_to_arkit(result.expression, self.names)
        self._arkit.write(",".join(live_link_row(time_s, self.fps, arkit, np.array([p.yaw, p.pitch, p.roll]))) + "\n")

    def flush(self) -> None:
        """Make every file on disk consistent with the frames written so far."""
        for stream in (self.vertices, *self._streams.values()):
            stream.flush()
        self._coeffs.flush()
        self._arkit.flush()

    def close(self, base_vertices: np.ndarray, base_normals: np.ndarray, final: bool = True) -> list[Path]:
        """Finish ``landmarks.npz`` and ``animation.glb`` (base_vertices (N, 3): the track's
        neutral face, model cm, and its normals). ``final=False`` keeps the streams open for a
        resumed run."""
        import csv
        import zipfile

        self.flush()
        written = [self.vertices.path, self.folder / "coefficients.csv", self.folder / "arkit.csv"]
        landmarks = self.folder / "landmarks.npz"
        with atomic_write(landmarks) as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, stream in self._streams.items():
                    zf.write(stream.path, f"{name}.npy")
        written.append(landmarks)
        with open(self.folder / "coefficients.csv") as f:
            rows = [[float(v) for v in r] for r in list(csv.reader(f))[1:]]
        if rows:
            import torch

            from densemesh.camera import euler_to_matrix

            table = np.array(rows)
            rotations = euler_to_matrix(torch.tensor(table[:, 2:5])).numpy()
            written.append(write_glb(self.folder / "animation.glb", base_vertices, base_normals,
                                     self.model.faces.cpu().numpy(),
                                     self.model.uvs.cpu().numpy(), self.model.face_uvs.cpu().numpy(),
                                     self.model.expression_basis.cpu().numpy(), self.names,
                                     table[:, 1], table[:, 8:], rotations, table[:, 5:8]))
        if final:
            for stream in (self.vertices, *self._streams.values()):
                stream.close()
            self._coeffs.close()
            self._arkit.close()
            for stream in self._streams.values():
                stream.path.unlink()
        return written
