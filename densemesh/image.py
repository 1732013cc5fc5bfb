"""Turn whatever the user hands us (a path, or an array) into one RGB uint8 image.

Accepted: JPEG/PNG/BMP/TIFF/WebP/PPM files (JPEG EXIF orientation applied), and arrays
(H, W) gray, (H, W, 1), (H, W, 3) RGB - or BGR with ``channel_order="bgr"`` (OpenCV) -
and (H, W, 4) RGBA/BGRA (composited on black, i.e. alpha dropped), in uint8, uint16 (16-bit,
scaled down) or float in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


class ImageError(ValueError):
    """The input is not a readable image (message is one line, meant for the user)."""


def load_image(source, channel_order: str = "rgb") -> np.ndarray:
    """Path or array -> (H, W, 3) uint8 RGB. ``channel_order`` applies to arrays only."""
    if isinstance(source, (str, Path)):
        return _read_file(Path(source))
    if isinstance(source, np.ndarray):
        return to_rgb(source, channel_order)
    raise ImageError(f"expected an image path or a numpy array, got {type(source).__name__}")


def _read_file(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_rgb(np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int32))
            if img.mode == "RGBA":
                return to_rgb(np.asarray(img))
            return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageError(f"not an image (or an unsupported format): {path}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt files
        raise ImageError(f"cannot read image {path}: {err}") from None


def to_rgb(array: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """(H, W[, C]) array of any supported depth -> (H, W, 3) uint8 RGB (see module docstring)."""
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or min(a.shape[:2]) < 1:
        raise ImageError(f"unsupported image array shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    a = _to_uint8(a)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:  # composite on black: premultiply by alpha
        a = (a[..., :3].astype(np.uint16) * a[..., 3:4] // 255).astype(np.uint8)
    if channel_order == "bgr":
        a = a[..., ::-1]
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("image array contains NaN or infinity")
        return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        top = 65535 if a.max(initial=0) > 255 or a.dtype in (np.uint16, np.int32) else 255
        return np.clip(a.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    raise ImageError(f"unsupported image dtype {a.dtype}")
