"""The HTTP API (FastAPI): thin routes over `Service`. OpenAPI docs at /docs and /openapi.json.

/v1/* needs `Authorization: Bearer <key>` when the service has an API key; /health,
/metrics and the docs do not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from omnidit import __version__
from omnidit.serving.errors import error_response, install_error_handlers
from omnidit.serving.metrics import CONTENT_TYPE
from omnidit.serving.schemas import (
    ErrorResponse,
    ImageRequest,
    ImagesResponse,
    VideoDeleted,
    VideoJob,
    VideoList,
    VideoRequest,
)
from omnidit.serving.service import Service

MAX_BODY_BYTES = 256 * 1024  # a maximal request is ~10 KB of JSON

_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 415, 422, 429)}

DESCRIPTION = """OpenAI-shaped text-to-image and text-to-video over one diffusion transformer.

Images are synchronous (`POST /v1/images/generations`). A video is a durable job:
`POST /v1/videos` answers 202 with a job; poll `GET /v1/videos/{id}` until `completed`,
then fetch `GET /v1/videos/{id}/content`. Errors are `{"error": {message, type, param, code}}`.
"""


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="omnidit", version=__version__, description=DESCRIPTION)
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
        elif length is not None and int(length) > MAX_BODY_BYTES:
            response = error_response(413, f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}",
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

    @app.post("/v1/images/generations", response_model=ImagesResponse, responses=_ERRORS, tags=["images"],
              summary="Generate n images (synchronous)")
    async def create_images(request: Request, body: ImageRequest = Body(...)):
        return JSONResponse(await service.generate_images(body, str(request.base_url)))

    @app.get("/v1/images/files/{image_id}", response_class=FileResponse, responses=_ERRORS, tags=["images"],
             summary="An image returned with response_format=url")
    async def get_image(image_id: str):
        return FileResponse(service.image_file(image_id), media_type="image/png")

    @app.post("/v1/videos", status_code=202, response_model=VideoJob, responses=_ERRORS, tags=["videos"],
              summary="Create a video job (202); a repeated Idempotency-Key returns the same job (200)")
    async def create_video(body: VideoRequest = Body(...),
                           idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255)):
        job, created = await service.create_video(body, idempotency_key)
        return JSONResponse(job, status_code=202 if created else 200,
                            headers={"Location": f"/v1/videos/{job['id']}"})

    @app.get("/v1/videos", response_model=VideoList, responses=_ERRORS, tags=["videos"], summary="List video jobs")
    async def list_videos(limit: int = Query(20, ge=1, le=100), after: str | None = Query(None, max_length=64),
                          order: Literal["asc", "desc"] = Query("desc")):
        return JSONResponse(await service.list_videos(limit, after, order))

    @app.get("/v1/videos/{video_id}", response_model=VideoJob, responses=_ERRORS, tags=["videos"],
             summary="A video job: status and progress")
    async def get_video(video_id: str):
        return JSONResponse(await service.get_video(video_id))

    @app.get("/v1/videos/{video_id}/content", response_class=FileResponse, responses=_ERRORS, tags=["videos"],
             summary="The finished video (mp4); 409 until the job is completed")
    async def get_video_content(video_id: str):
        path = await service.video_file(video_id)
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")

    @app.delete("/v1/videos/{video_id}", response_model=VideoJob | VideoDeleted, responses=_ERRORS,
                tags=["videos"], summary="Cancel a queued/running job, or delete a finished one and its output")
    async def delete_video(video_id: str):
        return JSONResponse(await service.delete_video(video_id))

    @app.get("/v1/models", tags=["models"], summary="The served model")
    async def list_models():
        info = await service.model_info()
        return {"object": "list", "data": [_model_card(info)]}

    @app.get("/v1/models/{model_id:path}", tags=["models"], summary="One model")
    async def get_model(model_id: str):
        info = await service.model_info()
        if model_id not in (info.id, info.name):
            return error_response(404, f"model {model_id!r} is not served here", param="model",
                                  code="model_not_found")
        return _model_card(info)

    @app.get("/health", tags=["ops"], summary="200 when a generator replica answers, else 503")
    async def health():
        status, body = await service.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", tags=["ops"], summary="Prometheus text format")
    async def metrics():
        return Response(await asyncio.to_thread(service.render_metrics), media_type=CONTENT_TYPE)

    return app


def _model_card(info) -> dict:
    return {"id": info.id, "object": "model", "created": 0, "owned_by": "omnidit",
            "defaults": {"size": f"{info.width}x{info.height}", "steps": info.steps, "guidance": info.guidance,
                         "fps": info.fps},
            "limits": {"max_size": f"{info.max_width}x{info.max_height}", "size_multiple": info.size_multiple,
                       "max_frames": info.max_frames, "frames_multiple": info.temporal_ratio}}
