"""The content-safety flags `generate` and `batch` share (`serve` takes them from ServeSettings):
--moderation, --audit-log, --label-producer, --visible-label(-frames, -font)."""

from __future__ import annotations

import argparse
from pathlib import Path

from omnidit.cli.common import UserError


def add_safety_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("content safety and labelling (README: Content safety and labelling)")
    g.add_argument("--moderation", default=None, metavar="FILE",
                   help="a JSON/YAML content policy: prompts checked before generating, outputs before writing")
    g.add_argument("--audit-log", default=None, metavar="FILE",
                   help="moderation decisions as JSON lines (default: moderation-audit.jsonl beside the output)")
    g.add_argument("--label-producer", default="omnidit", help="ContentProducer of the AIGC label (default: %(default)s)")
    g.add_argument("--visible-label", default=None, metavar="TEXT", help="draw TEXT in a corner of the output")
    g.add_argument("--visible-label-frames", default="ends", choices=("ends", "all"),
                   help="video frames the visible label goes on (default: first and last)")
    g.add_argument("--visible-label-font", default=None, metavar="TTF", help="a TrueType font (needed for CJK text)")


def moderator(args: argparse.Namespace, default_audit: Path):
    """The Moderator of --moderation (None without it); a UserError for a bad policy."""
    if args.moderation is None:
        return None
    from omnidit.safety import AuditLog, Moderator, load_policy, prompt_key

    audit = Path(args.audit_log) if args.audit_log else default_audit
    try:
        return Moderator(load_policy(args.moderation), audit=AuditLog(audit, prompt_key(audit.with_suffix(".key"))))
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None


def check_visible_label(args: argparse.Namespace) -> None:
    if args.visible_label is not None and not args.visible_label.strip():
        raise UserError("--visible-label must be non-empty text")
    if args.visible_label_font is not None and not Path(args.visible_label_font).is_file():
        raise UserError(f"--visible-label-font {args.visible_label_font!r} does not exist")
    if not args.label_producer.strip():
        raise UserError("--label-producer must be non-empty")
