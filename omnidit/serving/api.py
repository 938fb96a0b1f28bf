"""The HTTP API (FastAPI): thin routes over `Service`. OpenAPI docs at /docs and /openapi.json.

/v1/* needs `Authorization: Bearer <key>` when the service has an API key; /health,
/metrics and the docs do not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import Body, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from omnidit import __version__
from omnidit.serving.errors import ApiError, error_response, install_error_handlers
from omnidit.serving.input_image import MAX_INPUT_BYTES, data_url
from omnidit.serving.metrics import CONTENT_TYPE
from omnidit.serving.openapi import openapi_document
from omnidit.serving.schemas import (
    ErrorResponse,
    ImageRequest,
    ImagesResponse,
    ImageStreamEvent,
    VideoDeleted,
    VideoJob,
    VideoList,
    VideoRequest,
)
from omnidit.serving.service import Service

MAX_BODY_BYTES = 256 * 1024  # a maximal request is ~10 KB of JSON
# POST /v1/videos may carry a start image (input_reference): the image's limit, plus base64 and form overhead
MAX_VIDEO_BODY_BYTES = MAX_BODY_BYTES + MAX_INPUT_BYTES * 4 // 3 + 4096
POLL_AFTER_MS = 500  # `openai-poll-after-ms` on an unfinished job: progress moves every denoising step

VIDEO_ID_PATTERN = r"^video_[0-9a-f]{32}$"  # files.VIDEO_ID


def _errors(*codes: int) -> dict:
    """Error responses of a route under /v1 (401 and 413 apply to all of them: auth and body size)."""
    return {s: {"model": ErrorResponse} for s in sorted({400, 401, 413, *codes})}

DESCRIPTION = """OpenAI-shaped text-to-image and text-to-video over one diffusion transformer.

