"""Images on the wire: base64 PNG (lossless, the default) or JPEG, inside JSON.

The device-to-host copy happens once per batch in the caller's thread (so it is ordered
with the caller's CUDA stream); the per-image encoding can then run on any thread.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from ..preprocess import to_uint8

IMAGE_FORMATS = ("png", "jpeg")
_MIME = {"png": "image/png", "jpeg": "image/jpeg"}


def check_format(image_format: str) -> str:
    fmt = str(image_format).lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return fmt


def images_to_host(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float [0, 1] on any device -> (B, H, W, 3) uint8 numpy array."""
    return to_uint8(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def encode_array(array: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> str:
    """One HWC uint8 image -> base64 text (no data-URI prefix)."""
    fmt = check_format(image_format)
    buffer = io.BytesIO()
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    image = Image.fromarray(np.ascontiguousarray(array))  # (H, W, 3) uint8 -> RGB
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=1)  # speed over size: lossless either way
    else:
        image.save(buffer, format="JPEG", quality=int(jpeg_quality))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_batch(arrays: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> list[str]:
    return [encode_array(a, image_format, jpeg_quality) for a in arrays]


def data_uri(b64: str, image_format: str = "png") -> str:
    return f"data:{_MIME[check_format(image_format)]};base64,{b64}"
