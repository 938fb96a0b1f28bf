"""`omnidit verify FILE`: read a file's implicit AIGC label (GB 45438-2025) back and print it.

Exit 0 and the label as JSON when the file carries one, 1 when it carries none, 2 when the file
is missing or not a png/jpeg/webp/gif/mp4.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnidit.cli.common import UserError

HELP = "print the AIGC label a generated file carries (exit 1 if it has none)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .png, .jpg/.jpeg, .webp, .gif or .mp4 file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from omnidit.safety import read_label

    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"file {args.file!r} does not exist or is not a file")
    try:
        label = read_label(path)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None
    if label is None:
        print(f"{path}: no AIGC label", file=sys.stderr)
        return 1
    print(json.dumps({"file": str(path), "AIGC": label}, ensure_ascii=False))
    return 0