Images are synchronous (`POST /v1/images/generations`). A video is a durable job:
`POST /v1/videos` answers 202 with a job; poll `GET /v1/videos/{id}` until `completed`,
then fetch `GET /v1/videos/{id}/content`. Errors are `{"error": {message, type, param, code}}`.
"""


def create_app(service: Service) -> FastAPI:
    # /openapi.json is served below: it states this deployment's limits (--max-steps, the model's sizes).
    app = FastAPI(title="omnidit", version=__version__, description=DESCRIPTION, openapi_url=None, docs_url=None,
                  redoc_url=None)
    install_error_handlers(app)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Auth and body size before any route runs; request metrics after."""
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if request.url.path.startswith("/v1/") and not service.authorized(request.headers.get("authorization")):
            response = error_response(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                      code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        elif length is not None and not length.isdigit():
            response = error_response(400, "Content-Length is not a number", code="invalid_header")
        elif length is not None and int(length) > (limit := _body_limit(request)):
            response = error_response(413, f"request body is {length} bytes; the limit is {limit}",
                                      code="body_too_large")
        else:
            try:
                response = await call_next(request)
            except RuntimeError:
                # Starlette raises "No response returned." when the client hung up mid-request:
                # nothing to answer, and not a server error worth a traceback in the log.
                if not await request.is_disconnected():
                    raise
                from starlette.responses import Response

                response = Response(status_code=499)
        route = request.scope.get("route")
        service.metrics.inc("omnidit_http_requests_total", method=request.method,
                            route=getattr(route, "path", "unmatched"), status=str(response.status_code))
        service.metrics.observe("omnidit_http_request_seconds", time.perf_counter() - t0,
                                route=getattr(route, "path", "unmatched"))
        return response

    @app.post("/v1/images/generations", response_model=ImagesResponse, tags=["images"],
              summary="Generate n images (synchronous), or stream previews then the image (stream: true)",
              responses={**_errors(404, 415, 422, 429, 503), 200: {"content": {"text/event-stream": {"schema": {
                  "type": "object", "required": ["event", "data"], "properties": {
                      "event": {"enum": ["image_generation.partial_image", "image_generation.completed", "error"]},
                      "data": {"type": "string", "contentMediaType": "application/json",
                               "contentSchema": {"$ref": "#/components/schemas/ImageStreamEvent"},
                               "description": "ImageStreamEvent; for event: error, the JSON error body"}}}}},
                  "description": "JSON (ImagesResponse); with stream: true, Server-Sent Events (ImageStreamEvent)"}})
    async def create_images(request: Request, body: ImageRequest = Body(...)):
        if body.stream:
            events = await service.stream_images(body)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return JSONResponse(await service.generate_images(body, str(request.base_url)))

    @app.get("/v1/images/files/{image_id}", response_class=FileResponse, responses=_errors(404), tags=["images"],
             summary="An image returned with response_format=url (png, jpeg or webp, as it was asked for)")
    async def get_image(image_id: str = Path(description="img_<32 hex>; any other value is 404")):
        path, media = service.image_file(image_id)
        return FileResponse(path, media_type=media)

    @app.post("/v1/videos", status_code=202, response_model=VideoJob, responses={
                  **_errors(404, 409, 415, 422, 429),
                  200: {"model": VideoJob, "description": "the job an earlier request with this Idempotency-Key made"}},
              tags=["videos"], summary="Create a video job (202); a repeated Idempotency-Key returns the same job (200)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/VideoRequest"}},
                  "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoRequest"}}}}})
    async def create_video(request: Request, idempotency_key: str | None = Header(
            None, alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$",
            description="1-255 printable ASCII characters, not all spaces")):
        job, created = await service.create_video(await _video_request(request), idempotency_key)
        return JSONResponse(job, status_code=202 if created else 200, headers=_poll_headers(job, location=True))

    @app.get("/v1/videos", response_model=VideoList, responses=_errors(422), tags=["videos"],
             summary="List video jobs, newest first (order=asc: oldest); page with after=<last_id>")
    async def list_videos(limit: int = Query(20, ge=1, le=100),
                          after: str | None = Query(None, pattern=VIDEO_ID_PATTERN,
                                                    description="the last_id of the previous page"),
                          order: Literal["asc", "desc"] = Query("desc")):
        return JSONResponse(await service.list_videos(limit, after, order))

    @app.get("/v1/videos/{video_id}", response_model=VideoJob, responses=_errors(404), tags=["videos"],
             summary="A video job: status and progress (openai-poll-after-ms says when to ask again)")
    async def get_video(video_id: str = Path(description="video_<32 hex>; any other value is 404")):
        job = await service.get_video(video_id)
        return JSONResponse(job, headers=_poll_headers(job))

    @app.get("/v1/videos/{video_id}/content", response_class=FileResponse, responses={**_errors(404, 409, 422), 200: {
                 "content": {"video/mp4": {}, "image/webp": {}},
                 "description": "variant=video: the mp4; variant=thumbnail: its first frame (webp)"}},
             tags=["videos"], summary="The finished video (mp4) or its thumbnail; 409 until the job is completed")
    async def get_video_content(video_id: str = Path(description="video_<32 hex>; any other value is 404"),
                                variant: Literal["video", "thumbnail"] = Query("video")):
        path, media = await service.video_file(video_id, variant)
        name = f"{video_id}.mp4" if variant == "video" else f"{video_id}.webp"
        return FileResponse(path, media_type=media, filename=name)

    @app.post("/v1/videos/{video_id}/cancel", response_model=VideoJob, responses=_errors(404, 409),
              tags=["videos"], summary="Cancel a queued/running job; its record stays (status cancelled) until deleted")
    async def cancel_video(video_id: str = Path(description="video_<32 hex>; any other value is 404")):
        return JSONResponse(await service.cancel_video(video_id))

    @app.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=_errors(404), tags=["videos"],
                summary="Delete a job in any status with its output (a running one stops); 404 afterwards")
    async def delete_video(video_id: str = Path(description="video_<32 hex>; any other value is 404")):
        return JSONResponse(await service.delete_video(video_id))

    @app.get("/v1/models", tags=["models"], summary="The served models, the default (first) one first",
             responses=_errors())
    async def list_models():
        loras = service.lora_names()
        return {"object": "list", "data": [_model_card(info, loras) for info in await service.models()]}

    @app.get("/v1/models/{model_id:path}", tags=["models"], summary="One model", responses=_errors(404))
    async def get_model(model_id: str):
        _, info = await service.route(model_id)  # 404 model_not_found naming the served ones
        return _model_card(info, service.lora_names())

    @app.get("/health", tags=["ops"], summary="200 when a generator replica answers, else 503",
             responses={503: {"description": "no generator replica answers (yet)"}})
    async def health():
        status, body = await service.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", tags=["ops"], summary="Prometheus text format", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format 0.0.4"}})
    async def metrics():
        return Response(await asyncio.to_thread(service.render_metrics), media_type=CONTENT_TYPE)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi():
        try:
            infos = await asyncio.wait_for(service.models(), timeout=10)
        except Exception:  # no replica yet: the document without the models' names and sizes
            infos = None
        return JSONResponse(openapi_document(app, service.settings, infos))

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return HTMLResponse(get_swagger_ui_html(openapi_url="/openapi.json", title="omnidit API").body)

    return app


