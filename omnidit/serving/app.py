"""Build and run the Ray Serve application: an ingress (FastAPI) deployment in front of generator replicas.

- `build(args)` is the application builder named by serve_config.yaml (`serve deploy` / `serve run`).
- `start(settings, ...)` is what `omnidit serve` does: start a small local Ray (or join
  `address`), start Serve's HTTP proxy on host:port and deploy the application.
"""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.exceptions import BackPressureError

from omnidit.serving.api import create_app
from omnidit.serving.errors import ApiError
from omnidit.serving.generator import deployment_name, generator_deployment
from omnidit.serving.service import Service
from omnidit.serving.settings import ServeSettings, configure_logging

log = logging.getLogger("omnidit.serving")
APP_NAME = "omnidit"


class RayGeneratorClient:
    """`GeneratorClient` over a Serve deployment handle."""

    def __init__(self, handle):
        self.handle = handle

    async def images(self, payload: dict) -> dict:
        try:
            return await self.handle.images.remote(payload)
        except BackPressureError:
            raise ApiError(429, "the generator queue is full; retry later", code="queue_full",
                           headers={"Retry-After": "5"}) from None
        except ApiError:
            raise
        except Exception as e:  # the replica died mid-request; Serve replaces it
            log.warning("image request failed in the generator: %s", type(e).__name__)
            raise ApiError(503, "the generator replica stopped while serving this request; retry",
                           code="generator_unavailable", headers={"Retry-After": "10"}) from None

    async def stream_images(self, payload: dict):
        try:
            async for event in self.handle.options(stream=True).stream_images.remote(payload):
                yield event
        except BackPressureError:
            yield {"type": "error", "error": {"status": 429, "message": "the generator queue is full; retry later",
                                              "param": None}}
        except Exception as e:
            log.warning("image stream failed in the generator: %s", type(e).__name__)
            yield {"type": "error", "error": {"status": 503, "param": None, "message": (
                "the generator replica stopped while serving this request; retry")}}

    async def info(self) -> dict:
        return await self.handle.info.remote()

    async def health(self) -> dict:
        return await self.handle.health.remote()


@serve.ingress()
class Ingress:
    """HTTP in front; holds the job store and the output folder, never a model."""

    def __init__(self, generators: list, settings: dict):
        configure_logging()  # one generator deployment handle per served model, in settings' order
        self.service = Service(ServeSettings.from_dict(settings), [RayGeneratorClient(g) for g in generators])

    def __serve_build_asgi_app__(self):
        return create_app(self.service)

    def check_health(self) -> None:
        self.service.store.counts()  # raises if the job store is unreachable

    def __del__(self):
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def build_app(settings: ServeSettings):
    """The bound application (no Ray calls yet)."""
    s = settings.to_dict()
    generators = [  # a deployment per served model; the first also runs jobs that name no model
        generator_deployment(settings.for_model(m), deployment_name(i, m)).bind(
            dict(settings.for_model(m).to_dict(), api_key=None), i == 0)  # replicas never need the key
        for i, m in enumerate(settings.models)]
    ingress = serve.deployment(Ingress).options(
        name="Ingress", num_replicas=settings.ingress_replicas,
        # The ingress only awaits; admission control (429) is its job, so Serve must not queue in front of it.
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
        health_check_period_s=settings.health_check_period_s)
    return ingress.bind(generators, s)


def build(args: dict):
    """Application builder for serve_config.yaml: `args` are ServeSettings fields."""
    return build_app(ServeSettings.from_dict(args))


def start(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          num_cpus: int | None = None, num_gpus: int | None = None, log_to_driver: bool = True) -> str:
    """Start (or join) Ray, start Serve on host:port, deploy; returns the base URL. Blocks until ready."""
    import ray

    if not ray.is_initialized():
        if address is None:  # embedded: a private local Ray sized for this service
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     configure_logging=False, log_to_driver=log_to_driver)
        else:
            ray.init(address=address, configure_logging=False, log_to_driver=log_to_driver)
    _start_serve(host, port)
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def _start_serve(host: str, port: int, attempts: int = 3) -> None:
    """serve.start, retried: right after a serve.shutdown() the old HTTP proxy may still be
    going away, and the new one is then cancelled before it runs (ActorDiedError)."""
    import time

    import ray

    for attempt in range(attempts):
        try:
            serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": True})
            return
        except ray.exceptions.ActorDiedError:
            if attempt == attempts - 1:
                raise
            time.sleep(2.0 * (attempt + 1))


def stop(*, embedded: bool = True) -> None:
    """Embedded: shut Serve and the private Ray down. Joined cluster: remove only this application."""
    import ray

    try:
        if embedded:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        if ray.is_initialized():
            ray.shutdown()
