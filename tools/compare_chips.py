#!/usr/bin/env python3
"""Does a pose-normalised (3D-frontalised) chip help face recognition on turned heads?

    python tools/compare_chips.py [--every 4] [--utk 400] [--far 0.001]

Two ways to make dlib's 150 px chip from a reconstructed face:
  2d  - dlib's aligner on densemesh's 68 landmarks in the photo (what densemesh.identity ships);
  3d  - the photo re-projected onto the mesh and rendered from the front (rotation removed,
        every pixel sampled in the photo through the fitted mesh), hidden pixels filled from
        their mirror image, then aligned on the frontal projection of the 68 landmark vertices.
Faces: the largest face of every ``--every``-th frame of the talking-head clips (one person each)
and ``--utk`` UTKFace photos (different people). Each chip gets its own threshold at ``--far``
false accepts on the different-person pairs of the even UTKFace photos and the first halves of the
clips; false rejects are reported on the same-person pairs of the clips' second halves, binned by
how far the two heads' yaws differ (the clips turn up to about 36 degrees apart; the data has no
same-person pairs of a frontal face and a profile).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
SIZE = 256         # px, side of the frontal render
DEPTH_CM = 100.0   # camera distance of the frontal render
SPAN_CM = 24.0     # model-space width the render covers
YAW_BINS = (0, 10, 20, 40)


def frontal_view(model, image: np.ndarray, face) -> tuple[np.ndarray, np.ndarray]:
    """The face rendered from the front with the photo's pixels: (SIZE, SIZE, 3) uint8 and the
    (68, 2) px frontal projections of the 68 landmark vertices."""
    import cv2
    import torch

    from densemesh import camera, render

    verts = torch.from_numpy(face.vertices)[None].float()
    centre = verts[0, model.ibug68].mean(0)
    shift = torch.tensor([0.0, float(centre[1]), 0.0])  # keep x = 0 on the image's middle column (mirror line)
    cam = camera.model_to_camera(verts - shift, torch.eye(3)[None], torch.tensor([[0.0, 0.0, DEPTH_CM]]))
    focal = torch.tensor([SIZE * DEPTH_CM / SPAN_CM])
    principal = torch.tensor([[(SIZE - 1) / 2, (SIZE - 1) / 2]])
    raster = render.rasterize(cam, model.faces, focal, principal, (SIZE, SIZE))
    pix, bary = raster.pix_to_face[0], raster.bary[0]
    tri = model.faces[pix.clamp(min=0)]
    where = (bary[..., None] * torch.from_numpy(face.vertices_2d).float()[tri]).sum(-2).numpy().astype(np.float32)
    out = cv2.remap(image, where[..., 0], where[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    covered = (pix >= 0).numpy()
    seen = covered & torch.from_numpy(face.visibility)[tri].all(-1).numpy()
    mirror = ~seen & seen[:, ::-1]
    out[mirror] = out[:, ::-1][mirror]
    holes = covered & ~(seen | mirror)
    if holes.any():
        out = cv2.inpaint(out, holes.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    out[~covered] = out[covered].mean(0).astype(np.uint8) if covered.any() else 0
    landmarks = camera.project(cam[:, model.ibug68], focal, principal)[0].numpy()
    return out, landmarks


def collect(comparer, every: int, utk: int):
    """-> vectors {"2d", "3d"} (F, 128), person (F,) (-1 - k: the k-th UTKFace photo), yaw (F,) deg,
    calibration mask (F,), for the faces of :func:`calibrate_identity.labelled_images`."""
    from calibrate_identity import labelled_images

    from densemesh.identity import FaceQualityError, NoFaceError

    model = comparer.reconstructor.model
    vectors, person, yaw, calib = {"2d": [], "3d": []}, [], [], []
    for image, pid, calibrates in labelled_images(every, utk):
        try:
            face, v2 = comparer.face(image)
        except (NoFaceError, FaceQualityError):
            continue
        front, lm = frontal_view(model, image, face)
        stand_in = SimpleNamespace(box=np.concatenate([lm.min(0), lm.max(0)]), landmarks68_2d=lm)
        vectors["2d"].append(v2)
        vectors["3d"].append(comparer.embedder.embed(front, [stand_in])[0])
        person.append(pid), yaw.append(face.pose.yaw), calib.append(calibrates)
    print(f"  {len(person)} faces kept", flush=True)
    return {k: np.stack(v) for k, v in vectors.items()}, np.array(person), np.array(yaw), np.array(calib)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--utk", type=int, default=400)
    ap.add_argument("--far", type=float, default=0.001)
    args = ap.parse_args(argv)
    from densemesh.identity import Comparer

    with Comparer(device="cpu") as comparer:
        vectors, person, yaw, calib = collect(comparer, args.every, args.utk)
    upper = np.triu(np.ones((len(person), len(person)), bool), 1)
    same = (person[:, None] == person[None, :]) & upper
    both = lambda mask: mask[:, None] & mask[None, :]  # noqa: E731
    dyaw = np.abs(yaw[:, None] - yaw[None, :])
    report_same = same & both(~calib)
    print(f"same-person report pairs: {report_same.sum()}; |yaw| up to {np.abs(yaw[person >= 0]).max():.1f} deg")
    for name, v in vectors.items():
        sim = v @ v.T
        different = ~(person[:, None] == person[None, :]) & upper
        threshold = float(np.quantile(sim[different & both(calib)], 1 - args.far))
        far = float((sim[different & both(~calib)] >= threshold).mean())
        cells = []
        for lo, hi in zip(YAW_BINS[:-1], YAW_BINS[1:]):
            pairs = report_same & (dyaw >= lo) & (dyaw < hi)
            if pairs.any():
                cells.append(f"yaw apart {lo}-{hi}: FRR {float((sim[pairs] < threshold).mean()):.1%} of "
                             f"{pairs.sum()}, median {np.median(sim[pairs]):.3f}")
        print(f"{name}: threshold {threshold:.3f} (report FAR {far:.2%}); " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
