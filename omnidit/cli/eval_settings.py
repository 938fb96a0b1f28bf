"""The sampling settings `omnidit eval` scores a model under.

A setting overrides some of the model's own: `sampler` and `shift` (its PipelineConfig, swapped
for the row and restored after), `steps`, `guidance` and `cache` (generate's arguments; `cache`
is a step-cache SPEC, "none" for off). `--sampler`, `--shift`, `--steps`, `--guidance` and
`--cache` give the first row; each `--sweep KEY=VALUE[,KEY=VALUE]`
adds a row on top of it, scored with the same prompts and seeds after one model load.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

PER_CALL = ("steps", "guidance", "cache")  # generate's arguments; the other keys are PipelineConfig fields
KINDS = {"sampler": str, "shift": float, "steps": int, "guidance": float, "cache": str}
KIND_NAMES = {float: "a number", str: "a name", int: "an integer"}


def parse_setting(text: str) -> dict:
    """'shift=1.5,sampler=euler' -> {'shift': 1.5, 'sampler': 'euler'}; a ValueError names the bad part."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in KINDS:
            raise ValueError(f"--sweep {text!r}: expected KEY=VALUE with KEY one of {tuple(KINDS)}")
        try:
            out[key] = KINDS[key](value)
        except ValueError:
            raise ValueError(f"--sweep {text!r}: {key} must be {KIND_NAMES[KINDS[key]]}, got {value!r}") from None
    if not out:
        raise ValueError(f"--sweep {text!r}: expected KEY=VALUE with KEY one of {tuple(KINDS)}")
    return out


def settings_of(args: argparse.Namespace) -> list[dict]:
    """The rows to score: the flags' setting, then each --sweep's on top of it (ValueError if malformed)."""
    base = {k: getattr(args, k) for k in KINDS if getattr(args, k) is not None}
    return [base] + [{**base, **parse_setting(t)} for t in args.sweep]


def split(setting: dict) -> tuple[dict, dict]:
    """(PipelineConfig overrides, generate arguments) of a setting."""
    return ({k: v for k, v in setting.items() if k not in PER_CALL},
            {k: v for k, v in setting.items() if k in PER_CALL})


def check(pipe, setting: dict) -> None:
    """A ValueError naming what the pipeline would refuse in `setting`, before anything is sampled."""
    from omnidit.sampling import flow_sigmas

    dataclasses.replace(pipe.config, **split(setting)[0])  # PipelineConfig's own checks (the sampler's name)
    flow_sigmas(setting.get("steps", pipe.config.steps), setting.get("shift", pipe.config.shift))
    pipe.check(guidance=setting.get("guidance"), steps=setting.get("steps"))
    pipe.check_cache(setting.get("cache"))  # a RequestError (a ValueError) naming the SPEC


@contextmanager
def applied(pipe, setting: dict) -> Iterator[dict]:
    """`pipe` sampling with `setting` inside the block (its own config back after); yields generate's arguments."""
    base = pipe.config
    config, call = split(setting)
    pipe.config = dataclasses.replace(base, **config)
    try:
        yield call
    finally:
        pipe.config = base


def label(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "as shipped"
