"""`input_reference` of `POST /v1/videos`: the start image of an image-to-video job.

It arrives as the official client sends it (a multipart file upload, which `api.py` turns into a
data URL) or in JSON as a data URL (`"data:image/png;base64,..."`, also as `{"image_url": ...}`).
The ingress decodes it here (a 422 naming the field for anything unreadable), the service
moderates it, and it is stored as PNG under the data dir (`OutputDir.inputs`), referenced from the
job's params by an id, so a job leased after a restart, or by another replica, still has it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np

from omnidit.serving.errors import ApiError

FIELD = "input_reference"
MAX_INPUT_BYTES = 16 * 1024 * 1024  # an upload (file bytes) larger than this is a 413
DATA_URL = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*(?P<b64>;base64)?,",
    re.ASCII,
)


def _bad(message: str, status: int = 422, code: str = "invalid_value") -> ApiError:
    return ApiError(status, f"{FIELD}: {message}", param=FIELD, code=code)


def data_url(data: bytes, content_type: str | None) -> str:
    """An uploaded file as the data URL it is validated as."""
    if len(data) > MAX_INPUT_BYTES:
        raise _bad(
            f"the image is {len(data)} bytes; the limit is {MAX_INPUT_BYTES}",
            413,
            "body_too_large",
        )
    kind = (
        content_type
        if content_type and DATA_URL.match(f"data:{content_type},")
        else "application/octet-stream"
    )
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def image_bytes(value: str | dict) -> bytes:
    """The file bytes a request's `input_reference` carries (a data URL, or `{"image_url": <data URL>}`)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"image_url", "file_id"})
        if unknown:
            raise _bad(
                f'unknown key {unknown[0]!r}; send {{"image_url": "data:image/png;base64,..."}}'
            )
        if "file_id" in value and "image_url" not in value:
            raise _bad(
                "file ids are not served here; upload the image as a file or send a data: URL"
            )
        value = value["image_url"]
    if not isinstance(value, str):
        raise _bad(
            f"must be a file upload or a data: URL string, got {type(value).__name__}"
        )
    if value.startswith(("http://", "https://")):
        raise _bad(
            "this service fetches no URLs; upload the image as a file or send a data: URL"
        )
    m = DATA_URL.match(value)
    if m is None:
        raise _bad(
            'must be an image file upload or a data URL such as "data:image/png;base64,..."'
        )
    if m["b64"] is None:
        raise _bad("a data URL must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode(value[m.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the data URL's base64 payload does not decode") from None
    if len(data) > MAX_INPUT_BYTES:
        raise _bad(
            f"the image is {len(data)} bytes; the limit is {MAX_INPUT_BYTES}",
            413,
            "body_too_large",
        )
    return data


def decode(value: str | dict) -> np.ndarray:
    """A request's `input_reference` -> uint8 RGB `[H, W, 3]`; a 422 naming the field if it is no image."""
    from PIL import Image, UnidentifiedImageError

    from omnidit.request import RequestError
    from omnidit.tokenizers.image_input import MAX_IMAGE_PIXELS, load_image

    data = image_bytes(value)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # before decoding the pixels
                raise _bad(
                    f"must have at most {MAX_IMAGE_PIXELS} pixels, got {im.width}x{im.height}"
                )
            im.load()
            image = load_image(im.copy(), field=FIELD)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise _bad(f"is not a readable image ({type(e).__name__})") from None
    except RequestError as e:
        raise _bad(str(e)) from None
    return np.asarray(image)


def encode_png(image: np.ndarray) -> bytes:
    """The stored form of a start image: lossless PNG of the decoded RGB pixels (no metadata kept)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
