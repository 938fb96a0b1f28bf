"""`omnidit serve`: the HTTP service on Ray Serve (embedded local Ray by default, or --address a cluster)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

from omnidit.cli.common import DEFAULT_HOST, SERVICE_PORT, ConfigFlags, UserError, port_number
from omnidit.cli.compile_flags import add_compile_args
from omnidit.cli.auto_parallel import add_auto_parallel_arg, apply_plan
from omnidit.cli.memory_flags import add_memory_args
from omnidit.cli.parallel_flags import add_parallel_args

if TYPE_CHECKING:
    from omnidit.serving.settings import ServeSettings

HELP = "run the HTTP API (image generations, durable video jobs) on Ray Serve"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from omnidit.serving.settings import ServeSettings

    s = ConfigFlags(p, ServeSettings)
    p.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help="shipped model name or diffusers-format folder (default: the embedded model); repeat it to "
                        "serve several, a generator deployment each: a request's `model` picks one, the first is "
                        "the default")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=port_number("--port"), default=SERVICE_PORT)
    s.add("--data-dir", help="job database and outputs")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (default: $OMNIDIT_API_KEY)")
    p.add_argument("--address", default=None,
                   help="join a Ray cluster (auto, HOST:PORT or ray://HOST:10001) instead of starting a local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: min(4, cores))")
    s.add("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    s.add("--replicas", help="generator replicas, each holding the model")
    p.add_argument("--gpus-per-replica", type=int, default=None,
                   help="GPUs per generator replica (default: 1 with CUDA, else 0; a parallel replica: K with CUDA, "
                        "else 0)")
    add_parallel_args(p, "parallel replicas (K = U x R x (2 if --cfg-parallel) worker processes per replica; "
                         "one GPU each with CUDA, else gloo on CPU)")
    add_memory_args(p, s)
    add_auto_parallel_arg(p)
    add_compile_args(p, s)
    s.add("--max-batch-size", help="image requests per batch; 1 = no batching")
    p.add_argument("--batch-wait-ms", type=float, default=ServeSettings.batch_wait_s * 1000,
                   help="how long a batch waits to fill (default: %(default)s)")
    s.add("--max-pending-images", help="image requests in flight before 429")
    s.add("--max-queued-jobs", help="queued video jobs before 429")
    s.add("--max-steps", help="largest `steps` a request may ask for")
    s.add("--retention", field="retention_s", type=str,
          help="delete outputs and job records this long after they finish (seconds, or 90s, 15m, 24h, 7d)")
    s.add("--log-prompts", help="include prompt text in logs (off: privacy)")
    s.add("--store-prompts", choices=("full", "hash"),
          help="hash: a finished video job's record keeps a keyed hash of the prompt, not the text")
    s.add("--moderation", metavar="FILE",
          help="a JSON/YAML content policy: prompts checked at the ingress, outputs on the replicas")
    s.add("--audit-log", metavar="FILE", help="moderation decisions as JSON lines (default: DATA_DIR/audit.jsonl)")
    s.add("--label-producer", help="ContentProducer of the AIGC label every output carries")
    s.add("--visible-label", metavar="TEXT", help="draw TEXT in a corner of every output (public deployments)")
    s.add("--visible-label-frames", choices=("ends", "all"), help="video frames the visible label goes on")
    s.add("--visible-label-font", metavar="TTF", help="a TrueType font for the visible label (needed for CJK text)")
    s.add("--job-store", help="postgresql://... to share jobs across nodes (default: SQLite in --data-dir)")
    s.add("--lease-seconds", field="lease_s", type=float,
          help="a job whose replica is silent this long is resumed elsewhere")
    s.add("--lora-dir", metavar="DIR", help='LoRA adapters requests may name in `lora` ({"name": scale}): '
                                            "DIR/<name>.safetensors, loaded on first use")
    s.add("--max-loras", help="adapters kept loaded per replica (least recently used unloaded first)")
    p.set_defaults(func=run, config_flags=s)


def settings(args: argparse.Namespace) -> ServeSettings:
    """The service's settings from the flags, checked before Ray starts (a UserError otherwise)."""
    from omnidit.model_folder import default_model, resolve_model
    from omnidit.serving.generator import check_supported

    try:
        for model in args.model or [default_model()]:  # a wrong --model fails here, in one line, before Ray starts
            resolve_model(model)
        if args.parallel == "auto":  # one replica's degrees from the plan of the first model on this machine's GPUs
            import torch

            dev = torch.device(args.device) if args.device else None
            gpus = torch.cuda.device_count() if torch.cuda.is_available() and args.device != "cpu" else 1
            line = apply_plan(args, dev, model=(args.model or [default_model()])[0], gpus=max(1, gpus))
            print(f"omnidit serve: {line}", file=sys.stderr)
        workers = args.ulysses_degree * args.ring_degree * (2 if args.cfg_parallel else 1)
        gpus = args.gpus_per_replica
        if gpus is None:
            gpus = workers if _cuda_available() and args.device != "cpu" else 0
        s = args.config_flags.build(
            args, model=args.model, api_key=args.api_key or os.environ.get("OMNIDIT_API_KEY") or None,
            gpus_per_replica=gpus,
            batch_wait_s=args.batch_wait_ms / 1000, ulysses_degree=args.ulysses_degree,
            ring_degree=args.ring_degree, cfg_parallel=args.cfg_parallel)
        check_supported(s)
        if s.moderation is not None:  # a bad policy fails here, in one line, before Ray starts
            from omnidit.safety import load_policy

            load_policy(s.moderation)
        if (args.device or "").startswith("cuda") and gpus < 1:
            raise ValueError(f"--device cuda needs --gpus-per-replica {workers} "
                             "(Ray hides GPUs from replicas without one)")
        if s.store_url.startswith("postgres"):
            from omnidit.serving.jobs import open_store

            open_store(s.store_url, retention_s=s.retention_s).close()
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    if args.address is None and not _port_free(args.host, args.port):
        raise UserError(f"port {args.port} on {args.host} is already in use (pick another with --port)")
    return s


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    from omnidit.serving import app

    def _terminate(signum, frame):  # SIGTERM (docker stop, systemd) shuts down like Ctrl-C
        raise KeyboardInterrupt

    embedded = args.address is None
    # The embedded Ray must fit every replica, or Serve would wait for resources forever.
    # Each served model has its own generator deployment of --replicas replicas.
    replicas = s.replicas * len(s.models)
    num_cpus = max(args.num_cpus or min(4, os.cpu_count() or 1), math.ceil(replicas * s.cpus_per_replica))
    if embedded and s.gpus_per_replica:
        import torch

        have = torch.cuda.device_count()
        if replicas * s.gpus_per_replica > have:
            per_model = f" x {len(s.models)} models" if len(s.models) > 1 else ""
            raise UserError(f"--replicas {s.replicas}{per_model} x --gpus-per-replica {s.gpus_per_replica} needs "
                            f"{replicas * s.gpus_per_replica} GPUs; this machine has {have}")
    try:
        url = app.start(s, host=args.host, port=args.port, address=args.address, num_cpus=num_cpus)
        signal.signal(signal.SIGTERM, _terminate)  # after ray.init, which installs its own
        model = ", ".join(m or "the embedded model" for m in s.models)
        print(f"omnidit serving {model} at {url}  (API docs: {url}/docs; data: {s.data_path}; Ctrl-C to stop)",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("omnidit serve: shutting down (running video jobs go back to the queue)", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        try:
            app.stop(embedded=embedded)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    return 0
