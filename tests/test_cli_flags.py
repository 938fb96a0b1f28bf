"""The CLI's flags derived from config dataclasses: one default, the config's, and the same types."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from omnidit.cli import build_parser
from omnidit.cli.common import ConfigFlags, Parser


@dataclass
class Toy:
    max_minutes: float | None = 15.0
    steps: int = 4
    name: str | None = None
    decoder_only: bool = False
    progress: bool = True
    sigma: tuple[float, float] = (0.2, 0.8)
    extra: dict = field(default_factory=dict)


def test_types_and_defaults_come_from_the_fields():
    p = Parser(prog="toy")
    flags = ConfigFlags(p, Toy)
    flags.add("--minutes", field="max_minutes", help="budget")
    for flag in ("--steps", "--name", "--decoder-only", "--sigma"):
        flags.add(flag)
    flags.add("--no-progress", field="progress")
    assert flags.build(p.parse_args([])) == Toy()
    got = flags.build(p.parse_args(["--minutes", "2.5", "--steps", "7", "--name", "x", "--decoder-only",
                                    "--no-progress", "--sigma", "0.1", "0.3"]), extra={"k": 1})
    assert got == Toy(2.5, 7, "x", True, False, (0.1, 0.3), {"k": 1})
    assert "budget (default: 15.0)" in " ".join(p.format_help().split())
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--steps", "four"])
    assert e.value.code == 2


def test_a_flag_cannot_restate_a_default_or_miss_its_field():
    flags = ConfigFlags(argparse.ArgumentParser(), Toy)
    with pytest.raises(TypeError, match="the default is Toy.steps's"):
        flags.add("--steps", default=5)
    with pytest.raises(TypeError, match="no field 'stpes'"):
        flags.add("--stpes")
    with pytest.raises(TypeError, match="no flag type"):
        flags.add("--extra")


def _built(*argv: str, **computed):
    args = build_parser(argv[0]).parse_args(list(argv))
    return args.config_flags.build(args, **computed)


def test_each_commands_defaults_are_its_configs():
    """With no flags, every config a command builds is the config's own defaults."""
    from omnidit.batch import BatchConfig
    from omnidit.distill.loop import DistillConfig
    from omnidit.serving.settings import ServeSettings
    from omnidit.training.dit_train import DiTTrainConfig
    from omnidit.training.vae_train import VAETrainConfig

    assert _built("train", "vae") == VAETrainConfig()
    d = DiTTrainConfig()
    assert _built("train", "dit", image_cache=d.image_cache, video_cache=d.video_cache) == d
    c = DistillConfig()
    assert _built("distill", out=c.out, run=c.run) == c
    assert _built("serve") == ServeSettings()
    assert _built("batch", "p.jsonl", "--out", "o", prompts="p.jsonl", out="o") == BatchConfig("p.jsonl", "o")


def test_only_the_command_run_builds_its_flags():
    """`omnidit --help` lists the commands without importing their configs (torch)."""
    import subprocess
    import sys

    code = ("import sys; from omnidit.cli import build_parser; build_parser(''); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
