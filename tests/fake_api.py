"""A lightweight stand-in for `omnidit serve`: the HTTP contract with canned PNG/MP4 bytes.

For fast tests of the demo and its client only; the live-service tests use the real thing.
Behaviour keyed off the prompt, so a test can pick an outcome:
  "fail" in prompt     -> video job ends `failed` with FAIL_MESSAGE
  "forever" in prompt  -> video job stays in_progress until cancelled
Sizes above MAX_SIDE are refused with a 400 naming `size`, like the real service.
"""

from __future__ import annotations

import base64
import io
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

MAX_SIDE = 128
FAIL_MESSAGE = "the sampler diverged (fake failure)"
MODEL_ID = "fake-shapes"
SECOND_MODEL_ID = "fake-shapes-small"  # make_app(models=(MODEL_ID, SECOND_MODEL_ID)): a smaller card


def _err(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
    return JSONResponse({"error": {"message": message, "type": type_, "param": param}}, status_code=status)


def _frames(n: int, w: int, h: int) -> np.ndarray:
    """A white square sliding right on black: uint8 [n, h, w, 3]."""
    f = np.zeros((n, h, w, 3), np.uint8)
    s = max(2, min(w, h) // 4)
    for i in range(n):
        x = int(i * (w - s) / max(1, n - 1))
        f[i, (h - s) // 2:(h + s) // 2, x:x + s] = 255
    return f


def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_frames(1, w, h)[0]).save(buf, format="PNG")
    return buf.getvalue()


def _mp4(frames: int, w: int, h: int) -> bytes:
    from omnidit.generation import write_frames

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.mp4"
        write_frames(_frames(frames, w, h), p, fps=8)
        return p.read_bytes()


def _size(body: dict):
    size = body.get("size", "64x64")
    try:
        w, h = (int(v) for v in str(size).split("x"))
    except ValueError:
        return None, _err(400, f"size must look like WIDTHxHEIGHT, got {size!r}", param="size")
    if not (16 <= w <= MAX_SIDE and 16 <= h <= MAX_SIDE):
        return None, _err(400, f"size must be between 16x16 and {MAX_SIDE}x{MAX_SIDE}, got {size!r}", param="size")
    return (w, h), None


def _card(model: str) -> dict:
    small = model == SECOND_MODEL_ID
    return {"id": model, "object": "model", "owned_by": "omnidit",
            "defaults": {"size": "32x32" if small else "64x64", "steps": 30, "guidance": 4.0, "fps": 8},
            "limits": {"max_size": "64x64" if small else f"{MAX_SIDE}x{MAX_SIDE}", "size_multiple": 16,
                       "max_frames": 17 if small else 33, "frames_multiple": 4},
            "loras": [] if small else ["ink"]}


def make_app(*, api_key: str | None = None, job_seconds: float = 1.0, models: tuple[str, ...] = (MODEL_ID,)) -> FastAPI:
    """`job_seconds`: how long a video job takes from queued to completed; `models`: the served ones (the
    first is the default), a request's `model` must be one of them (404 model_not_found otherwise)."""
    app = FastAPI()
    app.state.jobs = {}  # id -> dict (the public job) plus private keys starting with "_"
    app.state.requests = []  # (method, path, json body) of every POST, for assertions

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if api_key and request.url.path != "/health" and request.headers.get("authorization") != f"Bearer {api_key}":
            return _err(401, "invalid or missing API key", "authentication_error")
        return await call_next(request)

    def public(job: dict) -> dict:
        now = time.monotonic()
        if job["status"] in ("queued", "in_progress"):
            frac = (now - job["_t0"]) / job_seconds
            if job["_forever"]:
                job.update(status="in_progress", progress=min(50, int(frac * 50)))
            elif frac >= 1:
                if job["_fail"]:
                    job.update(status="failed", error={"message": FAIL_MESSAGE, "type": "server_error"})
                else:
                    job.update(status="completed", progress=100)
            elif frac > 0.1:
                job.update(status="in_progress", progress=int(frac * 100))
        return {k: v for k, v in job.items() if not k.startswith("_")}

    app.state.ready = True  # False: /health answers 503 like a service whose replica is still loading

    @app.get("/health")
    def health():
        if not app.state.ready:
            return JSONResponse({"status": "unavailable", "reason": "no generator replica yet"}, status_code=503)
        return {"status": "ok", "model": MODEL_ID}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [_card(m) for m in models]}

    def unknown_model(body: dict):
        if body.get("model") is not None and body["model"] not in models:
            served = ", ".join(repr(m) for m in models)
            return JSONResponse({"error": {"message": f"model {body['model']!r} is not served here; this service "
                                                      f"serves {served}", "type": "invalid_request_error",
                                           "param": "model", "code": "model_not_found"}}, status_code=404)
        return None

    @app.post("/v1/images/generations")
    async def images(request: Request):
        body = await request.json()
        app.state.requests.append(("POST", "/v1/images/generations", body))
        if not str(body.get("prompt", "")).strip():
            return _err(400, "prompt must be a non-empty string", param="prompt")
        (wh, bad) = _size(body)
        if bad or (bad := unknown_model(body)):
            return bad
        png = base64.b64encode(_png(*wh)).decode()
        return {"created": int(time.time()), "data": [{"b64_json": png} for _ in range(int(body.get("n", 1)))]}

    @app.post("/v1/videos", status_code=202)
    async def create_video(request: Request):
        body = await request.json()
        app.state.requests.append(("POST", "/v1/videos", body))
        prompt = str(body.get("prompt", ""))
        if not prompt.strip():
            return _err(400, "prompt must be a non-empty string", param="prompt")
        (wh, bad) = _size(body)
        if bad or (bad := unknown_model(body)):
            return bad
        jid = f"video_{uuid.uuid4().hex[:12]}"
        app.state.jobs[jid] = {
            "id": jid, "object": "video", "status": "queued", "progress": 0, "created_at": int(time.time()),
            "model": body.get("model") or models[0], "prompt": prompt, "size": body.get("size"),
            "frames": body.get("frames", 9), "steps": body.get("steps", 30),
            "_t0": time.monotonic(), "_fail": "fail" in prompt, "_forever": "forever" in prompt, "_wh": wh,
        }
        return JSONResponse(public(app.state.jobs[jid]), status_code=202)

    @app.get("/v1/videos")
    def list_videos():
        return {"object": "list", "data": [public(j) for j in app.state.jobs.values()]}

    @app.get("/v1/videos/{jid}")
    def get_video(jid: str):
        job = app.state.jobs.get(jid)
        return public(job) if job else _err(404, f"no video job {jid!r}", "not_found_error", "id")

    @app.get("/v1/videos/{jid}/content")
    def content(jid: str):
        job = app.state.jobs.get(jid)
        if not job:
            return _err(404, f"no video job {jid!r}", "not_found_error", "id")
        if public(job)["status"] != "completed":
            return _err(409, f"video job {jid!r} is {job['status']}, not completed", "invalid_request_error")
        return Response(_mp4(int(job["frames"] or 9), *job["_wh"]), media_type="video/mp4")

    @app.post("/v1/videos/{jid}/cancel")
    def cancel(jid: str):
        job = app.state.jobs.get(jid)
        if not job:
            return _err(404, f"no video job {jid!r}", "not_found_error", "id")
        if public(job)["status"] in ("completed", "failed"):
            return _err(409, f"video job {jid!r} is already {job['status']}", param="video_id")
        job["status"] = "cancelled"
        return public(job)

    @app.delete("/v1/videos/{jid}")
    def delete(jid: str):
        if app.state.jobs.pop(jid, None) is None:
            return _err(404, f"no video job {jid!r}", "not_found_error", "id")
        return {"id": jid, "object": "video.deleted", "deleted": True}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_fake_api(**kw):
    """Run `make_app(**kw)` with uvicorn in a thread; yields (base_url, app)."""
    import uvicorn

    app = make_app(**kw)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("fake API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        t.join(timeout=5)
