"""What every `omnidit` command shares: the one-line user error (exit 2), argument types,
the service's default addresses, and flags derived from config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Callable, NoReturn, Union

# Shared by `serve`, `up` and `demo`, so the demo's default --api is where the service listens.
DEFAULT_HOST = "127.0.0.1"
SERVICE_PORT = 8000
DEMO_PORT = 7860


class UserError(Exception):
    """A mistake in the user's input: reported in one line, exit code 2, no traceback."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command: a UserError is one line on stderr and exit code 2, Ctrl-C is 130."""
    try:
        return args.func(args)
    except UserError as e:
        print(f"omnidit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def bounded_int(name: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when `high` is None)."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if high is not None and not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{name} must be in [{low}, {high}], got {v}")
        if v < low:
            raise argparse.ArgumentTypeError(f"{name} must be >= {low}, got {v}")
        return v

    return parse


def positive_int(name: str) -> Callable[[str], int]:
    return bounded_int(name, 1)


def port_number(name: str) -> Callable[[str], int]:
    return bounded_int(name, 1, 65535)


class ConfigFlags:
    """Flags for the fields of a config dataclass, so each default lives once: in the config.

        flags = ConfigFlags(parser, VAETrainConfig)
        flags.add("--minutes", field="max_minutes", help="...")   # type float, default 15.0
        cfg = flags.build(args, out=...)                            # VAETrainConfig(max_minutes=..., out=...)

    A field's type gives the flag's type (`X | None` gives X, `tuple[T, T]` two values, a bool
    store_true, or store_false when the default is True); `options` are argparse's, except
    `default`, which is the config's. The config's own checks then run in `build`.
    """

    def __init__(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: type) -> None:
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"{config!r} is not a dataclass")
        self.parser = parser
        self.config = config
        self.fields = {f.name: f for f in dataclasses.fields(config)}
        self.hints = typing.get_type_hints(config)
        self.dests: list[str] = []

    def add(self, flag: str, *, field: str | None = None, **options: Any) -> None:
        name = field or flag.lstrip("-").replace("-", "_")
        if name not in self.fields:
            raise TypeError(f"{self.config.__name__} has no field {name!r} (for {flag})")
        if "default" in options:
            raise TypeError(f"{flag}: the default is {self.config.__name__}.{name}'s, not the flag's")
        default = field_default(self.fields[name])
        derived = flag_options(self.hints[name], default, flag)
        if "choices" in options:  # argparse then shows {a,b} as the metavar
            derived.pop("metavar", None)
        if default is not None and derived.get("action") is None:  # the config's default, seen from --help
            help_text = options.get("help")
            options["help"] = f"{help_text} (default: %(default)s)" if help_text else "default: %(default)s"
        self.parser.add_argument(flag, dest=name, default=default,
                                 **{k: v for k, v in {**derived, **options}.items() if v is not None})
        self.dests.append(name)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """{field: parsed value} of the flags added here (nargs lists back as tuples)."""
        return {n: tuple(v) if isinstance(v, list) else v for n, v in ((n, getattr(args, n)) for n in self.dests)}

    def build(self, args: argparse.Namespace, **values: Any) -> Any:
        """The config from the parsed flags, with `values` for the fields the command sets itself."""
        return self.config(**{**self.values(args), **values})


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name!r} has no default: give it as a required flag or positional")


def flag_options(hint: Any, default: Any, flag: str) -> dict[str, Any]:
    """argparse options (type, nargs, action, metavar) for a field annotated `hint`."""
    metavar = flag.lstrip("-").upper().replace("-", "_")
    origin, parts = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        rest = [p for p in parts if p is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{flag}: no flag type for {hint!r}")
        hint, origin, parts = rest[0], typing.get_origin(rest[0]), typing.get_args(rest[0])
    if hint is bool:
        return {"action": "store_false" if default else "store_true"}
    if origin is tuple and parts and Ellipsis not in parts and len(set(parts)) == 1:
        return {"type": parts[0], "nargs": len(parts), "metavar": metavar}
    if hint in (int, float, str):
        return {"type": hint, "metavar": metavar}
    raise TypeError(f"{flag}: no flag type for {hint!r}")
