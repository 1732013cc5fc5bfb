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


@pytest.fixture(scope="session")
def gallery_photos(shared, tmp_path_factory):
    """Five annotated photos in a folder tree (one in a subfolder)."""
    import shutil

    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    for name in ("lenna.png", "einstein.jpg", "breakingbad.jpg", "300w_image_0010.png"):
        shutil.copy(shared / "faces" / "annotated" / name, folder / name)
    shutil.copy(shared / "faces" / "misc" / "single_face.jpg", folder / "more" / "single_face.jpg")
    return folder
