"""`--lora PATH[:SCALE]` (repeatable) for `generate` and `batch`: adapters named by file stem."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from omnidit.cli.common import UserError


def add_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="a LoRA adapter (.safetensors: diffusers/PEFT, kohya/musubi or original Tencent names) "
                        "at SCALE (default 1.0); repeat for several")


def parse_lora_arg(spec: str) -> tuple[Path, float]:
    """`PATH[:SCALE]` -> (path, scale); a UserError names the bad part."""
    path, sep, scale = spec.rpartition(":")
    if not sep or "/" in scale or scale.endswith(".safetensors"):
        path, scale = spec, "1"
    try:
        value = float(scale)
    except ValueError:
        raise UserError(f"--lora {spec!r}: SCALE must be a number (PATH[:SCALE]), got {scale!r}") from None
    if not math.isfinite(value):
        raise UserError(f"--lora {spec!r}: SCALE must be a finite number, got {scale!r}")
    p = Path(path)
    if not p.exists():
        raise UserError(f"--lora {spec!r}: {path!r} does not exist")
    return p, value


def lora_specs(specs: list[str]) -> dict[str, tuple[Path, float]]:
    """Every --lora as {name (file stem): (path, scale)}; names must be distinct."""
    out: dict[str, tuple[Path, float]] = {}
    for spec in specs:
        path, scale = parse_lora_arg(spec)
        name = path.stem
        if name in out:
            raise UserError(f"--lora {spec!r}: two adapters are named {name!r} (by file stem); rename one")
        out[name] = (path, scale)
    return out


def load_loras(pipe, specs: list[str]) -> dict[str, float] | None:
    """Load every --lora into `pipe`; the {name: scale} set to generate with (None without --lora)."""
    if not specs:
        return None
    loras = {}
    for name, (path, scale) in lora_specs(specs).items():
        try:
            pipe.load_lora(path, name=name, scale=scale)
        except (OSError, ValueError) as e:
            raise UserError(f"--lora {str(path)!r}: {e}") from None
        loras[name] = scale
    return loras
