"""What one generator replica does, without Ray: hold a Pipeline, run image batches, run video jobs.

`generator.py` wraps this in a Ray Serve deployment (adding `@serve.batch`); tests and
the in-process client use it directly.

A parallel replica (`settings.workers_per_replica > 1`) holds an omnidit/parallel `WorkerGroup`
instead: K worker processes (gloo on CPU, one GPU each with NCCL) running every generation
together. It has Pipeline's `generate_many`, so image batches and video jobs run unchanged;
progress comes from rank 0 and a cancel stops every rank within one step. One difference: the
workers do not pause between steps, so image batches wait for a running video to finish instead
of going ahead between its steps.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from omnidit.request import MAX_SEED, RequestError
from omnidit.safety import ContentBlocked
from omnidit.sampling import Cancelled
from omnidit.serving import content
from omnidit.serving.files import OutputDir
from omnidit.serving.jobs import Job, open_store
from omnidit.serving.runner import DeviceGate, JobRunner
from omnidit.serving.schemas import ModelInfo, request_error
from omnidit.serving.settings import ServeSettings


class GenerationBackend(Protocol):
    """What the engine needs of a model: a `Pipeline` on one device, or a `WorkerGroup` of K."""

    def generate_many(self, prompts: list[str], **kwargs) -> list: ...

    @property
    def broken(self) -> str | None: ...  # why it cannot serve any more (None: healthy)

    def close(self) -> None: ...

log = logging.getLogger("omnidit.serving")



def _group_key(p: dict) -> tuple:
    """Requests with equal keys can share one `generate_many` call (same shapes, same schedule)."""
    # cache, lora: requests with different step-cache settings or adapter sets never share a forward
    # (resolve_* normalised both)
    return (p["width"], p["height"], p["steps"], float(p["guidance"]), p.get("negative_prompt"), p.get("cache"),
            tuple(sorted((p.get("lora") or {}).items())))


def _seeds(p: dict) -> list[int]:
    if p.get("seed") is None:
        return [random.randrange(MAX_SEED) for _ in range(p["n"])]
    return [(p["seed"] + k) % (MAX_SEED + 1) for k in range(p["n"])]


def _denoise_seconds(t0: float, marks: list[float]) -> float:
    """Denoising time from per-step timestamps, without text encoding (which precedes step 1)."""
    if len(marks) >= 2:
        return (marks[-1] - marks[0]) * len(marks) / (len(marks) - 1)
    return (marks[-1] - t0) if marks else 0.0


def run_image_batch(pipe, payloads: list[dict], *, max_images: int = 16,
                    finish: Callable[[np.ndarray, dict], bytes] | None = None) -> list[dict]:
    """Run image requests (resolved payloads), batching compatible ones; one result dict per payload.

    A result is `{"images": [png bytes], "seeds", "steps", "denoise_s", "batch"}` or
    `{"error": {"status", "message", "param", "code"?}}`; a bad group never fails the others.
    `finish(frame, payload) -> bytes` moderates, labels and encodes one image (default: encode only);
    a `ContentBlocked` from it fails that request alone with a 400 `content_policy_violation`.
    """
    finish = finish or (lambda frame, p: encode_image(frame, p.get("output_format", "png"),
                                                      p.get("output_compression")))
    results: list[dict | None] = [None] * len(payloads)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(payloads):
        groups.setdefault(_group_key(p), []).append(i)
    for (width, height, steps, guidance, negative, cache, lora), idxs in groups.items():
        items = [(i, payloads[i]["prompt"], s) for i in idxs for s in _seeds(payloads[i])]
        for i in idxs:
            results[i] = {"images": [], "seeds": [], "steps": steps, "denoise_s": 0.0, "batch": 0}
        try:
            for start in range(0, len(items), max_images):
                chunk = items[start:start + max_images]
                t0, marks = time.perf_counter(), []
                gens = pipe.generate_many(
                    [c[1] for c in chunk], seeds=[c[2] for c in chunk], frames=1, height=height, width=width,
                    steps=steps, guidance=guidance, negative_prompt=negative, cache=cache, loras=dict(lora),
                    callback=lambda step, total, x: marks.append(time.perf_counter()))
                denoise = _denoise_seconds(t0, marks)
                for i in {c[0] for c in chunk} - {i for i in idxs if "error" in results[i]}:
                    results[i]["denoise_s"] += denoise
                    results[i]["batch"] = max(results[i]["batch"], len(chunk))
                for (i, _, seed), g in zip(chunk, gens):
                    if "error" in results[i]:  # an earlier image of this request was blocked
                        continue
                    try:
                        results[i]["images"].append(finish(g.frames[0], payloads[i]))
                    except ContentBlocked as e:
                        results[i] = {"error": content.blocked_result(e)}
                        continue
                    results[i]["seeds"].append(seed)
        except ValueError as e:  # a RequestError names its field; another ValueError names none
            param = request_error(e).param if isinstance(e, RequestError) else None
            err = {"status": 422, "message": str(e), "param": param}
            for i in idxs:
                results[i] = {"error": err}
        except Exception as e:
            log.exception("image batch failed")
            for i in idxs:
                results[i] = {"error": {"status": 500, "message": f"generation failed: {type(e).__name__}",
                                        "param": None}}
    return results  # type: ignore[return-value]


def encode_image(frame: np.ndarray, fmt: str = "png", compression: int | None = None) -> bytes:
    """uint8 `[H, W, 3]` -> png, jpeg or webp bytes; `compression` (0-100) is jpeg/webp quality (default 90)."""
    from PIL import Image

    buf = io.BytesIO()
    quality = {} if fmt == "png" else {"quality": 90 if compression is None else int(compression)}
    Image.fromarray(frame).save(buf, format=fmt.upper(), **quality)
    return buf.getvalue()


def preview_steps(total: int, n: int) -> list[int]:
    """`n` evenly spaced steps in [1, total - 1] at which to preview (fewer when there are fewer steps)."""
    n = max(0, min(n, total - 1))
    return [round(total * (k + 1) / (n + 1)) for k in range(n)]


def run_image_stream(pipe, p: dict, emit: Callable[[dict], None], stopped: threading.Event | None = None,
                     finish: Callable[[np.ndarray, dict], bytes] | None = None) -> None:
    """One image (resolved payload, n=1), emitting `{"type": "partial", "index", "step", "seed", "image"}` for
    `p["partial_images"]` previews of the clean estimate x0 at evenly spaced steps, then
    `{"type": "completed", "image", "seed", "steps", "denoise_s"}`, or `{"type": "error", "error"}`.
    `stopped` set (the client went away) ends the generation at the next step. `finish` as in
    `run_image_batch`: previews are outputs too, so each is moderated and labelled like the image."""
    seed = _seeds(dict(p, n=1))[0]
    wanted = set(preview_steps(p["steps"], p.get("partial_images", 0)))
    fmt, compression = p.get("output_format", "png"), p.get("output_compression")
    finish = finish or (lambda frame, p: encode_image(frame, fmt, compression))
    t0, marks, index = time.perf_counter(), [], [0]

    def preview(step: int, total: int, x0) -> None:
        marks.append(time.perf_counter())
        if stopped is not None and stopped.is_set():
            raise Cancelled()
        if step in wanted:
            frame = pipe.decode(x0)[0][0]
            emit({"type": "partial", "index": index[0], "step": step, "seed": seed, "image": finish(frame, p)})
            index[0] += 1

    try:
        g = pipe.generate_many([p["prompt"]], seeds=[seed], frames=1, height=p["height"], width=p["width"],
                               steps=p["steps"], guidance=p["guidance"], negative_prompt=p.get("negative_prompt"),
                               preview=preview, cache=p.get("cache"), loras=p.get("lora") or {})[0]
        emit({"type": "completed", "image": finish(g.frames[0], p), "seed": seed,
              "steps": p["steps"], "denoise_s": _denoise_seconds(t0, marks)})
    except Cancelled:
        log.info("image stream stopped: the client went away")
    except ContentBlocked as e:
        emit({"type": "error", "error": content.blocked_result(e)})
    except ValueError as e:
        param = request_error(e).param if isinstance(e, RequestError) else None
        emit({"type": "error", "error": {"status": 422, "message": str(e), "param": param}})
    except Exception as e:
        log.exception("image stream failed")
        emit({"type": "error", "error": {"status": 500, "message": f"generation failed: {type(e).__name__}",
                                         "param": None}})


async def events_from_thread(work: Callable[[Callable[[dict], None], threading.Event], None]) -> AsyncIterator[dict]:
    """Run `work(emit, stopped)` in a worker thread and yield what it emits; closing the iterator
    early (the client hung up) sets `stopped`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done, stopped = object(), threading.Event()

    def run() -> None:
        try:
            work(lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev), stopped)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    future = loop.run_in_executor(None, run)
    try:
        while (ev := await queue.get()) is not done:
            yield ev
        await future
    finally:
        stopped.set()  # a no-op after a normal end; else the thread stops at its next step


