"""A small HTTP client for the omnidit service's OpenAI-shaped API, with typed errors.

The demo talks to the service only through this module. Every failure becomes an
`ApiError` whose `message` is fit to show a user as is: the service's own error message
for an HTTP error, "service unreachable at URL" when nothing answers.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TERMINAL_STATUSES = ("completed", "failed", "cancelled")


class ApiError(Exception):
    """An error the service reported (`{"error": {"message", "type", "param"}}`), or a transport failure."""

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status  # HTTP status; None when no response came back
        self.type = type
        self.param = param


class ServiceUnreachable(ApiError):
    """No HTTP answer at all: connection refused, DNS failure, timeout."""


class AuthError(ApiError):
    """401/403: the API key is missing or wrong."""


class NotFound(ApiError):
    """404: e.g. an unknown or expired video job id."""


class BadRequest(ApiError):
    """400/413/422: the request itself was rejected; `param` names the field when the service says."""


class Busy(ApiError):
    """409/429: the service is at capacity or the job is in the wrong state."""


_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 401: AuthError, 403: AuthError, 404: NotFound,
                                         409: Busy, 413: BadRequest, 422: BadRequest, 429: Busy}


@dataclass(frozen=True)
class VideoJob:
    """One video job as the service reports it (`object: "video"`)."""

    id: str
    status: str  # queued | in_progress | completed | failed | cancelled
    progress: float  # 0..100
    error: str | None = None  # the failure message when status == "failed"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "VideoJob":
        if not isinstance(d, dict) or "id" not in d or "status" not in d:
            raise ApiError(f"service returned a malformed video job: {str(d)[:200]}")
        err = d.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        return cls(id=str(d["id"]), status=str(d["status"]), progress=float(d.get("progress") or 0),
                   error=err if err else None, raw=d)


def image_data_url(image: str | os.PathLike | bytes) -> str:
    """A start image (a path or the file's bytes) as a `data:image/...;base64,` URL; ValueError if unreadable."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        try:
            image = Path(image).read_bytes()
        except OSError as e:
            raise ValueError(f"start image {str(image)!r} cannot be read ({e.strerror})") from None
    try:
        with Image.open(io.BytesIO(image)) as im:
            kind = Image.MIME.get(im.format or "", "application/octet-stream")
    except (UnidentifiedImageError, OSError):
        raise ValueError("the start image is not a readable image file (png, jpeg, webp, ...)") from None
    return f"data:{kind};base64," + base64.b64encode(image).decode("ascii")


def parse_size(size: str) -> tuple[int, int]:
    """"WxH" -> (width, height); ValueError naming the field otherwise."""
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except (ValueError, AttributeError):
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 256x256), got {size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return w, h


class OmniClient:
    """Synchronous client for one service URL. Cheap to create; holds one connection pool."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 300.0,
                 connect_timeout: float = 5.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"api url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Image generation blocks for the whole denoise, so the read timeout is long; connect is short
        # so a dead service is reported quickly.
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(timeout, connect=connect_timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "OmniClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise ServiceUnreachable(f"service at {self.base_url} did not answer in time") from None
        except httpx.TransportError:
            raise ServiceUnreachable(f"service unreachable at {self.base_url}") from None
        if r.status_code >= 400:
            raise _error_from(r)
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        r = self._request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise ApiError(f"service returned non-JSON for {method} {path}", status=r.status_code) from None

    # -- endpoints --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """GET /health; a 503 (no generator replica answers yet) becomes an ApiError saying so."""
        try:
            return self._json("GET", "/health")
        except ApiError as e:
            if e.status == 503:
                raise ApiError(f"service at {self.base_url} is not ready: {e.message}", status=503) from None
            raise

    def models(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/models").get("data", []))

    def generate_images(self, prompt: str, *, size: str, n: int = 1, seed: int | None = None,
                        steps: int | None = None, guidance: float | None = None,
                        negative_prompt: str | None = None, model: str | None = None,
                        lora: dict[str, float] | None = None, cache: str | None = None) -> list[bytes]:
        """POST /v1/images/generations with response_format b64_json; returns the PNG bytes of each image.
        `model`: one of `models()` (None: the service's default); `lora`: {adapter: scale} of its card's loras;
        `cache`: a step-cache SPEC ("none", "fbcache", "teacache", "magcache", optionally ":<threshold>")."""
        body = _drop_none(prompt=prompt, n=n, size=size, seed=seed, steps=steps, guidance=guidance,
                          negative_prompt=negative_prompt, response_format="b64_json", model=model, lora=lora,
                          cache=cache)
        data = self._json("POST", "/v1/images/generations", json=body).get("data") or []
        try:
            return [base64.b64decode(item["b64_json"]) for item in data]
        except (KeyError, TypeError, ValueError):
            raise ApiError("service returned images without b64_json data") from None

    def create_video(self, prompt: str, *, size: str, frames: int | None = None, fps: int | None = None,
                     seed: int | None = None, steps: int | None = None, guidance: float | None = None,
                     negative_prompt: str | None = None, model: str | None = None,
                     lora: dict[str, float] | None = None, cache: str | None = None,
                     image: str | os.PathLike | bytes | None = None) -> VideoJob:
        """POST /v1/videos. `image`: a start image (a file path or its bytes) for image-to-video, sent as the
        `input_reference` data URL."""
        body = _drop_none(prompt=prompt, size=size, frames=frames, fps=fps, seed=seed, steps=steps,
                          guidance=guidance, negative_prompt=negative_prompt, model=model, lora=lora, cache=cache,
                          input_reference=None if image is None else image_data_url(image))
        return VideoJob.from_json(self._json("POST", "/v1/videos", json=body))

    def get_video(self, job_id: str) -> VideoJob:
        return VideoJob.from_json(self._json("GET", f"/v1/videos/{job_id}"))

    def list_videos(self) -> list[VideoJob]:
        return [VideoJob.from_json(d) for d in self._json("GET", "/v1/videos").get("data", [])]

    def video_content(self, job_id: str) -> bytes:
        """The finished job's MP4 bytes."""
        return self._request("GET", f"/v1/videos/{job_id}/content").content

    def cancel_video(self, job_id: str) -> VideoJob:
        """POST /v1/videos/{id}/cancel: stops a queued/running job; its record stays (status cancelled)."""
        return VideoJob.from_json(self._json("POST", f"/v1/videos/{job_id}/cancel"))

    def delete_video(self, job_id: str) -> None:
        """DELETE /v1/videos/{id}: removes the job (any status) and its output; it is 404 afterwards."""
        self._json("DELETE", f"/v1/videos/{job_id}")


def _drop_none(**kw) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _error_from(r: httpx.Response) -> ApiError:
    """Turn an error response into the matching ApiError, keeping the service's own words."""
    try:
        body = r.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, type_, param = err.get("message"), err.get("type"), err.get("param")
    else:  # not our error shape: a bare string, /health's {"reason"}, FastAPI's own {"detail"}
        message, type_, param = None, None, None
        for v in ((err, body.get("reason"), body.get("detail")) if isinstance(body, dict) else ()):
            if isinstance(v, str) and v:
                message = v
                break
    if not message:
        text = r.text.strip()[:200]
        message = f"HTTP {r.status_code} {r.reason_phrase}" + (f": {text}" if text else "")
    cls = _BY_STATUS.get(r.status_code, ApiError)
    return cls(str(message), status=r.status_code, type=type_, param=param)
