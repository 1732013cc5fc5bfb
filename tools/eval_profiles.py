#!/usr/bin/env python3
"""Extreme poses: NME per yaw bin on a synthetic-profile validation set the network never saw.

    python tools/synthesize.py profiled --count 600 --seed 99 --out data/profiled_val
    python tools/eval_profiles.py [--data data/profiled_val]

For each view (a 3D-profiled UTKFace photo with its exact pose and 68 landmarks), two answers:
regressor - the network on the crop; pipeline - the default pipeline on the view framed by a
64 px replicated border at 2x (the turned head often leaves the crop): MediaPipe landmarks, then
regressor start + landmark fit, or the regressor alone where MediaPipe's face detector boxes the
face but the landmarker gives up. NME over the 68 points (landmark-box normalised) per |yaw| bin
0-30, 30-60, 60-90 (pipeline: over the views with a face), and the shares of views with
landmarks, with a box only, and with no face.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BINS = ((0, 30), (30, 60), (60, 90))
PAD = 64  # px of replicated border round a view before the pipeline sees it
SOURCES = ("mediapipe", "regressor")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "profiled_val")
    args = ap.parse_args(argv)
    shards = sorted(args.data.glob("shard_*.npz"))
    if not shards:
        print(f"error: no shards in {args.data} (see the docstring)", file=sys.stderr)
        return 2
    from densemesh import camera
    from densemesh.pipeline import Reconstructor
    from densemesh.regress import Regressor

    data = [np.load(p) for p in shards]
    crops = np.concatenate([d["crop"] for d in data])
    truth = np.concatenate([d["landmarks68"] for d in data])
    yaw = camera.matrix_to_euler(torch.tensor(np.concatenate([d["rotation"] for d in data]))).numpy()[:, 0]
    net = Regressor()
    rows = []
    with Reconstructor(device="cpu", refine="none", search="fast") as rec:
        for i in range(len(crops)):
            gt = truth[i]
            norm = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
            p = net([crops[i]])
            reg = camera.project_weak(rec.model.decode(p.identity, p.expression, rec.model.ibug68), p.rotation,
                                      p.weak[:, 0], p.weak[:, 1:])[0].numpy()
            # the pipeline sees the view inside a frame (a turned head leaves the 128 px crop) at 2x
            photo = cv2.resize(cv2.copyMakeBorder(crops[i], PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE), None,
                               fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
            gt_photo = 2 * (gt + PAD) + 0.5
            faces = rec(photo)
            best = min(faces, key=lambda f: np.linalg.norm(f.landmarks68_2d.mean(0) - gt_photo.mean(0))) \
                if faces else None
            pipe = np.linalg.norm(best.landmarks68_2d - gt_photo, axis=1).mean() / (2 * norm) if best else np.nan
            source = 0 if best is None else SOURCES.index(best.source) + 1
            rows.append((abs(yaw[i]), np.linalg.norm(reg - gt, axis=1).mean() / norm, pipe, source))
    rows = np.array(rows, dtype=float)
    print(f"{'|yaw| bin':10s} {'views':>6s} {'regressor':>10s} {'pipeline':>10s} {'landmarks':>10s} "
          f"{'box only':>9s} {'missed':>7s}")
    for lo, hi in BINS:
        sel = (rows[:, 0] >= lo) & (rows[:, 0] < hi + (hi == 90))
        if sel.any():
            share = [100 * (rows[sel, 3] == k).mean() for k in (1, 2, 0)]
            print(f"{lo:3d}-{hi:<6d} {sel.sum():6d} {100 * np.nanmean(rows[sel, 1]):9.2f}% "
                  f"{100 * np.nanmean(rows[sel, 2]):9.2f}% {share[0]:9.0f}% {share[1]:8.0f}% {share[2]:6.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
