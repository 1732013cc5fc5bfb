#!/usr/bin/env python3
"""NME of densemesh's 68 iBUG landmarks on photos with manual annotations.

    python tools/eval_landmarks.py [--data ../shared/faces/annotated] [--refine none fast full]

NME = mean point-to-point error / sqrt(w * h) of the ground-truth landmark box (the
AFLW2000-3D protocol), over all 68 points and over the 51 inner points (17-67: brows, nose, eyes,
mouth), which do not depend on where an annotator puts the jaw line. `.pts` files are 1-based
pixel coordinates; menpo `.ljson` stores (row, column). In an image with several faces the
detected face nearest the annotation is scored; an image where none is found counts as missed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densemesh.image import IMAGE_SUFFIXES  # noqa: E402


def read_landmarks(path: Path) -> np.ndarray:
    """(68, 2) x, y in 0-based pixel-centre coordinates."""
    if path.suffix == ".pts":
        lines = path.read_text().splitlines()
        start = lines.index("{") + 1
        pts = np.array([[float(v) for v in line.split()] for line in lines[start:start + 68]])
        return pts - 1.0
    if path.suffix == ".ljson":
        pts = np.array(json.loads(path.read_text())["groups"]["LJSON"]["landmarks"]["points"], float)
        return pts[:, ::-1]
    raise ValueError(f"unknown annotation format: {path}")


def annotated_images(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for ann in sorted([*folder.glob("*.pts"), *folder.glob("*.ljson")]):
        image = next((p for p in sorted(folder.glob(ann.stem + ".*")) if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if image is not None:
            pairs.append((image, ann))
    return pairs


def nme(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(68, 2) prediction and ground truth -> (NME over 68, NME over the inner 51)."""
    w, h = gt.max(0) - gt.min(0)
    err = np.linalg.norm(pred - gt, axis=1) / np.sqrt(w * h)
    return float(err.mean()), float(err[17:].mean())


def evaluate(data: Path, levels: list[str], device: str = "cpu") -> dict:
    from densemesh.image import load_image
    from densemesh.pipeline import Reconstructor

    rows = {}
    for level in levels:
        with Reconstructor(device=device, refine=level) as rec:
            for image_path, ann in annotated_images(data):
                gt = read_landmarks(ann)
                t0 = time.perf_counter()
                faces = rec(load_image(image_path))
                seconds = time.perf_counter() - t0
                row = rows.setdefault(image_path.name, {})
                if not faces:
                    row[level] = {"nme68": None, "nme51": None, "seconds": seconds}
                    continue
                best = min(faces, key=lambda f: np.linalg.norm(f.landmarks68_2d.mean(0) - gt.mean(0)))
                n68, n51 = nme(best.landmarks68_2d, gt)
                row[level] = {"nme68": n68, "nme51": n51, "seconds": seconds, "yaw": best.pose.yaw}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "faces" / "annotated")
    ap.add_argument("--refine", nargs="+", default=["none", "fast", "full"], choices=["none", "fast", "full"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: annotated photos not found in {args.data}", file=sys.stderr)
        return 2
    rows = evaluate(args.data, args.refine, args.device)
    fmt = lambda v: "  miss" if v is None else f"{100 * v:6.2f}"  # noqa: E731
    print(f"{'image':24s} " + " ".join(f"{lvl + ' 68':>9s} {lvl + ' 51':>9s}" for lvl in args.refine) + "   (NME %)")
    for name, row in rows.items():
        print(f"{name:24s} " + " ".join(f"{fmt(row[lvl]['nme68']):>9s} {fmt(row[lvl]['nme51']):>9s}" for lvl in args.refine))
    means = {}
    for lvl in args.refine:
        vals = [r[lvl] for r in rows.values() if r[lvl]["nme68"] is not None]
        means[lvl] = {k: float(np.mean([v[k] for v in vals])) for k in ("nme68", "nme51", "seconds")} if vals else {}
        means[lvl]["missed"] = sum(r[lvl]["nme68"] is None for r in rows.values())
    print(f"{'mean':24s} " + " ".join(f"{fmt(means[lvl].get('nme68')):>9s} {fmt(means[lvl].get('nme51')):>9s}" for lvl in args.refine))
    for lvl in args.refine:
        print(f"refine={lvl}: {means[lvl].get('seconds', 0):.2f} s per image, {means[lvl]['missed']} missed")
    if args.json:
        args.json.write_text(json.dumps({"images": rows, "mean": means}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
