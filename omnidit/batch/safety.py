"""Content safety in batch jobs (omnidit/safety does the work).

- Prompts: the driver checks every parsed line before any work is planned; a blocked line becomes
  a manifest row `status: "error"`, `stage: "moderation"` naming the category (the prompt is left
  out of that row), and is not generated.
- Outputs: each generator actor checks its outputs after decoding; a blocked one is an error row
  and no file. Then the visible label (if configured) and the AIGC label (`label_producer`).
- Both append to `<out>/moderation-audit.jsonl` (or `audit_log`) with the prompt as an HMAC under
  `$OMNIDIT_PROMPT_KEY`, else the key in `<audit log>.key`.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from omnidit.batch.lines import LineError, ParsedPrompts
from omnidit.safety import (AuditLog, ContentBlocked, Moderator, aigc_label, draw_visible_label, load_policy,
                            prompt_key)

AUDIT_NAME = "moderation-audit.jsonl"


def safety_options(cfg) -> dict:
    """The BatchConfig fields an actor needs (plain values: Ray ships them)."""
    return {"moderation": None if cfg.moderation is None else str(Path(cfg.moderation).resolve()),
            "audit_log": str(audit_path(cfg.out, cfg.audit_log)), "label_producer": cfg.label_producer,
            "visible_label": cfg.visible_label, "visible_label_frames": cfg.visible_label_frames,
            "visible_label_font": cfg.visible_label_font}


def audit_path(out, audit_log: str | None) -> Path:
    return Path(audit_log).resolve() if audit_log else Path(out).resolve() / AUDIT_NAME


def moderator(options: dict, stage: str) -> Moderator | None:
    if not options.get("moderation"):
        return None
    audit = Path(options["audit_log"])
    return Moderator(load_policy(options["moderation"]), audit=AuditLog(audit, prompt_key(audit.with_suffix(".key"))),
                     stages=(stage,))


def moderate_prompts(parsed: ParsedPrompts, mod: Moderator | None, model: str) -> ParsedPrompts:
    """Blocked lines move from `items` to `errors` (stage "moderation" in the manifest)."""
    if mod is None:
        return parsed
    items, errors = [], list(parsed.errors)
    for it in parsed.items:
        try:
            mod.check_prompt({"prompt": it.prompt, "negative_prompt": it.negative_prompt}, request_id=it.id)
            items.append(it)
        except ContentBlocked as e:
            key = hashlib.sha1(("moderation:" + it.fingerprint(model)).encode()).hexdigest()
            errors.append(LineError(line=it.line, message=str(e), key=key, id=it.id, prompt=None, stage="moderation"))
    return replace(parsed, items=items, errors=errors)


def finisher(options: dict):
    """`finish(gen, item)` for generate_chunk: the output hook (raises ContentBlocked), the visible
    label, the AIGC label (ProduceID from the content, so a resumed job writes the same bytes)."""
    mod = moderator(options, "output")

    def finish(gen, item) -> None:
        if mod is not None:
            mod.check_output(gen.frames, prompt=item.prompt, request_id=item.id)
        if options.get("visible_label"):
            gen.frames = draw_visible_label(gen.frames, options["visible_label"],
                                            which=options.get("visible_label_frames", "ends"),
                                            font=options.get("visible_label_font"))
        produce_id = hashlib.sha256(gen.frames.tobytes() + item.fingerprint(gen.info.get("model", "")).encode())
        gen.info["aigc"] = aigc_label(producer=options.get("label_producer") or "omnidit",
                                      produce_id=produce_id.hexdigest()[:32], model=gen.info.get("model"))

    return finish
