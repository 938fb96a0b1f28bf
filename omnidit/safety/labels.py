"""AIGC labels (GB 45438-2025): the implicit label in a file's metadata and the explicit one on its pixels.

Implicit: the `AIGC` field, a JSON object with `Label` ("1": AI-generated), `ContentProducer`
(the service provider; `--label-producer`), `ProduceID` (unique per output), `ReservedCode1`
(the producer's reserved field: here `model=<the model's name>`), and `ContentPropagator`,
`PropagateID`, `ReservedCode2` (left empty for whoever distributes the file to fill in).
Where it is written:
- PNG: an iTXt chunk `AIGC` holding the JSON, and XMP (iTXt `XML:com.adobe.xmp`) with TC260's
  property `TC260:AIGC` (namespace `http://www.tc260.org.cn/ns/AIGC/1.0/`) holding the same JSON;
- JPEG and WebP: the same XMP packet (APP1 / the XMP chunk);
- MP4: a container metadata item `AIGC` (QuickTime `mdta` keys, what `ffprobe` and
  `ffmpeg -f ffmetadata` list as the tag `AIGC`);
- GIF: a comment extension `AIGC=<JSON>`.

Explicit: `draw_visible_label` writes a short text in a corner box; its text height is at least
5% of the image's shorter side (the standard's minimum for images).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import struct
import uuid
from pathlib import Path

import numpy as np

KEYS = ("Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator", "PropagateID",
        "ReservedCode2")
XMP_NS = "http://www.tc260.org.cn/ns/AIGC/1.0/"
PNG_XMP_KEY = "XML:com.adobe.xmp"
FRAME_MODES = ("ends", "all")  # visible label on the first and last frames, or on every frame
_XMP_VALUE = re.compile(r"<(?:\w+:)?AIGC>(.*?)</(?:\w+:)?AIGC>|(?:\w+:)?AIGC=\"([^\"]*)\"", re.S)


def content_id(frames, *context) -> str:
    """A ProduceID from an output's content (uint8 frames) and what made it: unique per output,
    yet the same output encoded twice (a resumed batch job, a repeated request) gets the same bytes."""
    import hashlib

    h = hashlib.sha256(frames.tobytes())
    h.update(repr(context).encode())
    return h.hexdigest()[:32]


def aigc_label(*, producer: str = "omnidit", produce_id: str | None = None, model: str | None = None) -> dict:
    """The `AIGC` field of one output (a fresh `ProduceID` unless one is given)."""
    if not isinstance(producer, str) or not producer.strip():
        raise ValueError(f"label producer must be a non-empty string, got {producer!r}")
    return {"Label": "1", "ContentProducer": producer, "ProduceID": produce_id or uuid.uuid4().hex,
            "ReservedCode1": f"model={Path(str(model)).name}" if model else "", "ContentPropagator": "",
            "PropagateID": "", "ReservedCode2": ""}


def label_json(label: dict) -> str:
    return json.dumps({k: str(label.get(k, "")) for k in KEYS}, ensure_ascii=False, separators=(",", ":"))


def xmp_packet(label: dict) -> str:
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:TC260="{XMP_NS}">'
            f'<TC260:AIGC>{html.escape(label_json(label), quote=False)}</TC260:AIGC>'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


# -- writing ------------------------------------------------------------------------------------
def encode_image(frame: np.ndarray, fmt: str, label: dict | None, *, quality: int | None = None) -> bytes:
    """uint8 `[H, W, 3]` -> png/jpeg/webp bytes carrying `label` (None: no label). `quality`: jpeg/webp."""
    buf = io.BytesIO()
    save_image(frame, buf, fmt, label, quality=quality)
    return buf.getvalue()


def save_image(frame: np.ndarray, target, fmt: str, label: dict | None, *, quality: int | None = None) -> None:
    from PIL import Image, PngImagePlugin

    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    image = Image.fromarray(frame)
    if fmt == "png":
        info = None
        if label is not None:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("AIGC", label_json(label))
            info.add_itxt(PNG_XMP_KEY, xmp_packet(label))
        image.save(target, format="PNG", pnginfo=info)
    elif fmt in ("jpeg", "webp"):
        extra = {"quality": 90 if quality is None else int(quality)}
        if label is not None:
            extra["xmp"] = xmp_packet(label).encode("utf-8")
        image.save(target, format=fmt.upper(), **extra)
    else:
        raise ValueError(f"image format must be png, jpeg or webp, got {fmt!r}")


def save_gif(frames: np.ndarray, target, fps: int, label: dict | None) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    extra = {"comment": "AIGC=" + label_json(label)} if label is not None else {}
    images[0].save(target, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0, **extra)


def mp4_output_params(label: dict | None) -> list[str]:
    """ffmpeg arguments writing `label` as the MP4 metadata item `AIGC`."""
    if label is None:
        return []
    return ["-metadata", "AIGC=" + label_json(label), "-movflags", "use_metadata_tags"]


# -- the explicit label -------------------------------------------------------------------------
def draw_visible_label(frames: np.ndarray, text: str, *, which: str = "ends", font: str | None = None,
                       corner: str = "bottom-right") -> np.ndarray:
    """A copy of uint8 `[F, H, W, 3]` with `text` in a dark box in a corner of the first and last
    frames (`which="ends"`) or of every frame (`"all"`). `font`: a TrueType file (needed for CJK text;
    default: Pillow's built-in font)."""
    from PIL import Image, ImageDraw, ImageFont

    if which not in FRAME_MODES:
        raise ValueError(f"visible label frames must be one of {list(FRAME_MODES)}, got {which!r}")
    if corner not in ("bottom-right", "bottom-left", "top-right", "top-left"):
        raise ValueError(f"visible label corner must be bottom-right, bottom-left, top-right or top-left, got {corner!r}")
    if not text or not text.strip():
        raise ValueError("visible label text must be non-empty")
    out = frames.copy()
    h, w = frames.shape[1:3]
    size = max(8, math.ceil(0.05 * min(h, w)))
    face = ImageFont.truetype(font, size) if font else ImageFont.load_default(size)
    idxs = range(len(frames)) if which == "all" else sorted({0, len(frames) - 1})
    for i in idxs:
        image = Image.fromarray(out[i])
        draw = ImageDraw.Draw(image, "RGBA")
        left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
        pad = max(1, size // 4)
        bw, bh = right - left + 2 * pad, bottom - top + 2 * pad
        x = w - bw - pad if corner.endswith("right") else pad
        y = h - bh - pad if corner.startswith("bottom") else pad
        x, y = max(0, x), max(0, y)
        draw.rectangle((x, y, x + bw - 1, y + bh - 1), fill=(0, 0, 0, 160))
        draw.text((x + pad - left, y + pad - top), text, font=face, fill=(255, 255, 255, 255))
        out[i] = np.asarray(image.convert("RGB"))
    return out


# -- reading ------------------------------------------------------------------------------------
def read_label(path: str | os.PathLike) -> dict | None:
    """The `AIGC` field of a png/jpeg/webp/gif/mp4 file, or None when it carries none.
    Raises ValueError for a file that is not one of those formats."""
    path = Path(path)
    head = path.read_bytes()[:16]
    if head[4:8] == b"ftyp":
        return _parse(_mp4_metadata(path).get("AIGC"))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            info = dict(im.info)
            fmt = im.format
    except UnidentifiedImageError:
        raise ValueError(f"{path.name}: not a png, jpeg, webp, gif or mp4 file") from None
    if fmt == "PNG" and "AIGC" in info:
        return _parse(info["AIGC"])
    if fmt == "GIF":
        comment = info.get("comment", b"")
        comment = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
        return _parse(comment[len("AIGC="):]) if comment.startswith("AIGC=") else None
    xmp = info.get(PNG_XMP_KEY) or info.get("xmp")
    if xmp:
        xmp = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
        m = _XMP_VALUE.search(xmp)
        if m:
            return _parse(html.unescape(m.group(1) if m.group(1) is not None else m.group(2)))
    return None


def _parse(value: str | None) -> dict | None:
    if not value:
        return None
    try:
        obj = json.loads(value)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and "Label" in obj else None


def _boxes(data: bytes, start: int, end: int):
    """(type, content start, content end) of the ISO-BMFF boxes in data[start:end]."""
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        hdr = 8
        if size == 1:
            size, hdr = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        if size < hdr or i + size > end:
            return
        yield kind, i + hdr, i + size
        i += size


def _mp4_metadata(path: Path) -> dict[str, str]:
    """QuickTime `mdta` metadata items (moov/meta or moov/udta/meta: keys + ilst) as {key: text}."""
    data = path.read_bytes()
    out: dict[str, str] = {}
    for kind, s, e in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        metas = [(s2, e2) for k2, s2, e2 in _boxes(data, s, e) if k2 == b"meta"]
        for k2, s2, e2 in _boxes(data, s, e):
            if k2 == b"udta":
                metas += [(s3, e3) for k3, s3, e3 in _boxes(data, s2, e2) if k3 == b"meta"]
        for ms, me in metas:
            if data[ms + 4:ms + 8] != b"hdlr":  # a full box (version + flags) in the iTunes style
                ms += 4
            keys: list[str] = []
            items: dict[int, str] = {}
            for k3, s3, e3 in _boxes(data, ms, me):
                if k3 == b"keys":
                    j = s3 + 8  # version/flags, entry count
                    while j + 8 <= e3:
                        size = struct.unpack(">I", data[j:j + 4])[0]
                        if size < 8:
                            break
                        keys.append(data[j + 8:j + size].decode("utf-8", "replace"))
                        j += size
                elif k3 == b"ilst":
                    for k4, s4, e4 in _boxes(data, s3, e3):
                        index = struct.unpack(">I", k4)[0]
                        for k5, s5, e5 in _boxes(data, s4, e4):
                            if k5 == b"data":
                                items[index] = data[s5 + 8:e5].decode("utf-8", "replace")
            for index, value in items.items():
                if 1 <= index <= len(keys):
                    out[keys[index - 1]] = value
    return out
