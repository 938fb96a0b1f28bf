"""`omnidit demo`: the Gradio demo as its own process, talking HTTP to `omnidit serve`."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def _port(s: str) -> int:
    import argparse

    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be an integer, got {s!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be in [1, 65535], got {v}")
    return v


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the Gradio demo against a running `omnidit serve`")
    p.add_argument("--api", default="http://127.0.0.1:8000", help="base URL of the service (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="interface the demo listens on (default: %(default)s)")
    p.add_argument("--port", type=_port, default=7860, help="demo port (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("OMNIDIT_API_KEY"),
                   help="bearer key for the service (default: $OMNIDIT_API_KEY)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from omnidit.cli import UserError

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
