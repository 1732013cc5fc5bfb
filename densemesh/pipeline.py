"""The public facade: :class:`Reconstructor` (models loaded once) and :func:`reconstruct`."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from densemesh import camera, render
from densemesh.crop import box_from_landmarks68, regressor_crop, square_box
from densemesh.detect import Detection, MediaPipeDetector, same_face
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


def one_per_face(results: list[FaceResult]) -> list[FaceResult]:
    """Drop a result whose mesh lands on a face already reconstructed (two detections of one
    face framed differently; :func:`densemesh.detect.same_face` on the boxes of the projected 68
    landmarks), MediaPipe-fitted results and higher detector scores first; largest first."""
    order = sorted(results, key=lambda r: (r.source != "mediapipe", -np.nan_to_num(r.score, nan=0.0)))
    kept, boxes = [], []
    for r in order:
        box = np.concatenate([r.landmarks68_projected.min(0), r.landmarks68_projected.max(0)])
        if not any(same_face(box, b) for b in boxes):
            kept.append(r)
            boxes.append(box)
    return sorted(kept, key=lambda r: -np.sqrt(np.prod(r.box[2:] - r.box[:2])))


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
                self.regressor = Regressor(None if regressor == "default" else regressor, self.device,
                                           mirror_maps=self.model.mirror_maps())
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
        results = self.reconstruct_detections([rgb] * len(detections), detections) if detections else []
        for r in results:
            r.timings["detect_s"] = t_detect
        return one_per_face(results)

    def fit_detections(self, images: list[np.ndarray], detections: list[Detection], refine: str | None = None,
                       identities: torch.Tensor | None = None, focal: float | None = None,
                       start: FitState | None = None) -> tuple[FitState, dict]:
        """Landmark fit (+ refinement) of detections -> (FitState, timings). ``state.fitted`` (B,)
        says per face what decided (see :meth:`trusted`): the landmark fit to MediaPipe's points,
        or the network alone.

        images: the image of each detection (a photo repeats its image; a video batch mixes
        frames of one size); identities (B, 100): fixed identities (a video track's), else solved;
        focal: px, else chosen from the faces; start: a previous frame's fit of the same faces to
        start from (fewer iterations).
        """
        dev = self.device
        timings = {}
        t0 = time.perf_counter()
        state = self.regress(images, detections, focal) if self.regressor is not None else None
        if state is not None:
            timings["regress_s"] = time.perf_counter() - t0
            focal = float(state.focal[0])
        fitted = torch.tensor(self.trusted(detections, state), device=dev) & self.use_fit
        rows = fitted.nonzero()[:, 0].tolist()
        if rows:
            dets = [detections[i] for i in rows]
            lm = torch.tensor(np.stack([d.landmarks[:, :2] for d in dets]), dtype=torch.float32, device=dev)
            prior = torch.tensor(mediapipe_expression_prior(np.stack([d.blendshapes for d in dets]),
                                                            self.model.expression_names), dtype=torch.float32, device=dev)
            iterations = None
            if start is not None:
                sub = start.select_rows(rows)
                iterations = self.fitter.config.tracking_iterations
            elif state is not None:
                sub = state.select_rows(rows)
            else:
                rotations = torch.tensor(np.stack([_orthonormal(d.transform[:3, :3]) for d in dets]),
                                         dtype=torch.float32, device=dev)
                sub = self.fitter.initial_state(lm, rotations, prior, images[0].shape[:2], focal)
            if identities is not None:
                sub.identity = identities[rows].to(dev, torch.float32).clone()
            weights = self.point_weights(state.select_rows(rows)) if state is not None else None
            t0 = time.perf_counter()
            sub = self.fitter.fit(lm, sub, prior, iterations, fix_identity=identities is not None, weights=weights)
            timings["fit_s"] = time.perf_counter() - t0
            level = REFINE_LEVELS[self.refine if refine is None else refine]
            if level is not None:
                t0 = time.perf_counter()
                sub, stats = fit.refine(self.fitter, [images[i] for i in rows], sub, lm, level,
                                        fix_identity=identities is not None, weights=weights)
                timings["refine_s"] = time.perf_counter() - t0
                timings.update({k: v.tolist() for k, v in stats.items()})
            state = sub if state is None else state.with_rows(rows, sub)
        if state is None:  # only without the network, and then every detection has landmarks
            raise ValueError("detections without landmarks need the regressor")
        if identities is not None:  # a video track's locked identity also where the network answers
            state.identity = torch.where(fitted[:, None], state.identity, identities.to(dev, torch.float32))
        state.fitted = fitted
        return state, timings

    #: Beyond this |yaw| (degrees, the network's estimate) MediaPipe's landmarks are not used: its
    #: landmarker is made for faces that show both eyes, and past it the network alone scores
    #: better on the AFLW validation split (tools/eval_aflw.py --trust: NME of the MediaPipe fit
    #: vs the network 5.05 / 5.81 % at 40-50 degrees, 6.18 / 5.93 % at 50-60, 6.27 / 5.83 % at 60-70).
    MEDIAPIPE_YAW_LIMIT = 50.0
    #: The network and MediaPipe's head transform may disagree by this much yaw (degrees) before
    #: MediaPipe's face is judged implausible (a face turned the wrong way, a hallucinated mesh).
    YAW_DISAGREEMENT = 30.0

    def trusted(self, detections: list[Detection], net: FitState | None) -> list[bool]:
        """Per face: whether MediaPipe's landmarks decide the mesh. They need to exist, and with
        the network's estimate at hand the face has to be within MEDIAPIPE_YAW_LIMIT and
        MediaPipe's own head pose has to agree with the network's yaw (same side beyond 15
        degrees, within YAW_DISAGREEMENT)."""
        have = np.array([d.landmarks is not None for d in detections])
        if net is None:
            return have.tolist()
        y = camera.matrix_to_euler(net.rotation)[:, 0].cpu().numpy()
        y_mp = camera.matrix_to_euler(torch.tensor(np.stack([_orthonormal(d.transform[:3, :3]) for d in detections]),
                                                   dtype=torch.float32))[:, 0].numpy()
        wrong_side = (np.abs(y) > 15) & (np.sign(y_mp) != np.sign(y))
        return (have & (np.abs(y) <= self.MEDIAPIPE_YAW_LIMIT) & ~wrong_side
                & (np.abs(y - y_mp) <= self.YAW_DISAGREEMENT)).tolist()

    def point_weights(self, net: FitState) -> torch.Tensor:
        """(B, 468) weights of MediaPipe's points in the landmark fit from the network's pose:
        1 where the surface point faces the camera, falling to 0 at the silhouette and behind it
        (MediaPipe places hidden points on the visible outline, where they do not belong)."""
        vertices = self.model.decode(net.identity, net.expression)
        cam = camera.model_to_camera(vertices, net.rotation, net.translation)
        facing = self.model.landmarks(vertex_facing(cam, self.model.faces)[..., None], "mediapipe")[..., 0]
        return (-facing / self.FACING_FULL_WEIGHT).clamp(0.0, 1.0)

    #: cosine between surface normal and view ray at which a point counts fully (see point_weights)
    FACING_FULL_WEIGHT = 0.3

    def regress(self, images: list[np.ndarray], detections: list[Detection], focal: float | None = None) -> FitState:
        """The regressor's parameters for each detection's box, as a FitState in image space.

        Two passes: the first on the detection's box (MediaPipe's landmark extent, or the face
        detector's box mapped onto it), the second on the box the first pass's own 68 landmarks
        imply (:func:`densemesh.crop.box_from_landmarks68`, the rule the network's manually
        labelled training crops were cut with) - a profile's detector box sits off the head.

        Its weak-perspective crop camera becomes a pinhole: the image gets ``focal`` (else the
        landmark fit's rule: the largest face at ``camera_distance_cm``), and each face is placed
        so that the centroid of its MediaPipe points (where the training labels' weak cameras
        were fitted) projects where the weak camera puts it, at the depth where that focal
        gives the weak camera's scale. (The model origin lies ~8 cm behind the face: anchoring
        it instead magnifies the face by ~15 %.)"""
        crops = [regressor_crop(img, d.box) for img, d in zip(images, detections)]
        pred = self.regressor([c.image for c in crops])
        lm = camera.project_weak(self.model.decode(pred.identity, pred.expression, self.model.ibug68.cpu()),
                                 pred.rotation, pred.weak[:, 0], pred.weak[:, 1:]).cpu().numpy()
        boxes = box_from_landmarks68(np.stack([c.to_image(p) for c, p in zip(crops, lm)]))
        crops = [regressor_crop(img, box) for img, box in zip(images, boxes)]
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
            state, timings = self.fit_detections(images, detections, refine, identities)
        t0 = time.perf_counter()
        results = self.describe(images, detections, state)
        timings["describe_s"] = time.perf_counter() - t0
        for r, fitted in zip(results, state.fitted.tolist()):
            r.timings.update(timings)
            r.refine = (self.refine if refine is None else refine) if fitted else "none"
            r.source = "mediapipe" if fitted else "regressor"
        return results

    @torch.no_grad()
    def describe(self, images: list[np.ndarray], detections: list[Detection], state: FitState) -> list[FaceResult]:
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
        rows_fitted = [i for i, (d, f) in enumerate(zip(detections, state.fitted.tolist())) if f and d.landmarks is not None]
        if rows_fitted:
            target = torch.tensor(np.stack([detections[i].landmarks[:468, :2] for i in rows_fitted]),
                                  dtype=torch.float32, device=self.device)
            mp_uv = model.landmarks(uv[rows_fitted], "mediapipe")
            size = (target.max(1).values - target.min(1).values).prod(1).sqrt()
            rms[rows_fitted] = (((mp_uv - target).norm(dim=-1) ** 2).mean(1).sqrt() / size).cpu()
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
                landmarks68_projected=uv[i, model.ibug68].cpu().numpy(),
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
