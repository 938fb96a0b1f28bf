"""Request bodies (pydantic, strict) and their resolution against the served model's limits.

Two stages: the schema rejects what is wrong for any model (types, unknown fields, hard
caps); `resolve_image`/`resolve_video` then check the model and deployment limits (size
within the model's maximum, frames 1 mod the VAE's temporal ratio, steps <= --max-steps)
and fill in defaults, raising `ApiError(422, param=...)` that names the field.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omnidit.serving.errors import ApiError

from omnidit.request import (  # the request contract's limits, shared with Pipeline and batch lines
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    RequestError,
    check_frames,
    check_side,
    check_steps,
)
from omnidit.request import parse_size as parse_size_text

MAX_N = 8
MAX_SECONDS = 600.0
DEFAULT_SECONDS = 2.0


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to know about the served model (sent by a generator replica)."""

    id: str  # the name clients use in `model`
    name: str  # Pipeline.name (a shipped name or a folder path)
    width: int
    height: int
    max_width: int
    max_height: int
    max_frames: int
    size_multiple: int
    fps: int
    steps: int
    guidance: float
    temporal_ratio: int

    @classmethod
    def from_pipeline(cls, pipe) -> "ModelInfo":
        c = pipe.config
        return cls(id=Path(str(pipe.name)).name, name=str(pipe.name), width=c.width, height=c.height,
                   max_width=c.max_width, max_height=c.max_height, max_frames=c.max_frames,
                   size_multiple=c.size_multiple, fps=c.fps, steps=c.steps, guidance=float(c.guidance),
                   temporal_ratio=int(pipe.vae.temporal_ratio))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class _Body(BaseModel):
    # strict: "3" is not an integer and true is not 1; unknown fields are an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("prompt", check_fields=False)
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must contain non-whitespace text")
        return v


class ImageRequest(_Body):
    """`POST /v1/images/generations` (OpenAI-shaped)."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(1, ge=1, le=MAX_N, description="images to generate")
    size: str | None = Field(None, description="WIDTHxHEIGHT, multiples of 16 within the model's maximum; "
                                               "default: the model's default size", examples=["32x32"])
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="image i of n uses seed + i")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="default: the model's own")
    guidance: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = Field(None, description="must name the served model when given")
    user: str | None = Field(None, max_length=256, description="accepted for OpenAI compatibility; unused")


class VideoRequest(_Body):
    """`POST /v1/videos`: creates a job; give `frames` or `seconds` (not both)."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    size: str | None = Field(None, examples=["32x32"])
    frames: int | None = Field(None, ge=1, le=4096, description="1 mod 4 (5, 9, 17, ...)")
    seconds: float | None = Field(None, gt=0.0, le=MAX_SECONDS, description="converted to the nearest valid frames")
    fps: int | None = Field(None, ge=1, le=120, description="default: the model's fps")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    user: str | None = Field(None, max_length=256)


def check_model(requested: str | None, info: ModelInfo) -> None:
    if requested is not None and requested not in (info.id, info.name):
        raise ApiError(404, f"model {requested!r} is not served here; this service serves {info.id!r}",
                       param="model", code="model_not_found")


def parse_size(size: str | None, info: ModelInfo) -> tuple[int, int]:
    """`"WxH"` -> (width, height), checked against the model; None -> the model's default size."""
    if size is None:
        return info.width, info.height
    try:
        w, h = parse_size_text(size)
        check_side("width", w, info.size_multiple, info.max_width)
        check_side("height", h, info.size_multiple, info.max_height)
    except RequestError as e:
        raise ApiError(422, f"size {size!r}: {e}", param="size", code="invalid_value") from None
    return w, h


def request_error(e: RequestError) -> ApiError:
    """A request-contract error as the API's 422, `param` named by the field it carries."""
    param = {"width": "size", "height": "size"}.get(e.field, e.field)
    return ApiError(422, str(e), param=param, code="invalid_value")


def frames_for_seconds(seconds: float, fps: int, temporal_ratio: int) -> int:
    """Nearest frame count 1 mod `temporal_ratio` to seconds * fps (at least 1 + temporal_ratio)."""
    k = max(1, round((seconds * fps - 1) / temporal_ratio))
    return 1 + temporal_ratio * k


def _steps(steps: int | None, info: ModelInfo, max_steps: int) -> int:
    steps = info.steps if steps is None else steps
    try:
        return check_steps(steps, max_steps)
    except RequestError as e:
        raise ApiError(422, f"{e} on this service", param="steps", code="invalid_value") from None


def resolve_image(req: ImageRequest, info: ModelInfo, *, max_images: int, max_steps: int) -> dict:
    """The generator payload for an image request: every default filled in."""
    check_model(req.model, info)
    if req.n > max_images:
        raise ApiError(422, f"n must be in [1, {max_images}] on this service, got {req.n}", param="n",
                       code="invalid_value")
    width, height = parse_size(req.size, info)
    return {"prompt": req.prompt, "n": req.n, "width": width, "height": height,
            "steps": _steps(req.steps, info, max_steps),
            "guidance": info.guidance if req.guidance is None else req.guidance,
            "negative_prompt": req.negative_prompt, "seed": req.seed}


def resolve_video(req: VideoRequest, info: ModelInfo, *, max_steps: int) -> dict:
    """The job parameters of a video request; the seed is fixed now so a retried job gives the same video."""
    check_model(req.model, info)
    width, height = parse_size(req.size, info)
    fps = info.fps if req.fps is None else req.fps
    t = info.temporal_ratio
    if req.frames is not None and req.seconds is not None:
        raise ApiError(422, "give frames or seconds, not both", param="seconds", code="invalid_value")
    if req.frames is not None:
        frames, param = req.frames, "frames"
        try:
            check_frames(frames, t)
        except RequestError as e:
            raise request_error(e) from None
    elif req.seconds is not None:
        frames, param = frames_for_seconds(req.seconds, fps, t), "seconds"
    else:  # default: about DEFAULT_SECONDS, shortened to the longest the model allows
        longest = 1 + t * ((info.max_frames - 1) // t)
        frames, param = min(frames_for_seconds(DEFAULT_SECONDS, fps, t), longest), "seconds"
    if frames > info.max_frames:
        top = (info.max_frames - 1) / fps
        raise ApiError(422, f"{param}: at most {info.max_frames} frames ({top:.2f} s at {fps} fps) for this model, "
                            f"got {frames} frames", param=param, code="invalid_value")
    return {"width": width, "height": height, "frames": frames, "fps": fps,
            "steps": _steps(req.steps, info, max_steps),
            "guidance": info.guidance if req.guidance is None else req.guidance,
            "negative_prompt": req.negative_prompt,
            "seed": random.randrange(MAX_SEED) if req.seed is None else req.seed}


# -- response shapes (for the OpenAPI docs; routes return plain dicts of these shapes) --------------

class ImageData(BaseModel):
    b64_json: str | None = Field(None, description="PNG, base64 (response_format=b64_json)")
    url: str | None = Field(None, description="GET it with the same bearer token (response_format=url)")
    seed: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class VideoJob(BaseModel):
    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    progress: int = Field(description="0-100, updated every denoising step")
    created_at: int
    started_at: int | None
    completed_at: int | None
    finished_at: int | None
    expires_at: int = Field(description="the job and its output are deleted after this time")
    prompt: str
    size: str
    frames: int
    fps: int
    seconds: float
    seed: int
    steps: int
    guidance: float
    negative_prompt: str | None
    attempts: int = Field(description="replicas that started this job (>1 after a replica died)")
    error: dict | None = Field(description="{code, message} when failed")


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoJob]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
