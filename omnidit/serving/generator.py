"""The generator deployment: one Pipeline (or parallel worker group) per replica; image requests
batched with `@serve.batch`.

Each replica also runs the video-job worker (engine.GeneratorEngine), so a replica that
dies mid-job leaves a lease that expires and another replica (or its replacement)
finishes the job. The denoising loop always runs in a worker thread, never on the
replica's event loop, so health checks and batching keep working while it runs.

Parallel replicas (`ulysses_degree x ring_degree x (2 if cfg_parallel)` = K > 1): the replica
holds a sequence-parallel WorkerGroup (omnidit/serving/worker_group.py) of K worker processes it
spawns itself (engine.GeneratorEngine). On GPU the replica actor reserves all K GPUs
(`num_gpus: K`, so gpus_per_replica must equal K): its children inherit the replica's
CUDA_VISIBLE_DEVICES and worker k uses cuda:k, and one actor always sits on one node, so NCCL
stays intra-node. (One-GPU placement-group bundles would not do: the spawned workers are not
Ray actors, and would see only the replica's own GPU.) On CPU (gpus_per_replica 0) the K
workers use gloo.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from omnidit.serving.engine import GeneratorEngine, events_from_thread
from omnidit.serving.settings import ServeSettings, configure_logging, model_id

log = logging.getLogger("omnidit.serving")


class Generator:
    def __init__(self, settings: dict, default_model: bool = True):
        configure_logging()
        self.settings = ServeSettings.from_dict(settings)
        self.engine = GeneratorEngine(self.settings, default_model=default_model)
        # Batch parameters come from settings; 1 turns batching off (each request runs alone).
        self.batched_images.set_max_batch_size(self.settings.max_batch_size)
        self.batched_images.set_batch_wait_timeout_s(self.settings.batch_wait_s)

    async def images(self, payload: dict) -> dict:
        """One resolved image request -> `{"images": [png], "seeds", ...}` or `{"error": ...}`."""
        return await self.batched_images(payload)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def batched_images(self, payloads: list[dict]) -> list[dict]:
        # Off the event loop: the loop keeps filling the next batch and answering health checks.
        return await asyncio.to_thread(self.engine.run_images, payloads)

    async def stream_images(self, payload: dict):
        """`stream: true`: previews, then the image, as engine.run_image_stream emits them (no batching:
        each step's preview belongs to this one request)."""
        async for event in events_from_thread(lambda emit, stopped: self.engine.run_image_stream(payload, emit,
                                                                                                   stopped)):
            yield event

    def info(self) -> dict:
        return self.engine.info.to_dict()

    def health(self) -> dict:
        return self.engine.health()

    def check_health(self) -> None:  # Serve's periodic probe: raising marks the replica unhealthy
        self.engine.health()

    def __del__(self):  # graceful shutdown: the running job goes back to the queue
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def check_supported(s: ServeSettings) -> None:
    """GPUs per replica must match the replica's worker count: 0 (CPU) or 1 for one process, 0 or K for K."""
    k, g = s.workers_per_replica, s.gpus_per_replica
    degrees = f"ulysses_degree x ring_degree x (2 if cfg_parallel) = {s.ulysses_degree} x {s.ring_degree} x " \
              f"{2 if s.cfg_parallel else 1} = {k}"
    if k == 1 and g > 1:
        raise ValueError(f"gpus_per_replica={g} needs a sequence-parallel worker group of {g} processes: "
                         f"set ulysses_degree/ring_degree/cfg_parallel so that their product is {g} "
                         "(or use gpus_per_replica 0 or 1 and more replicas)")
    if k > 1 and g not in (0, k):
        raise ValueError(f"gpus_per_replica must be 0 (CPU workers, gloo) or {k} (one GPU per worker) "
                         f"with {degrees}, got {g}")
    if k > 1 and s.device not in (None, "cpu" if g == 0 else "cuda"):
        raise ValueError(f"device must be {'cpu' if g == 0 else 'cuda'} (or unset) for a parallel replica "
                         f"with gpus_per_replica={g}, got {s.device!r}")


def generator_options(s: ServeSettings, name: str = "Generator") -> dict:
    """Serve deployment options for the generator (replicas, resources, queue bound, health checks)."""
    opts = {
        "name": name,
        "num_replicas": s.replicas,
        # Batching needs several requests inside a replica at once; health/info calls need room too.
        "max_ongoing_requests": 2 * s.max_batch_size + 4,
        # Serve's own bound per caller: past it the handle raises BackPressureError -> 429.
        "max_queued_requests": s.max_pending_images,
        "health_check_period_s": s.health_check_period_s,
        "health_check_timeout_s": max(30.0, 3 * s.health_check_period_s),
        "graceful_shutdown_timeout_s": max(10.0, s.lease_s),
        "graceful_shutdown_wait_loop_s": 1.0,
    }
    # A parallel replica's workers are its child processes: it holds all their GPUs (see the module doc).
    opts["ray_actor_options"] = {"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica}
    return opts


def generator_deployment(s: ServeSettings, name: str = "Generator"):
    check_supported(s)
    return serve.deployment(Generator).options(**generator_options(s, name))


def deployment_name(index: int, model: str | None) -> str:
    """`Generator` for the first model (one model: as ever), `Generator-2-<model id>` and so on for the others."""
    if index == 0:
        return "Generator"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id(model))
    return f"Generator-{index + 1}-{safe}"
