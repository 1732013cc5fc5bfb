"""The ``densemesh`` command: argument parsing, messages and exit codes only.

Exit codes: 0 success (also "no face found"), 1 internal error, 2 bad usage or unreadable
input, 130 interrupted. Errors are one line on stderr; set DENSEMESH_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from densemesh import __version__


class UsageError(Exception):
    """A problem with the user's arguments or input: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _expression_pair(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"--expression expects NAME=VALUE, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"--expression {name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise UsageError(f"--expression {name}: {value!r} is not a finite number")
    return name, number


def _formats(text: str) -> tuple[str, ...]:
    from densemesh.export import FACE_FORMATS

    chosen = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in chosen if f not in (*FACE_FORMATS, "none")]
    if bad or not chosen:
        raise UsageError(f"--format: unknown format {bad[0] if bad else text!r}; choose from {','.join(FACE_FORMATS)}")
    return chosen


def _ray_option(parser, what: str) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help=f"spread the {what} over a Ray cluster: 'local' (default: a Ray instance on this "
                             "machine), 'auto', or the head's HOST:PORT; every node must see the files "
                             "(see densemesh.distributed)")


def _reach_cluster(args) -> None:
    """With --ray: join the cluster before anything is drawn or written (ConnectionError, one
    line, if none answers)."""
    if args.ray is not None:
        from densemesh.distributed import connect

        connect(args.ray)


