"""The regression network: a face crop -> identity, expression, head rotation and a
weak-perspective camera, in one forward pass. It starts the landmark fit, and stands in for it
where MediaPipe finds a face box but no landmarks (profiles).

Input: :func:`densemesh.crop.regressor_crop` (128 px, 1.4 x the face box), RGB in [0, 1].
Network: MobileNetV3-Small (torchvision, trained from scratch here) and a two-layer head.
Outputs (see :class:`Prediction`): identity (100,) ~ N(0, 1); expression (53,) in [0, 1]
(sigmoid); rotation (3, 3) from the continuous 6D representation; weak camera (3,): crop pixels
per cm and the crop-pixel position of the model origin, so that
``crop_uv = scale * (MODEL_TO_CAMERA @ R @ v)[:2] + offset``.
The weights ship as ``templates/regressor.pt`` (model card: ``templates/REGRESSOR.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from densemesh import camera
from densemesh.crop import REGRESSOR_SIZE, box_from_landmarks68, regressor_crop
from densemesh.facemodel import FaceModel
from densemesh.fit import FitState

WEIGHTS = Path(__file__).resolve().parent / "templates" / "regressor.pt"
N_IDENTITY, N_EXPRESSION = 100, 53
SCALE0 = 6.0  # crop px per cm of a typical face in the crop: the scale output's unit


@dataclass
class Prediction:
    """Batched network outputs. identity (B, 100), expression (B, 53), rotation (B, 3, 3),
    weak (B, 3): scale (crop px / cm) and offset (crop px)."""

    identity: torch.Tensor
    expression: torch.Tensor
    rotation: torch.Tensor
    weak: torch.Tensor


class FaceRegressor(nn.Module):
    """MobileNetV3-Small backbone + head -> :class:`Prediction`. Input (B, 3, 128, 128) in [0, 1]."""

    def __init__(self):
        super().__init__()
        from torchvision.models import mobilenet_v3_small

        backbone = mobilenet_v3_small(weights=None)
        self.features = backbone.features  # (B, 576, 4, 4) at 128 px
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, 512), nn.Hardswish(),
                                  nn.Dropout(0.1), nn.Linear(512, N_IDENTITY + N_EXPRESSION + 6 + 3))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        # the 6D output's offset: a frontal face at zero output
        self.register_buffer("identity_6d", torch.tensor([[1.0, 0, 0, 0, 1.0, 0]]), persistent=False)

    def forward(self, crops: torch.Tensor) -> Prediction:
        out = self.head(self.features((crops - self.mean) / self.std))
        ident, expr, rot6, cam = torch.split(out, [N_IDENTITY, N_EXPRESSION, 6, 3], dim=1)
        weak = torch.cat([SCALE0 * torch.exp(cam[:, :1]), REGRESSOR_SIZE / 2 + REGRESSOR_SIZE / 4 * cam[:, 1:]], 1)
        return Prediction(ident, torch.sigmoid(expr - 3.0), camera.rotation_6d_to_matrix(rot6 + self.identity_6d), weak)


def to_tensor(crops: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """(B, 128, 128, 3) uint8 crops -> (B, 3, 128, 128) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops))).permute(0, 3, 1, 2).float() / 255.0


def load_regressor(path: str | Path | None = None, device: str | torch.device = "cpu") -> FaceRegressor:
    """The shipped weights (or ``path``), in eval mode. Raises FileNotFoundError when missing."""
    net = FaceRegressor()
    state = torch.load(Path(path or WEIGHTS), map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"] if "model" in state else state)
    return net.to(device).eval()


def export_onnx(net: FaceRegressor, path: str | Path) -> Path:
    """ONNX export of the raw network (input "crops" (B, 3, 128, 128) in [0, 1]; outputs identity,
    expression, rotation, weak), for ONNX Runtime deployments."""

    class Flat(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            p = self.inner(x)
            return p.identity, p.expression, p.rotation, p.weak

    dummy = torch.zeros(1, 3, REGRESSOR_SIZE, REGRESSOR_SIZE)
    torch.onnx.export(Flat(net.cpu().eval()), dummy, str(path), input_names=["crops"],
                      output_names=["identity", "expression", "rotation", "weak"],
                      dynamic_axes={"crops": {0: "batch"}}, opset_version=17, dynamo=False)
    return Path(path)


def unmirror(pred: Prediction, maps: tuple[torch.Tensor, torch.Tensor]) -> Prediction:
    """The prediction for a crop, given ``pred`` for the crop mirrored left-right; ``maps``:
    :meth:`densemesh.facemodel.FaceModel.mirror_maps`. The mirrored face's identity and
    expression map through the model's mirror; its rotation R becomes F R F (F = diag(-1, 1, 1):
    mirroring the crop mirrors camera x, which is model x); the offset's x mirrors in the crop."""
    identity_map, expression_partner = maps
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0])).to(pred.rotation)
    weak = pred.weak.clone()
    weak[:, 1] = REGRESSOR_SIZE - 1 - weak[:, 1]
    expression = pred.expression[:, expression_partner.to(pred.expression.device)]
    return Prediction(pred.identity @ identity_map.T.to(pred.identity), expression, flip @ pred.rotation @ flip, weak)


