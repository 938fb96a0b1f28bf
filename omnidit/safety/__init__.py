"""Content safety and AIGC labelling: policies, the moderation hook (prompts and outputs), the audit
log, and the implicit (metadata) and explicit (visible) labels written on every output.

Nothing here imports the rest of omnidit but `omnidit.files`, so the pipeline's `Generation`, the
service, batch jobs and the CLI all use the same code (tests/test_layers.py places it on floor 1).
"""

from omnidit.safety.audit import AuditLog, prompt_hash, prompt_key
from omnidit.safety.labels import aigc_label, draw_visible_label, read_label
from omnidit.safety.moderation import ContentBlocked, Moderator, check_level
from omnidit.safety.policy import LEVELS, Policy, PolicyError, load_policy, parse_policy

__all__ = [
    "LEVELS", "AuditLog", "ContentBlocked", "Moderator", "Policy", "PolicyError", "aigc_label", "check_level",
    "draw_visible_label", "load_policy", "parse_policy", "prompt_hash", "prompt_key", "read_label",
]
