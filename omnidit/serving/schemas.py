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
from omnidit.request import parse_cache, parse_loras
from omnidit.request import parse_size as parse_size_text

MAX_N = 8
IMAGE_FORMATS = ("png", "jpeg", "webp")  # output_format values honoured; media types in MEDIA_TYPES
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_SECONDS = 600.0
DEFAULT_SECONDS = 2.0
CACHE_FIELD = ('step caching: "fbcache", "teacache" or "magcache", optionally ":<threshold>"; "none" turns off '
               "the model's default; teacache and magcache need the model's calibration (omnidit calibrate-cache)")
LORA_FIELD = ('LoRA adapters for this request, {"name": scale} (GET /v1/models lists the names; scale in [-10, 10], '
              "0 = off); default: none")


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
    takes_image: bool = True  # a start image (input_reference) is accepted: Pipeline.takes_image
    needs_image: bool = False  # an image-to-video-only model (a HunyuanVideo-1.5 i2v folder): Pipeline.needs_image

    @classmethod
    def from_pipeline(cls, pipe) -> "ModelInfo":
        c = pipe.config
        return cls(id=Path(str(pipe.name)).name, name=str(pipe.name), width=c.width, height=c.height,
                   max_width=c.max_width, max_height=c.max_height, max_frames=c.max_frames,
                   size_multiple=c.size_multiple, fps=c.fps, steps=c.steps, guidance=float(c.guidance),
                   temporal_ratio=int(pipe.vae.temporal_ratio), takes_image=bool(pipe.takes_image),
                   needs_image=bool(pipe.needs_image))

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
    cache: str | None = Field(None, description=CACHE_FIELD, examples=["fbcache", "teacache:0.15"])
    lora: dict[str, float] | None = Field(None, description=LORA_FIELD, examples=[{"style": 0.8}])
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = Field(None, description="one of the served models (GET /v1/models); default: the first")
    # OpenAI's images fields (README "Using the OpenAI Python client" has the honoured/ignored/refused table).
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] = Field(
        "png", description="png, jpeg or webp (gif and svg are refused with 422)")
    output_compression: int | None = Field(None, ge=0, le=100,
                                           description="jpeg/webp quality 0-100 (default 90); ignored for png")
    stream: bool = Field(False, description="answer Server-Sent Events: partial_images previews, then the image")
    partial_images: int | None = Field(None, ge=0, le=3, description="previews streamed before the image (stream)")
    background: Literal["transparent", "opaque", "auto"] | None = Field(
        None, description="opaque or auto; transparent is refused with 422")
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"] | None = Field(
        None, description="accepted and ignored (use steps)")
    moderation: Literal["low", "auto"] | None = Field(
        None, description="the content policy's strictness when the service runs one (--moderation): auto (default) "
                          "enforces all of it, low skips the policy's low.allow categories and uses its low.thresholds")
    style: Literal["vivid", "natural"] | None = Field(None, description="accepted and ignored")
    complexity: Literal["low", "medium", "high"] | None = Field(None, description="accepted and ignored")
    frame_count: int | None = Field(None, description="animated images are refused with 422: use /v1/videos")
    frame_duration_ms: int | None = Field(None, description="animated images are refused with 422: use /v1/videos")
    svg: dict | None = Field(None, description="refused with 422")
    user: str | None = Field(None, max_length=256, description="accepted for OpenAI compatibility; unused")
    safety_identifier: str | None = Field(None, max_length=256, description="accepted and ignored")