def average(a: Prediction, b: Prediction) -> Prediction:
    """The mean of two predictions of the same faces; rotations averaged on SO(3) (the nearest
    rotation to the mean matrix)."""
    return Prediction((a.identity + b.identity) / 2, (a.expression + b.expression) / 2,
                      camera.nearest_rotation((a.rotation + b.rotation) / 2), (a.weak + b.weak) / 2)


class Regressor:
    """Runs the network on face boxes: ONNX Runtime on the CPU (``regressor.onnx``, one thread:
    the fastest here), PyTorch elsewhere (``regressor.pt``, batched on a GPU).

    path: a ``.pt`` (PyTorch, on ``device``) or ``.onnx`` (ONNX Runtime, CPU) weights file;
    default: the shipped ``.onnx`` on the CPU, the shipped ``.pt`` elsewhere. Raises
    FileNotFoundError when the file is missing. model: the face model (on ``device``); with it
    every crop also runs mirrored and the two answers are averaged (test-time mirroring, twice
    the network's cost; :func:`unmirror`), and :meth:`state` places faces in a pinhole camera.
    """

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu",
                 model: FaceModel | None = None):
        self.device = torch.device(device)
        self.model = model
        self.mirror_maps = model.mirror_maps() if model is not None else None
        if model is not None:  # the centroid of MediaPipe's points, linear in the coefficients: (1 + 153, 3)
            shapes = torch.cat([model.mean[None], model.identity_basis, model.expression_basis])
            self._centroid = model.landmarks(shapes, "mediapipe").mean(1)
        if path is None:
            path = WEIGHTS.with_suffix(".onnx") if self.device.type == "cpu" else WEIGHTS
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"regressor weights not found: {path}")
        self._session = self._net = None
        if path.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        else:
            self._net = load_regressor(path, self.device)

    def __call__(self, crops: list[np.ndarray]) -> Prediction:
        """(128, 128, 3) uint8 crops (:func:`densemesh.crop.regressor_crop`) -> batched Prediction."""
        x = to_tensor(crops)
        if self.mirror_maps is None:
            return self._run(x)
        both = self._run(torch.cat([x, x.flip(-1)]))
        b = len(x)
        halves = [Prediction(*(getattr(both, f)[part] for f in Prediction.__dataclass_fields__))
                  for part in (slice(0, b), slice(b, None))]
        return average(halves[0], unmirror(halves[1], self.mirror_maps))

    def _run(self, x: torch.Tensor) -> Prediction:
        if self._session is not None:
            outs = self._session.run(None, {"crops": x.numpy()})
            return Prediction(*(torch.from_numpy(o) for o in outs))
        with torch.no_grad():
            return self._net(x.to(self.device))

    def state(self, images: list[np.ndarray], boxes: np.ndarray, focal: float | None,
              camera_distance_cm: float) -> FitState:
        """The network's answer for face boxes (B, 4) px (one image per box, one size), as a
        FitState in the image's pinhole camera.

        Two passes: the first on the given box (MediaPipe's landmark extent, or the face
        detector's box mapped onto it), the second on the box the first pass's own 68 landmarks
        imply (:func:`densemesh.crop.box_from_landmarks68`, the rule the network's manually
        labelled training crops were cut with) - a profile's detector box sits off the head.

        The weak-perspective crop camera becomes a pinhole: the image gets ``focal`` px (else
        the largest face at ``camera_distance_cm``), and each face is placed so that the centroid
        of its MediaPipe points (where the training labels' weak cameras were fitted) projects
        where the weak camera puts it, at the depth where that focal gives the weak camera's
        scale. (The model origin lies ~8 cm behind the face: anchoring it instead magnifies the
        face by ~15 %.)"""
        model = self.model
        crops = [regressor_crop(img, box) for img, box in zip(images, boxes)]
        pred = self([c.image for c in crops])
        verts = model.decode(pred.identity, pred.expression, model.ibug68)
        lm = camera.project_weak(verts, pred.rotation.to(verts), pred.weak[:, 0].to(verts),
                                 pred.weak[:, 1:].to(verts)).cpu().numpy()
        crops = [regressor_crop(img, box) for img, box in
                 zip(images, box_from_landmarks68(np.stack([c.to_image(p) for c, p in zip(crops, lm)])))]
        pred = self([c.image for c in crops])
        dev, b = model.mean.device, len(boxes)
        k = torch.tensor([c.scale for c in crops], dtype=torch.float32, device=dev)
        off = torch.tensor(np.stack([c.offset for c in crops]), dtype=torch.float32, device=dev)
        weak, rotation, identity, expression = (x.to(dev, torch.float32) for x in (
            pred.weak, pred.rotation, pred.identity, pred.expression))
        anchor = self._centroid[0] + torch.cat([identity, expression], 1) @ self._centroid[1:]  # (B, 3) model cm
        anchor = camera.model_to_camera(anchor[:, None], rotation, torch.zeros(b, 3, device=dev))[:, 0]  # camera cm
        anchor_px = (weak[:, :1] * anchor[:, :2] + weak[:, 1:] - off) / k[:, None]
        scale = weak[:, 0] / k  # px per cm in the image
        h, w = images[0].shape[:2]
        principal = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=dev).expand(b, 2).clone()
        f = torch.as_tensor(focal if focal is not None else camera_distance_cm * float(scale.max()),
                            dtype=torch.float32, device=dev).expand(b).clone()
        translation = camera.weak_to_pinhole(scale, anchor_px, principal, f) - anchor
        return FitState(rotation, translation, identity, expression, f, principal)
