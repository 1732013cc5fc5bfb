"""Face galleries for 1:N search and M:N matching: the identity vector of every face in a set
of photos (:mod:`densemesh.identity`), with the file, box and quality of each, in a FAISS index.

A gallery is a folder: ``CURRENT`` names the live version, ``vNNNNNN/`` holds it
(``vectors.npy`` (N, 128) float32 unit vectors, ``faces.json`` one entry per row: file, box,
quality; ``files.json``, the size and modification time of every enrolled file; and past
EXACT_UP_TO faces ``index.faiss``, the trained IVF-PQ index). Adding to a gallery writes a new
version and then replaces ``CURRENT`` (atomic rename), so a build that is killed leaves the
previous gallery loadable; older versions are removed afterwards. Search is exact inner product
(``IndexFlatIP``, built on load) up to EXACT_UP_TO faces, IVF-PQ beyond
(``tools/bench.py --only gallery``: 1 M faces, 12.9 ms a query exact, 0.11 ms IVF-PQ).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densemesh.export import atomic_write, write_json
from densemesh.identity import EMBEDDING_SIZE

#: faces up to which search is exact (~2.5 ms a query on 2 cores); beyond, IVF-PQ (40 instead
#: of 488 MiB per million faces)
EXACT_UP_TO = 200_000
IVF_PROBES = 32
PQ_BYTES = 32  # bytes per compressed vector
RERANK = 4     # IVF-PQ candidates per wanted result, re-scored exactly
_NO_VECTORS = np.zeros((0, EMBEDDING_SIZE), np.float32)


class GalleryError(ValueError):
    """A gallery folder is missing, corrupt or of another vector size (one-line message)."""


def build_index(vectors: np.ndarray, exact: bool | None = None):
    """FAISS inner-product index over ``vectors`` (N, 128) float32 unit vectors: exact, or IVF-PQ
    (``exact`` None: exact up to EXACT_UP_TO vectors)."""
    import faiss

    n, dim = vectors.shape
    if exact if exact is not None else n <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(4 * np.sqrt(n))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, lists, PQ_BYTES, 8, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)]
        index.train(sample)
        index.nprobe = IVF_PROBES
    index.add(vectors)
    return index


@dataclass
class Gallery:
    """vectors (N, 128) float32; faces: per row {"file", "box" [x0, y0, x1, y1] px, "quality"}
    (and "frame", the frame number, for a video's);
    files: {file: [size bytes, mtime ns]} of every enrolled file (faces or not)."""

    vectors: np.ndarray
    faces: list[dict]
    files: dict[str, list[int]]

    def __post_init__(self):
        self._index = None

    @classmethod
    def empty(cls) -> Gallery:
        return cls(_NO_VECTORS, [], {})

    @classmethod
    def load(cls, folder: str | Path) -> Gallery:
        """The live version of a gallery folder; GalleryError if it is not one, or is damaged."""
        folder = Path(folder)
        current = folder / "CURRENT"
        if not current.is_file():
            raise GalleryError(f"{folder} is not a densemesh gallery (no CURRENT file; see 'densemesh index build')")
        try:
            version = folder / current.read_text().strip()
            vectors = np.load(version / "vectors.npy", allow_pickle=False)
            faces = json.loads((version / "faces.json").read_text())
            files = json.loads((version / "files.json").read_text())
            index = None
            if (version / "index.faiss").is_file():
                import faiss

                index = faiss.read_index(str(version / "index.faiss"))
        except (OSError, ValueError, RuntimeError) as err:
            raise GalleryError(f"gallery {folder} is damaged: {err}") from None
        if vectors.ndim != 2 or vectors.shape[1] != EMBEDDING_SIZE or vectors.dtype != np.float32:
            raise GalleryError(f"gallery {folder} holds vectors of shape {vectors.shape} ({vectors.dtype}); "
                               f"densemesh's are {EMBEDDING_SIZE}-D float32")
        if len(faces) != len(vectors):
            raise GalleryError(f"gallery {folder} is damaged: {len(vectors)} vectors but {len(faces)} face entries")
        if index is not None and (index.d != EMBEDDING_SIZE or index.ntotal != len(vectors)):
            raise GalleryError(f"gallery {folder} is damaged: its index does not match its {len(vectors)} vectors")
        gallery = cls(vectors, faces, files)
        gallery._index = index
        return gallery

    def save(self, folder: str | Path) -> None:
        """Write a new version into ``folder`` and make it the live one (see the module notes)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        versions = sorted(p.name for p in folder.glob("v[0-9]*") if p.is_dir())
        name = f"v{int(versions[-1][1:]) + 1 if versions else 1:06d}"
        version = folder / name
        if version.exists():  # a killed build's leftovers
            shutil.rmtree(version)
        version.mkdir()
        with atomic_write(version / "vectors.npy") as f:
            np.save(f, np.ascontiguousarray(self.vectors, np.float32))
        write_json(version / "faces.json", self.faces)
        write_json(version / "files.json", self.files)
        if len(self.vectors) > EXACT_UP_TO:
            import faiss

            with atomic_write(version / "index.faiss") as f:
                f.write(faiss.serialize_index(self._built_index()).tobytes())
        with atomic_write(folder / "CURRENT", "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        for old in versions:
            shutil.rmtree(folder / old, ignore_errors=True)

    def add(self, file: str, stat: list[int], faces: list[dict], vectors: np.ndarray) -> None:
        """Enrol one file's faces (entries as in ``faces``, vectors (F, 128)); a file enrolled
        before is replaced."""
        if file in self.files:
            keep = [i for i, f in enumerate(self.faces) if f["file"] != file]
            self.vectors, self.faces = self.vectors[keep], [self.faces[i] for i in keep]
        self.files[file] = stat
        self.faces += faces
        self.vectors = np.concatenate([self.vectors, vectors.astype(np.float32)]) if len(vectors) else self.vectors
        self._index = None

    def _built_index(self):
        if self._index is None:
            self._index = build_index(self.vectors)
        return self._index

    def search(self, queries: np.ndarray, top: int, threshold: float) -> list[list[tuple[int, float]]]:
        """For each of ``queries`` (Q, 128) unit vectors: up to ``top`` (row, similarity) with
        similarity >= ``threshold``, best first. Similarities are exact: IVF-PQ's candidates
        (RERANK times ``top``) are re-scored with the stored vectors."""
        if not len(self.vectors):
            return [[] for _ in queries]
        queries = np.ascontiguousarray(queries, np.float32)
        k = min(top * (1 if len(self.vectors) <= EXACT_UP_TO else RERANK), len(self.vectors))
        _, rows = self._built_index().search(queries, k)
        out = []
        for query, row in zip(queries, rows):
            row = row[row >= 0]
            sims = self.vectors[row] @ query
            order = np.argsort(-sims, kind="stable")[:top]
            out.append([(int(row[i]), float(sims[i])) for i in order if sims[i] >= threshold])
        return out


def file_stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


#: seconds of video between the frames whose faces a video enrols
VIDEO_SAMPLE_S = 2.0


def media_files(inputs: list[Path]) -> list[Path]:
    """Photos and videos among ``inputs`` (files, or folders searched recursively), sorted, each once."""
    from densemesh.image import IMAGE_SUFFIXES
    from densemesh.video import VIDEO_SUFFIXES

    found = set()
    for item in inputs:
        paths = item.rglob("*") if item.is_dir() else [item]
        found.update(p.resolve() for p in paths
                     if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES))
    return sorted(found)


def _frames(path: Path):
    """(frame index or None for a photo, RGB image) to enrol from a photo or video: a video's
    frames every VIDEO_SAMPLE_S seconds."""
    from densemesh.image import load_image
    from densemesh.video import VIDEO_SUFFIXES, VideoReader

    if path.suffix.lower() not in VIDEO_SUFFIXES:
        yield None, load_image(path)
        return
    reader = VideoReader(path)
    try:
        due = 0.0
        for frame in reader.frames():
            if frame.time >= due:
                due = frame.time + VIDEO_SAMPLE_S
                yield frame.index, frame.image
    finally:
        reader.close()


def read_faces(comparer, path: Path, min_quality: float) -> dict:
    """One file's enrolment record: {"stat", "faces" (entries as in Gallery.faces; a video's
    also say which "frame"), "vectors" (F, 128), "too_poor" (faces refused), "error" (None, or
    why the file is unreadable)}."""
    from densemesh.image import ImageError
    from densemesh.video import VideoError

    record = {"stat": file_stat(path), "faces": [], "too_poor": 0, "error": None}
    vectors = [_NO_VECTORS]
    try:
        for index, image in _frames(path):
            faces, found = comparer.faces(image)
            good = [i for i, f in enumerate(faces) if f.quality.score >= min_quality]
            record["faces"] += [{"file": str(path), **({} if index is None else {"frame": index}),
                                 "box": [round(float(v), 1) for v in faces[i].box],
                                 "quality": round(faces[i].quality.score, 3)} for i in good]
            vectors.append(found[good])
            record["too_poor"] += len(faces) - len(good)
    except (ImageError, VideoError) as err:
        return _unreadable(path, str(err))
    return {**record, "vectors": np.concatenate(vectors)}


def _unreadable(path: Path, why: str) -> dict:
    return {"stat": file_stat(path), "faces": [], "too_poor": 0, "error": why, "vectors": _NO_VECTORS}


def enrol(gallery: Gallery, photos: list[Path], read, progress=None) -> dict:
    """Add the faces of every photo or video (:func:`media_files`) not enrolled before as it is
    now (same size and time), in the order of ``photos`` whatever order they are read in.
    read(paths, progress) yields (path, :func:`read_faces` record) - in this process
    (:func:`reader`), or spread over a cluster (:func:`ray_reader`). Returns counts: photos read, unchanged,
    faces enrolled, faces refused as too poor, photos without a face, and the unreadable ones."""
    todo = [p for p in photos if gallery.files.get(str(p)) != file_stat(p)]
    records = dict(read(todo, progress))
    stats = {"photos": 0, "unchanged": len(photos) - len(todo), "faces": 0, "too_poor": 0, "no_face": 0,
             "unreadable": []}
    for path in todo:
        r = records[path]
        if r["error"] is not None:
            stats["unreadable"].append(r["error"])
            continue
        stats["photos"] += 1
        stats["faces"] += len(r["faces"])
        stats["too_poor"] += r["too_poor"]
        stats["no_face"] += not r["faces"] and not r["too_poor"]
        gallery.add(str(path), r["stat"], r["faces"], r["vectors"])
    return stats


def reader(comparer, min_quality: float):
    """The ``read`` of :func:`enrol` in this process, with ``comparer``'s models."""
    def read(paths, progress=None):
        for k, path in enumerate(paths):
            if progress is not None:
                progress(k, len(paths))
            yield path, read_faces(comparer, path, min_quality)
    return read


def ray_reader(address: str, options: dict, min_quality: float):
    """The ``read`` of :func:`enrol` on the Ray cluster at ``address``
    (:func:`densemesh.distributed.map_on_ray`), each worker with a ``Comparer(**options)``."""
    def read(paths, progress=None):
        from densemesh.distributed import map_on_ray
        from densemesh.identity import Comparer

        for path, record in map_on_ray(address, lambda: Comparer(**options),
                                       lambda comparer, p: read_faces(comparer, p, min_quality), paths, progress):
            yield path, _unreadable(path, str(record)) if isinstance(record, Exception) else record
    return read


def match(a: Gallery, b: Gallery, threshold: float, top: int) -> list[tuple[int, int, float]]:
    """M:N: for every face of ``a``, the faces of ``b`` (up to ``top``) at or above ``threshold``:
    (row in a, row in b, similarity), by row of ``a``, then best first."""
    pairs = []
    for start in range(0, len(a.vectors), 4096):  # queries in blocks: memory stays flat
        hits = b.search(a.vectors[start:start + 4096], top, threshold)
        pairs += [(start + i, row, sim) for i, found in enumerate(hits) for row, sim in found]
    return pairs
