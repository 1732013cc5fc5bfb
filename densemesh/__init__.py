"""densemesh: dense 3D face reconstruction (about 8,000 vertices on one fixed topology).

The heavy parts (torch, PyTorch3D, MediaPipe) load on first use, so ``import densemesh``
and ``densemesh --help`` stay quick.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "FaceModel": "densemesh.facemodel",
    "FaceResult": "densemesh.result",
    "Reconstructor": "densemesh.pipeline",
    "Comparer": "densemesh.identity",
    "compare": "densemesh.identity",
    "reconstruct": "densemesh.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'densemesh' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