def model_info(model: str | None) -> ModelInfo:
    """`ModelInfo.from_pipeline` from the model folder's config files alone (a parallel replica's own
    process loads no weights: its workers do)."""
    from omnidit.dit.checkpoint import read_config
    from omnidit.model_folder import open_model

    folder = open_model(model)
    c = folder.sampling(read_config(folder.transformer_dir).guidance_embeds)
    name = folder.name  # as Pipeline names it
    takes_image, needs_image = True, False  # the 1.0 family: the training-free first-frame condition
    if folder.family == "hunyuanvideo15":
        from omnidit.pipeline_hv15 import HV15Settings

        takes_image = needs_image = HV15Settings.from_folder(folder).task == "i2v"
    return ModelInfo(id=Path(name).name, name=name, width=c.width, height=c.height, max_width=c.max_width,
                     max_height=c.max_height, max_frames=c.max_frames, size_multiple=c.size_multiple, fps=c.fps,
                     steps=c.steps, guidance=float(c.guidance), temporal_ratio=folder.temporal_ratio,
                     takes_image=takes_image, needs_image=needs_image)


def start_worker_group(settings: ServeSettings):
    """The parallel replica's WorkerGroup: K processes on CPU (gloo) or on cuda:0..K-1 (NCCL)."""
    import torch

    from omnidit.parallel import ParallelConfig
    from omnidit.serving.worker_group import WorkerGroup

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda for a parallel replica (worker k uses cuda:k), got {device!r}")
    config = ParallelConfig(ulysses_degree=settings.ulysses_degree, ring_degree=settings.ring_degree,
                            cfg_degree=2 if settings.cfg_parallel else 1)
    return WorkerGroup(settings.model, config, device=device, weights=settings.weights,
                       offload=settings.offload, compile=settings.compile), device


