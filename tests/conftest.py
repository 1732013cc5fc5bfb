"""Shared fixtures. Tests that need ../shared (data beside the project) skip without it."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"needs the data folder {SHARED} (beside the project; CI has it)")
    return SHARED


@pytest.fixture(scope="session")
def face_model():
    from densemesh.facemodel import FaceModel

    return FaceModel.load("face")


@pytest.fixture(scope="session")
def head_model():
    from densemesh.facemodel import FaceModel

    return FaceModel.load("head")