def _poll_headers(job: dict, *, location: bool = False) -> dict[str, str]:
    headers = {"Location": f"/v1/videos/{job['id']}"} if location else {}
    if job["status"] in ("queued", "in_progress"):
        headers["openai-poll-after-ms"] = str(POLL_AFTER_MS)
    return headers


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _body_limit(request: Request) -> int:
    return MAX_VIDEO_BODY_BYTES if request.method == "POST" and request.url.path == "/v1/videos" else MAX_BODY_BYTES


async def _video_request(request: Request) -> VideoRequest:
    """`POST /v1/videos` as JSON or as a form (the official client always sends multipart/form-data,
    with every value a string, and `input_reference` as a file or `input_reference[...]` fields)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in FORM_TYPES:
        try:
            form = await request.form()
        except Exception as e:  # a malformed multipart body
            raise ApiError(400, f"request body is not a valid form: {e}", code="invalid_body") from None
        body: dict = {}
        for key, value in form.multi_items():
            if key == "input_reference":  # the openai client's file upload: checked as a data URL
                body["input_reference"] = value if isinstance(value, str) else data_url(
                    await value.read(MAX_INPUT_BYTES + 1), value.content_type)
                continue
            text = value if isinstance(value, str) else (value.filename or "upload")
            if key.startswith("input_reference[") and key.endswith("]"):  # {"image_url": ...} as form fields
                ref = body.get("input_reference")
                body["input_reference"] = {**(ref if isinstance(ref, dict) else {}), key[16:-1]: text}
            elif not isinstance(value, str):
                raise ApiError(422, f"{key}: must be a text field, got a file upload", param=key, code="invalid_value")
            else:
                body[key] = value
        strict = False  # form values are strings: "5" is the integer 5 here
    elif ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json")):
        try:
            body = await request.json()
        except ValueError as e:
            raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body is not a JSON object; send a JSON object", code="invalid_body")
        strict = True
    else:
        raise ApiError(415, "Content-Type must be application/json or multipart/form-data, got "
                            f"{request.headers.get('content-type')!r}", code="unsupported_media_type")
    try:
        return VideoRequest.model_validate(body, strict=strict)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _model_card(info, loras: list[str]) -> dict:
    return {"id": info.id, "object": "model", "created": 0, "owned_by": "omnidit", "loras": loras,
            "defaults": {"size": f"{info.width}x{info.height}", "steps": info.steps, "guidance": info.guidance,
                         "fps": info.fps},
            "limits": {"max_size": f"{info.max_width}x{info.max_height}", "size_multiple": info.size_multiple,
                       "max_frames": info.max_frames, "frames_multiple": info.temporal_ratio}}
