"""The public facade: :class:`Reconstructor` (models loaded once) and :func:`reconstruct`."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from densemesh import camera, render
from densemesh.crop import box_from_head, regressor_crop, square_box
from densemesh.detect import Detection, MediaPipeDetector
from densemesh.facemodel import FaceModel, vertex_facing
from densemesh import fit
from densemesh.fit import REFINE_LEVELS, FitConfig, FitState, LandmarkFitter, mediapipe_expression_prior
from densemesh.image import load_image
from densemesh.regress import Regressor
from densemesh.result import FaceResult, Pose



def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else as torch understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA device is available")
    return dev


def _orthonormal(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    return r if np.linalg.det(r) > 0 else u @ np.diag([1, 1, -1]) @ vt


class Reconstructor:
    """Photo -> list of :class:`FaceResult`, one per face (largest first).

    device: "auto" | "cpu" | "cuda"; refine: "none" | "fast" | "full" (see
    :data:`densemesh.fit.REFINE_LEVELS`); max_faces: most faces per image; search: "thorough"
    (also finds small faces, slower) or "fast"; texture: also bake a UV texture per face;
    detector: any object with ``detect(image) -> list[Detection]`` (default MediaPipe);
    regressor: "default" (the shipped network, if present), a weights file (.pt / .onnx), or
    None; fit: False returns the regressor's output as it is (with ``refine="none"``, no
    landmark fit). With a regressor, its output starts the landmark fit, and a face MediaPipe
    boxes but cannot landmark (profiles) is reconstructed by the regressor alone
    (``FaceResult.source == "regressor"``). Use as a context manager, or call :meth:`close`.
    """

    #: z-buffer resolution (px, square crop round each face) for per-vertex visibility
    visibility_size = 256

    def __init__(self, device: str = "auto", refine: str = "fast", max_faces: int = 8,
                 search: str = "thorough", texture: bool = False, detector=None,
                 fit_config: FitConfig | None = None, regressor: str | Path | None = "default",
                 fit: bool = True):
        if refine not in REFINE_LEVELS:
            raise ValueError(f"refine must be one of {tuple(REFINE_LEVELS)}, got {refine!r}")
        if not fit and refine != "none":
            raise ValueError("fit=False (regressor only) needs refine='none'")
        self.device = resolve_device(device)
        self.refine = refine
        self.texture = texture
        self.use_fit = fit
        self.model = FaceModel.load("face").to(self.device)
        self.fitter = LandmarkFitter(self.model, fit_config)
        self.regressor = None
        if regressor is not None:
            try:
                self.regressor = Regressor(None if regressor == "default" else regressor, self.device)
            except FileNotFoundError:
                if regressor != "default":
                    raise
        if not fit and self.regressor is None:
            raise ValueError("fit=False needs the regressor, and its weights are missing")
        self.detector = detector or MediaPipeDetector(max_faces=max_faces, search=search,
                                                      boxes_without_landmarks=self.regressor is not None)

    def close(self) -> None:
        self.detector.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __call__(self, image, channel_order: str = "rgb") -> list[FaceResult]:
        """image: path or array (see :func:`densemesh.image.load_image`)."""
        rgb = load_image(image, channel_order)
        t0 = time.perf_counter()
        detections = self.detector.detect(rgb)
        t_detect = time.perf_counter() - t0
        results = []
        for group in ([d for d in detections if d.landmarks is not None],
                      [d for d in detections if d.landmarks is None]):
            if group:
                results += self.reconstruct_detections([rgb] * len(group), group)
        for r in results:
            r.timings["detect_s"] = t_detect
        results.sort(key=lambda r: -np.sqrt(np.prod(r.box[2:] - r.box[:2])))
        return results

    def fit_detections(self, images: list[np.ndarray], detections: list[Detection], refine: str | None = None,
                       identities: torch.Tensor | None = None, focal: float | None = None,
                       start: FitState | None = None):
        """Landmark fit (+ refinement) of detections -> (FitState, landmarks (B, 478, 2), timings).

        images: the image of each detection (a photo repeats its image; a video batch mixes
        frames of one size); identities (B, 100): fixed identities (a video track's), else solved;
        focal: px, else chosen from the faces; start: a previous frame's fit of the same faces to
        start from (fewer iterations).
        """
        dev = self.device
        timings = {}
        t0 = time.perf_counter()
        if detections[0].landmarks is None:  # boxes only: the regressor is all there is
            state = self.regress(images, detections, focal)
            timings["regress_s"] = time.perf_counter() - t0
            return state, None, timings
        landmarks = torch.tensor(np.stack([d.landmarks[:, :2] for d in detections]), dtype=torch.float32, device=dev)
        prior = torch.tensor(mediapipe_expression_prior(np.stack([d.blendshapes for d in detections]),
                                                        self.model.expression_names), dtype=torch.float32, device=dev)
        iterations = None
        if start is not None:
            state = FitState(start.rotation.clone(), start.translation.clone(), start.identity.clone(),
                             start.expression.clone(), start.focal.clone(), start.principal.clone())
            iterations = self.fitter.config.tracking_iterations
        elif self.regressor is not None:
            state = self.regress(images, detections, focal)
            timings["regress_s"] = time.perf_counter() - t0
            if not self.use_fit:
                return state, landmarks, timings
        else:
            rotations = torch.tensor(np.stack([_orthonormal(d.transform[:3, :3]) for d in detections]),
                                     dtype=torch.float32, device=dev)
            state = self.fitter.initial_state(landmarks, rotations, prior, images[0].shape[:2], focal)
        if identities is not None:
            state.identity = identities.to(dev, torch.float32).clone()
        t0 = time.perf_counter()
        state = self.fitter.fit(landmarks, state, prior, iterations, fix_identity=identities is not None)
        timings["fit_s"] = time.perf_counter() - t0
        level = REFINE_LEVELS[self.refine if refine is None else refine]
        if level is not None:
            t0 = time.perf_counter()
            state, stats = fit.refine(self.fitter, images, state, landmarks, level, fix_identity=identities is not None)
            timings["refine_s"] = time.perf_counter() - t0
            timings.update({k: v.tolist() for k, v in stats.items()})
        return state, landmarks, timings

    def regress(self, images: list[np.ndarray], detections: list[Detection], focal: float | None = None) -> FitState:
        """The regressor's parameters for each detection's box, as a FitState in image space.

        Its weak-perspective crop camera becomes a pinhole: the image gets ``focal`` (else the
        landmark fit's rule: the largest face at ``camera_distance_cm``), and each face is placed
        so that the centroid of its MediaPipe points (where the training labels' weak cameras
        were fitted) projects where the weak camera puts it, at the depth where that focal
        gives the weak camera's scale. (The model origin lies ~8 cm behind the face: anchoring
        it instead magnifies the face by ~15 %.) A box without landmarks (the face detector's,
        placed with frontal statistics) is re-cropped once round the head the first pass found
        (:data:`densemesh.crop.HEAD_TO_BOX`): on held-out synthetic profiles beyond 60 degrees
        of yaw this cuts the pipeline's NME from 20.8 to 17.2 % (tools/eval_profiles.py; a box
        round the first pass's own landmarks instead: 21.2 %)."""
        crops = [regressor_crop(img, d.box) for img, d in zip(images, detections)]
        pred = self.regressor([c.image for c in crops])
        if detections[0].landmarks is None:  # re-crop round the head the first pass found
            weak = pred.weak.cpu().numpy()
            heads = box_from_head(np.stack([c.to_image(o) for c, o in zip(crops, weak[:, 1:])]),
                                  weak[:, 0] / [c.scale for c in crops])
            crops = [regressor_crop(img, box) for img, box in zip(images, heads)]
            pred = self.regressor([c.image for c in crops])
        dev, b = self.device, len(detections)
        k = torch.tensor([c.scale for c in crops], dtype=torch.float32, device=dev)
        off = torch.tensor(np.stack([c.offset for c in crops]), dtype=torch.float32, device=dev)
        weak, rotation, identity, expression = (x.to(dev, torch.float32) for x in (
            pred.weak, pred.rotation, pred.identity, pred.expression))
        anchor = self.model.landmarks(self.model.decode(identity, expression), "mediapipe").mean(1, keepdim=True)
        anchor = camera.model_to_camera(anchor, rotation, torch.zeros(b, 3, device=dev))[:, 0]  # (B, 3) cm
        anchor_px = (weak[:, :1] * anchor[:, :2] + weak[:, 1:] - off) / k[:, None]
        scale = weak[:, 0] / k  # px per cm in the image
        h, w = images[0].shape[:2]
        principal = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=dev).expand(b, 2).clone()
        f = torch.as_tensor(focal if focal is not None else self.fitter.config.camera_distance_cm * float(scale.max()),
                            dtype=torch.float32, device=dev).expand(b).clone()
        depth = f / scale
        placed = torch.cat([(anchor_px - principal) * (depth / f)[:, None], depth[:, None]], 1)
        return FitState(rotation, placed - anchor, identity, expression, f, principal)

    def reconstruct_detections(self, images: list[np.ndarray], detections: list[Detection],
                               refine: str | None = None, identities: torch.Tensor | None = None,
                               state: FitState | None = None) -> list[FaceResult]:
        """Fit, refine and describe detections; images: the (H, W, 3) uint8 RGB image of each.
        ``state`` skips the fit (e.g. parameters a video filter smoothed)."""
        timings = {}
        if state is None:
            state, landmarks, timings = self.fit_detections(images, detections, refine, identities)
        elif detections[0].landmarks is not None:
            landmarks = torch.tensor(np.stack([d.landmarks[:, :2] for d in detections]), dtype=torch.float32,
                                     device=self.device)
        else:
            landmarks = None
        t0 = time.perf_counter()
        results = self.describe(images, detections, state, landmarks)
        timings["describe_s"] = time.perf_counter() - t0
        fitted = landmarks is not None and self.use_fit
        for r in results:
            r.timings.update(timings)
            r.refine = (self.refine if refine is None else refine) if fitted else "none"
            r.source = "mediapipe" if fitted else "regressor"
        return results

    @torch.no_grad()
    def describe(self, images: list[np.ndarray], detections: list[Detection], state: FitState,
                 landmarks: torch.Tensor) -> list[FaceResult]:
        """Fitted parameters -> one :class:`FaceResult` per detection (images: one per detection)."""
        model = self.model
        vertices = model.decode(state.identity, state.expression)
        cam = camera.model_to_camera(vertices, state.rotation, state.translation)
        uv = camera.project(cam, state.focal, state.principal)
        facing = vertex_facing(cam, model.faces)
        visible = self._visibility(cam, uv, state, images[0].shape[:2], facing)
        ids68 = model.contour_landmarks(cam, uv, facing)
        rows = torch.arange(len(detections), device=self.device)[:, None]
        # landmark-fit quality: RMS distance of the fitted MediaPipe points, in face sizes
        rms = torch.full((len(detections),), float("nan"))
        if landmarks is not None:
            mp_uv = model.landmarks(uv, "mediapipe")
            target = landmarks[:, : mp_uv.shape[1]]
            size = (target.max(1).values - target.min(1).values).prod(1).sqrt()
            rms = ((mp_uv - target).norm(dim=-1) ** 2).mean(1).sqrt() / size
        colors = [self._colors(img, uv[i], visible[i]) for i, img in enumerate(images)]
        euler = camera.matrix_to_euler(state.rotation)
        results = []
        for i, det in enumerate(detections):
            pose = Pose(*(float(a) for a in euler[i]), state.rotation[i].cpu().numpy(),
                        state.translation[i].cpu().numpy(), float(state.focal[i]), state.principal[i].cpu().numpy())
            result = FaceResult(
                vertices=vertices[i].cpu().numpy(), vertices_camera=cam[i].cpu().numpy(),
                vertices_2d=uv[i].cpu().numpy(), visibility=visible[i].cpu().numpy(),
                landmarks68_2d=uv[rows, ids68][i].cpu().numpy(), landmarks68_3d=cam[rows, ids68][i].cpu().numpy(),
                pose=pose, identity=state.identity[i].cpu().numpy(), expression=state.expression[i].cpu().numpy(),
                expression_names=list(model.expression_names), box=det.box.copy(),
                score=det.score, fit_error=float(rms[i]), colors=colors[i],
                image_size=tuple(images[i].shape[:2]))
            if self.texture:
                result.texture = render.bake_texture(images[i], uv[i].cpu(), visible[i].cpu(), model.faces.cpu(),
                                                     model.uvs.cpu(), model.face_uvs.cpu())
            results.append(result)
        return results

    def _visibility(self, cam: torch.Tensor, uv: torch.Tensor, state: FitState,
                    image_hw: tuple[int, int], facing: torch.Tensor) -> torch.Tensor:
        """Z-buffer visibility, rasterised per face in a square crop (bounded cost on huge images)."""
        boxes = [square_box(uv[i].cpu().numpy(), 1.05) for i in range(len(uv))]
        k = torch.tensor([self.visibility_size / (b[2] - b[0]) for b in boxes], dtype=cam.dtype, device=cam.device)
        origin = torch.tensor(np.stack([b[:2] for b in boxes]), dtype=cam.dtype, device=cam.device)
        focal = state.focal * k
        principal = (state.principal - origin) * k[:, None]
        crop_vis = render.visibility(cam, self.model.faces, focal, principal,
                                     (self.visibility_size, self.visibility_size), facing)
        h, w = image_hw
        inside = (uv[..., 0] > -0.5) & (uv[..., 0] < w - 0.5) & (uv[..., 1] > -0.5) & (uv[..., 1] < h - 0.5)
        return crop_vis & inside

    @staticmethod
    def _colors(image: np.ndarray, uv: torch.Tensor, visible: torch.Tensor) -> np.ndarray:
        """Per-vertex colours (N, 3) uint8 sampled bilinearly; hidden ones get the visible mean."""
        import cv2

        pts = uv.cpu().numpy().astype(np.float32)
        c = cv2.remap(image, pts[None, :, 0], pts[None, :, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
        vis = visible.cpu().numpy()
        c[~vis] = c[vis].mean(0).round() if vis.any() else 128
        return c


def reconstruct(image, **options) -> list[FaceResult]:
    """One-off use: ``reconstruct("photo.jpg", refine="full")``; options as for :class:`Reconstructor`."""
    with Reconstructor(**options) as rec:
        return rec(image)
