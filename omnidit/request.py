"""The request contract, once: the limits of a generation request and the checks that name the field.

`Pipeline.check`, the HTTP schemas (`serving/schemas.py`) and batch lines (`batch/lines.py`)
all validate through these functions, so the service, the CLI and batch jobs accept the same
values. A failed check raises `RequestError`, a ValueError that carries the field as data
(`.field`), so the HTTP layer names `param` without parsing the message.

Model-dependent limits (size multiple and maximum, frame count, temporal ratio) come from the
model folder's `PipelineConfig` and its VAE; these are the hard caps for any model.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**31 - 1  # seeds are in [0, MAX_SEED] everywhere (HTTP, batch lines, derived seeds)
MAX_STEPS = 1000
MAX_GUIDANCE = 30.0
SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")


class RequestError(ValueError):
    """A request field has a value outside what is allowed; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_prompt(v, field: str = "prompt") -> str:
    if not isinstance(v, str) or not v.strip():
        raise RequestError(field, f"{field} must be a non-empty string, got {v!r}")
    if len(v) > MAX_PROMPT_CHARS:
        raise RequestError(field, f"{field} must be at most {MAX_PROMPT_CHARS} characters, got {len(v)}")
    return v


def check_negative_prompt(v) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise RequestError("negative_prompt", f"negative_prompt must be a string, got {v!r}")
    if len(v) > MAX_PROMPT_CHARS:
        raise RequestError("negative_prompt", f"negative_prompt must be at most {MAX_PROMPT_CHARS} characters, "
                                              f"got {len(v)}")
    return v


def check_seed(v) -> int:
    if not _is_int(v) or not 0 <= v <= MAX_SEED:
        raise RequestError("seed", f"seed must be an integer in [0, {MAX_SEED}], got {v!r}")
    return int(v)


def check_steps(v, top: int = MAX_STEPS) -> int:
    """`top`: a deployment may cap steps lower (`serve --max-steps`)."""
    if not _is_int(v) or not 1 <= v <= top:
        raise RequestError("steps", f"steps must be an integer in [1, {top}], got {v!r}")
    return v


