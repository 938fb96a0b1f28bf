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
import secrets
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from omnidit.safety import ContentBlocked
from omnidit.serving import content, input_image
from omnidit.serving.errors import ApiError
from omnidit.serving.files import OutputDir, is_image_id, is_video_id
from omnidit.serving.jobs import STATUSES, IdempotencyConflict, QueueFull, open_store
from omnidit.serving.metrics import Metrics
from omnidit.serving.schemas import ImageRequest, ModelInfo, VideoRequest, pick_model, resolve_image, resolve_video
from omnidit.serving.settings import ServeSettings

log = logging.getLogger("omnidit.serving")


class GeneratorClient(Protocol):
    async def images(self, payload: dict) -> dict: ...
    def stream_images(self, payload: dict) -> AsyncIterator[dict]: ...  # engine.run_image_stream's events
    async def info(self) -> dict: ...
    async def health(self) -> dict: ...


class LocalGeneratorClient:
    """An in-process `GeneratorEngine` (no batching across requests): tests and the in-process benchmark."""

    def __init__(self, engine):
        self.engine = engine

    async def images(self, payload: dict) -> dict:
        return (await asyncio.to_thread(self.engine.run_images, [payload]))[0]

    async def stream_images(self, payload: dict) -> AsyncIterator[dict]:
        from omnidit.serving.engine import events_from_thread

        async for event in events_from_thread(lambda emit, stopped: self.engine.run_image_stream(payload, emit,
                                                                                                   stopped)):
            yield event

    async def info(self) -> dict:
        return self.engine.info.to_dict()

    async def health(self) -> dict:
        return self.engine.health()


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no video job {job_id!r}", param="video_id", code="not_found")


