"""The ingress's logic, behind the HTTP routes: admission, validation, jobs, files, expiry.

It talks to generator replicas through a `GeneratorClient` (a Ray Serve handle in
production, an in-process engine in tests) and owns no model itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Protocol

from omnidit.serving.errors import ApiError
from omnidit.serving.files import OutputDir, is_image_id, is_video_id
from omnidit.serving.jobs import STATUSES, IdempotencyConflict, QueueFull, open_store
from omnidit.serving.metrics import Metrics
from omnidit.serving.schemas import ImageRequest, ModelInfo, VideoRequest, resolve_image, resolve_video
from omnidit.serving.settings import ServeSettings

log = logging.getLogger("omnidit.serving")


class GeneratorClient(Protocol):
    async def images(self, payload: dict) -> dict: ...
    async def info(self) -> dict: ...
    async def health(self) -> dict: ...


class LocalGeneratorClient:
    """An in-process `GeneratorEngine` (no batching across requests): tests and the in-process benchmark."""

    def __init__(self, engine):
        self.engine = engine

    async def images(self, payload: dict) -> dict:
        return (await asyncio.to_thread(self.engine.run_images, [payload]))[0]

    async def info(self) -> dict:
        return self.engine.info.to_dict()

    async def health(self) -> dict:
        return self.engine.health()


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no video job {job_id!r}", param="video_id", code="not_found")


class Service:
    def __init__(self, settings: ServeSettings, generator: GeneratorClient, *, start_sweeper: bool = True):
        self.settings = settings
        self.generator = generator
        self.store = open_store(settings.store_url, retention_s=settings.retention_s,
                                max_attempts=settings.max_attempts)
        self.outputs = OutputDir(settings.data_path)
        self.metrics = Metrics()
        self._info: ModelInfo | None = None
        self._pending_images = 0
        self._image_s = 1.0  # running mean of an image request's time, for Retry-After
        self._stop = threading.Event()
        if start_sweeper:
            threading.Thread(target=self._sweep_loop, name="omnidit-sweeper", daemon=True).start()

    # -- access -------------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), key.encode())

    async def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = ModelInfo.from_dict(await self.generator.info())
        return self._info

    def _prompt(self, prompt: str) -> str:
        return f" prompt={prompt!r}" if self.settings.log_prompts else ""

    # -- images -------------------------------------------------------------------------------
    async def generate_images(self, req: ImageRequest, base_url: str) -> dict:
        info = await self.model_info()
        payload = resolve_image(req, info, max_images=self.settings.max_images, max_steps=self.settings.max_steps)
        if self._pending_images >= self.settings.max_pending_images:
            self.metrics.inc("omnidit_rejected_total", reason="image_queue_full")
            raise ApiError(429, f"{self._pending_images} image requests are already in flight; retry later",
                           code="queue_full", headers={"Retry-After": str(self._retry_after())})
        self._pending_images += 1  # no await between the check and this: the event loop makes it atomic
        t0 = time.perf_counter()
        try:
            result = await self.generator.images(payload)
        finally:
            self._pending_images -= 1
        if "error" in result:
            e = result["error"]
            raise ApiError(e["status"], e["message"], param=e.get("param"),
                           code="invalid_value" if e["status"] < 500 else "generation_failed")
        elapsed = time.perf_counter() - t0
        self._image_s = 0.8 * self._image_s + 0.2 * elapsed
        self.metrics.inc("omnidit_images_generated_total", len(result["images"]))
        self.metrics.observe("omnidit_step_seconds", result["denoise_s"], count=result["steps"], kind="image")
        self.metrics.observe("omnidit_image_batch_size", result["batch"])
        log.info("images n=%d %dx%d steps=%d batch=%d in %.2fs%s", req.n, payload["width"], payload["height"],
                 payload["steps"], result["batch"], elapsed, self._prompt(req.prompt))
        data = []
        for png, seed in zip(result["images"], result["seeds"]):
            if req.response_format == "url":
                image_id = await asyncio.to_thread(self.outputs.save_image, png)
                data.append({"url": f"{base_url.rstrip('/')}/v1/images/files/{image_id}", "seed": seed})
            else:
                data.append({"b64_json": base64.b64encode(png).decode("ascii"), "seed": seed})
        return {"created": int(time.time()), "data": data}

    def _retry_after(self) -> int:
        wait = self._image_s * self._pending_images / max(1, self.settings.replicas * self.settings.max_batch_size)
        return int(min(60, max(1, math.ceil(wait))))

    def image_file(self, image_id: str) -> Path:
        if not is_image_id(image_id):
            raise ApiError(404, f"no image {image_id!r}", param="image_id", code="not_found")
        path = self.outputs.image_path(image_id)
        if not path.is_file():
            raise ApiError(404, f"no image {image_id!r} (it may have expired)", param="image_id", code="not_found")
        return path

    # -- video jobs ---------------------------------------------------------------------------
    async def create_video(self, req: VideoRequest, idempotency_key: str | None) -> tuple[dict, bool]:
        info = await self.model_info()
        params = resolve_video(req, info, max_steps=self.settings.max_steps)
        if idempotency_key is not None and not (idempotency_key.isprintable() and idempotency_key.strip()):
            raise ApiError(400, "Idempotency-Key must be 1-255 printable characters", param="Idempotency-Key",
                           code="invalid_value")
        # The hash covers the request as sent (not the resolved params, whose seed may be random).
        digest = hashlib.sha256(json.dumps(req.model_dump(), sort_keys=True).encode()).hexdigest()
        try:
            job, created = await asyncio.to_thread(
                self.store.create, req.prompt, params, idempotency_key=idempotency_key, request_hash=digest,
                max_queued=self.settings.max_queued_jobs)
        except IdempotencyConflict:
            raise ApiError(409, "this Idempotency-Key was already used with a different request",
                           param="Idempotency-Key", code="idempotency_conflict") from None
        except QueueFull:
            self.metrics.inc("omnidit_rejected_total", reason="video_queue_full")
            raise ApiError(429, f"{self.settings.max_queued_jobs} video jobs are already queued; retry later",
                           code="queue_full", headers={"Retry-After": "30"}) from None
        if created:
            log.info("job %s queued (%dx%dx%df, %d steps)%s", job.id, params["width"], params["height"],
                     params["frames"], params["steps"], self._prompt(req.prompt))
        return job.to_api(info.id), created

    async def _job(self, job_id: str):
        job = await asyncio.to_thread(self.store.get, job_id) if is_video_id(job_id) else None
        if job is None:
            raise _not_found(job_id)
        return job

    async def get_video(self, job_id: str) -> dict:
        return (await self._job(job_id)).to_api((await self.model_info()).id)

    async def list_videos(self, limit: int, after: str | None, order: str) -> dict:
        if after is not None and not is_video_id(after):
            raise ApiError(422, f"after must be a video job id, got {after!r}", param="after", code="invalid_value")
        try:
            jobs, more = await asyncio.to_thread(self.store.list, limit=limit, after=after, order=order)
        except KeyError:
            raise ApiError(422, f"after: no video job {after!r}", param="after", code="invalid_value") from None
        model = (await self.model_info()).id
        data = [j.to_api(model) for j in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    async def video_file(self, job_id: str) -> Path:
        job = await self._job(job_id)
        if job.status != "completed":
            raise ApiError(409, f"video job {job_id} is {job.status}; its content exists once it is completed",
                           param="video_id", code="not_ready")
        path = self.outputs.video_path(job.id)
        if not path.is_file():
            raise ApiError(404, f"the output of video job {job_id} is gone", param="video_id", code="not_found")
        return path

    async def delete_video(self, job_id: str) -> dict:
        """Queued/running: cancel (the replica stops within one step). Finished: delete record and file."""
        job = await self._job(job_id)
        model = (await self.model_info()).id
        if not job.terminal:
            job = await asyncio.to_thread(self.store.cancel, job_id)
            if job is None:
                raise _not_found(job_id)
            log.info("job %s cancelled", job_id)
            return job.to_api(model)
        await asyncio.to_thread(self.store.delete, job_id)
        await asyncio.to_thread(self.outputs.remove_video, job_id)
        log.info("job %s deleted", job_id)
        return {"id": job_id, "object": "video.deleted", "deleted": True}

    # -- health, metrics, expiry ----------------------------------------------------------------
    async def health(self) -> tuple[int, dict]:
        try:
            gen = await asyncio.wait_for(self.generator.health(), timeout=10)
            info = await self.model_info()
            counts = await asyncio.to_thread(self.store.counts)
        except Exception as e:
            return 503, {"status": "unavailable", "reason": f"{type(e).__name__}: {e}"[:300]}
        return 200, {"status": "ok", "model": info.id, "generator": gen, "jobs": counts,
                     "image_queue_depth": self._pending_images}

    def render_metrics(self) -> str:
        counts, stats = self.store.counts(), self.store.stats()
        gauges = {
            "omnidit_image_queue_depth": [({}, self._pending_images)],
            "omnidit_video_queue_depth": [({}, counts["queued"])],
            "omnidit_video_jobs": [({"status": s}, counts[s]) for s in STATUSES],
        }
        video = [({"kind": "video"}, stats.get("video_steps", 0.0), stats.get("video_step_seconds", 0.0))]
        return self.metrics.render(gauges, {"omnidit_step_seconds": video})

    def sweep(self, now: float | None = None) -> dict:
        """Requeue/fail jobs with dead leases; delete expired jobs with their files, and old images."""
        now = time.time() if now is None else now
        reaped = self.store.reap(now)
        expired = self.store.delete_expired(now)
        for job in expired:
            self.outputs.remove_video(job.id)
        # Outputs whose record is gone (a crash between the two deletes) age out too.
        orphans = 0
        for p in self.outputs.videos.glob("video_*.mp4"):
            if p.stat().st_mtime < now - self.settings.retention_s and self.store.get(p.stem) is None:
                p.unlink(missing_ok=True)
                orphans += 1
        images = self.outputs.sweep_images(self.settings.retention_s, now)
        if expired or orphans or images or any(reaped.values()):
            log.info("sweep: %d jobs expired, %d orphan videos, %d images removed, reaped %s", len(expired),
                     orphans, images, reaped)
        return {"expired": len(expired), "orphans": orphans, "images": images, **reaped}

    def _sweep_loop(self) -> None:
        while True:  # once at start-up, then every sweep_s
            try:
                self.sweep()
            except Exception:
                log.exception("sweep failed")
            if self._stop.wait(self.settings.sweep_s):
                return

    def close(self) -> None:
        self._stop.set()
        self.store.close()