def build_parser() -> argparse.ArgumentParser:
    from densemesh.identity import MIN_QUALITY, SAME_PERSON_THRESHOLD  # light: no models, no torch

    parser = _Parser(prog="densemesh", description="Dense 3D face reconstruction from photos and videos.")
    parser.add_argument("--version", action="version", version=f"densemesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    rec = sub.add_parser("reconstruct", help="reconstruct every face in a photo, a folder of photos or a video",
                         description="Photos: writes per face face_NN/ with mesh.obj (+ texture), mesh.ply, "
                                     "result.npz and landmarks.json, plus overlay.png and summary.json per image. "
                                     "Videos (.mp4 .mov .avi .mkv .webm .m4v): per tracked face track_NN/ with "
                                     "frames/, vertices.npy, landmarks.npz, coefficients.csv, arkit.csv and "
                                     "animation.glb, plus summary.json. No face found is not an error (exit 0).")
    rec.add_argument("input", type=Path, help="image, folder of images, or video file")
    rec.add_argument("--out", type=Path, required=True, help="output folder")
    rec.add_argument("--format", default=None, type=_formats,
                     help="photos: comma-separated subset of obj,ply,npz,json (default: all); "
                          "videos: obj, ply or none, the per-frame mesh files (default: obj)")
    rec.add_argument("--refine", default=None, choices=["none", "fast", "full"],
                     help="photometric refinement: none (landmark fit only), fast, full "
                          "(default: fast for photos, none for videos)")
    rec.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda")
    rec.add_argument("--max-faces", type=int, default=8, metavar="N", help="most faces per image (default 8)")
    rec.add_argument("--space", default="model", choices=["model", "camera"],
                     help="mesh files in frontal model space (default) or posed camera space; both cm")
    rec.add_argument("--no-overlay", action="store_true", help="photos: skip overlay.png")
    rec.add_argument("--overlay", action="store_true", help="videos: also write overlay.mp4")
    rec.add_argument("--smooth", type=float, default=1.0, metavar="S",
                     help="videos: temporal smoothing strength (One-Euro filter, no look-ahead); "
                          "0 = off, 1 = default, larger = smoother")
    rec.add_argument("--resume", action="store_true",
                     help="videos: continue an interrupted run in --out from where it stopped")
    _ray_option(rec, "folder's images")

    cmp = sub.add_parser("compare", help="1:1: is the face in photo A the person in photo B?",
                         description="Prints the cosine similarity of the two faces' identity vectors and "
                                     "whether it reaches the same-person threshold (exit 0 either way; "
                                     "exit 2 when a photo has no face or its face is below --min-quality).")
    cmp.add_argument("a", type=Path, help="first photo")
    cmp.add_argument("b", type=Path, help="second photo")
    cmp.add_argument("--face-a", type=int, default=1, metavar="N", help="which face of A, largest first (default 1)")
    cmp.add_argument("--face-b", type=int, default=1, metavar="N", help="which face of B, largest first (default 1)")
    cmp.add_argument("--threshold", type=float, default=SAME_PERSON_THRESHOLD, metavar="T",
                     help="same-person threshold on the cosine similarity (default: the calibrated %(default)s)")
    cmp.add_argument("--min-quality", type=float, default=MIN_QUALITY, metavar="Q",
                     help="refuse faces whose quality score in [0, 1] is below Q (default %(default)s)")
    cmp.add_argument("--json", action="store_true", help='print {"similarity", "same", "threshold"} as JSON')
    cmp.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda")

    index = sub.add_parser("index", help="face galleries for 1:N search")
    isub = index.add_subparsers(dest="index_command", metavar="ACTION", parser_class=_Parser)
    build = isub.add_parser("build", help="enrol every face of photos and videos (files or folders, searched "
                                          "recursively)",
                            description="Adds to the gallery in --out (created if new) every photo or video not "
                                        "enrolled before as it is now (a video: its faces every 2 s); a killed "
                                        "build leaves the previous gallery intact.")
    build.add_argument("inputs", type=Path, nargs="+", help="photos, videos, or folders of them")
    build.add_argument("--out", type=Path, required=True, help="gallery folder")
    build.add_argument("--min-quality", type=float, default=MIN_QUALITY, metavar="Q",
                       help="skip faces whose quality score is below Q (default %(default)s)")
    build.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda")
    _ray_option(build, "photos and videos")
    search = sub.add_parser("search", help="1:N: the gallery's faces most like the face in a photo")
    search.add_argument("query", type=Path, help="photo")
    search.add_argument("--index", type=Path, required=True, help="gallery folder ('densemesh index build')")
    search.add_argument("--top", type=int, default=5, metavar="K", help="most results (default 5)")
    search.add_argument("--threshold", type=float, default=SAME_PERSON_THRESHOLD, metavar="T",
                        help="least similarity listed (default: the same-person threshold, %(default)s)")
    search.add_argument("--face", type=int, default=1, metavar="N", help="which face of the photo, largest first")
    search.add_argument("--min-quality", type=float, default=MIN_QUALITY, metavar="Q",
                        help="refuse a query face whose quality score is below Q (default %(default)s)")
    search.add_argument("--json", action="store_true", help='print [{"file", "box", "similarity"}, ...] as JSON')
    search.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda")

    match = sub.add_parser("match", help="M:N: every pair of faces of two galleries that are the same person",
                           description="Writes pairs.csv: file_a, frame_a (videos), box_a, file_b, frame_b, "
                                       "box_b, similarity (by face of A, best first).")
    match.add_argument("a", type=Path, help="gallery folder A")
    match.add_argument("b", type=Path, help="gallery folder B")
    match.add_argument("--out", type=Path, required=True, help="CSV file")
    match.add_argument("--threshold", type=float, default=SAME_PERSON_THRESHOLD, metavar="T",
                       help="least similarity listed (default: the same-person threshold, %(default)s)")
    match.add_argument("--top", type=int, default=10, metavar="K", help="most matches per face of A (default 10)")

    model = sub.add_parser("model", help="inspect or export the face model")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION", parser_class=_Parser)
    info = msub.add_parser("info", help="vertex/triangle counts, expression names, licence")
    info.add_argument("--head", action="store_true", help="describe the full-head topology")
    exp = msub.add_parser("export", help="write a posed / expressive mesh (OBJ or PLY)")
    exp.add_argument("--out", type=Path, required=True, help="FILE.obj or FILE.ply")
    exp.add_argument("--expression", action="append", default=[], metavar="NAME=VALUE",
                     help="blendshape weight, e.g. jawOpen=0.7 (repeatable; see 'model info')")
    exp.add_argument("--identity-seed", type=int, default=None, metavar="N",
                     help="random identity (coefficients ~ N(0,1)) from seed N; default: the mean face")
    exp.add_argument("--head", action="store_true", help="full head (24,591 vertices) instead of the face")
    return parser


