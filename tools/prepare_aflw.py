#!/usr/bin/env python3
"""Training crops of the AFLW faces with manual 68-point labels (tools/aflw.py).

    python tools/prepare_aflw.py [--out data/aflw] [--limit N]    # about 30 s

Each face is cut as the network sees a face at inference: the regressor's square crop
(densemesh.crop.regressor_crop) round the landmark-extent box that the labelled points imply
(densemesh.crop.box_from_landmarks68); the parts of the crop outside the 120 px photo are black
and tools/train.py fills them. One shard (``shard_000.npz``) with crop (N, 128, 128, 3),
landmarks68 (N, 68, 2) crop px (NaN where self-occluded), visibility (N, 68), yaw (N,) degrees in
densemesh's sign, is_val (N,) bool (the held-out split of tools/aflw.py) and name. The images
stay non-commercial research data: the shard lives in the ignored data/ folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import aflw  # noqa: E402
from densemesh.crop import box_from_landmarks68, regressor_crop  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "aflw")
    ap.add_argument("--limit", type=int, help="only N training and N / 4 validation faces (a smoke test)")
    args = ap.parse_args(argv)
    labels, train, val = aflw.labels_and_split()
    if args.limit:
        train, val = train[: args.limit], val[: max(1, args.limit // 4)]
    rows = np.sort(np.concatenate([train, val]))  # labels.npz order
    n = len(rows)
    crops = np.empty((n, 128, 128, 3), np.uint8)
    points = np.empty((n, 68, 2), np.float32)
    for k, i in enumerate(rows):
        pts = labels["merl68"][i]
        crop = regressor_crop(aflw.load_image(labels["names"][i]), box_from_landmarks68(pts[None])[0])
        crops[k], points[k] = crop.image, crop.to_crop(pts)
    is_val = np.isin(rows, val)
    from densemesh.export import write_npz

    args.out.mkdir(parents=True, exist_ok=True)
    write_npz(args.out / "shard_000.npz", crop=crops, landmarks68=points,
              visibility=labels["merl68_visibility"][rows], yaw=-labels["yaw_deg"][rows], is_val=is_val,
              name=labels["names"][rows])
    print(f"{args.out / 'shard_000.npz'}: {n} faces ({is_val.sum()} held out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
