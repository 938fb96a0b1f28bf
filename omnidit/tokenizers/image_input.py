"""Images in: a PIL image, an array or a path -> RGB, fitted to a video size, as a [-1, 1] tensor.

`load_image` is what `Pipeline.generate(..., image=...)` accepts (a bad value raises a
`RequestError` naming the field `image`); `fit_image` + `image_to_video` are how an image becomes
the first frame a video VAE encodes, with the numbers of diffusers' VaeImageProcessor
(`resize(..., resize_mode="crop")` with Lanczos, then `preprocess`: x / 255 * 2 - 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from omnidit.request import RequestError

MAX_IMAGE_PIXELS = 4096 * 4096  # a larger input is refused before it is resized


def load_image(image, field: str = "image"):
    """PIL image | array [H, W] / [H, W, 3|4] (uint8, or float in [0, 1]) | path -> an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        p = Path(image).expanduser()
        if not p.is_file():
            raise RequestError(field, f"{field} path {str(image)!r} is not a file")
        try:
            with Image.open(p) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise RequestError(field, f"{field} {str(image)!r} is not a readable image ({e})") from None
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        image = _array_to_image(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image), field)
    elif not isinstance(image, Image.Image):
        raise RequestError(field, f"{field} must be a PIL image, an array [H, W, 3] or a path, "
                                  f"got {type(image).__name__}")
    if image.width < 1 or image.height < 1 or image.width * image.height > MAX_IMAGE_PIXELS:
        raise RequestError(field, f"{field} must have between 1 and {MAX_IMAGE_PIXELS} pixels, "
                                  f"got {image.width}x{image.height}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_image(a: np.ndarray, field: str):
    from PIL import Image

    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or min(a.shape[:2]) < 1:
        raise RequestError(field, f"{field} array must be [H, W], [H, W, 3] or [H, W, 4], got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise RequestError(field, f"{field} array must be uint8, or float in [0, 1]; got {a.dtype}")
        a = (a * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def fit_image(image, height: int, width: int):
    """Scale `image` (PIL) to cover height x width (Lanczos), keeping its aspect, and crop the centre."""
    from PIL import Image

    if image.width * height < width * image.height:  # relatively taller than the target: match the width
        w, h = width, image.height * width // image.width
    else:
        w, h = image.width * height // image.height, height
    scaled = image.resize((w, h), resample=Image.Resampling.LANCZOS)
    left, top = w // 2 - width // 2, h // 2 - height // 2
    return scaled.crop((left, top, left + width, top + height))


def image_to_video(image) -> torch.Tensor:
    """An RGB PIL image -> a one-frame video [1, 3, 1, H, W] float32 in [-1, 1]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # [H, W, 3]
    return (x.permute(2, 0, 1)[None, :, None] * 2.0 - 1.0).contiguous()  # [1, 3, 1, H, W]