def cmd_model_info(args) -> int:
    from densemesh.facemodel import FaceModel

    model = FaceModel.load("head" if args.head else "face")
    notice = Path(__file__).resolve().parent / "templates" / "NOTICE"
    print(f"topology      : {model.topology}")
    print(f"vertices      : {model.num_vertices}")
    print(f"triangles     : {model.faces.shape[0]}")
    print(f"uvs           : {model.uvs.shape[0]}")
    print(f"identity      : {model.num_identity} modes (coefficients ~ N(0, 1))")
    print(f"expressions   : {model.num_expression} (weights in [0, 1])")
    for i in range(0, model.num_expression, 6):
        print("   " + " ".join(f"{n:<17}" for n in model.expression_names[i:i + 6]).rstrip())
    print("landmarks     : ibug68 (68 vertices), mediapipe (468 surface points)")
    print(f"regions       : {', '.join(model.region_names)}")
    print("units         : centimetres; +X subject's left, +Y up, +Z out of the face")
    print(f"licence       : ICT-FaceKit, MIT (USC ICT); see {notice}")
    return 0


def cmd_model_export(args) -> int:
    import torch

    from densemesh.export import write_mesh
    from densemesh.facemodel import FaceModel

    if args.out.suffix.lower() not in (".obj", ".ply"):
        raise UsageError(f"--out must end in .obj or .ply, got {args.out.name!r}")
    pairs = [_expression_pair(text) for text in args.expression]
    model = FaceModel.load("head" if args.head else "face")
    unknown = [name for name, _ in pairs if name not in model.expression_names]
    if unknown:
        raise UsageError(f"unknown expression {unknown[0]!r} (see 'densemesh model info')")
    identity = None
    if args.identity_seed is not None:
        gen = torch.Generator().manual_seed(args.identity_seed)
        identity = torch.randn(1, model.num_identity, generator=gen)
    with torch.no_grad():
        vertices = model.decode(identity, model.expression_vector(dict(pairs)))[0]
    for path in write_mesh(args.out, vertices.numpy(), model):
        print(path)
    return 0


def cmd_compare(args) -> int:
    import json

    from densemesh import identity
    from densemesh.image import ImageError

    for path in (args.a, args.b):
        if not path.is_file():
            raise UsageError(f"photo not found: {path}")
    if args.face_a < 1 or args.face_b < 1:
        raise UsageError("--face-a / --face-b count from 1")
    try:
        with _comparer(args) as comparer:
            result = comparer.compare(args.a, args.b, args.face_a - 1, args.face_b - 1)
    except (identity.NoFaceError, identity.FaceQualityError, ImageError) as err:
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        verdict = "same person" if result.same else "different people"
        print(f"{verdict}: similarity {result.similarity:.3f} {'>=' if result.same else '<'} "
              f"threshold {result.threshold:.3f}")
    return 0


