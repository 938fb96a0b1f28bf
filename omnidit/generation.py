"""`Generation`: the frames a pipeline made, and how to write them to disk."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omnidit.files import atomic_path
from omnidit.safety import labels

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4", ".gif")


@dataclass
class Generation:
    """uint8 frames `[F, H, W, 3]` plus what made them."""

    frames: np.ndarray
    fps: int = 8
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.frames
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [F, H, W, 3], got {f.dtype} {tuple(f.shape)}")

    @property
    def is_video(self) -> bool:
        return self.frames.shape[0] > 1

    def save(self, path: str | os.PathLike) -> Path:
        """Write `.png` (one frame) or `.mp4`/`.gif` (any number), atomically (temp file + rename).
        Every file carries the implicit AIGC label (omnidit/safety/labels.py): `info["aigc"]` when set
        (the service sets producer and ProduceID), else one naming `info["model"]` with a ProduceID hashed from the content."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            raise ValueError(f"output suffix {suffix!r} not supported; use one of {IMAGE_SUFFIXES + VIDEO_SUFFIXES}")
        if suffix in IMAGE_SUFFIXES and self.is_video:
            raise ValueError(f"{self.frames.shape[0]} frames cannot be saved as {suffix}; use .mp4 or .gif")
        with atomic_path(path) as tmp:
            write_frames(self.frames, tmp, fps=self.fps, label=self.label())
        return path

    def label(self) -> dict:
        """The implicit AIGC label its files carry."""
        if "aigc" not in self.info:
            # ProduceID from the content: unique per output, yet the same output saved twice (a resumed
            # batch job) gives the same bytes.
            produce_id = labels.content_id(self.frames, sorted(self.info.items()))
            self.info["aigc"] = labels.aigc_label(model=self.info.get("model"), produce_id=produce_id)
        return self.info["aigc"]

    def to_bytes(self, fmt: str) -> bytes:
        """Encode to `png`, `mp4` or `gif` bytes (for HTTP responses)."""
        with tempfile.TemporaryDirectory() as d:
            p = self.save(Path(d) / f"out.{fmt}")
            return p.read_bytes()


def write_frames(frames: np.ndarray, path: str | os.PathLike, *, fps: int = 8, label: dict | None = None) -> None:
    """`label`: the implicit AIGC label to write in the file's metadata (None: none)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        labels.save_image(frames[0], path, suffix[1:], label)
    elif suffix == ".gif":
        labels.save_gif(frames, path, fps, label)
    elif suffix == ".mp4":
        import imageio.v2 as imageio

        # libx264 with yuv420p needs even sides; macro_block_size=1 keeps the exact size when already even.
        h, w = frames.shape[1:3]
        if h % 2 or w % 2:
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        writer = imageio.get_writer(
            path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=9,
            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
            output_params=labels.mp4_output_params(label),
        )
        try:
            for f in frames:
                writer.append_data(f)
        finally:
            writer.close()
    else:
        raise ValueError(f"output suffix {suffix!r} not supported")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read an `.mp4`/`.gif`/`.png` back to uint8 `[F, H, W, 3]` (used by tests and eval)."""
    import imageio.v2 as imageio

    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))[None]
    return np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(path, memtest=False)])