class VideoRequest(_Body):
    """`POST /v1/videos`: creates a job; give `frames` or `seconds` (not both)."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    size: str | None = Field(None, examples=["32x32"])
    frames: int | None = Field(None, ge=1, le=4096, description="1 mod 4 (5, 9, 17, ...)")
    seconds: float | str | None = Field(None, description="a number or a numeric string (OpenAI sends \"4\"), "
                                                      f"in (0, {MAX_SECONDS:g}]; converted to the nearest valid frames")
    fps: int | None = Field(None, ge=1, le=120, description="default: the model's fps")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    cache: str | None = Field(None, description=CACHE_FIELD, examples=["fbcache", "magcache:0.1"])
    lora: dict[str, float] | None = Field(None, description=LORA_FIELD, examples=[{"style": 0.8}])
    model: str | None = Field(None, description="one of the served models (GET /v1/models); default: the first")
    user: str | None = Field(None, max_length=256)
    input_reference: str | dict | None = Field(
        None, description="the start image of an image-to-video job: a file upload (multipart, as the openai client "
                          "sends it) or a data URL \"data:image/png;base64,...\" (also as {\"image_url\": ...}); "
                          "the video's first frame, fitted to size (scaled to cover, centre-cropped); needs frames > 1; "
                          "no http(s) URLs or file ids", examples=["data:image/png;base64,iVBORw0KGgo..."])

    @field_validator("seconds")
    @classmethod
    def _seconds(cls, v):
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f'must be a number of seconds such as "4", got {v!r}') from None
        if v is not None and not (0 < v <= MAX_SECONDS):  # also rejects nan
            raise ValueError(f"must be in (0, {MAX_SECONDS:g}] seconds, got {v!r}")
        return v


def pick_model(requested: str | None, served: list[ModelInfo]) -> int:
    """Index of the served model a request's `model` names (by id or by the name it was served as);
    None picks the first. Another name is a 404 `model_not_found` listing the served ones."""
    if requested is None:
        return 0
    for i, info in enumerate(served):
        if requested in (info.id, info.name):
            return i
    names = ", ".join(repr(info.id) for info in served)
    raise ApiError(404, f"model {requested!r} is not served here; this service serves {names}",
                   param="model", code="model_not_found")


def check_model(requested: str | None, info: ModelInfo) -> None:
    pick_model(requested, [info])


def parse_size(size: str | None, info: ModelInfo) -> tuple[int, int]:
    """`"WxH"` -> (width, height), checked against the model; None -> the model's default size."""
    if size is None or size == "auto":
        return info.width, info.height
    try:
        w, h = parse_size_text(size)
        check_side("width", w, info.size_multiple, info.max_width)
        check_side("height", h, info.size_multiple, info.max_height)
    except RequestError as e:
        raise ApiError(422, f"size {size!r}: {e} (allowed: \"auto\" = {info.width}x{info.height}, or WIDTHxHEIGHT "
                            f"with sides multiples of {info.size_multiple} up to {info.max_width}x{info.max_height})",
                       param="size", code="invalid_value") from None
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


def resolve_image(req: ImageRequest, info: ModelInfo, *, max_images: int, max_steps: int,
                  loras: list[str] | None = None) -> dict:
    """The generator payload for an image request: every default filled in (`loras`: the adapters served)."""
    check_model(req.model, info)
    if info.needs_image:
        raise _refuse("model", f"model {info.id!r} is image-to-video only: use POST /v1/videos with an "
                               "input_reference")
    if req.n > max_images:
        raise ApiError(422, f"n must be in [1, {max_images}] on this service, got {req.n}", param="n",
                       code="invalid_value")
    _refuse_image_fields(req)
    width, height = parse_size(req.size, info)
    return {"prompt": req.prompt, "n": req.n, "width": width, "height": height,
            "steps": _steps(req.steps, info, max_steps),
            "guidance": info.guidance if req.guidance is None else req.guidance,
            "negative_prompt": req.negative_prompt, "seed": req.seed, "cache": _cache(req.cache),
            "lora": _lora(req.lora, loras),
            "output_format": req.output_format, "output_compression": req.output_compression,
            "partial_images": (1 if req.partial_images is None else req.partial_images) if req.stream else 0}


def _cache(spec: str | None) -> str | None:
    """A request's cache SPEC in one spelling ("fbcache" -> "fbcache:0.1"), so equal settings batch together."""
    try:
        parsed = parse_cache(spec)
    except RequestError as e:
        raise request_error(e) from None
    return None if parsed is None else str(parsed)


