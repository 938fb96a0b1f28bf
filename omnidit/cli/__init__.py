"""`omnidit` command line: one module per command, shared pieces in `common`.

Each command module offers `HELP` (its one-line summary) and `add_arguments(parser)`, which adds
its flags and sets `func`. Only the command being run gets its flags: several take them from
config dataclasses whose modules import torch, and `omnidit --help` should not wait for that.
"""

from __future__ import annotations

import argparse

from omnidit.cli import batch, calibrate_cache, demo, distill, generate, plan, serve, train, up
from omnidit.cli import eval as evaluate
from omnidit.cli import verify
from omnidit.cli.common import Parser, run_command

COMMANDS = {"generate": generate, "up": up, "serve": serve, "demo": demo, "batch": batch, "train": train,
            "eval": evaluate, "distill": distill, "verify": verify, "calibrate-cache": calibrate_cache,
            "plan": plan}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or with `only` a command name, that command's flags alone (the others listed)."""
    from omnidit import __version__

    parser = Parser(prog="omnidit", description="omnidit: text-to-image and text-to-video with a diffusion transformer")
    parser.add_argument("--version", action="version", version=f"omnidit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if only is None or only == name:
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else ""  # "": --help, --version or a typo
    return run_command(build_parser(command).parse_args(argv))
