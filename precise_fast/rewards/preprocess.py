"""CLIP-style image preprocessing on the device, on float tensors (no PIL round trip).

The reward models were trained on images preprocessed by a CLIP processor: resize the
shortest edge (bicubic), centre-crop, scale to [0, 1], normalise with the CLIP mean/std.
Our images are already float ``[0, 1]`` tensors on the training device, so we do the same
steps with ``torch.nn.functional.interpolate`` on the whole batch:

* transformers 5's ``CLIPImageProcessor`` is a torchvision backend (``tvF.resize`` bicubic,
  ``antialias=True``, crop offset ``int((h - ch) / 2)``); on float input without rescaling we
  match it to float rounding (tests/rewards/test_preprocess.py checks this).
* Against the processor fed 8-bit images (what PIL-based scorers such as Flow-GRPO's do)
  the only difference is the 8-bit quantisation of the input and of the resized output:
  at most about 1/255 per pixel before normalisation, i.e. <= 0.02 after dividing by the
  CLIP std (~0.27); the tests bound it.
* open_clip's eval transform (used for HPSv2) is torchvision ``Resize`` (shortest edge,
  bicubic, antialias) + ``CenterCrop`` (offset ``int(round((h - ch) / 2))``) on a PIL image;
  same arithmetic up to PIL's resampling kernel, bounded the same way in the tests.

The bicubic kernel overshoots a little outside [0, 1]; the 8-bit pipelines clamp there, so
we clamp too (it keeps us closer to what the models saw in training).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes stored in HF image-processor configs.
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize (shortest edge or fixed size) -> centre crop -> normalise, batched on device.

    ``shortest_edge``: resize so the short side has this length (aspect kept; long side
    ``int(s * long / short)`` like torchvision and transformers). ``resize_to``: resize to an
    exact ``(h, w)`` instead. ``crop``: centre-crop size or None. ``crop_rounding``:
    ``"floor"`` (transformers) or ``"round"`` (torchvision) for the crop offset.
    """

    shortest_edge: int | None = 224
    resize_to: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    crop_rounding: str = "floor"
    clamp: bool = True

    @classmethod
    def from_hf_image_processor(cls, processor) -> ClipPreprocess:
        """Read the settings of a transformers CLIP image processor (or its dict)."""
        cfg = processor if isinstance(processor, dict) else processor.to_dict()
        size = cfg.get("size") or {}
        shortest, resize_to = None, None
        if cfg.get("do_resize", True):
            if isinstance(size, int):
                shortest = size
            elif size.get("shortest_edge"):
                shortest = int(size["shortest_edge"])
            elif size.get("height") and size.get("width"):
                resize_to = (int(size["height"]), int(size["width"]))
            else:
                raise ValueError(f"unsupported image-processor size {size!r}")
        crop = None
        if cfg.get("do_center_crop", True):
            cs = cfg.get("crop_size")
            crop = _pair(cs) if isinstance(cs, int) else (int(cs["height"]), int(cs["width"]))
        if not cfg.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean = tuple(float(m) for m in cfg.get("image_mean", OPENAI_CLIP_MEAN))
            std = tuple(float(s) for s in cfg.get("image_std", OPENAI_CLIP_STD))
        resample = cfg.get("resample", 3)
        interpolation = _PIL_RESAMPLE.get(int(resample), None) if not isinstance(resample, str) else resample
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"unsupported resample {resample!r}")
        return cls(
            shortest_edge=shortest,
            resize_to=resize_to,
            crop=crop,
            mean=mean,
            std=std,
            interpolation=interpolation,
            crop_rounding="floor",
        )

    @classmethod
    def from_open_clip_cfg(cls, cfg: dict) -> ClipPreprocess:
        """Read an open_clip ``preprocess_cfg`` (size, mean, std, interpolation, resize_mode)."""
        size = _pair(cfg.get("size", 224))
        mode = cfg.get("resize_mode", "shortest")
        interpolation = cfg.get("interpolation", "bicubic")
        if interpolation not in ("bicubic", "bilinear"):
            interpolation = "bicubic"  # open_clip maps anything else ('random') to bicubic at eval
        mean = tuple(float(m) for m in cfg.get("mean", OPENAI_CLIP_MEAN))
        std = tuple(float(s) for s in cfg.get("std", OPENAI_CLIP_STD))
        if mode == "shortest":
            # open_clip eval: Resize(shortest = size[0] if square) + CenterCrop(size).
            if size[0] != size[1]:
                raise ValueError(f"open_clip 'shortest' resize with a non-square size {size} is not supported")
            return cls(
                shortest_edge=size[0], crop=size, mean=mean, std=std, interpolation=interpolation, crop_rounding="round"
            )
        if mode == "squash":
            return cls(shortest_edge=None, resize_to=size, crop=None, mean=mean, std=std, interpolation=interpolation)
        raise ValueError(f"open_clip resize_mode {mode!r} is not supported on device (only 'shortest' and 'squash')")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) after the resize step, before cropping."""
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is None:
            return (height, width)
        s = self.shortest_edge
        if height <= width:
            return (s, int(s * width / height))
        return (int(s * height / width), s)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float in [0, 1] -> normalised float32 ``(B, 3, h, w)`` on the same device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        x = images.to(torch.float32)
        h, w = x.shape[-2:]
        oh, ow = self.output_size(h, w)
        if (oh, ow) != (h, w):
            if self.interpolation == "nearest":
                x = F.interpolate(x, size=(oh, ow), mode="nearest")
            else:
                x = F.interpolate(x, size=(oh, ow), mode=self.interpolation, align_corners=False, antialias=True)
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        if self.crop is not None:
            x = center_crop(x, self.crop, rounding=self.crop_rounding)
        return (x - _channel_constants(tuple(self.mean), x.device)) / _channel_constants(tuple(self.std), x.device)


@functools.lru_cache(maxsize=64)
def _channel_constants(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a ``(1, C, 1, 1)`` float32 tensor on ``device``, made once per device: made
    per call on a GPU, it is a copy from the host that waits for the scoring stream each time.
    Read only (shared by every call)."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def center_crop(x: torch.Tensor, size: Sequence[int], rounding: str = "floor") -> torch.Tensor:
    """Centre crop the last two dims; zero-pads first if the image is smaller (as torchvision)."""
    ch, cw = _pair(tuple(size))
    h, w = x.shape[-2:]
    if h < ch or w < cw:
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = x.shape[-2:]
    if rounding == "round":
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    elif rounding == "floor":
        top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    else:
        raise ValueError(f"rounding must be 'floor' or 'round', got {rounding!r}")
    return x[..., top : top + ch, left : left + cw]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 with round-half-to-even, as DDPO / Flow-GRPO convert before PIL."""
    return (images.detach().to(torch.float32) * 255).round().clamp(0, 255).to(torch.uint8)
