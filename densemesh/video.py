"""Video: frame reading (PyAV), face tracking, per-track identity locking, temporal smoothing,
batched refinement, and the per-track outputs (through :class:`densemesh.export.TrackWriter`).

Per frame: MediaPipe (video mode) finds the faces; detections join tracks by box overlap;
a detection no live track claims is compared by identity with tracks that were lost (a face
that leaves and comes back keeps its ID) or starts a new track. A track's first
``lock_frames`` frames are fitted freely and their identities averaged (weighted by fit
quality); from then on the identity is fixed and only pose and expression are solved.
Pose and expression are smoothed with a One-Euro filter (causal: no look-ahead, so no added
latency; ``smooth=0`` turns it off). Frames are streamed: memory does not grow with length.
"""
from __future__ import annotations

import json
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from densemesh import camera
from densemesh.detect import Detection, VideoFaceFinder, _box_iou
from densemesh.export import TrackWriter, write_json
from densemesh.facemodel import vertex_normals
from densemesh.fit import FitState
from densemesh.image import IMAGE_SUFFIXES, load_image
from densemesh.pipeline import torch_threads

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


class VideoError(ValueError):
    """The input cannot be opened as a video (one-line message for the user)."""


@dataclass
class Frame:
    """index: frame number from 0; time: seconds (presentation timestamp); image (H, W, 3) RGB."""

    index: int
    time: float
    image: np.ndarray


class VideoReader:
    """Decode a video (or a still image, as one frame) with PyAV: RGB frames turned upright by the
    stream's rotation metadata, with their real timestamps (variable frame rates stay exact).

    A decoding error ends the stream early; ``error`` then says what happened.
    """

    def __init__(self, path: str | Path):
        import av

        self.path = Path(path)
        self.error: str | None = None
        self._still = None
        if self.path.suffix.lower() in IMAGE_SUFFIXES:
            self._still = load_image(self.path)  # raises ImageError for unreadable files
            self.fps, self.frame_count = 1.0, 1
            self.height, self.width = self._still.shape[:2]
            return
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as err:
            raise VideoError(f"cannot open video {self.path}: {err}") from None
        s = self._stream
        self.fps = float(s.average_rate or s.guessed_rate or 30.0)
        duration = float(s.duration * s.time_base) if s.duration else (self._container.duration or 0) / 1e6
        self.frame_count = int(s.frames) or max(1, round(duration * self.fps))
        self.width, self.height = s.codec_context.width, s.codec_context.height

    def frames(self, start: int = 0):
        """Yield :class:`Frame` from frame number ``start`` on (earlier frames are decoded and skipped)."""
        import av

        if self._still is not None:
            if start == 0:
                yield Frame(0, 0.0, self._still)
            return
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                if index >= start:
                    t = float(frame.pts * frame.time_base) if frame.pts is not None else index / self.fps
                    image = frame.to_ndarray(format="rgb24")
                    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
                    yield Frame(index, t, np.ascontiguousarray(np.rot90(image, turns)) if turns else image)
                index += 1
        except (av.error.FFmpegError, EOFError) as err:
            self.error = f"decoding stopped after {index} frames: {err}"

    def close(self) -> None:
        if self._still is None:
            self._container.close()