def _comparer(args):
    from densemesh import identity

    try:
        return identity.Comparer(getattr(args, "threshold", identity.SAME_PERSON_THRESHOLD), args.min_quality,
                                 device=args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None


def cmd_index_build(args) -> int:
    from tqdm import tqdm

    from densemesh.gallery import Gallery, GalleryError, enrol, media_files, ray_reader, reader

    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        raise UsageError(f"input not found: {missing[0]}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a folder: {args.out}")
    photos = media_files(args.inputs)
    if not photos:
        raise UsageError("no photos or videos among the inputs")
    try:
        gallery = Gallery.load(args.out) if (args.out / "CURRENT").exists() else Gallery.empty()
    except GalleryError as err:
        raise UsageError(str(err)) from None
    _reach_cluster(args)
    with tqdm(total=len(photos), unit="photo", disable=None) as bar:
        progress = lambda k, n: bar.update(k - bar.n)  # noqa: E731
        if args.ray is not None:
            stats = enrol(gallery, photos, ray_reader(args.ray, {"device": args.device}, args.min_quality), progress)
        else:
            with _comparer(args) as comparer:
                stats = enrol(gallery, photos, reader(comparer, args.min_quality), progress)
        bar.update(len(photos) - bar.n)
    gallery.save(args.out)
    print(f"{stats['photos']} photos read ({stats['unchanged']} unchanged), {stats['faces']} faces enrolled, "
          f"{stats['too_poor']} below quality {args.min_quality:.2f}, {stats['no_face']} without a face; "
          f"gallery {args.out}: {len(gallery.faces)} faces")
    for err in stats["unreadable"]:
        print(f"densemesh: skipped: {err}", file=sys.stderr)
    return 2 if stats["unreadable"] else 0


def cmd_search(args) -> int:
    import json

    from densemesh import identity
    from densemesh.gallery import Gallery, GalleryError
    from densemesh.image import ImageError

    if not args.query.is_file():
        raise UsageError(f"photo not found: {args.query}")
    if args.top < 1 or args.face < 1:
        raise UsageError("--top and --face count from 1")
    try:
        gallery = Gallery.load(args.index)
    except GalleryError as err:
        raise UsageError(str(err)) from None
    try:
        with _comparer(args) as comparer:
            _, vector = comparer.face(args.query, args.face - 1)
    except (identity.NoFaceError, identity.FaceQualityError, ImageError) as err:
        raise UsageError(str(err)) from None
    hits = [{"file": gallery.faces[row]["file"], "box": gallery.faces[row]["box"], "similarity": sim,
             **({"frame": gallery.faces[row]["frame"]} if "frame" in gallery.faces[row] else {})}
            for row, sim in gallery.search(vector[None], args.top, args.threshold)[0]]
    if args.json:
        print(json.dumps(hits))
    else:
        for hit in hits:
            print(f"{hit['similarity']:.3f}  {hit['file']}  box {hit['box']}")
        if not hits:
            print(f"no face in the gallery reaches similarity {args.threshold:.3f}")
    return 0


def cmd_match(args) -> int:
    import csv

    from densemesh.export import atomic_write
    from densemesh.gallery import Gallery, GalleryError, match

    if args.top < 1:
        raise UsageError("--top counts from 1")
    if args.out.is_dir():
        raise UsageError(f"--out must be a file: {args.out}")
    try:
        a, b = Gallery.load(args.a), Gallery.load(args.b)
    except GalleryError as err:
        raise UsageError(str(err)) from None
    pairs = match(a, b, args.threshold, args.top)
    with atomic_write(args.out, "w") as f:
        out = csv.writer(f)
        out.writerow(["file_a", "frame_a", "box_a", "file_b", "frame_b", "box_b", "similarity"])
        for i, j, sim in pairs:
            fa, fb = a.faces[i], b.faces[j]
            out.writerow([fa["file"], fa.get("frame", ""), " ".join(map(str, fa["box"])),
                          fb["file"], fb.get("frame", ""), " ".join(map(str, fb["box"])), f"{sim:.4f}"])
    print(f"{len(a.faces)} x {len(b.faces)} faces: {len(pairs)} pairs at similarity >= {args.threshold:.3f} -> {args.out}")
    return 0


def cmd_reconstruct(args) -> int:
    from densemesh.image import IMAGE_SUFFIXES, ImageError, load_image
    from densemesh.video import VIDEO_SUFFIXES

    if not args.input.exists():
        raise UsageError(f"input not found: {args.input}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a folder: {args.out}")
    if args.max_faces < 1:
        raise UsageError("--max-faces must be at least 1")
    if args.ray is not None and not args.input.is_dir():
        raise UsageError("--ray spreads the images of a folder over a cluster; give a folder")
    if args.input.suffix.lower() in VIDEO_SUFFIXES:
        return _reconstruct_video(args)
    if args.resume:
        raise UsageError("--resume applies to videos only")
    args.format = args.format or ("obj", "ply", "npz", "json")
    if "none" in args.format:
        raise UsageError("--format none applies to videos only")
    args.refine = args.refine or "fast"
    if args.input.is_dir():
        images = sorted(p for p in args.input.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {args.input}")
        return _reconstruct_folder(args, images)
    try:  # decode before anything is written or loaded
        first = load_image(args.input)
    except ImageError as err:
        raise UsageError(str(err)) from None
    with _reconstructor(args, texture="obj" in args.format) as rec:
        summary = _write_image(args.input, _reconstruct_one(rec, args.input, args.no_overlay, first),
                               args.out, rec.model, args)
    for path in summary.pop("written"):
        print(path)
    if not summary["faces"]:
        print(f"no face found in {args.input}")
    return 0


def _reconstruct_folder(args, images: list[Path]) -> int:
    """Each image into ``--out/<image name>/`` (in this process, or spread over Ray with
    ``--ray``: this process alone writes), and summary.json listing them all."""
    from tqdm import tqdm

    from densemesh.export import write_json

    _reach_cluster(args)
    with tqdm(total=len(images), desc="images", unit="img", file=sys.stderr) as bar, \
            contextlib.ExitStack() as stack:
        texture = "obj" in args.format
        if args.ray is None:
            rec = stack.enter_context(_reconstructor(args, texture))
            model = rec.model
            done = ((p, _reconstruct_one(rec, p, args.no_overlay)) for p in images)
        else:
            from densemesh.distributed import map_on_ray
            from densemesh.facemodel import FaceModel

            model, no_overlay = FaceModel.load(), args.no_overlay
            done = map_on_ray(args.ray, lambda: _reconstructor(args, texture),
                              lambda rec, p: _reconstruct_one(rec, p, no_overlay), images)
        # a thread writes an image's files while the next one is reconstructed (two images wait at most)
        writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="densemesh-write"))
        report, writing = {}, deque()

        def written(path: Path, job: Future) -> None:
            report[path] = {"input": str(path), "folder": path.stem, "faces": len(job.result()["faces"])}

        for path, outcome in done:
            bar.update(1)
            if isinstance(outcome, Exception):
                outcome = {"error": str(outcome)}
            if "error" in outcome:
                tqdm.write(f"densemesh: skipped: {outcome['error']}", file=sys.stderr)
                report[path] = {"input": str(path), "error": outcome["error"]}
                continue
            writing.append((path, writer.submit(_write_image, path, outcome, args.out / path.stem, model, args)))
            while len(writing) > 2:
                written(*writing.popleft())
        while writing:
            written(*writing.popleft())
    write_json(args.out / "summary.json", {"version": __version__, "images": [report[p] for p in images]})
    failed = sum("error" in r for r in report.values())
    found = sum(r.get("faces", 0) for r in report.values())
    print(f"{len(images) - failed} images, {found} faces -> {args.out}"
          + (f"; {failed} unreadable (see summary.json)" if failed else ""))
    return 2 if failed else 0


