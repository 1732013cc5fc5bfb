#!/usr/bin/env python3
"""Training views the photos lack: large poses and strong expressions, with exact labels.

    python tools/synthesize.py profiled [--count 6000]    # data/profiled/
    python tools/synthesize.py synthetic [--count 4000]   # data/synthetic/

profiled  - 3D face profiling: a pseudo-labelled UTKFace photo's fitted head (the full-head
            topology, so eyes and mouth are closed surfaces) is coloured by projecting it into
            its own photo (parts the photo does not show take the mean face colour), turned by
            20-75 degrees of extra yaw (up to 90 in all) and up to +-25 pitch, and rendered over a
            background; the new pose is the label.
synthetic - the face model on its own: random identity (0.8 sigma), 1-4 strong expressions
            (closed eyes, wide-open jaw, one-sided smiles...), random skin tone with smooth albedo
            variation, eyes / teeth / mouth coloured by part, random spherical-harmonic light,
            pose yaw +-90, pitch +-40, roll +-25.
Backgrounds: half smooth random gradients with noise, half other training crops, blurred.
Shards hold the same fields as tools/pseudo_label.py (crop, identity, expression, rotation,
weak, landmarks68, name) so tools/train.py mixes them freely. Deterministic (fixed seeds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from densemesh import camera, render  # noqa: E402
from densemesh.crop import REGRESSOR_SIZE  # noqa: E402
from densemesh.facemodel import FaceModel, vertex_normals  # noqa: E402

SHARD = 1000
FAR_CM = 1000.0  # the weak-perspective camera as a pinhole this far away


def head_parts(head: FaceModel) -> dict[str, torch.Tensor]:
    """Boolean masks of the head's parts, from ICT's vertex ranges (README table), and
    "render": the head's triangles without the back of the head and the neck (no hair to put
    there), i.e. the face with closed eyes (eyeballs) and mouth (socket, teeth, tongue)."""
    with np.load(ROOT / "templates" / "face_model.npz") as z:
        ict = torch.from_numpy(z["ict_vertex_ids"].astype(np.int64))
    between = lambda a, b: (ict >= a) & (ict <= b)  # noqa: E731
    back = between(9409, 11247)
    return {"iris": between(22221, 23020) | between(23791, 24590),
            "sclera": between(21451, 22220) | between(23021, 23790),
            "teeth": between(17039, 21450), "mouth": between(11248, 13293) | between(14062, 17038),
            "render": head.faces[~back[head.faces].any(1)]}


def weak_render(verts: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor, rotation: torch.Tensor,
                weak: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Render model-space vertices (N, 3) with colours (N, 3) in [0, 1] under a weak-perspective
    crop camera (scale px/cm, offset px) over ``background`` (S, S, 3) uint8."""
    s = REGRESSOR_SIZE
    cam = camera.model_to_camera(verts[None], rotation[None], torch.tensor([[0.0, 0.0, FAR_CM]]))
    focal = torch.tensor([weak[0] * FAR_CM], dtype=torch.float32)
    principal = torch.tensor(weak[None, 1:], dtype=torch.float32)
    ras = render.rasterize(cam, faces, focal, principal, (s, s))
    img = render.interpolate(ras.pix_to_face, ras.bary, faces, colors[None])[0].numpy()
    covered = (ras.pix_to_face[0] >= 0).numpy()
    out = background.astype(np.float32) / 255.0
    out[covered] = img[covered]
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def background(rng: np.random.Generator, crops: np.ndarray) -> np.ndarray:
    import cv2

    s = REGRESSOR_SIZE
    if rng.random() < 0.5 or len(crops) == 0:
        a, b = rng.random(3) * 255, rng.random(3) * 255
        t = np.linspace(0, 1, s)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, s)[None, :, None]
        img = a * (1 - t) + b * t + rng.normal(0, 12, (s, s, 3))
        return np.clip(img, 0, 255).astype(np.uint8)
    other = crops[rng.integers(len(crops))]
    return cv2.GaussianBlur(other, (0, 0), sigmaX=float(rng.uniform(3, 8)))


