"""Per-vertex occlusion by ray casting (Embree, through Open3D) - in this process, or in a child
process that keeps a video's other threads running.

Open3D holds Python's global lock while it builds the ray-casting tree and casts (about 8 ms for
an 8k-vertex face on one core), and every torch operation of the fit thread needs that lock, so
beside a video's fit it costs far more than its own time (tools/bench.py: the fit thread's
frame went from 48 to 30 ms with the casting in a child). :class:`RayCaster` sends the vertices
over a pipe to ``python -m densemesh.raycast`` and reads the answer; if the child is gone it
casts in this process, with the same result.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np

#: a vertex this close behind the nearest surface on its ray still counts as visible
VISIBILITY_TOLERANCE_CM = 0.3


def unoccluded(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(B, N) bool: the ray from the camera centre (the origin) to each vertex meets no surface
    more than VISIBILITY_TOLERANCE_CM before it. vertices (B, N, 3) camera cm, faces (T, 3)."""
    import open3d as o3d

    tris = o3d.core.Tensor(np.asarray(faces, np.uint32))
    out = []
    for v in np.asarray(vertices, np.float32):
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(v), tris)
        dist = np.linalg.norm(v, axis=1)
        rays = np.concatenate([np.zeros_like(v), v / np.maximum(dist, 1e-6)[:, None]], 1)
        hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        out.append(hit >= dist - VISIBILITY_TOLERANCE_CM)
    return np.stack(out)


class RayCaster:
    """:func:`unoccluded` for one mesh topology (faces (T, 3)) in a child process; one caller at a
    time. Use as a context manager or call :meth:`close`."""

    def __init__(self, faces: np.ndarray):
        self.faces = np.ascontiguousarray(faces, np.int32)
        self._child = None
        self._sent: np.ndarray | None = None  # prefetched vertices whose answer is not read yet
        self._faces_sent = False  # the faces go with the first request: nothing waits for the child at start
        if not Path(sys.executable).name.lower().startswith("python"):  # embedded (e.g. Blender): cast here
            return
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            self._child = subprocess.Popen([sys.executable, "-m", "densemesh.raycast"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            weakref.finalize(self, lambda child: child.stdout.closed or _stop(child), self._child)  # if never closed
        except OSError:
            self.close()

    def prefetch(self, vertices: np.ndarray) -> None:
        """Send (B, N, 3) camera cm to the child now, so that it casts while the caller works;
        :meth:`unoccluded` with the same vertices then only reads the answer."""
        if self._child is None:
            return
        v = np.ascontiguousarray(vertices, np.float32)
        self._collect()  # an earlier prefetch nobody asked for
        if self._send(v):
            self._sent = v

    def unoccluded(self, vertices: np.ndarray) -> np.ndarray:
        """(B, N, 3) camera cm -> (B, N) bool, as :func:`unoccluded`."""
        v = np.ascontiguousarray(vertices, np.float32)
        prefetched = self._sent is not None and np.array_equal(self._sent, v)
        answer = self._collect()  # the prefetched answer, or another one, read and dropped
        if not prefetched:
            answer = self._receive(v.shape[:2]) if self._send(v) else None
        return answer if answer is not None else unoccluded(v, self.faces)

    def _collect(self) -> np.ndarray | None:
        """The answer to the prefetched vertices (None if none were sent or the child died)."""
        sent, self._sent = self._sent, None
        return None if sent is None else self._receive(sent.shape[:2])

    def _send(self, v: np.ndarray) -> bool:
        if self._child is not None:
            try:
                if not self._faces_sent:
                    self._child.stdin.write(struct.pack("<i", len(self.faces)) + self.faces.tobytes())
                    self._faces_sent = True
                self._child.stdin.write(struct.pack("<ii", *v.shape[:2]) + v.tobytes())
                self._child.stdin.flush()
                return True
            except OSError:
                self.close()  # the child died: this process casts from now on
        return False

    def _receive(self, shape: tuple[int, int]) -> np.ndarray | None:
        if self._child is not None:
            try:
                answer = self._child.stdout.read(shape[0] * shape[1])
                if len(answer) == shape[0] * shape[1]:
                    return np.frombuffer(answer, np.bool_).reshape(shape).copy()
            except OSError:
                pass
            self.close()
        return None

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            _stop(child)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stop(child: subprocess.Popen) -> None:
    """Close the child's pipes (it ends at the end of its input) and wait for it."""
    try:
        child.stdin.close()
        child.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        child.kill()
        child.wait()
    child.stdout.close()


def _serve() -> None:
    """The child: faces once, then (B, N, vertices) requests answered with B * N bools, until the
    pipe closes. Ctrl-C goes to the parent, which closes the pipe."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer

    def read(size: int) -> bytes:
        data = source.read(size)
        if len(data) < size:
            raise EOFError
        return data

    import open3d  # noqa: F401 - loaded at once, while the parent gets ready (0.6 s)

    try:
        (count,) = struct.unpack("<i", read(4))
        faces = np.frombuffer(read(12 * count), np.int32).reshape(count, 3)
        while True:
            b, n = struct.unpack("<ii", read(8))
            vertices = np.frombuffer(read(12 * b * n), np.float32).reshape(b, n, 3)
            sink.write(unoccluded(vertices, faces).tobytes())
            sink.flush()
    except (EOFError, BrokenPipeError):
        return


if __name__ == "__main__":
    _serve()
