"""`omnidit up`: the service and its demo together (the README's main command).

Two child processes, `omnidit serve` and `omnidit demo --api <service URL>`, as a user would
start them by hand; this only waits for the service to be healthy, prints both URLs, and stops
both on Ctrl-C, on SIGTERM (what `docker stop` and systemd send), or when either exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from omnidit.cli.common import DEFAULT_HOST, DEMO_PORT, SERVICE_PORT, UserError, port_number

HELP = "start the service and the Gradio demo together; print both URLs"
UP_MODELS = ("shapes-turbo", "shapes")  # the shipped few-step student first (the default), then its teacher


def add_arguments(p: argparse.ArgumentParser) -> None:
    from omnidit.serving.settings import ServeSettings

    p.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help="shipped model name or folder; repeat it to serve several, the first is the default "
                        f"(default: {' and '.join(UP_MODELS)}, the demo's model picker offers both)")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=port_number("--port"), default=SERVICE_PORT, help="service port")
    p.add_argument("--demo-port", type=port_number("--demo-port"), default=DEMO_PORT)
    p.add_argument("--data-dir", default=ServeSettings.data_dir)
    p.add_argument("--api-key", default=None, help="require this bearer token (default: $OMNIDIT_API_KEY)")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="adapters requests and the demo may pick (default: the shipped ones, omnidit/models/loras)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the service")
    p.set_defaults(func=run)


def _up_models() -> list[str]:
    """UP_MODELS as far as they are shipped (a checkout without the weights: the embedded default alone)."""
    from omnidit.model_folder import shipped_models

    return [m for m in UP_MODELS if m in shipped_models()]


def serve_args(args: argparse.Namespace) -> list[str]:
    """The `omnidit serve` arguments: the shipped models and their shipped adapters unless told otherwise
    (adapters trained for the shipped models are not offered beside a folder given with --model)."""
    from omnidit.model_folder import SHIPPED_LORAS

    out = ["serve", "--host", args.host, "--port", str(args.port), "--data-dir", args.data_dir]
    for model in args.model or _up_models():
        out += ["--model", model]
    lora_dir = args.lora_dir
    if lora_dir is None and args.model is None and any(SHIPPED_LORAS.glob("*.safetensors")):
        lora_dir = str(SHIPPED_LORAS)
    return out + (["--lora-dir", lora_dir] if lora_dir else [])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/health", timeout=15.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    return False


def _child_signals() -> None:
    """Run in each child before exec: Ctrl-C handling back to default, in case `up` itself was
    started with SIGINT ignored (a shell's background job), which children would inherit and
    then ignore the SIGINT `_stop` sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


class _Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so `finally` stops the children."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def run(args: argparse.Namespace) -> int:
    if args.port == args.demo_port:
        raise UserError("--port and --demo-port must differ")
    env = dict(os.environ)
    if args.api_key:
        env["OMNIDIT_API_KEY"] = args.api_key
    me = [sys.executable, "-m", "omnidit"]
    serve = me + serve_args(args)
    api = f"http://{args.host}:{args.port}"
    procs: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        procs.append(subprocess.Popen(serve, env=env, preexec_fn=_child_signals))
        print(f"starting the service at {api} ...", flush=True)
        if not _wait_healthy(api, procs[0], args.startup_timeout):
            code = procs[0].poll()
            _stop(procs)
            raise UserError(f"the service did not become healthy at {api}"
                            + (f" (it exited with code {code})" if code is not None else ""))
        demo = me + ["demo", "--api", api, "--host", args.host, "--port", str(args.demo_port)]
        procs.append(subprocess.Popen(demo, env=env, preexec_fn=_child_signals))
        print(f"\n  API:  {api}   (docs: {api}/docs)\n  demo: http://{args.host}:{args.demo_port}\n"
              "  Ctrl-C stops both.\n", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return max((p.returncode or 0) for p in procs if p.poll() is not None)
    except (KeyboardInterrupt, _Terminated):
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        _stop(procs)
        signal.signal(signal.SIGTERM, previous)
