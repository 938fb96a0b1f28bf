"""`omnidit demo`: the Gradio demo as its own process, talking HTTP to `omnidit serve`."""

from __future__ import annotations

import argparse
import os
import socket
from urllib.parse import urlparse

from omnidit.cli.common import DEFAULT_HOST, DEMO_PORT, SERVICE_PORT, UserError, port_number

HELP = "run the Gradio demo against a running `omnidit serve`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=f"http://{DEFAULT_HOST}:{SERVICE_PORT}",
                   help="base URL of the service (default: %(default)s)")
    p.add_argument("--host", default=DEFAULT_HOST, help="interface the demo listens on (default: %(default)s)")
    p.add_argument("--port", type=port_number("--port"), default=DEMO_PORT, help="demo port (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("OMNIDIT_API_KEY"),
                   help="bearer key for the service (default: $OMNIDIT_API_KEY)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = urlparse(args.api)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise UserError(f"--api must be an http:// or https:// URL, got {args.api!r}")
    with socket.socket() as s:  # gradio would otherwise report a busy port with a traceback
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from omnidit.demo.app import DemoConfig, launch

    cfg = DemoConfig(api_url=args.api, api_key=args.api_key or None)
    print(f"omnidit demo on http://{args.host}:{args.port} -> service {args.api}", flush=True)
    launch(cfg, host=args.host, port=args.port, block=True)
    return 0
