#!/usr/bin/env python3
"""Speed and memory benchmarks (printed numbers; the targets of DESIGN.md are checked here, not
in unit tests).

    python tools/bench.py [--only image,regressor,video,memory,identity,gallery] [--gallery-sizes 1000000]

image     - per-stage CPU time per face of the photo pipeline (detection, regression, landmark
            fit, description: visibility, 68 points, colours) with search="fast", the whole
            photo also with the default search="thorough" (tiles for small faces), and refine
            fast / full, on the astronaut (median of repeated runs, models loaded once);
regressor - the network on one face crop: ONNX Runtime (1 thread) and PyTorch, batch 1 and 64;
video     - frames/s of the video pipeline (no refinement) on a talking-head clip resized to
            480p and 720p, with and without per-frame OBJ files;
memory    - peak resident memory for the same clip looped to 300 and to 1,200 frames;
identity  - identity vectors per second (dlib's ResNet on a chip from the 68 landmarks) and a
            whole 1:1 comparison of two photos (reconstruction included), models loaded;
gallery   - 1:N search on synthetic galleries of random unit vectors (not faces: a face gallery
            clusters, so these numbers are the hard case for IVF-PQ): build time, memory per
            million faces, latency per query, and recall@1 against exact search for queries that
            are gallery vectors plus noise: cosine 0.95 (a second photo of the same person: the
            median same-person similarity is 0.977) and 0.90 (harder: below the same-person
            threshold 0.94).
Run on an otherwise idle machine; the numbers are wall-clock.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLIP = ROOT.parent / "shared" / "video" / "talking_d3.mp4"


def timed(fn, repeat: int = 5):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mediapipe_landmarker_seconds(frames: list[np.ndarray], mode: str = "image") -> float:
    """MediaPipe's Face Landmarker alone, seconds per frame (median in image mode, mean over the
    stream in video mode): the yardstick every figure here is also given against."""
    from densemesh.detect import MediaPipeDetector

    with MediaPipeDetector(search="fast", mode=mode) as mp:
        if mode == "image":
            return timed(lambda: mp.detect(frames[0]), repeat=20)
        t0 = time.perf_counter()
        for i, frame in enumerate(frames):
            mp.detect(frame, timestamp_ms=33 * i)
        return (time.perf_counter() - t0) / len(frames)


def bench_image() -> None:
    from skimage import data

    from densemesh.pipeline import Reconstructor, torch_threads

    image = data.astronaut()
    mp = mediapipe_landmarker_seconds([image])
    with Reconstructor(device="cpu", refine="none", search="fast") as rec, \
            Reconstructor(device="cpu", refine="none") as thorough:
        dets = rec.detector.detect(image)
        state = rec.fit_detections([image], dets, refine="none")[0]
        stages = {
            "detect (MediaPipe, score, profile search)": lambda: rec.detector.detect(image),
            "regress (network, 2 passes x 2 mirrored)": lambda: rec.regressor.state(
                [image] * len(dets), np.stack([d.box for d in dets]), None, rec.fitter.config.camera_distance_cm),
            "fit (network + trust + LM + average)": lambda: rec.fit_detections([image], dets, refine="none"),
            "describe (visibility, 68 pts, colours)": lambda: rec.reconstruct_detections([image], dets, state=state),
            "whole photo, refine=none": lambda: rec(image),
            "whole photo, refine=none, thorough search": lambda: thorough(image),
        }
        print(f"photo pipeline on the astronaut (1 face), CPU, search='fast' unless said (the default, "
              f"'thorough', adds tiles for small faces), median of 20, torch on one thread as the "
              f"pipeline runs it without refinement; MediaPipe's landmarker alone {1000 * mp:.1f} ms in the same run:")
        for name, fn in stages.items():
            with torch_threads(1):
                t = timed(fn, repeat=20)
            print(f"  {name:42s} {1000 * t:8.1f} ms  {t / mp:5.1f}x MediaPipe")
        for level in ("fast", "full"):
            t = timed(lambda: rec.fit_detections([image], dets, refine=level), repeat=2)
            print(f"  {'landmark fit + refine=' + level:42s} {1000 * t:8.1f} ms")


def bench_regressor() -> None:
    import torch

    from densemesh.regress import WEIGHTS, Regressor, load_regressor

    crop = np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)
    print("regressor, one 128 px crop:")
    if WEIGHTS.with_suffix(".onnx").exists():
        ort = Regressor()
        print(f"  ONNX Runtime, 1 thread, batch 1   {1000 * timed(lambda: ort([crop]), 50):8.2f} ms")
    net = load_regressor()
    x1 = torch.rand(1, 3, 128, 128)
    x64 = torch.rand(64, 3, 128, 128)
    with torch.no_grad():
        print(f"  PyTorch, batch 1                  {1000 * timed(lambda: net(x1), 20):8.2f} ms")
        print(f"  PyTorch, batch 64 (per face)      {1000 * timed(lambda: net(x64), 3) / 64:8.2f} ms")


def resized_clip(folder: Path, height: int, loops: int = 1) -> Path:
    import av

    from densemesh.video import VideoReader

    reader = VideoReader(CLIP)
    frames = [f.image for f in reader.frames()]
    reader.close()
    width = height * 16 // 9 // 2 * 2
    path = folder / f"clip_{height}p_{loops}.mp4"
    import cv2

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(loops):
            for f in frames:
                canvas = np.zeros((height, width, 3), np.uint8)
                face = cv2.resize(f, (height, height))
                canvas[:, (width - height) // 2:(width - height) // 2 + height] = face
                for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def bench_video() -> None:
    from densemesh.pipeline import Reconstructor
    from densemesh.video import VideoOptions, VideoReconstructor

    from densemesh.video import VideoReader

    print(f"video pipeline, CPU, no refinement ({CLIP.name}, {CLIP.stat().st_size // 1024} KiB, resized):")
    with tempfile.TemporaryDirectory() as tmp, Reconstructor(device="cpu", refine="none") as rec:
        for height in (480, 720):
            clip = resized_clip(Path(tmp), height)
            reader = VideoReader(clip)
            mp_fps = 1 / mediapipe_landmarker_seconds([f.image for f in reader.frames()], mode="video")
            reader.close()
            print(f"  {height}p: MediaPipe's landmarker alone (video mode, decoded frames) {mp_fps:6.1f} frames/s")
            for fmt in (None, "obj"):
                summary = VideoReconstructor(rec, VideoOptions(mesh_format=fmt)).run(clip, Path(tmp) / f"o{height}{fmt}")
                print(f"  {height}p, frames: {str(fmt):5s}  {summary['fps_processed']:6.1f} frames/s "
                      f"({summary['frames_processed']} frames) = {summary['fps_processed'] / mp_fps:.2f}x MediaPipe")


def bench_memory() -> None:
    print("peak memory of a video run (one process each):")
    with tempfile.TemporaryDirectory() as tmp:
        for loops in (1, 4):
            clip = resized_clip(Path(tmp), 480, loops)
            # VmHWM: this process's own peak (ru_maxrss would also count the parent's pages the
            # child held between fork and exec, gigabytes once the other benches have run)
            code = ("import re; from densemesh.pipeline import Reconstructor; "
                    "from densemesh.video import VideoOptions, VideoReconstructor; "
                    "rec = Reconstructor(device='cpu', refine='none'); "
                    f"s = VideoReconstructor(rec, VideoOptions(mesh_format=None)).run(r'{clip}', r'{tmp}/m{loops}'); "
                    "print(s['frames_processed'], re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1])")
            frames, rss = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout.split()[-2:]
            print(f"  {frames:>5s} frames: peak RSS {int(rss) / 1024:.0f} MiB")


def bench_identity() -> None:
    import os

    from skimage import data

    from densemesh.identity import Comparer

    image = data.astronaut()
    with Comparer(device="cpu") as comparer:
        faces, _ = comparer.faces(image)
        embed = timed(lambda: comparer.embedder.embed(image, faces[:1]), repeat=20)
        whole = timed(lambda: comparer.compare(image, image[:, ::-1].copy()))
    print(f"identity (astronaut, {os.cpu_count()} cores): vector {1000 * embed:.1f} ms = {1 / embed:.0f} faces/s; "
          f"compare two photos {1000 * whole:.0f} ms")


QUERY_COSINES = (0.95, 0.90)  # similarity of a bench query to the gallery vector it should find


def bench_gallery(sizes: list[int]) -> None:
    import faiss

    from densemesh import gallery

    rng = np.random.default_rng(0)
    print(f"gallery search, synthetic unit vectors, {faiss.omp_get_max_threads()} threads:")
    for n in sizes:
        vectors = rng.standard_normal((n, 128), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        truth = rng.choice(n, 200, replace=False)
        queries = {}
        for cosine in QUERY_COSINES:  # noise of std s per axis: cosine ~ 1 / sqrt(1 + 128 s^2)
            noisy = vectors[truth] + rng.standard_normal((200, 128), dtype=np.float32) * np.sqrt((cosine ** -2 - 1) / 128)
            queries[cosine] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
        for kind, exact in (("exact (IndexFlatIP)", True), ("IVF-PQ", False)):
            t0 = time.perf_counter()
            index = gallery.build_index(vectors, exact)
            built = time.perf_counter() - t0
            recall = {}
            for cosine, q in queries.items():
                t0 = time.perf_counter()
                _, rows = index.search(q, 1)
                per_query = (time.perf_counter() - t0) / len(q)  # the last (hardest) queries' time is printed
                recall[cosine] = float((rows[:, 0] == truth).mean())
            size = faiss.serialize_index(index).nbytes
            print(f"  {n:>10,d} faces, {kind:20s} build {built:6.1f} s, {size / n * 1e6 / 2**20:6.0f} MiB per million, "
                  f"{1000 * per_query:7.2f} ms per query (batches of 200: M:N {n / per_query:.1e} face pairs/s), "
                  + ", ".join(f"recall@1 {r:.3f} at cosine {c:.2f}" for c, r in recall.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="image,regressor,video,memory,identity,gallery")
    ap.add_argument("--gallery-sizes", default="1000000", help="comma-separated gallery sizes (e.g. 1000000,10000000)")
    args = ap.parse_args(argv)
    for part in args.only.split(","):
        {"image": bench_image, "regressor": bench_regressor, "video": bench_video, "memory": bench_memory,
         "identity": bench_identity,
         "gallery": lambda: bench_gallery([int(n) for n in args.gallery_sizes.split(",")])}[part]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