class OneEuro:
    """One-Euro filter (Casiez, Roussel & Vogel 2012) over a vector: a low-pass whose cut-off rises
    with speed, so still parts are smoothed hard and fast motion passes with little lag.

    min_cutoff (Hz) and beta set the trade-off; timestamps in seconds (variable rates are fine).
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: float | None = None

    @staticmethod
    def _alpha(cutoff, dt):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None or t <= self.t:
            self.x, self.dx, self.t = x, np.zeros_like(x), t
            return x
        dt = t - self.t
        dx = (x - self.x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = a_d * dx + (1 - a_d) * self.dx
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        a = self._alpha(cutoff, dt)
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x

    def state(self) -> dict:
        return {"x": None if self.x is None else self.x.tolist(), "dx": None if self.dx is None else self.dx.tolist(),
                "t": self.t}

    def restore(self, state: dict) -> None:
        self.x = None if state["x"] is None else np.asarray(state["x"])
        self.dx = None if state["dx"] is None else np.asarray(state["dx"])
        self.t = state["t"]


def smoothing_filter(strength: float) -> OneEuro | None:
    """``--smooth`` strength (0 = off, 1 = default, larger = smoother) -> a filter for the pose and
    expression vector (rotation as 6D, translation in cm / 10, expression weights)."""
    if strength <= 0:
        return None
    return OneEuro(min_cutoff=1.5 / strength, beta=0.6 / strength)


def _pose_vector(state: FitState, i: int) -> np.ndarray:
    """Face i's pose and expression as one vector for the filter (rotation 6D, translation / 10 cm)."""
    return np.concatenate([camera.matrix_to_rotation_6d(state.rotation[i]).cpu().numpy(),
                           state.translation[i].cpu().numpy() / 10.0, state.expression[i].cpu().numpy()])


