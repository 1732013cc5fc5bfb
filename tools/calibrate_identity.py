#!/usr/bin/env python3
"""Calibrate and check the same-person threshold of densemesh.identity.

    python tools/calibrate_identity.py [--every 8] [--utk 400] [--far 0.001]

Faces: the largest face of every ``--every``-th frame of the talking-head clips
(../shared/video/talking_*.mp4, one person each: same person across frames of a clip, different
people across clips) and ``--utk`` UTKFace photos spread over the set (taken as different people;
UTKFace has no identity labels, so a repeated person would count as a false accept - the false
accept rate is, if anything, overstated). Split: the first half of each clip's frames and the even
UTKFace photos calibrate, the rest report. The threshold is the lowest cosine similarity at which
the calibration half's false-accept rate is at most ``--far``; the report half gives false-accept
and false-reject rates at it (and at the shipped SAME_PERSON_THRESHOLD). Faces below
MIN_QUALITY are left out, as Comparer refuses them.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def labelled_images(every: int, utk: int):
    """The faces the identity tools score: every ``every``-th frame of each talking-head clip
    (person: the clip's number; the first half of its frames calibrates) and ``utk`` UTKFace
    photos spread over the set (person -1 - k for the k-th; the even ones calibrate).
    Yields (RGB image, person, calibrates)."""
    from densemesh.image import load_image
    from densemesh.video import VideoReader

    for pid, clip in enumerate(sorted(glob.glob(str(SHARED / "video" / "talking_*.mp4")))):
        reader = VideoReader(clip)
        frames = [f.image for f in reader.frames() if f.index % every == 0]
        reader.close()
        for i, image in enumerate(frames):
            yield image, pid, i < len(frames) / 2
    photos = sorted(glob.glob(str(SHARED / "faces" / "utkface" / "*.jpg")))
    for k, path in enumerate(photos[::max(1, len(photos) // utk)][:utk]):
        yield load_image(path), -1 - k, k % 2 == 0


def collect(comparer, every: int, utk: int):
    """-> vectors (F, 128), person id (F,) (-1 - k for the k-th UTKFace photo), calibration mask (F,)."""
    from densemesh.identity import FaceQualityError, NoFaceError

    vectors, person, calib, seen = [], [], [], 0
    for image, pid, calibrates in labelled_images(every, utk):
        seen += 1
        try:
            _, v = comparer.face(image)
        except (NoFaceError, FaceQualityError):
            continue
        vectors.append(v), person.append(pid), calib.append(calibrates)
    person = np.array(person)
    print(f"  {len(person)} of {seen} faces kept: {(person >= 0).sum()} clip frames, {(person < 0).sum()} UTKFace photos",
          flush=True)
    return np.stack(vectors), person, np.array(calib)


def pair_scores(vectors, person, mask):
    """Cosine similarities of every pair within ``mask``: (same-person scores, different-person scores)."""
    v, p = vectors[mask], person[mask]
    sim = v @ v.T
    upper = np.triu(np.ones_like(sim, bool), 1)
    same = (p[:, None] == p[None, :]) & upper
    return sim[same], sim[~(p[:, None] == p[None, :]) & upper]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--utk", type=int, default=400)
    ap.add_argument("--far", type=float, default=0.001)
    args = ap.parse_args(argv)
    from densemesh.identity import SAME_PERSON_THRESHOLD, Comparer

    with Comparer(device="cpu") as comparer:
        vectors, person, calib = collect(comparer, args.every, args.utk)
    same_c, diff_c = pair_scores(vectors, person, calib)
    same_r, diff_r = pair_scores(vectors, person, ~calib)
    threshold = float(np.quantile(diff_c, 1 - args.far))
    print(f"calibration: {len(same_c)} same-person pairs, {len(diff_c)} different-person pairs; "
          f"threshold at FAR {args.far:.3%}: {threshold:.3f}")
    for name, t in (("calibrated", threshold), ("shipped", SAME_PERSON_THRESHOLD)):
        far, frr = float((diff_r >= t).mean()), float((same_r < t).mean())
        print(f"report half at the {name} threshold {t:.3f}: false accepts {far:.3%} of {len(diff_r)} pairs, "
              f"false rejects {frr:.3%} of {len(same_r)} pairs")
    print(f"similarities (report half): same person median {np.median(same_r):.3f} (1st percentile "
          f"{np.quantile(same_r, 0.01):.3f}), different people median {np.median(diff_r):.3f} "
          f"(99.9th percentile {np.quantile(diff_r, 0.999):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