def _lora(spec: dict | None, available: list[str] | None) -> dict[str, float]:
    """A request's adapters as {name: scale} in one spelling (sorted, zero scales dropped, {}: none), so equal
    sets batch together; a name not served is a 404 naming the field and the adapters there are."""
    missing = sorted(set(spec or {}) - set(available or []))
    if missing:
        have = ", ".join(repr(n) for n in available or []) or "none (start the service with --lora-dir DIR)"
        raise ApiError(404, f"lora: no adapter {missing[0]!r} here; available: {have}", param="lora",
                       code="lora_not_found")
    try:
        return parse_loras(spec or {})
    except RequestError as e:
        raise request_error(e) from None


def _refuse(param: str, message: str) -> ApiError:
    return ApiError(422, f"{param}: {message}", param=param, code="unsupported_value")


def _refuse_image_fields(req: ImageRequest) -> None:
    """The OpenAI fields this service accepts but cannot honour: a 422 naming the field."""
    if req.output_format not in IMAGE_FORMATS:
        raise _refuse("output_format", f"must be one of {', '.join(IMAGE_FORMATS)}, got {req.output_format!r}")
    if req.background == "transparent":
        raise _refuse("background", "the model draws opaque images; use opaque or auto")
    for field in ("frame_count", "frame_duration_ms"):
        if getattr(req, field) is not None:
            raise _refuse(field, "animated images are not generated here; create a video with POST /v1/videos")
    if req.svg is not None:
        raise _refuse("svg", "SVG authoring is not supported; output_format must be png, jpeg or webp")
    if req.stream and req.n != 1:
        raise _refuse("n", f"stream=true generates one image (n=1), got n={req.n}")


def resolve_video(req: VideoRequest, info: ModelInfo, *, max_steps: int, loras: list[str] | None = None) -> dict:
    """The job parameters of a video request; the seed is fixed now so a retried job gives the same video."""
    check_model(req.model, info)
    if req.input_reference is not None and not info.takes_image:
        raise _refuse("input_reference", f"model {info.id!r} takes no start image (it is text-to-video only)")
    if req.input_reference is None and info.needs_image:
        raise _refuse("input_reference", f"model {info.id!r} is image-to-video: send its start image")
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
    if req.input_reference is not None and frames == 1:
        raise _refuse("input_reference", "the start image is a video's first frame: ask for frames > 1 "
                                         "(or a still image from POST /v1/images/generations)")
    return {"width": width, "height": height, "frames": frames, "fps": fps,
            "steps": _steps(req.steps, info, max_steps),
            "guidance": info.guidance if req.guidance is None else req.guidance,
            "negative_prompt": req.negative_prompt, "cache": _cache(req.cache), "lora": _lora(req.lora, loras),
            "seed": random.randrange(MAX_SEED) if req.seed is None else req.seed}


# -- response shapes (for the OpenAPI docs; routes return plain dicts of these shapes) --------------

class ImageData(BaseModel):
    b64_json: str | None = Field(None, description="the image in output_format, base64 (response_format=b64_json)")
    url: str | None = Field(None, description="GET it with the same bearer token (response_format=url)")
    seed: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    size: str = Field(description="WIDTHxHEIGHT of every image")
    output_format: Literal["png", "jpeg", "webp"]
    background: Literal["opaque"] = "opaque"
    quality: None = Field(None, description="always null: quality is accepted and ignored")


class ImageStreamEvent(BaseModel):
    """One Server-Sent Event of `stream: true` (`event: <type>` then `data: <this object>`): `partial_images`
    previews of the denoiser's clean-image estimate at evenly spaced steps, then the image."""

    type: Literal["image_generation.partial_image", "image_generation.completed"]
    b64_json: str
    created_at: int
    size: str
    output_format: Literal["png", "jpeg", "webp"]
    background: Literal["opaque"] = "opaque"
    quality: Literal["auto"] = "auto"
    partial_image_index: int | None = Field(None, description="0, 1, ... (partial_image events only)")
    step: int = Field(description="denoising steps done when this image was decoded")
    seed: int
    usage: dict | None = Field(None, description="token counts, all 0 (completed event only)")


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
    cache: str | None = Field(None, description="the step-cache SPEC the job runs with (null: the model's default)")
    lora: dict[str, float] = Field(default_factory=dict, description="the LoRA adapters the job runs with ({}: none)")
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
