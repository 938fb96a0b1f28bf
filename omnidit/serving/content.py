"""The service's content safety glue (omnidit/safety does the work): the moderator of each side,
the AIGC label and the visible label of each output, and the prompt kept in a finished job's record.

- The ingress checks prompts and image inputs (`moderator(settings, "prompt")`: the prompt and input
  stages) before anything is queued or stored.
- A generator replica checks outputs (`moderator(settings, "output")`) after decoding, before
  anything is encoded, returned or written; then it draws the visible label (if configured) and
  encodes with the implicit label.
- Both append to one audit log (`<data_dir>/audit.jsonl` unless `audit_log` says where), with the
  prompt as an HMAC under the prompt key (`$OMNIDIT_PROMPT_KEY`, else `<data_dir>/prompt.key`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omnidit.safety import AuditLog, ContentBlocked, Moderator, aigc_label, draw_visible_label, load_policy
from omnidit.safety import prompt_hash as _prompt_hash
from omnidit.safety import prompt_key as _prompt_key
from omnidit.safety.labels import content_id, encode_image
from omnidit.serving.errors import ApiError

STORE_PROMPTS = ("full", "hash")


def prompt_key(settings) -> bytes:
    return _prompt_key(settings.data_path / "prompt.key")


def audit_path(settings) -> Path:
    return Path(settings.audit_log).expanduser() if settings.audit_log else settings.data_path / "audit.jsonl"


def moderator(settings, stage: str) -> Moderator | None:
    """The policy's checks of one side, or None without `--moderation`: "prompt" is the ingress's, before
    any work (prompts, and image inputs by the image classifier, loaded on the first one); "output" a
    replica's, after decoding."""
    if settings.moderation is None:
        return None
    return Moderator(load_policy(settings.moderation), audit=AuditLog(audit_path(settings), prompt_key(settings)),
                     stages=("prompt", "input") if stage == "prompt" else (stage,))


def blocked_error(e: ContentBlocked) -> ApiError:
    return ApiError(400, str(e), param=e.param, code=e.code)


def blocked_result(e: ContentBlocked) -> dict:
    """A replica's error result for a blocked output (the ingress raises it as `blocked_error` does)."""
    return {"status": 400, "message": str(e), "param": e.param, "code": e.code}


def finish_frames(settings, frames: np.ndarray) -> np.ndarray:
    """Frames with the visible label drawn, when `visible_label` is set."""
    if not settings.visible_label:
        return frames
    return draw_visible_label(frames, settings.visible_label, which=settings.visible_label_frames,
                              font=settings.visible_label_font)


def label(settings, model: str, produce_id: str | None = None) -> dict:
    return aigc_label(producer=settings.label_producer, produce_id=produce_id, model=model)


def image_bytes(settings, model: str, frame: np.ndarray, fmt: str, compression: int | None) -> bytes:
    """One finished image, visible label drawn, encoded with its implicit label."""
    frame = finish_frames(settings, frame[None])[0]
    produce_id = content_id(frame, model, fmt, compression)  # the same image twice: the same bytes
    return encode_image(frame, fmt, label(settings, model, produce_id), quality=compression)


def stored_prompt(settings, key: bytes, prompt: str) -> str:
    """What a finished job's record keeps: the text (`store_prompts: full`) or its keyed hash."""
    return _prompt_hash(key, prompt) if settings.store_prompts == "hash" else prompt
