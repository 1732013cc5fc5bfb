#!/usr/bin/env python3
"""Pseudo-labels for the regression network: the teacher (MediaPipe + landmark fit) run over
UTKFace, saved with the network's input crops outside git.

    python tools/pseudo_label.py [--images ../shared/faces/utkface] [--out data/pseudo] [--limit N]

Teacher: MediaPipe Face Landmarker + densemesh's landmark fit (no photometric refinement:
measured at about 1 s per face on these 2 CPU cores it would cost ~6 h for 20k photos, while
the fit costs ~30 ms). Writes shards of 1,000 photos, ``shard_NNN.npz``; an existing shard is
skipped, so an interrupted run resumes. Each shard holds, per photo with a face:
crop (128, 128, 3) uint8 (crop.regressor_crop of the landmark box), identity (100,),
expression (53,), rotation (3, 3), weak (3,) weak-perspective camera in crop pixels (scale px/cm,
offset x, y: crop_uv ~ scale * (MODEL_TO_CAMERA R v)_xy + offset, least squares over the 468
points), landmarks68 (68, 2) and mediapipe (468, 2) in crop pixels, fit_error (landmark RMS in
face sizes), score (face-detector confidence), detector_box (4,) MediaPipe's face-detector box in
crop pixels (NaN when it finds none), name.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARD = 1000


def weak_camera(points_model: np.ndarray, rotation: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Least-squares scale and offset with uv ~ scale * (C R p)_xy + offset. -> (3,)"""
    xy = (points_model @ (np.diag([1.0, -1.0, -1.0]) @ rotation).T)[:, :2]
    mx, mu = xy.mean(0), uv.mean(0)
    scale = ((xy - mx) * (uv - mu)).sum() / ((xy - mx) ** 2).sum()
    return np.array([scale, *(mu - scale * mx)])


def label_shard(paths: list[Path], rec) -> dict:
    import mediapipe as mp
    import torch

    from densemesh import camera
    from densemesh.crop import regressor_crop
    from densemesh.detect import quiet_native_logs
    from densemesh.image import ImageError, load_image

    model = rec.model
    out = {k: [] for k in ("crop", "identity", "expression", "rotation", "weak", "landmarks68", "mediapipe",
                           "fit_error", "score", "detector_box", "name")}
    for path in paths:
        try:
            image = load_image(path)
        except ImageError:
            continue
        dets = rec.detector.detect(image)
        if not dets:
            continue
        det = dets[0]
        face = rec.reconstruct_detections([image], [det], refine="none", photo=False)[0]  # the fit's own labels
        crop = regressor_crop(image, det.box)
        with quiet_native_logs():
            found = rec.detector._scorer.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        boxes = [d.bounding_box for d in found.detections]
        box = np.full(4, np.nan)
        if boxes:
            b = max(boxes, key=lambda b: b.width * b.height)
            box = np.concatenate([crop.to_crop(np.array([b.origin_x, b.origin_y], float)),
                                  crop.to_crop(np.array([b.origin_x + b.width, b.origin_y + b.height], float))])
        mp_model = model.landmarks(torch.tensor(face.vertices)[None], "mediapipe")[0].numpy()
        mp_uv = model.landmarks(torch.tensor(face.vertices_2d)[None], "mediapipe")[0].numpy()
        out["crop"].append(crop.image)
        out["identity"].append(face.identity)
        out["expression"].append(face.expression)
        out["rotation"].append(face.pose.rotation)
        out["weak"].append(weak_camera(mp_model, face.pose.rotation, crop.to_crop(mp_uv)))
        out["landmarks68"].append(crop.to_crop(face.landmarks68_2d))
        out["mediapipe"].append(crop.to_crop(det.landmarks[:468, :2]))
        out["fit_error"].append(face.fit_error)
        out["score"].append(face.score)
        out["detector_box"].append(box)
        out["name"].append(path.name)
    return {k: np.asarray(v, np.float32 if k not in ("crop", "name") else None) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "faces" / "utkface")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "pseudo")
    ap.add_argument("--limit", type=int, default=None, help="label only the first N photos")
    args = ap.parse_args(argv)
    paths = sorted(args.images.glob("*.jpg"))[: args.limit]
    if not paths:
        print(f"error: no photos in {args.images}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    from densemesh.export import write_npz
    from densemesh.pipeline import Reconstructor

    with Reconstructor(device="cpu", refine="none", search="fast") as rec:
        shards = range(0, len(paths), SHARD)
        for start in tqdm(shards, desc="shards", unit="shard"):
            target = args.out / f"shard_{start // SHARD:03d}.npz"
            if target.exists():
                continue
            t0 = time.perf_counter()
            data = label_shard(paths[start:start + SHARD], rec)
            write_npz(target, **data)
            tqdm.write(f"{target.name}: {len(data['name'])} faces from {len(paths[start:start + SHARD])} photos "
                       f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
