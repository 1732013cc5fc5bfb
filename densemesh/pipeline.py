"""The public facade: :class:`Reconstructor` (models loaded once) and :func:`reconstruct`."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from densemesh import fit, trust
from densemesh.describe import describe
from densemesh.detect import Detection, MediaPipeDetector, same_face
from densemesh.facemodel import FaceModel
from densemesh.fit import REFINE_LEVELS, FitConfig, FitState, LandmarkFitter
from densemesh.image import load_image
from densemesh.raycast import RayCaster
from densemesh.regress import Regressor
from densemesh.result import FaceResult


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else as torch understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA device is available")
    return dev


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Torch's CPU threads set to ``count`` inside the block (None: left as they are). The landmark
    fit's small dense solves (159 unknowns) run about three times faster on one thread than on two
    (thread start-up dominates), and a video's second core decodes and runs MediaPipe."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
                self.regressor = Regressor(None if regressor == "default" else regressor, self.device, self.model)
            except FileNotFoundError:
                if regressor != "default":
                    raise
        if not fit and self.regressor is None:
            raise ValueError("fit=False needs the regressor, and its weights are missing")
        self.detector = detector or MediaPipeDetector(max_faces=max_faces, search=search,
                                                      boxes_without_landmarks=self.regressor is not None)
        # on the CPU the visibility rays are cast in a child process, beside this one's work
        self.caster = RayCaster(self.model.faces.cpu().numpy()) if self.device.type == "cpu" else None

    def close(self) -> None:
        self.detector.close()
        if self.caster is not None:
            self.caster.close()

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
        with torch_threads(1 if self.device.type == "cpu" and self.refine == "none" else None):
            results = self.reconstruct_detections([rgb] * len(detections), detections) if detections else []
        for r in results:
            r.timings["detect_s"] = t_detect
        return one_per_face(results)

    def fit_detections(self, images: list[np.ndarray], detections: list[Detection], refine: str | None = None,
                       identities: torch.Tensor | None = None, focal: float | None = None,
                       start: FitState | None = None, photo: bool = True) -> tuple[FitState, dict]:
        """Landmark fit (+ refinement) of detections -> (FitState, timings). ``state.fitted`` (B,)
        says per face what decided (:func:`densemesh.trust.decide`): the landmark fit to
        MediaPipe's points, or the network alone.

        images: the image of each detection (a photo repeats its image; a video batch mixes
        frames of one size); identities (B, 100): fixed identities (a video track's), else solved;
        focal: px, else chosen from the faces; start: a previous frame's fit of the same faces to
        start from (fewer iterations; it stands in for the network too); photo: a photo's extra
        care, which a video does not take: rejected faces re-framed, and the fit averaged with the
        network's answer (:func:`densemesh.trust.blend`; in a video the network's frame-to-frame
        noise would add jitter).
        """
        t0 = time.perf_counter()
        state, fitted = trust.decide(self.regressor, images, detections, focal, self.fitter.config.camera_distance_cm,
                                     start, getattr(self.detector, "side_view", None) if photo else None,
                                     self.trusted, self.use_fit)
        timings = {"regress_s": time.perf_counter() - t0} if self.regressor is not None else {}
        focal = focal if state is None else float(state.focal[0])
        fitted = fitted.to(self.device)
        rows = fitted.nonzero()[:, 0].tolist()
        if rows:
            begin = start if start is not None else state
            net = None if state is None else state.select_rows(rows)
            level = REFINE_LEVELS[self.refine if refine is None else refine]
            sub, more = fit.fit_detections(
                self.fitter, [images[i] for i in rows], [detections[i] for i in rows],
                begin.select_rows(rows) if begin is not None else None, level,
                tracking=start is not None, identities=None if identities is None else identities[rows],
                weights=None if net is None else trust.point_weights(self.model, net), focal=focal,
                blend=(lambda s: trust.blend(s, net, identity=identities is None)) if photo and net is not None else None)
            timings.update(more)
            state = sub if state is None else state.with_rows(rows, sub)
        if identities is not None:  # a video track's locked identity also where the network answers
            state.identity = torch.where(fitted[:, None], state.identity, identities.to(self.device, torch.float32))
        state.fitted = fitted
        return state, timings

    trusted = staticmethod(trust.trusted)  # per face: MediaPipe's landmarks decide (else the network)

    def reconstruct_detections(self, images: list[np.ndarray], detections: list[Detection],
                               refine: str | None = None, identities: torch.Tensor | None = None,
                               state: FitState | None = None, photo: bool = True) -> list[FaceResult]:
        """Fit, refine and describe detections; images: the (H, W, 3) uint8 RGB image of each.
        ``state`` skips the fit (e.g. parameters a video filter smoothed); photo: as for
        :meth:`fit_detections`."""
        timings = {}
        if state is None:
            state, timings = self.fit_detections(images, detections, refine, identities, photo=photo)
        t0 = time.perf_counter()
        results = describe(self.model, images, detections, state, self.texture, self.caster)
        timings["describe_s"] = time.perf_counter() - t0
        for r in results:
            r.timings.update(timings)
            r.refine = (self.refine if refine is None else refine) if r.source == "mediapipe" else "none"
        return results


def reconstruct(image, **options) -> list[FaceResult]:
    """One-off use: ``reconstruct("photo.jpg", refine="full")``; options as for :class:`Reconstructor`."""
    with Reconstructor(**options) as rec:
        return rec(image)