def labels_2d(face: FaceModel, verts: torch.Tensor, rotation: torch.Tensor, weak: np.ndarray) -> np.ndarray:
    """The 68 landmarks (contour and lids on the visible outline) in crop pixels."""
    n = face.num_vertices
    cam = camera.model_to_camera(verts[None, :n], rotation[None], torch.tensor([[0.0, 0.0, FAR_CM]]))
    uv = camera.project(cam, torch.tensor([weak[0] * FAR_CM], dtype=torch.float32),
                        torch.tensor(weak[None, 1:], dtype=torch.float32))
    return uv[0, face.contour_landmarks(cam, uv)[0]].numpy()


def profiled(count: int, seed: int, out: Path) -> None:
    import cv2

    face, head = FaceModel.load("face"), FaceModel.load("head")
    faces = head_parts(head)["render"]
    shards = sorted((ROOT / "data" / "pseudo").glob("shard_*.npz"))
    if not shards:
        raise SystemExit("error: run tools/pseudo_label.py first (data/pseudo is empty)")
    data = [np.load(p) for p in shards]
    crops = np.concatenate([d["crop"] for d in data])
    fields = {k: np.concatenate([d[k] for d in data]) for k in ("identity", "expression", "rotation", "weak",
                                                                   "fit_error")}
    good = np.flatnonzero(fields["fit_error"] < np.percentile(fields["fit_error"], 80))
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in ("crop", "identity", "expression", "rotation", "weak", "landmarks68", "name")}
    for j in range(count):
        i = int(rng.choice(good))
        ident = torch.tensor(fields["identity"][i])[None]
        expr = torch.tensor(fields["expression"][i])[None]
        rot = torch.tensor(fields["rotation"][i])
        weak = fields["weak"][i].astype(np.float64)
        with torch.no_grad():
            verts = head.decode(ident, expr)[0]
            # colour by projecting into the source crop; what it does not show gets the mean colour
            cam = camera.model_to_camera(verts[None], rot[None], torch.tensor([[0.0, 0.0, FAR_CM]]))
            f = torch.tensor([weak[0] * FAR_CM], dtype=torch.float32)
            c = torch.tensor(weak[None, 1:], dtype=torch.float32)
            seen = render.visibility(cam, faces, f, c, (REGRESSOR_SIZE, REGRESSOR_SIZE))[0]
            uv = camera.project(cam, f, c)[0].numpy().astype(np.float32)
            src = crops[i]
            colors = cv2.remap(src, uv[None, :, 0], uv[None, :, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
            colors = colors.astype(np.float32) / 255.0
            n = face.num_vertices
            visible = seen.numpy()
            colors[~visible] = colors[:n][visible[:n]].mean(0) if visible[:n].any() else 0.6
            yaw0 = float(camera.matrix_to_euler(rot)[0])
            side = rng.choice([-1.0, 1.0])
            dyaw = side * rng.uniform(20, 75)
            dyaw = float(np.clip(yaw0 + dyaw, -90, 90) - yaw0)
            turn = camera.euler_to_matrix(torch.tensor([dyaw, rng.uniform(-25, 25), rng.uniform(-10, 10)],
                                                       dtype=torch.float32))
            new_rot = turn @ rot
            img = weak_render(verts, faces, torch.tensor(colors), new_rot, weak, background(rng, crops))
            lm = labels_2d(face, verts, new_rot, weak)
        _add(samples, out, j == count - 1, crop=img, identity=fields["identity"][i],
             expression=fields["expression"][i], rotation=new_rot.numpy(), weak=weak.astype(np.float32),
             landmarks68=lm, name=f"profiled_{j:06d}")


def synthetic(count: int, seed: int, out: Path) -> None:
    face, head = FaceModel.load("face"), FaceModel.load("head")
    parts = head_parts(head)
    names = face.expression_names
    strong = ["jawOpen", "eyeBlink_L", "eyeBlink_R", "mouthSmile_L", "mouthSmile_R", "mouthFunnel", "mouthPucker",
              "browInnerUp_L", "browInnerUp_R", "browDown_L", "browDown_R", "eyeWide_L", "eyeWide_R", "mouthLeft",
              "mouthRight", "jawLeft", "jawRight", "cheekPuff_L", "cheekPuff_R", "mouthFrown_L", "mouthFrown_R",
              "noseSneer_L", "noseSneer_R", "mouthStretch_L", "mouthStretch_R", "eyeSquint_L", "eyeSquint_R"]
    pseudo = sorted((ROOT / "data" / "pseudo").glob("shard_*.npz"))
    crops = np.load(pseudo[0])["crop"] if pseudo else np.zeros((0, REGRESSOR_SIZE, REGRESSOR_SIZE, 3), np.uint8)
    basis = face.albedo_basis  # (N_face, 40)
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in ("crop", "identity", "expression", "rotation", "weak", "landmarks68", "name")}
    for j in range(count):
        ident = torch.tensor(rng.normal(0, 0.8, (1, 100)), dtype=torch.float32)
        expr = torch.zeros(1, 53)
        for name in rng.choice(strong, size=rng.integers(1, 5), replace=False):
            expr[0, names.index(name)] = rng.uniform(0.4, 1.0)
        if rng.random() < 0.3:  # both eyes closed
            expr[0, names.index("eyeBlink_L")] = expr[0, names.index("eyeBlink_R")] = rng.uniform(0.7, 1.0)
        angles = torch.tensor([rng.uniform(-90, 90), rng.uniform(-40, 40), rng.uniform(-25, 25)], dtype=torch.float32)
        rot = camera.euler_to_matrix(angles)
        weak = np.array([rng.uniform(5.0, 7.5), *(REGRESSOR_SIZE / 2 + rng.normal(0, 4, 2))])
        with torch.no_grad():
            verts = head.decode(ident, expr)[0]
            tone = np.array([0.85, 0.62, 0.5]) * rng.uniform(0.35, 1.15) + rng.normal(0, 0.04, 3)
            albedo = torch.tensor(tone, dtype=torch.float32).expand(head.num_vertices, 3).clone()
            albedo[: face.num_vertices] += basis @ torch.tensor(rng.normal(0, 0.25, (basis.shape[1], 3)),
                                                                 dtype=torch.float32)
            albedo[parts["sclera"]] = torch.tensor([0.85, 0.83, 0.8])
            albedo[parts["iris"]] = torch.tensor(rng.uniform(0.05, 0.4, 3), dtype=torch.float32)
            albedo[parts["teeth"]] = torch.tensor([0.85, 0.82, 0.72])
            albedo[parts["mouth"]] = torch.tensor([0.45, 0.12, 0.12])
            sh = torch.zeros(1, 9, 3)  # ambient about 1, a random directional part
            sh[0, 0] = rng.uniform(0.8, 1.25)
            sh[0, 1:4] = torch.tensor(rng.normal(0, 0.35, (3, 1)), dtype=torch.float32)
            cam = camera.model_to_camera(verts[None], rot[None], torch.tensor([[0.0, 0.0, FAR_CM]]))
            normals = vertex_normals(cam, parts["render"])
            colors = render.shade(albedo[None], normals, sh)[0].clamp(0, 1)
            img = weak_render(verts, parts["render"], colors, rot, weak, background(rng, crops))
            lm = labels_2d(face, verts, rot, weak)
        _add(samples, out, j == count - 1, crop=img, identity=ident[0].numpy(), expression=expr[0].numpy(),
             rotation=rot.numpy(), weak=weak.astype(np.float32), landmarks68=lm, name=f"synthetic_{j:06d}")


def _add(samples: dict, out: Path, last: bool, **fields) -> None:
    """Append one view; write a shard when it is full or ``last``."""
    for k, v in fields.items():
        samples[k].append(v)
    if len(samples["name"]) == SHARD or last:
        _write(out, samples)


def _write(out: Path, samples: dict) -> None:
    from densemesh.export import write_npz

    index = len(list(out.glob("shard_*.npz")))
    write_npz(out / f"shard_{index:03d}.npz", **{k: np.asarray(v) for k, v in samples.items()})
    print(f"{out / f'shard_{index:03d}.npz'}: {len(samples['name'])} views", flush=True)
    for v in samples.values():
        v.clear()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["profiled", "synthetic"])
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or ROOT / "data" / args.kind
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard_*.npz")):
        print(f"{out} already holds shards; remove them to regenerate")
        return 0
    torch.set_num_threads(1)
    {"profiled": profiled, "synthetic": synthetic}[args.kind](args.count or {"profiled": 6000, "synthetic": 4000}[args.kind],
                                                             args.seed, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
