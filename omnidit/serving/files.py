"""Where outputs live under the data dir, named only by ids this service made.

No path from a request ever reaches the filesystem: an id must match its pattern
(`video_<32 hex>`, `img_<32 hex>`, `input_<32 hex>`) before a path is built from it, and the path is the
data dir + a fixed subfolder + the id + a fixed suffix.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from omnidit.files import write_atomic

VIDEO_ID = re.compile(r"^video_[0-9a-f]{32}$")
IMAGE_ID = re.compile(r"^img_[0-9a-f]{32}$")
INPUT_ID = re.compile(r"^input_[0-9a-f]{32}$")  # a video job's start image (its params' input_reference)


def new_video_id() -> str:
    return "video_" + secrets.token_hex(16)


def new_image_id() -> str:
    return "img_" + secrets.token_hex(16)


def is_video_id(s: str) -> bool:
    return bool(VIDEO_ID.match(s))


def is_image_id(s: str) -> bool:
    return bool(IMAGE_ID.match(s))


def is_input_id(s: str) -> bool:
    return isinstance(s, str) and bool(INPUT_ID.match(s))


IMAGE_SUFFIXES = {".png": "image/png", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class OutputDir:
    """`<data>/videos/<job id>.mp4` (+ `<job id>.thumb.webp`, its first frame) and
    `<data>/images/<image id>.<png|jpeg|webp>`; `<data>/inputs/<input id>.png`, a video job's start image,
    written before the job is queued and removed with it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.videos = self.root / "videos"
        self.images = self.root / "images"
        self.inputs = self.root / "inputs"
        for d in (self.videos, self.images, self.inputs):
            d.mkdir(parents=True, exist_ok=True)

    def video_path(self, job_id: str) -> Path:
        if not is_video_id(job_id):
            raise ValueError(f"not a video job id: {job_id!r}")
        return self.videos / f"{job_id}.mp4"

    def thumbnail_path(self, job_id: str) -> Path:
        return self.video_path(job_id).with_suffix(".thumb.webp")

    def save_thumbnail(self, job_id: str, frame, *, label: dict | None = None) -> None:
        """A video's first frame (uint8 `[H, W, 3]`) as webp, OpenAI's `variant=thumbnail`, carrying
        the video's AIGC label."""
        from omnidit.safety.labels import encode_image

        write_atomic(self.thumbnail_path(job_id), encode_image(frame, "webp", label, quality=90))

    def image_path(self, image_id: str, fmt: str = "png") -> Path:
        if not is_image_id(image_id):
            raise ValueError(f"not an image id: {image_id!r}")
        if "." + fmt not in IMAGE_SUFFIXES:
            raise ValueError(f"not an image format: {fmt!r}")
        return self.images / f"{image_id}.{fmt}"

    def find_image(self, image_id: str) -> tuple[Path, str] | None:
        """(path, media type) of a saved image in whichever format it was made, or None."""
        for suffix, media in IMAGE_SUFFIXES.items():
            path = self.image_path(image_id, suffix[1:])
            if path.is_file():
                return path, media
        return None

    def save_image(self, data: bytes, fmt: str = "png") -> str:
        image_id = new_image_id()
        write_atomic(self.image_path(image_id, fmt), data)
        return image_id

    def input_path(self, input_id: str) -> Path:
        if not is_input_id(input_id):
            raise ValueError(f"not an input image id: {input_id!r}")
        return self.inputs / f"{input_id}.png"

    def save_input(self, png: bytes) -> str:
        input_id = "input_" + secrets.token_hex(16)
        write_atomic(self.input_path(input_id), png)
        return input_id

    def remove_input(self, input_id: str | None) -> None:
        if input_id is not None and is_input_id(input_id):
            self.input_path(input_id).unlink(missing_ok=True)

    def remove_video(self, job_id: str) -> None:
        self.video_path(job_id).unlink(missing_ok=True)
        self.thumbnail_path(job_id).unlink(missing_ok=True)

    def sweep_images(self, older_than_s: float, now: float | None = None) -> int:
        """Delete images and stale temp files older than the retention period (start images go with their job)."""
        cutoff = (time.time() if now is None else now) - older_than_s
        n = 0
        stale = [p for d in (self.videos, self.inputs) for p in d.iterdir() if p.name.startswith(".")]
        for p in list(self.images.iterdir()) + stale:
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink(missing_ok=True)
                    n += 1
            except FileNotFoundError:
                pass
        return n
