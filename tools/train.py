#!/usr/bin/env python3
"""Train the regression network; the config is the experiment.

    python tools/train.py --cfg configs/regressor_cpu.yaml [--resume]

Reads the shards of tools/pseudo_label.py and tools/synthesize.py (``data:`` in the config, each
with a share of every batch), holds out a fixed fraction of the photos for validation, and
writes ``runs/<name>/``: ``metrics.csv`` (one row per epoch: losses, validation NME, seconds),
``last.pt`` (resumable: model, optimiser, schedule, epoch) and ``best.pt`` (lowest validation
NME), then, when the config names ``export:`` (the shipped ``templates/regressor.pt``), writes
best.pt's weights there in float16 and beside it the ONNX export (``.onnx``, float32). Seeds
are fixed.

Loss per sample, weighted as PFLD weights its landmark loss - by how far the pose is from
frontal, sum over yaw / pitch / roll of (1 - cos), and by rare classes (profile beyond 45
degrees, looking up or down beyond 20, strong expression):
  dense  - L1 between the posed vertices (a fixed subset of 1,000) of prediction and label in
           crop pixels / crop size: shape, expression, rotation and camera at once;
  lm2d   - L1 of the 68 landmarks reprojected with the predicted camera vs the label's;
  coeff  - L2 on identity (x 0.01) and expression coefficients.
Validation NME: 68-point NME (landmark-box normalised) of the predicted landmarks against the
labels on held-out photos.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from densemesh import camera  # noqa: E402
from densemesh.crop import REGRESSOR_SIZE  # noqa: E402
from densemesh.facemodel import FaceModel  # noqa: E402
from densemesh.regress import FaceRegressor, Prediction, export_onnx, to_tensor  # noqa: E402

FIELDS = ("crop", "identity", "expression", "rotation", "weak", "landmarks68")
#: a set of manually labelled photos (tools/prepare_aflw.py): 2D points with visibility, no 3D label
LANDMARK_FIELDS = ("crop", "landmarks68", "visibility", "yaw", "is_val")
LOGGED = ("loss", "dense", "lm2d", "coeff", "lm2d_manual", "yaw")  # metrics.csv's loss columns


def is_landmark_set(data: dict) -> bool:
    return "visibility" in data


def load_sets(cfg: dict) -> dict[str, dict[str, np.ndarray]]:
    """{set name: {field: array}} for every ``data`` entry of the config."""
    sets = {}
    for entry in cfg["data"]:
        shards = sorted((ROOT / entry["path"]).glob("shard_*.npz"))[: entry.get("max_shards")]
        if not shards:
            raise SystemExit(f"error: no shards in {entry['path']} (run tools/pseudo_label.py / synthesize.py)")
        parts = [np.load(p) for p in shards]
        fields = LANDMARK_FIELDS if "visibility" in parts[0].files else FIELDS
        data = {k: np.concatenate([p[k] for p in parts]) for k in fields}
        if "fit_error" in parts[0].files:  # drop the teacher's worst fits
            err = np.concatenate([p["fit_error"] for p in parts])
            keep = err <= np.percentile(err, entry.get("keep_percentile", 95))
            data = {k: v[keep] for k, v in data.items()}
        if entry.get("limit"):
            data = {k: v[: entry["limit"]] for k, v in data.items()}
        sets[entry["name"]] = data
    return sets


def split(data: dict, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: the set's own held-out split (``is_val``) where it has one, else a
    seeded ``fraction``."""
    if "is_val" in data:
        return np.flatnonzero(~data["is_val"]), np.flatnonzero(data["is_val"])
    n = len(data["crop"])
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, int(n * fraction))
    return order[k:], order[:k]