def _from_pose_vector(v: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.tensor(v, dtype=torch.float32)
    return camera.rotation_6d_to_matrix(t[:6]), t[6:9] * 10.0, t[9:].clamp(0.0, 1.0)


@dataclass
class Track:
    """One face through the video. identity (100,) once locked; samples: (identity, weight) pairs
    gathered before the lock; pending: fitted frames waiting for the lock."""

    id: int
    box: np.ndarray
    last_seen: int
    last_time: float = -math.inf
    score: float = float("nan")
    identity: np.ndarray | None = None
    samples: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    smoother: OneEuro | None = None
    writer: TrackWriter | None = None
    fit: FitState | None = None  # the last frame's fit (before smoothing): the next frame starts there

    @property
    def locked(self) -> bool:
        return self.identity is not None


@dataclass
class VideoOptions:
    """What a video run writes and how. mesh_format: "obj", "ply" or None (no per-frame meshes);
    smooth: One-Euro strength (0 = off); lock_frames: frames averaged into a track's identity;
    max_gap_s: how long a face may vanish and keep its track by position alone; reid_distance:
    RMS identity-coefficient distance under which a returning face takes a lost track's ID
    (measured here: one frame's fit lies 0.07-0.24 from its person's mean, different people
    0.04-0.5 apart, median 0.3 - shape alone tells people apart only roughly);
    min_track_score: detector confidence a face needs to start a track (MediaPipe's video mode
    also "finds" faces in blurry text; real faces score 0.8 and more); overlay: also write
    overlay.mp4."""

    mesh_format: str | None = "obj"
    space: str = "model"
    smooth: float = 1.0
    lock_frames: int = 15
    max_gap_s: float = 0.5
    iou_match: float = 0.3
    reid_distance: float = 0.25
    min_track_score: float = 0.6
    overlay: bool = False


class VideoReconstructor:
    """Runs a :class:`densemesh.pipeline.Reconstructor`'s model and fitter over a video."""

    CHECKPOINT_EVERY = 50  # frames between flushed, resumable states
    QUEUED = 8             # most frames waiting for the output thread (memory stays flat)

    def __init__(self, reconstructor, options: VideoOptions | None = None, max_faces: int = 8):
        import scipy.optimize  # noqa: F401 - loaded here (_match's), not inside the first frame (1 s)

        self.rec = reconstructor
        self.options = options or VideoOptions()
        self.max_faces = max_faces

    # ------------------------------------------------------------------ the run
    def run(self, path: str | Path, out: str | Path, resume: bool = False, progress=None) -> dict:
        """Reconstruct every frame of ``path`` into ``out``; returns the summary (also written to
        ``out/summary.json``). KeyboardInterrupt leaves every finished frame valid and a
        summary that says where the run stopped (``resume=True`` continues from there). An
        output thread describes fitted faces (visibility, colours) and writes the files,
        overlapping with the next frames' fits; on the CPU the visibility rays are cast in the
        reconstructor's child process (:class:`densemesh.raycast.RayCaster`)."""
        with ThreadPoolExecutor(1, thread_name_prefix="densemesh-output") as self._output:
            self._queued: deque[Future] = deque()
            return self._run(path, out, resume, progress)

    def _run(self, path: str | Path, out: str | Path, resume: bool, progress) -> dict:
        out = Path(out)
        reader = VideoReader(path)
        state = self._load_checkpoint(out) if resume else None
        start = state["next_frame"] if state else 0
        self.tracks: list[Track] = []
        self.next_id = 0
        self.fps = reader.fps
        self.focal: float | None = None
        self._ready: list = []
        self.refine_batch = 8 if self.rec.device.type == "cuda" else 1
        if state:
            self._restore(state, out)
        summary = {"input": str(path), "fps": reader.fps, "frame_count_estimate": reader.frame_count,
                   "size": [reader.height, reader.width], "refine": self.rec.refine,
                   "options": self.options.__dict__, "resumed_from": start if state else None}
        self.overlay = OverlayWriter(out / "overlay.mp4", reader, self.rec.model.faces.cpu()) \
            if self.options.overlay else None
        t0 = time.perf_counter()
        frames_done = start
        timings = self.timings = {"detect_s": 0.0, "fit_s": 0.0, "output_s": 0.0}
        interrupted = False
        with VideoFaceFinder(max_faces=self.max_faces, boxes_without_landmarks=self.rec.regressor is not None) \
                as detector, torch_threads(1):  # the second core decodes and runs MediaPipe (_detected_frames)
            frames = _detected_frames(reader, detector, start)
            try:
                for frame, detections, detect_s in frames:
                    t2 = time.perf_counter()
                    if self.overlay is not None:
                        self._background(self.overlay.queue, frame)
                    self._process(frame, detections, out, detector)
                    timings["detect_s"] += detect_s
                    timings["fit_s"] += time.perf_counter() - t2
                    frames_done = frame.index + 1
                    if self.overlay is not None:  # frames no track and no refinement batch holds back
                        held = [t.pending[0][0].index for t in self.tracks if t.pending]
                        held += [f.index for f, *_ in self._ready]
                        self._background(self.overlay.write_until, min(held, default=frames_done))
                    if progress is not None:
                        progress(frame.index, reader.frame_count)
                    if frames_done % self.CHECKPOINT_EVERY == 0 and not self._ready and \
                            not any(t.pending for t in self.tracks):
                        self._checkpoint(out, {**summary, "frames_processed": frames_done}, frames_done, "running")
            except KeyboardInterrupt:
                interrupted = True
            finally:
                frames.close()
        for track in self.tracks:  # finish tracks still waiting for their identity lock
            self._lock_and_flush(track)
        self._drain()
        self._wait_background()
        if self.overlay is not None:
            self.overlay.close()
        reader.close()
        summary.update({"frames_processed": frames_done, "interrupted": interrupted, "decode_error": reader.error,
                        "seconds": time.perf_counter() - t0, "timings": timings})
        summary["fps_processed"] = (frames_done - start) / max(summary["seconds"], 1e-9)
        self._checkpoint(out, summary, frames_done, "interrupted" if interrupted else "done")
        if interrupted:
            raise KeyboardInterrupt(f"stopped at frame {frames_done}")
        return {**summary, "tracks": [{"id": t.id, "frames": t.writer.count} for t in self.tracks]}

    # ------------------------------------------------------------------ per frame
    def _process(self, frame: Frame, detections: list[Detection], out: Path, detector) -> None:
        """Assign detections to tracks, fit, and emit what is ready. A detection that starts or
        revives a track is scored by the detector; the track keeps that score."""
        opts = self.options
        live = [t for t in self.tracks if frame.time - t.last_time <= opts.max_gap_s]
        pairs, unmatched = self._match(live, detections)
        free = {}  # detection -> free fit (identity solved), for re-identification and identity samples
        scores = {id(d): detector.score(frame.image, d.box) for d in unmatched}
        unmatched = [d for d in unmatched if scores[id(d)] >= opts.min_track_score]
        if unmatched:
            state = self._fit(frame, unmatched)
            for i, det in enumerate(unmatched):
                free[id(det)] = state.select(i)
                track = self._reidentify(state.identity[i].cpu().numpy(), [t for t, _ in pairs])
                if track is not None:
                    track.fit = None  # back after a gap: no warm start
                track = track or self._new_track(det, frame, out)
                track.score = scores[id(det)]
                pairs.append((track, det))
        for track, det in pairs:
            track.box, track.last_seen, track.last_time = det.box, frame.index, frame.time
            det.score = track.score
        locked = [(t, d) for t, d in pairs if t.locked]
        for warm in (True, False):  # tracks continuing from the last frame start from its fit
            group = [(t, d) for t, d in locked if (t.fit is not None) == warm]
            if group:
                state = self._fit(frame, [d for _, d in group], [t for t, _ in group])
                self._emit(frame, [t for t, _ in group], [d for _, d in group], state)
        learning = [(t, d) for t, d in pairs if not t.locked]
        missing = [d for t, d in learning if id(d) not in free]
        if missing:
            state = self._fit(frame, missing)
            free.update({id(d): state.select(i) for i, d in enumerate(missing)})
        for track, det in learning:
            sample = free[id(det)]
            cost = float("nan") if sample.cost is None else float(sample.cost[0])
            # the network's answer alone (no landmark cost) counts as a poor fit
            track.samples.append((sample.identity[0].cpu().numpy(), 1.0 / max(cost, 1e-3) if np.isfinite(cost) else 1e-2))
            track.pending.append((frame, det))
            if len(track.samples) >= opts.lock_frames:
                self._lock_and_flush(track)

    def _fit(self, frame: Frame, detections: list[Detection], tracks: list[Track] | None = None) -> FitState:
        """Fit detections of one frame: free (no tracks) or with the tracks' locked identities, from
        their last frame's fit where there is one. Keeps the video's focal length fixed."""
        identities = start = None
        if tracks is not None:
            identities = torch.tensor(np.stack([t.identity for t in tracks]), dtype=torch.float32)
            if all(t.fit is not None for t in tracks):
                start = FitState.stack([t.fit for t in tracks])
        state, _ = self.rec.fit_detections([frame.image] * len(detections), detections, refine="none",
                                              identities=identities, focal=self.focal, start=start,
                                              photo=False)
        if self.focal is None:
            self.focal = float(state.focal[0])
        for i, track in enumerate(tracks or []):
            track.fit = state.select(i)
        return state

    def _match(self, live: list[Track], detections: list[Detection]):
        """Hungarian assignment of detections to live tracks by box IoU."""
        from scipy.optimize import linear_sum_assignment

        if not live or not detections:
            return [], list(detections)
        iou = np.array([[_box_iou(t.box, d.box) for d in detections] for t in live])
        rows, cols = linear_sum_assignment(-iou)
        pairs = [(live[r], detections[c]) for r, c in zip(rows, cols) if iou[r, c] >= self.options.iou_match]
        taken = {id(d) for _, d in pairs}
        return pairs, [d for d in detections if id(d) not in taken]

    def _reidentify(self, identity: np.ndarray, busy: list[Track]) -> Track | None:
        """The track not in ``busy`` (matched this frame) whose identity is nearest, if near enough."""
        best, best_d = None, self.options.reid_distance
        for track in self.tracks:
            if any(track is b for b in busy):
                continue
            ref = track.identity if track.locked else np.average(
                [s for s, _ in track.samples], axis=0, weights=[w for _, w in track.samples])
            d = float(np.sqrt(np.mean((identity - ref) ** 2)))
            if d < best_d:
                best, best_d = track, d
        return best

    def _new_track(self, det: Detection, frame: Frame, out: Path) -> Track:
        track = Track(self.next_id, det.box, frame.index, smoother=smoothing_filter(self.options.smooth))
        self.next_id += 1
        track.writer = TrackWriter(out / f"track_{track.id:02d}", self.rec.model, self.rec.model.expression_names,
                                   self.fps, self.options.mesh_format, self.options.space)
        self.tracks.append(track)
        return track

    def _lock_and_flush(self, track: Track) -> None:
        """Fix the track's identity (quality-weighted mean of its samples), emit its pending frames."""
        if not track.pending:
            return
        if not track.locked:
            ids, weights = zip(*track.samples)
            track.identity = np.average(np.stack(ids), axis=0, weights=weights)
        for frame, det in track.pending:
            self._emit(frame, [track], [det], self._fit(frame, [det], [track]))
        track.pending.clear()

    def _emit(self, frame: Frame, tracks: list[Track], detections: list[Detection], state: FitState) -> None:
        """Queue fitted faces; once ``refine_batch`` are queued (or at the end), refine them in one
        batch, then smooth, describe and write each in order."""
        self._ready += [(frame, track, det, state.select(i)) for i, (track, det) in enumerate(zip(tracks, detections))]
        if len(self._ready) >= self.refine_batch:
            self._drain()

    def _drain(self) -> None:
        from densemesh import fit

        if not self._ready:
            return
        items, self._ready = self._ready, []
        state = FitState.stack([s for *_, s in items])
        level = fit.REFINE_LEVELS[self.rec.refine]
        rows = [i for i, fitted in enumerate(state.fitted.tolist()) if fitted]
        if level is not None and rows:  # what the network answered alone has no landmarks to refine against
            landmarks = torch.tensor(np.stack([items[i][2].landmarks[:, :2] for i in rows]), dtype=torch.float32)
            refined, _ = fit.refine(self.rec.fitter, [items[i][0].image for i in rows], state.select_rows(rows),
                                    landmarks.to(self.rec.device), level, fix_identity=True)
            state = state.with_rows(rows, refined)
        for i, (frame, track, det, _) in enumerate(items):
            if track.smoother is not None:
                rot, trans, expr = _from_pose_vector(track.smoother(_pose_vector(state, i), frame.time))
                state.rotation[i], state.translation[i], state.expression[i] = rot, trans, expr
            self._background(self._describe_and_write, frame, track, det, state.select(i))

    def _describe_and_write(self, frame: Frame, track: Track, det: Detection, state: FitState) -> None:
        """(output thread) One fitted face -> FaceResult -> the track's files and the overlay."""
        t0 = time.perf_counter()
        result = self.rec.reconstruct_detections([frame.image], [det], state=state)[0]
        track.writer.write(frame.index, frame.time, result)
        if self.overlay is not None:
            self.overlay.draw(frame.index, [result])
        self.timings["output_s"] += time.perf_counter() - t0

    def _background(self, fn, *args) -> None:
        """Queue ``fn(*args)`` on the output thread (in order; at most QUEUED waiting); its errors
        are raised here."""
        self._queued.append(self._output.submit(fn, *args))
        while len(self._queued) > self.QUEUED or (self._queued and self._queued[0].done()):
            self._queued.popleft().result()

    def _wait_background(self) -> None:
        while self._queued:
            self._queued.popleft().result()

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, out: Path, summary: dict, next_frame: int, stage: str) -> None:
        """Write summary.json with what a resumed run needs (after every queued frame is
        written). stage "running": files flushed; "interrupted": also landmarks.npz and
        animation.glb of the frames so far, the streams kept for --resume; "done": every track
        finished for good."""
        self._wait_background()
        tracks = []
        for t in self.tracks:
            if stage == "running" or not t.locked:
                t.writer.flush()
            else:
                base = self.rec.model.decode(torch.tensor(t.identity[None], dtype=torch.float32))
                normals = vertex_normals(base, self.rec.model.faces)
                t.writer.close(base[0].cpu().numpy(), normals[0].cpu().numpy(), final=stage == "done")
            tracks.append({"id": t.id, "folder": f"track_{t.id:02d}", "frames": t.writer.count,
                           "identity": None if t.identity is None else t.identity.tolist(),
                           "box": np.asarray(t.box).tolist(), "last_seen": t.last_seen,
                           "last_time": t.last_time if math.isfinite(t.last_time) else None,
                           "score": t.score,
                           "smoother": t.smoother.state() if t.smoother else None})
        write_json(out / "summary.json", {**summary, "complete": stage == "done", "tracks": tracks,
                                          "next_frame": next_frame, "focal_px": self.focal})

    def _load_checkpoint(self, out: Path) -> dict | None:
        path = out / "summary.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return None if data.get("complete") else data

    def _restore(self, state: dict, out: Path) -> None:
        self.focal = state.get("focal_px")
        for t in state["tracks"]:
            track = Track(t["id"], np.asarray(t["box"]), t["last_seen"],
                          t["last_time"] if t["last_time"] is not None else -math.inf, t["score"],
                          identity=None if t["identity"] is None else np.asarray(t["identity"]),
                          smoother=smoothing_filter(self.options.smooth))
            if track.smoother is not None and t["smoother"]:
                track.smoother.restore(t["smoother"])
            track.writer = TrackWriter(out / t["folder"], self.rec.model, self.rec.model.expression_names, self.fps,
                                       self.options.mesh_format, self.options.space, resume=t["frames"])
            self.tracks.append(track)
        self.next_id = 1 + max((t.id for t in self.tracks), default=-1)



