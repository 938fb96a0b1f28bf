"""Prompt lines of a batch job: JSON objects -> typed `BatchItem`s, or `LineError`s naming the line.

A line is `{"id"?, "prompt", "frames"?, "size"? ("WxH"), "seed"?, "steps"?, "guidance"?,
"negative_prompt"?}`. Only what can be judged without the model is checked here; the model's
own limits (size multiple, max frames) are checked by `Pipeline.check` on the worker.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

KEYS = ("id", "prompt", "frames", "size", "seed", "steps", "guidance", "negative_prompt")
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")
SEED_MAX = 2**63 - 1
TEMPORAL_RATIO = 4  # frames must be 1 mod 4 (the video VAE's temporal compression)


@dataclass(frozen=True)
class BatchItem:
    """One validated request. `None` means the model's default; `seed` is always resolved."""

    id: str
    line: int
    prompt: str
    seed: int
    frames: int = 1
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None

    @property
    def suffix(self) -> str:
        return ".png" if self.frames == 1 else ".mp4"

    @property
    def filename(self) -> str:
        return self.id + self.suffix

    @property
    def group_key(self) -> tuple:
        """Items with equal keys can share one `generate_many` call (all its shared arguments)."""
        return (self.frames, self.width, self.height, self.steps, self.guidance, self.negative_prompt)

    def params(self) -> dict:
        return {"frames": self.frames, "width": self.width, "height": self.height, "steps": self.steps,
                "guidance": self.guidance, "negative_prompt": self.negative_prompt}

    def fingerprint(self, model: str) -> str:
        """What the output depends on: a rerun skips an id only when this is unchanged."""
        d = asdict(self)
        d.pop("line")  # moving a line within the file does not change its output
        return _sha1({"item": d, "model": model})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LineError:
    """A line that is not a valid request; `key` identifies its text so reruns report it once."""

    line: int
    message: str
    key: str
    id: str | None = None
    prompt: str | None = None


@dataclass
class ParsedPrompts:
    items: list[BatchItem]
    errors: list[LineError]


def derived_id(obj: dict) -> str:
    """Id of a line without one: a hash of its canonical JSON.

    Content, not position: a rerun after lines were inserted, removed or reordered still maps
    each finished line to its own output (a `line-<n>` id would silently pair a finished
    output with whatever prompt moved onto line n). Whitespace and key order do not matter.
    """
    return "auto-" + _sha1(obj)[:16]


def derived_seed(item_id: str) -> int:
    """A seed from the id alone, so an unseeded line gives the same output on every run."""
    return int.from_bytes(hashlib.sha256(f"omnidit-seed:{item_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def parse_line(text: str, line: int) -> BatchItem | LineError:
    """One line (1-based number `line`) -> a `BatchItem`, or a `LineError` saying what is wrong."""
    key = _sha1(text.strip())

    def err(message: str, item_id=None, prompt=None) -> LineError:
        return LineError(line, f"line {line}: {message}", key, item_id if isinstance(item_id, str) else None,
                         prompt if isinstance(prompt, str) else None)

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return err(f"invalid JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return err(f"must be a JSON object, got {type(obj).__name__}")
    raw_id, raw_prompt = obj.get("id"), obj.get("prompt")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        return err(f"unknown keys {unknown}; allowed: {list(KEYS)}", raw_id, raw_prompt)
    try:
        item_id = _check_id(raw_id) if "id" in obj else derived_id(obj)
        width, height = _check_size(obj.get("size"))
        return BatchItem(
            id=item_id, line=line, prompt=_check_prompt(raw_prompt),
            seed=_int(obj, "seed", 0, SEED_MAX) if obj.get("seed") is not None else derived_seed(item_id),
            frames=_check_frames(obj.get("frames", 1)),
            width=width, height=height,
            steps=_int(obj, "steps", 1, 1000) if obj.get("steps") is not None else None,
            guidance=_check_guidance(obj.get("guidance")),
            negative_prompt=_check_negative(obj.get("negative_prompt")),
        )
    except ValueError as e:
        return err(str(e), raw_id, raw_prompt)


def parse_prompts(path: str | Path) -> ParsedPrompts:
    """Every non-blank line of a JSONL file; a repeated id is an error on its later lines."""
    items: list[BatchItem] = []
    errors: list[LineError] = []
    first_line: dict[str, int] = {}
    for n, raw in enumerate(Path(path).read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            errors.append(LineError(n, f"line {n}: not UTF-8 ({e.reason} at byte {e.start})", _sha1(raw.hex())))
            continue
        parsed = parse_line(text, n)
        if isinstance(parsed, BatchItem) and parsed.id in first_line:
            parsed = LineError(n, f"line {n}: duplicate id {parsed.id!r} (first on line {first_line[parsed.id]})",
                               _sha1(text.strip()), parsed.id, parsed.prompt)
        if isinstance(parsed, BatchItem):
            first_line[parsed.id] = n
            items.append(parsed)
        else:
            errors.append(parsed)
    return ParsedPrompts(items, errors)


# ---- field checks: each raises ValueError naming the field and what is allowed ----------------


def _check_id(v) -> str:
    if not isinstance(v, str) or not ID_RE.fullmatch(v) or v.startswith("."):
        raise ValueError(f"id must match [A-Za-z0-9._-]{{1,128}} and not start with '.', got {v!r}")
    return v


def _check_prompt(v) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"prompt must be a non-empty string, got {v!r}")
    return v


def _int(obj: dict, field: str, lo: int, hi: int) -> int:
    v = obj[field]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{field} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _check_frames(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (v - 1) % TEMPORAL_RATIO:
        raise ValueError(f"frames must be 1, 5, 9, 13, ... (1 mod {TEMPORAL_RATIO}), got {v!r}")
    return v


def _check_size(v) -> tuple[int | None, int | None]:
    if v is None:
        return None, None
    m = SIZE_RE.fullmatch(v) if isinstance(v, str) else None
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ValueError(f"size must be \"WxH\" with positive integers (e.g. \"512x512\"), got {v!r}")
    return int(m[1]), int(m[2])


def _check_guidance(v) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"guidance must be a number >= 0, got {v!r}")
    return float(v)


def _check_negative(v) -> str | None:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"negative_prompt must be a string, got {v!r}")
    return v


def _sha1(obj) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
