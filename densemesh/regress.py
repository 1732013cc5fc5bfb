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
from densemesh.crop import REGRESSOR_SIZE

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


def unmirror(pred: Prediction, maps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Prediction:
    """The prediction for a crop, given ``pred`` for the crop mirrored left-right; ``maps``:
    :meth:`densemesh.facemodel.FaceModel.mirror_maps`. The mirrored face's identity and
    expression map through the model's mirror; its rotation R becomes F R F (F = diag(-1, 1, 1):
    mirroring the crop mirrors camera x, which is model x); the offset's x mirrors in the crop."""
    _, identity_map, expression_partner = maps
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0])).to(pred.rotation)
    weak = pred.weak.clone()
    weak[:, 1] = REGRESSOR_SIZE - 1 - weak[:, 1]
    return Prediction(pred.identity @ identity_map.T.to(pred.identity), pred.expression[:, expression_partner.cpu()],
                      flip @ pred.rotation @ flip, weak)


def average(a: Prediction, b: Prediction) -> Prediction:
    """The mean of two predictions of the same faces; rotations averaged on SO(3) (the nearest
    rotation to the mean matrix)."""
    u, _, vt = torch.linalg.svd((a.rotation + b.rotation) / 2)
    det = torch.linalg.det(u @ vt)
    u = torch.cat([u[..., :2], u[..., 2:] * det[:, None, None]], -1)
    return Prediction((a.identity + b.identity) / 2, (a.expression + b.expression) / 2, u @ vt, (a.weak + b.weak) / 2)


class Regressor:
    """Runs the network on face boxes: ONNX Runtime on the CPU (``regressor.onnx``, one thread:
    the fastest here), PyTorch elsewhere (``regressor.pt``, batched on a GPU).

    path: a ``.pt`` (PyTorch, on ``device``) or ``.onnx`` (ONNX Runtime, CPU) weights file;
    default: the shipped ``.onnx`` on the CPU, the shipped ``.pt`` elsewhere. Raises
    FileNotFoundError when the file is missing. mirror_maps (the face model's
    :meth:`~densemesh.facemodel.FaceModel.mirror_maps`): also run every crop mirrored and average
    the two answers (test-time mirroring; twice the network's cost).
    """

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu",
                 mirror_maps: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        self.device = torch.device(device)
        self.mirror_maps = mirror_maps
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
