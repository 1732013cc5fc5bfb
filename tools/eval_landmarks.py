#!/usr/bin/env python3
"""NME of densemesh's 68 iBUG landmarks on photos with manual annotations.

    python tools/eval_landmarks.py [--data ../shared/faces/annotated] [--modes none fast full]
    python tools/eval_landmarks.py --modes teacher regressor reg+fit reg+fit+fast --convergence

NME = mean point-to-point error / sqrt(w * h) of the ground-truth landmark box (the
AFLW2000-3D protocol), over all 68 points and over the 51 inner points (17-67: brows, nose, eyes,
mouth), which do not depend on where an annotator puts the jaw line. `.pts` files are 1-based
pixel coordinates; menpo `.ljson` stores (row, column). In an image with several faces the
detected face nearest the annotation is scored; an image where none is found counts as missed.

Modes: none / fast / full - the default pipeline (regressor start when its weights are there)
with that refinement; teacher - no regressor (MediaPipe's head transform starts the fit);
regressor - the network alone (no landmark fit); reg+fit, reg+fit+fast - regressor start,
landmark fit, refinement. --convergence prints the Gauss-Newton iterations each start needs to
come within 1 % of its final cost.
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


MODES = {
    "none": {"refine": "none"}, "fast": {"refine": "fast"}, "full": {"refine": "full"},
    "teacher": {"refine": "none", "regressor": None}, "teacher+fast": {"refine": "fast", "regressor": None},
    "regressor": {"refine": "none", "fit": False},
    "reg+fit": {"refine": "none"}, "reg+fit+fast": {"refine": "fast"},
}


def evaluate(data: Path, levels: list[str], device: str = "cpu") -> dict:
    from densemesh.image import load_image
    from densemesh.pipeline import Reconstructor

    rows = {}
    for level in levels:
        with Reconstructor(device=device, **MODES[level]) as rec:
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
    ap.add_argument("--modes", "--refine", nargs="+", default=["none", "fast", "full"], choices=list(MODES))
    ap.add_argument("--convergence", action="store_true", help="also report iterations to converge")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: annotated photos not found in {args.data}", file=sys.stderr)
        return 2
    rows = evaluate(args.data, args.modes, args.device)
    fmt = lambda v: "  miss" if v is None else f"{100 * v:6.2f}"  # noqa: E731
    print(f"{'image':24s} " + " ".join(f"{lvl + ' 68':>9s} {lvl + ' 51':>9s}" for lvl in args.modes) + "   (NME %)")
    for name, row in rows.items():
        print(f"{name:24s} " + " ".join(f"{fmt(row[lvl]['nme68']):>9s} {fmt(row[lvl]['nme51']):>9s}" for lvl in args.modes))
    means = {}
    for lvl in args.modes:
        vals = [r[lvl] for r in rows.values() if r[lvl]["nme68"] is not None]
        means[lvl] = {k: float(np.mean([v[k] for v in vals])) for k in ("nme68", "nme51", "seconds")} if vals else {}
        means[lvl]["missed"] = sum(r[lvl]["nme68"] is None for r in rows.values())
    print(f"{'mean':24s} " + " ".join(f"{fmt(means[lvl].get('nme68')):>9s} {fmt(means[lvl].get('nme51')):>9s}" for lvl in args.modes))
    for lvl in args.modes:
        print(f"refine={lvl}: {means[lvl].get('seconds', 0):.2f} s per image, {means[lvl]['missed']} missed")
    if args.json:
        args.json.write_text(json.dumps({"images": rows, "mean": means}, indent=2))
    if args.convergence:
        convergence(args.data, args.device)
    return 0


def convergence(data: Path, device: str) -> None:
    """Iterations the landmark fit needs from MediaPipe's head transform vs the regressor."""
    import numpy as np
    import torch

    from densemesh.fit import FitState, mediapipe_expression_prior, mediapipe_rotations
    from densemesh.image import load_image
    from densemesh.pipeline import Reconstructor

    needed = {"mediapipe start": [], "regressor start": []}
    with Reconstructor(device=device, refine="none", search="fast") as rec:
        for image_path, _ in annotated_images(data):
            image = load_image(image_path)
            dets = [d for d in rec.detector.detect(image) if d.landmarks is not None][:1]
            if not dets:
                continue
            lm = torch.tensor(dets[0].landmarks[None, :, :2], dtype=torch.float32)
            prior = torch.tensor(mediapipe_expression_prior(dets[0].blendshapes[None], rec.model.expression_names),
                                 dtype=torch.float32)
            starts = {"mediapipe start": rec.fitter.initial_state(lm, mediapipe_rotations(dets), prior, image.shape[:2]),
                      "regressor start": rec.regressor.state([image], dets[0].box[None], None,
                                                             rec.fitter.config.camera_distance_cm)}
            for name, start in starts.items():
                costs = []
                for it in range(13):
                    s = FitState(*(getattr(start, f).clone() for f in FitState.FIELDS))
                    costs.append(float(rec.fitter.fit(lm, s, prior, iterations=it).cost[0]))
                final = min(costs)
                needed[name].append(next(i for i, c in enumerate(costs) if c <= 1.01 * final))
    for name, its in needed.items():
        print(f"{name}: iterations to within 1 % of the final cost: mean {np.mean(its):.1f}, per image {its}")


if __name__ == "__main__":
    raise SystemExit(main())