def check_guidance(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= MAX_GUIDANCE:
        raise RequestError("guidance", f"guidance must be a number in [0, {MAX_GUIDANCE:g}], got {v!r}")
    return float(v)


def parse_size(v, field: str = "size") -> tuple[int, int]:
    """`"WxH"` -> (width, height), positive integers; the model's limits are `check_dims`."""
    m = SIZE_RE.fullmatch(v) if isinstance(v, str) else None
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise RequestError(field, f'{field} must be "WIDTHxHEIGHT" with positive integers (e.g. "512x512"), got {v!r}')
    return int(m[1]), int(m[2])


def check_side(field: str, v, multiple: int, top: int) -> int:
    """A width or height: a multiple of `multiple` in [multiple, top]."""
    if not _is_int(v) or v < multiple or v > top or v % multiple:
        raise RequestError(field, f"{field} must be a multiple of {multiple} in [{multiple}, {top}], got {v!r}")
    return v


def check_frames(v, temporal_ratio: int, max_frames: int | None = None) -> int:
    """1 or 1 + k * temporal_ratio (the causal VAE keeps the first frame, then compresses time)."""
    t = temporal_ratio
    top = f" up to {max_frames}" if max_frames is not None else ""
    if not _is_int(v) or v < 1 or (v - 1) % t or (max_frames is not None and v > max_frames):
        raise RequestError("frames", f"frames must be 1, {1 + t}, {1 + 2 * t}, ...{top} (1 mod {t}), got {v!r}")
    return v


# ---- step caching (omnidit/dit/cache.py) ------------------------------------------------------

# Policy -> default threshold. On `shapes` (30 steps + CFG, BENCHMARKS.md "Step caching") each
# default runs about half the block passes at >= 49 dB PSNR against the uncached image; the larger
# thresholds measured there trade PSNR for speed. `omnidit eval --sweep cache=...` on 16 images and
# 4 videos (BENCHMARKS.md "Step caching: adherence per policy") kept 100 % of the uncached adherence
# at every default and at the doubled thresholds, so the defaults stay; that sample resolves adherence
# only in steps of 1/16 (images) and 1/4 (videos), so 95 % is not established at the n.
CACHE_DEFAULTS = {"fbcache": 0.1, "teacache": 0.1, "magcache": 0.06}
MAX_CACHE_THRESHOLD = 10.0
CACHE_OFF = "none"


@dataclass(frozen=True)
class CacheSpec:
    """A parsed cache SPEC: `"<policy>"` or `"<policy>:<threshold>"`."""

    policy: str
    threshold: float

    def __str__(self) -> str:
        return CACHE_OFF if self.policy == CACHE_OFF else f"{self.policy}:{self.threshold:g}"


def parse_cache(v, field: str = "cache") -> CacheSpec | None:
    """`None` -> None (the model's default applies); `"none"` -> CacheSpec("none", 0) (caching off);
    `"fbcache" | "teacache" | "magcache"`, optionally `":<threshold>"` in [0, MAX_CACHE_THRESHOLD]."""
    if v is None:
        return None
    allowed = f'"{CACHE_OFF}", ' + ", ".join(f'"{p}"' for p in CACHE_DEFAULTS) + ', each optionally ":<threshold>"'
    if isinstance(v, CacheSpec):
        v = str(v)
    if not isinstance(v, str):
        raise RequestError(field, f"{field} must be a string: {allowed}; got {v!r}")
    policy, sep, value = v.strip().partition(":")
    if policy == CACHE_OFF and not sep:
        return CacheSpec(CACHE_OFF, 0.0)
    if policy not in CACHE_DEFAULTS:
        raise RequestError(field, f"{field} policy must be one of {allowed}; got {v!r}")
    if not sep:
        return CacheSpec(policy, CACHE_DEFAULTS[policy])
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold) or not 0 <= threshold <= MAX_CACHE_THRESHOLD:
        raise RequestError(field, f"{field} threshold must be a number in [0, {MAX_CACHE_THRESHOLD:g}] "
                                  f"(e.g. \"{policy}:{CACHE_DEFAULTS[policy]}\"), got {v!r}")
    return CacheSpec(policy, threshold)


# ---- LoRA adapters (omnidit/dit/lora.py) ---------------------------------------------------------

MAX_LORAS = 8  # adapters in one request
MAX_LORA_SCALE = 10.0


def parse_loras(v, available: Collection[str] | None = None, field: str = "lora") -> dict[str, float] | None:
    """`None` -> None (whatever the model has active); `{name: scale, ...}` -> that set sorted by name,
    zero scales dropped (so equal settings compare equal; `{}` means no adapter). Names must be
    among `available` when it is given; |scale| <= MAX_LORA_SCALE."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise RequestError(field, f'{field} must be an object {{"adapter name": scale, ...}}, got {v!r}')
    if len(v) > MAX_LORAS:
        raise RequestError(field, f"{field} may name at most {MAX_LORAS} adapters, got {len(v)}")
    out: dict[str, float] = {}
    for name in sorted(v, key=str):
        s = v[name]
        if not isinstance(name, str) or not name:
            raise RequestError(field, f"{field} keys must be adapter names, got {name!r}")
        if available is not None and name not in available:
            raise RequestError(field, f"{field}: unknown adapter {name!r}; available: {sorted(available) or 'none'}")
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or abs(s) > MAX_LORA_SCALE:
            raise RequestError(field, f"{field}[{name!r}] must be a number in [-{MAX_LORA_SCALE:g}, "
                                      f"{MAX_LORA_SCALE:g}], got {s!r}")
        if s != 0:
            out[name] = float(s)
    return out
