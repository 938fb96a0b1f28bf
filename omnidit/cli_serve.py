"""`omnidit serve`: the HTTP service on Ray Serve (embedded local Ray by default, or --address a cluster)."""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time


def add_serve(sub) -> None:
    from omnidit.cli_parallel import add_parallel_args
    from omnidit.serving.settings import ServeSettings

    d = ServeSettings()
    p = sub.add_parser("serve", help="run the HTTP API (image generations, durable video jobs) on Ray Serve")
    p.add_argument("--model", default=None, help="shipped model name or diffusers-format folder (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", default=d.data_dir, help="job database and outputs (default: ./%(default)s)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (default: $OMNIDIT_API_KEY)")
    p.add_argument("--address", default=None,
                   help="join a Ray cluster (auto, HOST:PORT or ray://HOST:10001) instead of starting a local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: min(4, cores))")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--replicas", type=int, default=d.replicas, help="generator replicas, each holding the model")
    p.add_argument("--gpus-per-replica", type=int, default=None,
                   help="GPUs per generator replica (default: 1 with CUDA, else 0; a parallel replica: K with CUDA, "
                        "else 0)")
    add_parallel_args(p, "parallel replicas (K = U x R x (2 if --cfg-parallel) worker processes per replica; "
                         "one GPU each with CUDA, else gloo on CPU)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="image requests per batch; 1 = no batching")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_s * 1000, help="how long a batch waits to fill")
    p.add_argument("--max-pending-images", type=int, default=d.max_pending_images,
                   help="image requests in flight before 429")
    p.add_argument("--max-queued-jobs", type=int, default=d.max_queued_jobs, help="queued video jobs before 429")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="largest `steps` a request may ask for")
    p.add_argument("--retention", default="24h", help="delete outputs and job records this long after they finish (90s, 15m, 24h, 7d)")
    p.add_argument("--log-prompts", action="store_true", help="include prompt text in logs (off: privacy)")
    p.add_argument("--job-store", default=None, help="postgresql://... to share jobs across nodes (default: SQLite in --data-dir)")
    p.add_argument("--lease-seconds", type=float, default=d.lease_s, help="a job whose replica is silent this long is resumed elsewhere")
    p.set_defaults(func=cmd_serve)


def _settings(args):
    from omnidit.cli import UserError
    from omnidit.pipeline import default_model, resolve_model
    from omnidit.serving.generator import check_supported
    from omnidit.serving.settings import ServeSettings

    try:
        resolve_model(args.model or default_model())  # a wrong --model fails here, in one line, before Ray starts
        workers = args.ulysses_degree * args.ring_degree * (2 if args.cfg_parallel else 1)
        gpus = args.gpus_per_replica
        if gpus is None:
            gpus = workers if _cuda_available() and args.device != "cpu" else 0
        s = ServeSettings(
            model=args.model, data_dir=args.data_dir, job_store=args.job_store,
            api_key=args.api_key or os.environ.get("OMNIDIT_API_KEY") or None, device=args.device,
            replicas=args.replicas, gpus_per_replica=gpus, max_batch_size=args.max_batch_size,
            batch_wait_s=args.batch_wait_ms / 1000, max_pending_images=args.max_pending_images,
            max_queued_jobs=args.max_queued_jobs, max_steps=args.max_steps, retention_s=args.retention,
            log_prompts=args.log_prompts, lease_s=args.lease_seconds, ulysses_degree=args.ulysses_degree,
            ring_degree=args.ring_degree, cfg_parallel=args.cfg_parallel)
        check_supported(s)
        if (args.device or "").startswith("cuda") and gpus < 1:
            raise ValueError(f"--device cuda needs --gpus-per-replica {workers} "
                             "(Ray hides GPUs from replicas without one)")
        if s.store_url.startswith("postgres"):
            from omnidit.serving.jobs import open_store

            open_store(s.store_url, retention_s=s.retention_s).close()
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in [1, 65535], got {args.port}")
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


def cmd_serve(args) -> int:
    from omnidit.cli import UserError

    s = _settings(args)
    from omnidit.serving import app

    def _terminate(signum, frame):  # SIGTERM (docker stop, systemd) shuts down like Ctrl-C
        raise KeyboardInterrupt

    embedded = args.address is None
    # The embedded Ray must fit every replica, or Serve would wait for resources forever.
    num_cpus = max(args.num_cpus or min(4, os.cpu_count() or 1), math.ceil(s.replicas * s.cpus_per_replica))
    if embedded and s.gpus_per_replica:
        import torch

        have = torch.cuda.device_count()
        if s.replicas * s.gpus_per_replica > have:
            raise UserError(f"--replicas {s.replicas} x --gpus-per-replica {s.gpus_per_replica} needs "
                            f"{s.replicas * s.gpus_per_replica} GPUs; this machine has {have}")
    try:
        url = app.start(s, host=args.host, port=args.port, address=args.address, num_cpus=num_cpus)
        signal.signal(signal.SIGTERM, _terminate)  # after ray.init, which installs its own
        model = s.model or "the embedded model"
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
