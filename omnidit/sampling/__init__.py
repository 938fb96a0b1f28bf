"""Schedules and samplers as plain functions (k-diffusion style) for flow-matching DiTs."""

from omnidit.sampling.guidance import cfg_combine, embedded_guidance
from omnidit.sampling.samplers import Cancelled, sample_euler, sample_x0_renoise
from omnidit.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    custom_sigmas,
    flow_sigmas,
    shift_sigmas,
    timesteps_from_sigmas,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "Cancelled",
    "cfg_combine",
    "custom_sigmas",
    "embedded_guidance",
    "flow_sigmas",
    "sample_euler",
    "sample_x0_renoise",
    "shift_sigmas",
    "timesteps_from_sigmas",
]