class GeneratorEngine:
    """A Pipeline on one device (or a parallel WorkerGroup), shared by image batches and (if
    `run_jobs`) the video-job worker."""

    def __init__(self, settings: ServeSettings, *, run_jobs: bool | None = None, default_model: bool = True):
        """`settings.model` is this engine's one model; `default_model`: it is the service's first, so its
        video-job worker also runs jobs that name no model."""
        from omnidit.pipeline import Pipeline

        if isinstance(settings.model, list):
            raise TypeError("a generator engine serves one model: give it settings.for_model(model)")
        self.settings = settings
        t0 = time.perf_counter()
        self.parallel = settings.workers_per_replica > 1
        self.pipe: GenerationBackend
        if self.parallel:
            self.info = model_info(settings.model)  # first: a bad model fails before any process starts
            self.pipe, self.device = start_worker_group(settings)
        else:
            self.pipe = Pipeline.from_pretrained(settings.model, device=settings.device, weights=settings.weights,
                                                 offload=settings.offload)
            if settings.compile:  # regional torch.compile; the replica's first request of each size compiles
                self.pipe.compile(settings.compile)
            self.info, self.device = ModelInfo.from_pipeline(self.pipe), str(self.pipe.device)
        self.pipe.set_lora_library(settings.lora_dir, settings.max_loras)  # None: requests name no adapter
        where = f"{settings.workers_per_replica} {self.device} workers" if self.parallel else self.device
        log.info("loaded model %s on %s in %.1fs", self.info.id, where, time.perf_counter() - t0)
        self.moderator = content.moderator(settings, "output")  # None without --moderation
        self.gate = DeviceGate()
        self.runner: JobRunner | None = None
        if settings.run_jobs if run_jobs is None else run_jobs:
            store = open_store(settings.store_url, retention_s=settings.retention_s,
                               max_attempts=settings.max_attempts)
            self.runner = JobRunner(store, OutputDir(settings.data_path), self.run_video, lease_s=settings.lease_s,
                                    poll_s=settings.poll_s, log_prompts=settings.log_prompts,
                                    # workers run ahead of the callbacks: images cannot cut in mid-video
                                    between_steps=None if self.parallel else self.gate.yield_to_images,
                                    redact=self._redact if settings.store_prompts == "hash" else None,
                                    model=self.info.id, default_model=default_model)
            self.runner.start()

    def _redact(self, prompt: str) -> str:
        return content.stored_prompt(self.settings, content.prompt_key(self.settings), prompt)

    def run_images(self, payloads: list[dict]) -> list[dict]:
        with self.gate.image():
            return run_image_batch(self.pipe, payloads, max_images=self.settings.max_batch_images,
                                   finish=self.finish_image)

    def run_image_stream(self, payload: dict, emit, stopped: threading.Event | None = None) -> None:
        if self.parallel:  # the workers run ahead of the callbacks: no previews to take between steps
            emit({"type": "error", "error": {"status": 422, "param": "stream", "message": (
                "stream: previews need a single-process replica; this one is a parallel worker group")}})
            return
        with self.gate.image():
            run_image_stream(self.pipe, payload, emit, stopped, finish=self.finish_image)

    def finish_image(self, frame: np.ndarray, p: dict) -> bytes:
        """The output hook (raises ContentBlocked), then the visible label, then encoding with the AIGC label."""
        if self.moderator is not None:
            self.moderator.check_output(frame, prompt=p["prompt"], level=p.get("moderation"),
                                        request_id=p.get("request_id"))
        return content.image_bytes(self.settings, self.info.name, frame, p.get("output_format", "png"),
                                   p.get("output_compression"))

    def run_video(self, job: Job, callback):
        p = job.params
        image = None
        if p.get("input_reference") is not None:  # the start image the ingress stored (serving/input_image.py)
            image = OutputDir(self.settings.data_path).input_path(p["input_reference"])
            if not image.is_file():
                raise RequestError("input_reference", f"the start image of job {job.id} is gone from the data dir")
        with self.gate.video():
            gen = self.pipe.generate_many(
                [job.prompt], seeds=[p["seed"]], frames=p["frames"], height=p["height"], width=p["width"],
                steps=p["steps"], guidance=p["guidance"], negative_prompt=p.get("negative_prompt"),
                callback=callback, cache=p.get("cache"), loras=p.get("lora") or {}, image=image)[0]
        gen.fps = p["fps"]
        if self.moderator is not None:  # before anything is written: a blocked job fails with no file
            self.moderator.check_output(gen.frames, prompt=job.prompt, request_id=job.id)
        gen.frames = content.finish_frames(self.settings, gen.frames)
        gen.info["aigc"] = content.label(self.settings, self.info.name, produce_id=job.id)
        return gen

    def health(self) -> dict:
        """Raises when the replica cannot do its job (Serve then replaces it)."""
        if self.runner is not None and not self.runner.alive:
            raise RuntimeError("the video job worker thread has stopped")
        broken = self.pipe.broken  # a WorkerGroup whose worker died or hung; a Pipeline never is
        if broken:
            raise RuntimeError(f"the worker group is broken: {broken}")
        return {"model": self.info.id, "device": self.device, "workers": self.settings.workers_per_replica,
                "job": self.runner.current if self.runner else None,
                "worker": self.runner.owner if self.runner else None}

    def close(self) -> None:
        try:
            if self.runner is not None:
                self.runner.stop()
                self.runner.store.close()
        finally:
            self.pipe.close()
