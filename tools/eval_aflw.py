#!/usr/bin/env python3
"""Every pose on real photos: NME, misses, wrong-way faces and answering sources per |yaw| bin on
the held-out AFLW validation split (tools/aflw.py: manual MERL-RAV 68-point labels).

    python tools/eval_aflw.py [--modes pipeline network] [--limit N] [--json out.json]
    python tools/eval_aflw.py --trust     # where MediaPipe's landmarks stop helping
    python tools/eval_aflw.py --box-rule  # check densemesh.detect.DLIB_TO_LANDMARK_EXTENT

Each validation face (a tight 120 px crop) is put in the middle of a 3x larger frame with a
blurred surround (tools/aflw.py padded_frame) and run through densemesh as a user would:
pipeline - ``Reconstructor(refine="none")`` (detection, per-pose source choice, landmark fit);
network  - ``Reconstructor(fit=False, refine="none")`` (the same detections, the network alone);
mediapipe-always - the pipeline fitting MediaPipe's landmarks wherever there are any (no pose
           limit, no plausibility check; the fit averaged with the network as in the pipeline). ``--trust`` runs it and the network and compares them
           per 10-degree bucket of the network's |yaw|, over the faces MediaPipe landmarks: the
           evidence for ``densemesh.trust.MEDIAPIPE_YAW_LIMIT``.
``--box-rule`` runs dlib's face detector on 800 seeded training faces and prints how the
labelled landmark-extent box (crop.box_from_landmarks68 of the positioned points) sits in its
mapped box: median centre shift and size ratio, 0 and 1 where the rule holds.
The face whose box centre lies in the labelled face's box is scored; none is a miss.
NME: mean distance over the positioned points (visible + externally occluded; self-occluded
points have no position) / sqrt(w h) of their box, in %, for ``landmarks68_2d`` (jaw on the
visible outline, the annotators' convention). Bin mean = mean of the three bin means.
Wrong way: |label yaw| > 30 degrees and the estimated yaw has the other sign.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import aflw  # noqa: E402

MODES = {"pipeline": {"refine": "none"}, "network": {"refine": "none", "fit": False},
         "mediapipe-always": {"refine": "none"}}


def aflw_yaw(pose_yaw: float) -> float:
    """densemesh's yaw (positive: the nose towards the image's right edge, see
    densemesh.camera) in AFLW's sign (positive: the nose towards the image's left edge)."""
    return -pose_yaw


def evaluate(mode: str, rows: np.ndarray, labels: dict) -> list[dict]:
    from densemesh.pipeline import Reconstructor

    out = []
    with Reconstructor(device="cpu", **MODES[mode]) as rec:
        if mode == "mediapipe-always":  # no pose limit, no plausibility check
            rec.trusted = lambda dets, net: [d.landmarks is not None for d in dets]
        for i in rows:
            image = aflw.load_image(labels["names"][i])
            pts, vis = labels["merl68"][i], labels["merl68_visibility"][i]
            frame, offset = aflw.padded_frame(image)
            t0 = time.perf_counter()
            faces = rec(frame)
            seconds = time.perf_counter() - t0
            gt = pts[vis > 0] + offset
            lo, hi = gt.min(0), gt.max(0)
            hit = [f for f in faces if np.all(((f.box[:2] + f.box[2:]) / 2 >= lo) & ((f.box[:2] + f.box[2:]) / 2 <= hi))]
            row = {"name": str(labels["names"][i]), "yaw": float(labels["yaw_deg"][i]), "seconds": seconds,
                   "faces": len(faces), "found": bool(hit)}
            if hit:
                f = hit[0]
                row.update(nme=aflw.nme(f.landmarks68_2d - offset, pts, vis), source=f.source,
                           est_yaw=aflw_yaw(f.pose.yaw), duplicates=len(hit) - 1)
            out.append(row)
    return out


def table(rows: list[dict]) -> dict:
    bins = {}
    for b, (lo, hi) in enumerate(aflw.YAW_BINS):
        sel = [r for r in rows if aflw.yaw_bin(r["yaw"]) == b]
        found = [r for r in sel if r["found"]]
        wrong = [r for r in found if abs(r["yaw"]) > 30 and np.sign(r["est_yaw"]) != np.sign(r["yaw"])]
        bins[f"{lo}-{hi}"] = {
            "faces": len(sel), "missed": len(sel) - len(found),
            "recall": len(found) / max(1, len(sel)),
            "nme": float(np.mean([r["nme"] for r in found])) if found else None,
            "nme_median": float(np.median([r["nme"] for r in found])) if found else None,
            "wrong_way": len(wrong), "duplicates": sum(r["duplicates"] for r in found),
            "sources": dict(Counter(r["source"] for r in found)),
            "yaw_error_median": float(np.median([abs(r["est_yaw"] - r["yaw"]) for r in found])) if found else None}
    means = [v["nme"] for v in bins.values() if v["nme"] is not None]
    return {"bins": bins, "bin_mean": float(np.mean(means)) if len(means) == 3 else None,
            "seconds_per_face": float(np.mean([r["seconds"] for r in rows]))}


def trust_table(always: list[dict], network: list[dict]) -> None:
    """NME of the MediaPipe fit vs the network alone per 10-degree bucket of the network's |yaw|,
    on the faces both answered and MediaPipe landmarked."""
    print("\n|yaw| (network)  faces  MediaPipe fit NME %  network NME %")
    pairs = [(a, n) for a, n in zip(always, network) if a["found"] and n["found"] and a["source"] == "mediapipe"]
    for lo in range(0, 90, 10):
        sel = [(a, n) for a, n in pairs if lo <= abs(n["est_yaw"]) < lo + 10 or (lo == 80 and abs(n["est_yaw"]) >= 90)]
        if sel:
            print(f"{lo:3d}-{lo + 10:<3d}          {len(sel):5d}  {100 * np.mean([a['nme'] for a, _ in sel]):18.2f}"
                  f"  {100 * np.mean([n['nme'] for _, n in sel]):13.2f}")


def box_rule(labels: dict, train: np.ndarray, n: int = 800) -> None:
    from densemesh.crop import box_from_landmarks68
    from densemesh.detect import DlibFaceDetector

    side_view = DlibFaceDetector()
    shift, ratio = [], []
    for i in np.random.default_rng(0).choice(train, n, replace=False):
        frame, offset = aflw.padded_frame(aflw.load_image(labels["names"][i]))
        pts = np.where(labels["merl68_visibility"][i][:, None] > 0, labels["merl68"][i] + offset, np.nan)
        target = box_from_landmarks68(pts[None])[0]
        lo, hi = np.nanmin(pts, 0), np.nanmax(pts, 0)
        hits = [b for b, _ in side_view.detect(frame) if np.all(((b[:2] + b[2:]) / 2 >= lo) & ((b[:2] + b[2:]) / 2 <= hi))]
        if hits:
            size = hits[0][2:] - hits[0][:2]
            shift.append(((target[:2] + target[2:]) - (hits[0][:2] + hits[0][2:])) / 2 / size)
            ratio.append((target[2:] - target[:2]) / size)
    print(f"dlib found {len(shift)} of {n} training faces; labelled box in the mapped box: centre shift "
          f"{np.round(np.median(shift, 0), 3)}, size ratio {np.round(np.median(ratio, 0), 3)} (x, y; width, height units)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--limit", type=int, help="the first N validation faces only (a quick look)")
    ap.add_argument("--json", type=Path, help="also write tables and per-face rows as JSON")
    ap.add_argument("--trust", action="store_true", help="compare MediaPipe fit and network per yaw bucket")
    ap.add_argument("--box-rule", action="store_true", help="check dlib's box -> landmark-extent rule")
    args = ap.parse_args(argv)
    labels, train, val = aflw.labels_and_split()
    if args.box_rule:
        box_rule(labels, train)
        return 0
    val = val[: args.limit]
    report = {}
    if args.trust:
        args.modes = ["mediapipe-always", "network"]
    for mode in args.modes:
        rows = evaluate(mode, val, labels)
        report[mode] = {"table": table(rows), "rows": rows}
        t = report[mode]["table"]
        print(f"\n{mode}: {len(rows)} validation faces, {t['seconds_per_face'] * 1000:.0f} ms per face")
        print(f"{'|yaw|':>7s} {'faces':>5s} {'NME %':>6s} {'median':>6s} {'missed':>6s} {'recall':>7s} "
              f"{'wrong':>5s} {'dup':>4s} {'yaw err':>7s}  sources")
        for name, v in t["bins"].items():
            fmt = lambda x: "   -  " if x is None else f"{100 * x:6.2f}"  # noqa: E731
            print(f"{name:>7s} {v['faces']:5d} {fmt(v['nme'])} {fmt(v['nme_median'])} {v['missed']:6d} "
                  f"{100 * v['recall']:6.1f}% {v['wrong_way']:5d} {v['duplicates']:4d} "
                  f"{(v['yaw_error_median'] or 0):6.1f}°  {v['sources']}")
        mean = t["bin_mean"]
        print("bin mean NME: " + ("-" if mean is None else f"{100 * mean:.2f} %"))
    if args.trust:
        trust_table(report["mediapipe-always"]["rows"], report["network"]["rows"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
