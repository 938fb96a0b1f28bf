"""The unified backbone: our HunyuanVideo transformer (weight-compatible with diffusers')."""

from omnidit.dit.attention import BACKENDS, JointAttentionFn, JointLayout
from omnidit.dit.config import PRESETS, DiTConfig, preset
from omnidit.dit.model import DiT

__all__ = ["BACKENDS", "DiT", "DiTConfig", "JointAttentionFn", "JointLayout", "PRESETS", "preset"]