def _detected_frames(reader: VideoReader, detector: VideoFaceFinder, start: int, lookahead: int = 16):
    """Yield (frame, detections, detect seconds) while a background thread decodes and runs
    MediaPipe up to ``lookahead`` frames ahead, overlapping with the fitting in this thread (enough
    frames to keep the fitting busy through a search frame's 0.3-0.4 s, see VideoFaceFinder).
    Closing the generator stops the thread; its errors are raised here."""
    import queue
    import threading

    jobs: queue.Queue = queue.Queue(maxsize=lookahead)
    stop = threading.Event()

    def work():
        try:
            for frame in reader.frames(start):
                t0 = time.perf_counter()
                found = detector.detect(frame.image, timestamp_ms=int(round(frame.time * 1000)))
                item = (frame, found, time.perf_counter() - t0)
                while not stop.is_set():
                    try:
                        jobs.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            jobs.put(None)
        except BaseException as err:  # handed to the consumer
            jobs.put(err)

    worker = threading.Thread(target=work, name="densemesh-detect", daemon=True)
    worker.start()
    try:
        while True:
            item = jobs.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                jobs.get(timeout=0.05)
            except queue.Empty:
                pass


class OverlayWriter:
    """overlay.mp4: the video with the shaded meshes over it (H.264 at the source's frame rate).
    Frames wait in a queue until every track has emitted them (a track holds its first frames
    back until its identity is locked), so the queue holds at most that many frames."""

    def __init__(self, path: Path, reader: VideoReader, faces: torch.Tensor):
        import av

        self.path, self.faces = path, faces
        self._tmp = path.with_name(f".{path.name}.tmp.mp4")
        self._container = av.open(str(self._tmp), "w")
        self._stream = self._container.add_stream("libx264", rate=max(1, round(reader.fps)))
        self._stream.width, self._stream.height = reader.width // 2 * 2, reader.height // 2 * 2
        self._stream.pix_fmt = "yuv420p"
        self._queue: dict[int, tuple[Frame, list]] = {}

    def queue(self, frame: Frame) -> None:
        self._queue[frame.index] = (frame, [])

    def draw(self, index: int, results: list) -> None:
        if index in self._queue:
            self._queue[index][1].extend(results)

    def write_until(self, index: int) -> None:
        """Encode every queued frame before frame ``index``."""
        import av

        from densemesh import render

        for i in sorted(k for k in self._queue if k < index):
            frame, results = self._queue.pop(i)
            image = frame.image
            if results:
                image = render.overlay(image, torch.tensor(np.stack([r.vertices_camera for r in results])),
                                       self.faces, torch.tensor([r.pose.focal for r in results], dtype=torch.float32),
                                       torch.tensor(np.stack([r.pose.principal for r in results]), dtype=torch.float32),
                                       max_side=max(image.shape))
            h, w = self._stream.height, self._stream.width
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]),
                                                                         format="rgb24")):
                self._container.mux(packet)

    def close(self) -> None:
        self.write_until(10 ** 12)
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._tmp.replace(self.path)