def _reconstructor(args, texture: bool):
    from densemesh.pipeline import Reconstructor

    try:
        return Reconstructor(device=args.device, refine=args.refine, max_faces=args.max_faces, texture=texture)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None


def _reconstruct_video(args) -> int:
    from tqdm import tqdm

    from densemesh.image import ImageError
    from densemesh.video import VideoError, VideoOptions, VideoReader, VideoReconstructor

    formats = args.format or ("obj",)
    if len(formats) != 1 or formats[0] not in ("obj", "ply", "none"):
        raise UsageError("--format for a video is one of obj, ply or none (the per-frame mesh files)")
    if args.smooth < 0 or not math.isfinite(args.smooth):
        raise UsageError("--smooth must be a number >= 0")
    args.refine = args.refine or "none"
    options = VideoOptions(mesh_format=None if formats[0] == "none" else formats[0], space=args.space,
                           smooth=args.smooth, overlay=args.overlay)
    try:  # open it before anything is loaded or written
        VideoReader(args.input).close()
    except (VideoError, ImageError) as err:
        raise UsageError(str(err)) from None
    bars = []

    def progress(index, total):
        if not bars:
            bars.append(tqdm(desc=args.input.name, total=total, unit="frame", file=sys.stderr, dynamic_ncols=True))
        bars[0].total = max(total, index + 1)
        bars[0].update(index + 1 - bars[0].n)

    with _reconstructor(args, texture=False) as rec:
        try:
            summary = VideoReconstructor(rec, options, args.max_faces).run(args.input, args.out, args.resume, progress)
        except KeyboardInterrupt as stop:
            print(f"\ndensemesh: interrupted ({stop}); finished frames are valid, continue with --resume",
                  file=sys.stderr)
            return 130
        finally:
            for bar in bars:
                bar.close()
    if summary["decode_error"]:
        print(f"densemesh: warning: {args.input}: {summary['decode_error']}", file=sys.stderr)
    tracks = summary["tracks"]
    if not tracks:
        print(f"no face found in {args.input}")
    for t in tracks:
        folder = args.out / f"track_{t['id']:02d}"
        print(f"{folder}: {t['frames']} frames")
    print(f"{summary['frames_processed']} frames at {summary['fps_processed']:.1f} frames/s -> {args.out / 'summary.json'}")
    return 0


