"""Prompt lines of a batch job: JSON objects -> typed `BatchItem`s, or `LineError`s naming the line.

A line is `{"id"?, "prompt", "frames"?, "size"? ("WxH"), "seed"?, "steps"?, "guidance"?,
"negative_prompt"?, "cache"? (a step-cache SPEC), "lora"? ({"adapter": scale}), "image"? (a start image: a path
relative to the JSONL file, or absolute; needs frames > 1)}`. Fields are checked by the request contract
(`omnidit.request`); with the model's temporal ratio (the runner passes it) frame counts are
checked here too, and the model's other limits (size multiple, max frames) by `Pipeline.check` on the worker.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from omnidit.request import (
    check_frames,
    check_guidance,
    check_negative_prompt,
    check_prompt,
    check_seed,
    check_steps,
    parse_cache,
    parse_loras,
    parse_size,
)

KEYS = ("id", "prompt", "frames", "size", "seed", "steps", "guidance", "negative_prompt", "cache", "lora", "image")
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


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
    cache: str | None = None  # normalised SPEC ("fbcache" -> "fbcache:0.1"), None: the model's default
    lora: str | None = None  # adapters as canonical JSON ({"name": scale} sorted, no zeros), None: the job's --lora
    image: str | None = None  # the start image's absolute path (image-to-video), read by the worker
    image_sha1: str | None = None  # its bytes' digest: a changed file is a changed line

    @property
    def suffix(self) -> str:
        return ".png" if self.frames == 1 else ".mp4"

    @property
    def filename(self) -> str:
        return self.id + self.suffix

    @property
    def group_key(self) -> tuple:
        """Items with equal keys can share one `generate_many` call (all its shared arguments)."""
        return (self.frames, self.width, self.height, self.steps, self.guidance, self.negative_prompt, self.cache,
                self.lora)  # different adapter sets never share a forward

    def params(self) -> dict:
        p = {"frames": self.frames, "width": self.width, "height": self.height, "steps": self.steps,
             "guidance": self.guidance, "negative_prompt": self.negative_prompt, "cache": self.cache,
             "lora": self.lora}
        return p if self.image is None else {**p, "image": self.image}

    def fingerprint(self, model: str, variant: dict | None = None) -> str:
        """What the output depends on: a rerun skips an id only when this is unchanged. `variant`: the
        job-wide settings that change outputs (runner.job_variant: weights, the --lora set)."""
        d = asdict(self)
        d.pop("line")  # moving a line within the file does not change its output
        if d["cache"] is None:
            d.pop("cache")  # lines without a cache keep the fingerprints they had before the key existed
        for key in ("lora", "image", "image_sha1"):
            if d[key] is None:
                d.pop(key)  # likewise lines without a lora or an image
        return _sha1({"item": d, "model": model, **({"variant": variant} if variant else {})})

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
    stage: str = "parse"  # or "moderation": a valid line the content policy blocked (omnidit/batch/safety.py)


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


def parse_line(text: str, line: int, *, temporal_ratio: int | None = None,
               loras: list[str] | None = None, base_dir: str | Path | None = None) -> BatchItem | LineError:
    """One line (1-based number `line`) -> a `BatchItem`, or a `LineError` saying what is wrong.
    `temporal_ratio`: the model VAE's, to check frame counts now (None: on the worker); `loras`: the
    adapter names a line may use (None: checked on the worker); `base_dir`: where a relative `image` is
    (the JSONL file's folder; None: the working directory)."""
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
        width, height = parse_size(obj["size"]) if obj.get("size") is not None else (None, None)
        frames = check_frames(obj.get("frames", 1), temporal_ratio or 1)  # ratio 1: any integer >= 1
        image, image_sha1 = _check_image(obj.get("image"), frames, base_dir)
        return BatchItem(
            id=item_id, line=line, prompt=check_prompt(raw_prompt),
            seed=check_seed(obj["seed"]) if obj.get("seed") is not None else derived_seed(item_id),
            frames=frames, width=width, height=height,
            steps=check_steps(obj["steps"]) if obj.get("steps") is not None else None,
            guidance=check_guidance(obj["guidance"]) if obj.get("guidance") is not None else None,
            negative_prompt=check_negative_prompt(obj.get("negative_prompt")),
            cache=str(parse_cache(obj["cache"])) if obj.get("cache") is not None else None,
            lora=json.dumps(parse_loras(obj["lora"], loras), sort_keys=True) if obj.get("lora") is not None else None,
            image=image, image_sha1=image_sha1,
        )
    except ValueError as e:
        return err(str(e), raw_id, raw_prompt)


def parse_prompts(path: str | Path, *, temporal_ratio: int | None = None,
                  loras: list[str] | None = None) -> ParsedPrompts:
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
        parsed = parse_line(text, n, temporal_ratio=temporal_ratio, loras=loras, base_dir=Path(path).parent)
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
def _check_image(value, frames: int, base_dir: str | Path | None) -> tuple[str | None, str | None]:
    """A line's `image` -> (absolute path, sha1 of its bytes), the file read as an image now."""
    if value is None:
        return None, None
    from omnidit.request import RequestError
    from omnidit.tokenizers.image_input import load_image

    if not isinstance(value, str) or not value.strip():
        raise RequestError("image", f"image must be a path to an image file, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or ".") / path
    path = path.resolve()
    load_image(path)  # RequestError naming the field: not a file, not an image
    if frames == 1:
        raise RequestError("image", "image is the first frame of a video: set frames > 1")
    return str(path), hashlib.sha1(path.read_bytes()).hexdigest()



def _check_id(v) -> str:
    if not isinstance(v, str) or not ID_RE.fullmatch(v) or v.startswith("."):
        raise ValueError(f"id must match [A-Za-z0-9._-]{{1,128}} and not start with '.', got {v!r}")
    return v


def _sha1(obj) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