class Service:
    def __init__(self, settings: ServeSettings, generators: GeneratorClient | list[GeneratorClient], *,
                 start_sweeper: bool = True):
        """`generators`: one client per served model, in `settings.models` order (the first is the default)."""
        self.settings = settings
        self.generators = list(generators) if isinstance(generators, (list, tuple)) else [generators]
        if len(self.generators) != len(settings.models):
            raise ValueError(f"{len(settings.models)} served models need as many generators, "
                             f"got {len(self.generators)}")
        self.store = open_store(settings.store_url, retention_s=settings.retention_s,
                                max_attempts=settings.max_attempts)
        self.outputs = OutputDir(settings.data_path)
        self.metrics = Metrics()
        self.moderator = content.moderator(settings, "prompt")  # None without --moderation
        self._prompt_key = content.prompt_key(settings) if settings.store_prompts == "hash" else None
        self._infos: list[ModelInfo] | None = None
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

    async def models(self) -> list[ModelInfo]:
        """Every served model's card, in order (asked of their replicas once)."""
        if self._infos is None:
            infos = await asyncio.gather(*(g.info() for g in self.generators))
            self._infos = [ModelInfo.from_dict(d) for d in infos]
        return self._infos

    async def model_info(self) -> ModelInfo:
        """The default (first) model."""
        return (await self.models())[0]

    def lora_names(self) -> list[str]:
        """Adapters requests may name in `lora`: --lora-dir's <name>.safetensors files, listed now."""
        from omnidit.pipeline_lora import lora_names

        return lora_names(self.settings.lora_dir) if self.settings.lora_dir else []

    async def route(self, requested: str | None) -> tuple[GeneratorClient, ModelInfo]:
        """The generator and card of the model a request names (None: the first); else 404 model_not_found."""
        infos = await self.models()
        i = pick_model(requested, infos)
        return self.generators[i], infos[i]

    def _prompt(self, prompt: str) -> str:
        return f" prompt={prompt!r}" if self.settings.log_prompts else ""

    async def _moderate(self, req, request_id: str, level: str | None = None) -> None:
        """The prompt hook: before anything is queued or stored; a blocked prompt is a 400 naming the category.
        In a thread: a classifier's forward must not hold up the event loop."""
        if self.moderator is None:
            return
        try:
            await asyncio.to_thread(self.moderator.check_prompt,
                                    {"prompt": req.prompt, "negative_prompt": req.negative_prompt},
                                    level=level, request_id=request_id)
        except ContentBlocked as e:
            self.metrics.inc("omnidit_rejected_total", reason="content_policy")
            log.info("request %s blocked by the content policy (stage prompt, category %s)", request_id, e.category)
            raise content.blocked_error(e) from None

    async def _start_image(self, req: VideoRequest, request_id: str) -> str | None:
        """A video request's input_reference decoded (422 naming the field), moderated (the input hook) and
        stored under the data dir; its id goes in the job's params. None: the request has none."""
        if req.input_reference is None:
            return None
        image = await asyncio.to_thread(input_image.decode, req.input_reference)
        if self.moderator is not None:
            try:
                await asyncio.to_thread(self.moderator.check_input, image, field=input_image.FIELD, prompt=req.prompt,
                                        request_id=request_id)
            except ContentBlocked as e:
                self.metrics.inc("omnidit_rejected_total", reason="content_policy")
                log.info("request %s blocked by the content policy (stage input, category %s)", request_id,
                         e.category)
                raise content.blocked_error(e) from None
        return await asyncio.to_thread(self.outputs.save_input, input_image.encode_png(image))

    # -- images -------------------------------------------------------------------------------
    def _admit_image(self) -> None:
        if self._pending_images >= self.settings.max_pending_images:
            self.metrics.inc("omnidit_rejected_total", reason="image_queue_full")
            raise ApiError(429, f"{self._pending_images} image requests are already in flight; retry later",
                           code="queue_full", headers={"Retry-After": str(self._retry_after())})
        self._pending_images += 1  # no await between the check and this: the event loop makes it atomic

    async def generate_images(self, req: ImageRequest, base_url: str) -> dict:
        generator, info = await self.route(req.model)
        payload = resolve_image(req, info, max_images=self.settings.max_images, max_steps=self.settings.max_steps,
                                loras=self.lora_names())
        payload["request_id"] = request_id = "req_" + secrets.token_hex(12)
        payload["moderation"] = req.moderation  # OpenAI's field: the policy's strictness (auto | low)
        await self._moderate(req, request_id, req.moderation)
        self._admit_image()
        t0 = time.perf_counter()
        try:
            result = await generator.images(payload)
        finally:
            self._pending_images -= 1
        if "error" in result:
            e = result["error"]
            raise ApiError(e["status"], e["message"], param=e.get("param"),
                           code=e.get("code") or ("invalid_value" if e["status"] < 500 else "generation_failed"))
        elapsed = time.perf_counter() - t0
        self._image_s = 0.8 * self._image_s + 0.2 * elapsed
        self.metrics.inc("omnidit_images_generated_total", len(result["images"]))
        self.metrics.observe("omnidit_step_seconds", result["denoise_s"], count=result["steps"], kind="image")
        self.metrics.observe("omnidit_image_batch_size", result["batch"])
        log.info("images n=%d %dx%d steps=%d batch=%d in %.2fs%s", req.n, payload["width"], payload["height"],
                 payload["steps"], result["batch"], elapsed, self._prompt(req.prompt))
        data = []
        for image, seed in zip(result["images"], result["seeds"]):
            if req.response_format == "url":
                image_id = await asyncio.to_thread(self.outputs.save_image, image, req.output_format)
                data.append({"url": f"{base_url.rstrip('/')}/v1/images/files/{image_id}", "seed": seed})
            else:
                data.append({"b64_json": base64.b64encode(image).decode("ascii"), "seed": seed})
        return {"created": int(time.time()), "data": data, "size": f"{payload['width']}x{payload['height']}",
                "output_format": req.output_format, "background": "opaque", "quality": None}

    async def stream_images(self, req: ImageRequest) -> AsyncIterator[str]:
        """`stream: true`: checks and admission now (errors are plain JSON 4xx), then an async iterator of
        Server-Sent Events: `image_generation.partial_image` x partial_images, `image_generation.completed`
        (or one `error` event with the JSON error body)."""
        generator, info = await self.route(req.model)
        payload = resolve_image(req, info, max_images=self.settings.max_images, max_steps=self.settings.max_steps,
                                loras=self.lora_names())
        payload["request_id"] = request_id = "req_" + secrets.token_hex(12)
        payload["moderation"] = req.moderation
        await self._moderate(req, request_id, req.moderation)
        self._admit_image()
        return self._image_events(req, payload, generator)

    async def _image_events(self, req: ImageRequest, payload: dict,
                            generator: GeneratorClient) -> AsyncIterator[str]:
        common = {"size": f"{payload['width']}x{payload['height']}", "output_format": req.output_format,
                  "background": "opaque", "quality": "auto"}
        t0 = time.perf_counter()
        try:
            async for ev in generator.stream_images(payload):
                b64 = base64.b64encode(ev["image"]).decode("ascii") if "image" in ev else None
                if ev["type"] == "partial":
                    yield _sse("image_generation.partial_image", {
                        "type": "image_generation.partial_image", "b64_json": b64, "created_at": int(time.time()),
                        "partial_image_index": ev["index"], "step": ev["step"], "seed": ev["seed"], **common})
                elif ev["type"] == "completed":
                    self.metrics.inc("omnidit_images_generated_total", 1)
                    self.metrics.observe("omnidit_step_seconds", ev["denoise_s"], count=ev["steps"], kind="image")
                    log.info("image stream %s steps=%d in %.2fs%s", common["size"], ev["steps"],
                             time.perf_counter() - t0, self._prompt(req.prompt))
                    yield _sse("image_generation.completed", {
                        "type": "image_generation.completed", "b64_json": b64, "created_at": int(time.time()),
                        "step": ev["steps"], "seed": ev["seed"], **common, "usage": {
                            "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                            "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}})
                else:
                    e = ev["error"]
                    yield _sse("error", {"type": "error", "error": {
                        "message": e["message"], "type": "invalid_request_error" if e["status"] < 500 else
                        "server_error", "param": e.get("param"),
                        "code": e.get("code") or ("invalid_value" if e["status"] < 500 else "generation_failed")}})
        finally:
            self._pending_images -= 1

    def _redact(self, prompt: str) -> str:
        return content.stored_prompt(self.settings, self._prompt_key, prompt)

    def _retry_after(self) -> int:
        wait = self._image_s * self._pending_images / max(1, self.settings.replicas * self.settings.max_batch_size)
        return int(min(60, max(1, math.ceil(wait))))

    def image_file(self, image_id: str) -> tuple[Path, str]:
        """(path, media type) of an image returned with response_format=url."""
        if not is_image_id(image_id):
            raise ApiError(404, f"no image {image_id!r}", param="image_id", code="not_found")
        found = self.outputs.find_image(image_id)
        if found is None:
            raise ApiError(404, f"no image {image_id!r} (it may have expired)", param="image_id", code="not_found")
        return found

    # -- video jobs ---------------------------------------------------------------------------
    async def create_video(self, req: VideoRequest, idempotency_key: str | None) -> tuple[dict, bool]:
        _, info = await self.route(req.model)
        params = resolve_video(req, info, max_steps=self.settings.max_steps, loras=self.lora_names())
        if idempotency_key is not None and not (idempotency_key.isprintable() and idempotency_key.strip()):
            raise ApiError(400, "Idempotency-Key must be 1-255 printable characters", param="Idempotency-Key",
                           code="invalid_value")
        request_id = "req_" + secrets.token_hex(12)
        await self._moderate(req, request_id)
        start = await self._start_image(req, request_id)
        if start is not None:
            params["input_reference"] = start  # the stored start image (OutputDir.inputs), removed with the job
        # The hash covers the request as sent (not the resolved params, whose seed may be random); keyed
        # when prompts are stored hashed, so the record cannot be used to test guesses of the prompt.
        body = json.dumps(req.model_dump(), sort_keys=True).encode()
        digest = (hmac.new(self._prompt_key, body, hashlib.sha256).hexdigest() if self._prompt_key is not None
                  else hashlib.sha256(body).hexdigest())
        try:
            job, created = await asyncio.to_thread(
                self.store.create, req.prompt, params, idempotency_key=idempotency_key, request_hash=digest,
                max_queued=self.settings.max_queued_jobs, model=info.id)  # the job runs on this model's replicas
        except IdempotencyConflict:
            self.outputs.remove_input(start)
            raise ApiError(409, "this Idempotency-Key was already used with a different request",
                           param="Idempotency-Key", code="idempotency_conflict") from None
        except QueueFull:
            self.outputs.remove_input(start)
            self.metrics.inc("omnidit_rejected_total", reason="video_queue_full")
            raise ApiError(429, f"{self.settings.max_queued_jobs} video jobs are already queued; retry later",
                           code="queue_full", headers={"Retry-After": "30"}) from None
        if not created:  # an earlier request's job, with its own start image
            self.outputs.remove_input(start)
        else:
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

    async def video_file(self, job_id: str, variant: str = "video") -> tuple[Path, str]:
        """(path, media type) of a completed job's `video` (mp4) or `thumbnail` (webp, the first frame)."""
        job = await self._job(job_id)
        if job.status != "completed":
            raise ApiError(409, f"video job {job_id} is {job.status}; its content exists once it is completed",
                           param="video_id", code="not_ready")
        path, media = ((self.outputs.video_path(job.id), "video/mp4") if variant == "video"
                       else (self.outputs.thumbnail_path(job.id), "image/webp"))
        if not path.is_file():
            raise ApiError(404, f"the {variant} of video job {job_id} is gone", param="video_id", code="not_found")
        return path, media

    async def cancel_video(self, job_id: str) -> dict:
        """Queued/running -> cancelled (the replica stops within one step); the record stays, reachable
        until it expires or is deleted. Cancelling a cancelled job returns it; a finished one is 409."""
        job = await self._job(job_id)
        if job.status in ("completed", "failed"):
            raise ApiError(409, f"video job {job_id} is already {job.status}; DELETE removes it",
                           param="video_id", code="not_cancellable")
        if job.status != "cancelled":
            job = await asyncio.to_thread(self.store.cancel, job_id)
            if job is None:
                raise _not_found(job_id)
            log.info("job %s cancelled", job_id)
            if self._prompt_key is not None:  # --store-prompts hash: a finished record keeps no text
                job = await asyncio.to_thread(self.store.redact_prompt, job_id, self._redact) or job
        return job.to_api((await self.model_info()).id)

    async def delete_video(self, job_id: str) -> dict:
        """Any status: the record and its files are gone (404 afterwards); a running job stops within one
        step, as its worker's next heartbeat finds no row."""
        job = await self._job(job_id)
        if await asyncio.to_thread(self.store.delete, job_id) is None:
            raise _not_found(job_id)
        await asyncio.to_thread(self.outputs.remove_video, job_id)
        await asyncio.to_thread(self.outputs.remove_input, job.params.get("input_reference"))
        log.info("job %s deleted", job_id)
        return {"id": job_id, "object": "video.deleted", "deleted": True}

    # -- health, metrics, expiry ----------------------------------------------------------------
    async def health(self) -> tuple[int, dict]:
        try:  # every served model's generator must answer
            gens = await asyncio.wait_for(asyncio.gather(*(g.health() for g in self.generators)), timeout=10)
            infos = await self.models()
            counts = await asyncio.to_thread(self.store.counts)
        except Exception as e:
            return 503, {"status": "unavailable", "reason": f"{type(e).__name__}: {e}"[:300]}
        return 200, {"status": "ok", "model": infos[0].id, "models": [i.id for i in infos], "generator": gens[0],
                     "generators": gens, "jobs": counts, "image_queue_depth": self._pending_images}

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
        if self._infos is not None:  # after a restart with other models: their queued jobs fail, not wait
            reaped["unserved"] = self.store.fail_unserved([i.id for i in self._infos], now)
        if self._prompt_key is not None:  # jobs the reaper failed, or that finished before a restart
            self.store.redact_prompts(self._redact)
        expired = self.store.delete_expired(now)
        for job in expired:
            self.outputs.remove_video(job.id)
            self.outputs.remove_input(job.params.get("input_reference"))
        # Outputs whose record is gone (a crash between the two deletes) age out too.
        orphans = 0
        for p in self.outputs.videos.glob("video_*.mp4"):
            if p.stat().st_mtime < now - self.settings.retention_s and self.store.get(p.stem) is None:
                self.outputs.remove_video(p.stem)
                orphans += 1
        orphans += self._sweep_inputs(now)
        images = self.outputs.sweep_images(self.settings.retention_s, now)
        if expired or orphans or images or any(reaped.values()):
            log.info("sweep: %d jobs expired, %d orphan videos, %d images removed, reaped %s", len(expired),
                     orphans, images, reaped)
        return {"expired": len(expired), "orphans": orphans, "images": images, **reaped}

    def _sweep_inputs(self, now: float) -> int:
        """Start images older than the retention period that no job references (a crash between writing
        the file and queueing its job); a job's own is removed with the job."""
        old = [p for p in self.outputs.inputs.glob("input_*.png")
               if p.stat().st_mtime < now - self.settings.retention_s]
        if not old:
            return 0
        used, after = set(), None
        while True:
            try:
                jobs, more = self.store.list(limit=100, after=after, order="asc")
            except KeyError:  # the page's cursor job was deleted meanwhile: try at the next sweep
                return 0
            used.update(j.params.get("input_reference") for j in jobs)
            if not more or not jobs:
                break
            after = jobs[-1].id
        gone = [p for p in old if p.stem not in used]
        for p in gone:
            self.outputs.remove_input(p.stem)
        return len(gone)

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