def _reconstruct_one(rec, path: Path, no_overlay: bool, image: np.ndarray | None = None) -> dict:
    """Decode (unless ``image`` is given) and reconstruct one image, no files written: {"error"}
    or {"faces", "overlay" (H, W, 3) uint8 or None, "seconds", "image_size"}."""
    import torch

    from densemesh import render
    from densemesh.image import ImageError, load_image

    if image is None:
        try:
            image = load_image(path)
        except ImageError as err:
            return {"error": str(err)}
    t0 = time.perf_counter()
    faces = rec(image)
    seconds = time.perf_counter() - t0
    overlay = None
    if not no_overlay:
        cams = torch.tensor(np.stack([f.vertices_camera for f in faces])) if faces else torch.zeros(0, 1, 3)
        focal = torch.tensor([f.pose.focal for f in faces], dtype=torch.float32)
        principal = torch.tensor(np.stack([f.pose.principal for f in faces]) if faces else np.zeros((0, 2)),
                                 dtype=torch.float32)
        overlay = render.overlay(image, cams, rec.model.faces.cpu(), focal, principal)
    return {"faces": faces, "overlay": overlay, "seconds": seconds, "image_size": list(image.shape[:2])}


def _write_image(path: Path, done: dict, out: Path, model, args) -> dict:
    """Write the outputs of one :func:`_reconstruct_one` into ``out``; -> summary dict."""
    from densemesh.export import write_face, write_json, write_png

    written, entries = [], []
    for i, face in enumerate(done["faces"]):
        folder = f"face_{i:02d}"
        written += write_face(out / folder, face, model, args.format, args.space)
        entries.append({"folder": folder, **face.summary(), "timings": face.timings})
    if done["overlay"] is not None:
        written.append(write_png(out / "overlay.png", done["overlay"]))
    summary = {"version": __version__, "input": str(path), "image_size": done["image_size"],
               "refine": args.refine, "seconds": done["seconds"], "faces": entries}
    written.append(write_json(out / "summary.json", summary))
    return {**summary, "written": written}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "model":
            if args.model_command is None:
                raise UsageError("model needs an action: info or export (see 'densemesh model --help')")
            return {"info": cmd_model_info, "export": cmd_model_export}[args.model_command](args)
        if args.command == "index":
            if args.index_command is None:
                raise UsageError("index needs an action: build (see 'densemesh index --help')")
            return cmd_index_build(args)
        if args.command in ("compare", "search", "match"):
            return {"compare": cmd_compare, "search": cmd_search, "match": cmd_match}[args.command](args)
        return cmd_reconstruct(args)
    except (UsageError, ConnectionError) as err:  # ConnectionError: --ray's cluster does not answer
        print(f"densemesh: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("densemesh: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything else: one line, no traceback unless asked for
        if os.environ.get("DENSEMESH_DEBUG"):
            raise
        print(f"densemesh: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