def margin_mask(crop: np.ndarray) -> np.ndarray:
    """(S, S) bool: the black margin of a crop of a tightly cropped photo (crop_square's padding,
    UTKFace's alignment wedges): near-black pixels connected to the crop's edge, grown by 1 px
    over the JPEG fringe."""
    import cv2

    dark = (crop.max(-1) <= 3).astype(np.uint8)
    n, labels = cv2.connectedComponents(dark, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    mask = np.isin(labels, edge[edge > 0] if n > 1 else [])
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def fill_margin(crop: np.ndarray, rng: np.random.Generator | None, donors: np.ndarray) -> np.ndarray:
    """Replace the black margin of a crop of a tightly cropped photo so that the network cannot
    find the face from where the photo ends: the photo mirrored outwards, a blurred other photo,
    or smooth noise; 10 % stay black (faces at a real image's edge). Without ``rng``
    (validation) the margin is mirrored, deterministically."""
    import cv2

    mask = margin_mask(crop)
    if not mask.any() or mask.all():
        return crop
    rng_ = rng if rng is not None else np.random.default_rng(0)
    pick = 0 if rng is None else rng.choice(4, p=[0.35, 0.3, 0.25, 0.1])
    if pick == 3:
        return crop
    s = len(crop)
    corners = rng_.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    background = cv2.resize(corners, (s, s)) + rng_.uniform(2, 20) * rng_.standard_normal((s, s, 3), np.float32)
    if pick == 0:  # mirror the photo's rectangle outwards; its own black parts stay noise
        rows, cols = np.flatnonzero(~mask.all(1)), np.flatnonzero(~mask.all(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        mirrored = cv2.copyMakeBorder(crop[r0:r1, c0:c1], r0, s - r1, c0, s - c1, cv2.BORDER_REFLECT_101)
        keep = ~cv2.copyMakeBorder(mask[r0:r1, c0:c1].astype(np.uint8), r0, s - r1, c0, s - c1,
                                   cv2.BORDER_REFLECT_101).astype(bool)
        background[keep] = mirrored[keep]
    elif pick == 1:  # a blurred other photo, its own margin cut away
        donor = donors[rng.integers(len(donors))]
        dm = margin_mask(donor)
        rows, cols = np.flatnonzero(~dm.all(1)), np.flatnonzero(~dm.all(0))
        if len(rows) > 8 and len(cols) > 8:
            inner = donor[rows[len(rows) // 4]:rows[-len(rows) // 4], cols[len(cols) // 4]:cols[-len(cols) // 4]]
            background = cv2.GaussianBlur(cv2.resize(inner, (s, s)).astype(np.float32), (0, 0),
                                          float(rng.uniform(1, 6)))
    out = crop.copy()
    out[mask] = np.clip(background[mask], 0, 255).astype(np.uint8)
    return out


def augment(crops: np.ndarray, lm: np.ndarray, weak: np.ndarray, rotation: np.ndarray | None,
            rng: np.random.Generator):
    """Margin fill, random scale (+-10 %), in-plane turn (+-15 degrees, half the samples) and
    shift (+-8 %) of the crop window, colour, blur, grey, occluders; landmarks and camera follow
    the window. crops (B, S, S, 3) uint8, lm (B, 68, 2) crop px, weak (B, 3), rotation (B, 3, 3)
    (None for 2D-labelled sets) -> the four, augmented."""
    import cv2

    s = REGRESSOR_SIZE
    out, lm2, weak2 = np.empty_like(crops), lm.copy(), weak.copy()
    rot2 = None if rotation is None else rotation.copy()
    flip_yz = camera.MODEL_TO_CAMERA.numpy()
    for i in range(len(crops)):
        turn = np.deg2rad(rng.uniform(-15, 15)) if rng.random() < 0.5 else 0.0
        c, si = np.cos(turn), np.sin(turn)
        k = rng.uniform(0.9, 1.1)
        a = k * np.array([[c, -si], [si, c]])
        centre = np.full(2, (s - 1) / 2)
        m = np.concatenate([a, (centre - a @ centre + rng.uniform(-0.08, 0.08, 2) * s)[:, None]], 1)
        img = cv2.warpAffine(fill_margin(crops[i], rng, crops), m, (s, s), borderMode=cv2.BORDER_REFLECT)
        lm2[i] = lm[i] @ a.T + m[:, 2]
        weak2[i] = [weak[i, 0] * k, *(a @ weak[i, 1:] + m[:, 2])]
        if rot2 is not None:  # the image turn is a turn about the camera's axis
            turn3 = np.eye(3)
            turn3[:2, :2] = [[c, -si], [si, c]]
            rot2[i] = flip_yz @ turn3 @ flip_yz @ rotation[i]
        img = img.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-20, 20, 3)
        if rng.random() < 0.15:
            img = np.repeat(img.mean(-1, keepdims=True), 3, -1)
        if rng.random() < 0.2:
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(0.5, 2.0)))
        if rng.random() < 0.2:  # an occluder
            w, h = rng.integers(s // 8, s // 3, 2)
            x, y = rng.integers(0, s - w), rng.integers(0, s - h)
            img[y:y + h, x:x + w] = rng.uniform(0, 255, 3)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out, lm2, weak2, rot2


class Criterion:
    """The PFLD-weighted dense + landmark + coefficient loss (see the module docstring)."""

    def __init__(self, model: FaceModel, weights: dict, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.subset = torch.randperm(model.num_vertices, generator=g)[:1000]
        self.model = model
        self.w = weights

    def posed(self, identity, expression, rotation, weak):
        """The subset's vertices in crop px (x, y) and px-scaled depth: (B, 1000, 3)."""
        verts = self.model.decode(identity, expression, self.subset)
        turned = verts @ (camera.MODEL_TO_CAMERA @ rotation).transpose(1, 2)
        return weak[:, :1, None] * turned + torch.cat([weak[:, 1:], torch.zeros_like(weak[:, :1])], 1)[:, None]

    def landmarks(self, pred: Prediction):
        verts = self.model.decode(pred.identity, pred.expression, self.model.ibug68)
        return camera.project_weak(verts, pred.rotation, pred.weak[:, 0], pred.weak[:, 1:])

    def sample_weights(self, rotation, expression):
        angles = torch.deg2rad(camera.matrix_to_euler(rotation))
        pose = (1 - torch.cos(angles)).sum(1)
        rare = (angles[:, 0].abs() > math.radians(45)).float() + (angles[:, 1].abs() > math.radians(20)).float() \
            + (expression.max(1).values > 0.6).float()
        return (1 + self.w["pose"] * pose) * (1 + self.w["rare"] * rare)

    def __call__(self, pred: Prediction, label: dict) -> tuple[torch.Tensor, dict]:
        s = REGRESSOR_SIZE
        weight = self.sample_weights(label["rotation"], label["expression"])
        dense = (self.posed(pred.identity, pred.expression, pred.rotation, pred.weak)
                 - self.posed(label["identity"], label["expression"], label["rotation"], label["weak"])
                 ).abs().mean((1, 2)) / s
        lm2d = (self.landmarks(pred) - label["landmarks68"]).abs().mean((1, 2)) / s
        coeff = 0.01 * ((pred.identity - label["identity"]) ** 2).mean(1) \
            + ((pred.expression - label["expression"]) ** 2).mean(1)
        total = weight * (self.w["dense"] * dense + self.w["lm2d"] * lm2d + self.w["coeff"] * coeff)
        parts = {"dense": dense.mean().item(), "lm2d": lm2d.mean().item(), "coeff": coeff.mean().item()}
        return total, parts

    def manual(self, pred: Prediction, label: dict) -> tuple[torch.Tensor, dict]:
        """Loss per sample of manually labelled photos: L1 reprojection of the positioned points
        (visible 1, externally occluded ``occluded`` x; self-occluded points have no position),
        a soft pull of the yaw to the label's (a 3DMM fit: its sign is reliable, its size less so),
        and the identity prior; PFLD-weighted by the label's yaw."""
        s = REGRESSOR_SIZE
        vis = label["visibility"]
        w_pt = (vis == 1).float() + self.w.get("occluded", 0.5) * (vis == 2).float()
        gt = torch.nan_to_num(label["landmarks68"])
        lm2d = ((self.landmarks(pred) - gt).abs().sum(-1) * w_pt).sum(1) / w_pt.sum(1).clamp(min=1) / s
        yaw = torch.deg2rad(camera.matrix_to_euler(pred.rotation)[:, 0])
        target = torch.deg2rad(label["yaw"].clamp(-90, 90))
        yaw_loss = (yaw - target).abs()
        coeff = 0.01 * (pred.identity ** 2).mean(1)
        weight = (1 + self.w["pose"] * (1 - torch.cos(target))) * (1 + self.w["rare"] * (target.abs() > math.radians(45)).float())
        total = weight * (self.w["lm2d"] * 2 * lm2d + self.w.get("yaw", 0.05) * yaw_loss + self.w["coeff"] * coeff)
        return total, {"lm2d_manual": lm2d.mean().item(), "yaw": yaw_loss.mean().item()}


def mirror(crops: np.ndarray, lm: np.ndarray, vis: np.ndarray, yaw: np.ndarray, flip: np.ndarray):
    """:func:`aflw.mirror` applied to the samples where ``flip`` (B,) bool: crops (B, S, S, 3),
    68 points (B, 68, 2) crop px, visibility (B, 68), yaw (B,) degrees."""
    import aflw

    crops, lm, vis, yaw = crops.copy(), lm.copy(), vis.copy(), yaw.copy()
    for i in np.flatnonzero(flip):
        crops[i], lm[i], vis[i], yaw[i] = aflw.mirror(crops[i], lm[i], vis[i], yaw[i])
    return crops, lm, vis, yaw


def to_batch(data: dict, idx: np.ndarray, rng=None) -> tuple[torch.Tensor, dict]:
    """Crops (B, 3, S, S) and labels of samples ``idx``; with ``rng`` augmented (and manually
    labelled photos mirrored half the time)."""
    crops, lm = data["crop"][idx], data["landmarks68"][idx]
    manual = is_landmark_set(data)
    weak = np.zeros((len(idx), 3), np.float32) if manual else data["weak"][idx]
    rotation = None if manual else data["rotation"][idx]
    if manual:
        vis, yaw = data["visibility"][idx], data["yaw"][idx]
        if rng is not None:
            crops, lm, vis, yaw = mirror(crops, lm, vis, yaw, rng.random(len(idx)) < 0.5)
    if rng is not None:
        crops, lm, weak, rotation = augment(crops, lm, weak, rotation, rng)
    else:
        crops = np.stack([fill_margin(c, None, crops) for c in crops])
    x = to_tensor(crops)
    if manual:
        return x, {"landmarks68": torch.from_numpy(lm).float(), "visibility": torch.from_numpy(vis.astype(np.int64)),
                   "yaw": torch.from_numpy(yaw).float()}
    label = {"identity": torch.from_numpy(data["identity"][idx]).float(),
             "expression": torch.from_numpy(data["expression"][idx]).float(),
             "rotation": torch.from_numpy(rotation).float(),
             "weak": torch.from_numpy(weak).float(), "landmarks68": torch.from_numpy(lm).float()}
    return x, label


@torch.no_grad()
def validate(net, crit: Criterion, data: dict, idx: np.ndarray) -> float:
    net.eval()
    errs = []
    for start in range(0, len(idx), 128):
        x, label = to_batch(data, idx[start:start + 128])
        lm = crit.landmarks(net(x))
        gt = label["landmarks68"]
        keep = label["visibility"] > 0 if "visibility" in label else torch.ones(gt.shape[:2], dtype=torch.bool)
        lo = torch.where(keep[..., None], gt, torch.inf).min(1).values
        hi = torch.where(keep[..., None], gt, -torch.inf).max(1).values
        dist = torch.where(keep, (lm - torch.nan_to_num(gt)).norm(dim=-1), 0).sum(1) / keep.sum(1)
        errs.append((dist / (hi - lo).prod(1).sqrt()).numpy())
    net.train()
    return float(np.concatenate(errs).mean())


def save(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename: a reader or a crash never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue from runs/<name>/last.pt")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs", help="where runs/<name>/ goes")
    ap.add_argument("--stop-after", type=int, default=None, metavar="N",
                    help="stop after N epochs of this invocation (resume later with --resume)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(args.cfg.read_text())
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg.get("threads", torch.get_num_threads()))
    run = args.runs / cfg["name"]
    run.mkdir(parents=True, exist_ok=True)
    sets = load_sets(cfg)
    train_idx, val_idx = {}, {}
    for name, data in sets.items():
        train_idx[name], val_idx[name] = split(data, cfg["val_fraction"], cfg["seed"])
    model = FaceModel.load()
    crit = Criterion(model, cfg["loss"], cfg["seed"])
    net = FaceRegressor()
    if cfg.get("init"):  # fine-tune from earlier weights
        net.load_state_dict({k: v.float() for k, v in torch.load(ROOT / cfg["init"], map_location="cpu",
                                                                  weights_only=True)["model"].items()})
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = cfg["steps_per_epoch"]
    total = cfg["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, pct_start=0.1)
    start_epoch, best = 0, math.inf
    if args.resume and (run / "last.pt").exists():
        state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        print(f"resumed at epoch {start_epoch}")
    shares = {e["name"]: e["share"] for e in cfg["data"]}
    rng = np.random.default_rng(cfg["seed"] + start_epoch)
    metrics = run / "metrics.csv"
    new_log = not metrics.exists() or not args.resume
    with open(metrics, "w" if new_log else "a", newline="") as f:
        log = csv.writer(f)
        if new_log:
            log.writerow(["epoch", *LOGGED, "lr", *[f"val_nme_{n}" for n in sets], "seconds"])
        stop = cfg["epochs"] if args.stop_after is None else min(cfg["epochs"], start_epoch + args.stop_after)
        for epoch in range(start_epoch, stop):
            t0 = time.perf_counter()
            sums = dict.fromkeys(("loss", "dense", "lm2d", "coeff", "lm2d_manual", "yaw"), 0.0)
            for _ in range(steps_per_epoch):
                xs, labels, kinds = [], [], []
                for name, data in sets.items():
                    k = max(1, round(cfg["batch"] * shares[name]))
                    x, label = to_batch(data, rng.choice(train_idx[name], k), rng)
                    xs.append(x)
                    labels.append(label)
                    kinds.append(is_landmark_set(data))
                pred = net(torch.cat(xs))
                losses, parts, start = [], {}, 0
                for x, label, manual in zip(xs, labels, kinds):  # one forward pass, a loss per set
                    part = Prediction(*(getattr(pred, f)[start:start + len(x)] for f in Prediction.__dataclass_fields__))
                    start += len(x)
                    per_sample, p = (crit.manual if manual else crit)(part, label)
                    losses.append(per_sample)
                    parts.update(p)
                loss = torch.cat(losses).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                sched.step()
                sums["loss"] += loss.item()
                for k, v in parts.items():
                    sums[k] += v
            vals = {n: validate(net, crit, d, val_idx[n]) for n, d in sets.items()}
            seconds = time.perf_counter() - t0
            log.writerow([epoch, *(f"{sums[k] / steps_per_epoch:.5f}" for k in LOGGED),
                          f"{sched.get_last_lr()[0]:.2e}", *(f"{v:.5f}" for v in vals.values()), f"{seconds:.1f}"])
            f.flush()
            key = vals[cfg["select_on"]]
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "epoch": epoch, "best": min(best, key), "config": cfg}
            save(state, run / "last.pt")
            if key < best:
                best = key
                save({"model": net.state_dict(), "epoch": epoch, "val_nme": vals, "config": cfg}, run / "best.pt")
            print(f"epoch {epoch}: loss {sums['loss'] / steps_per_epoch:.4f} "
                  + " ".join(f"val {n} {100 * v:.2f}%" for n, v in vals.items()) + f" ({seconds:.0f} s)", flush=True)
    if cfg.get("export") and stop == cfg["epochs"]:
        best_state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
        target = ROOT / cfg["export"]
        save({"model": {k: v.half() if v.is_floating_point() else v for k, v in best_state["model"].items()},
              "epoch": best_state["epoch"], "val_nme": best_state["val_nme"]}, target)
        net.load_state_dict(best_state["model"])
        onnx = export_onnx(net, target.with_suffix(".onnx.tmp"))
        onnx.replace(target.with_suffix(".onnx"))
        print(f"exported {target} and {target.with_suffix('.onnx').name} "
              f"({(target.stat().st_size + target.with_suffix('.onnx').stat().st_size) / 1e6:.1f} MB, "
              f"epoch {best_state['epoch']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
