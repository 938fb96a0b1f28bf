"""Schedules and samplers as plain functions (k-diffusion style) for flow-matching DiTs,
the flow-matching conventions (flow.py) and the denoiser that owns them (denoiser.py)."""

from omnidit.sampling.denoiser import Denoiser, Text, cat_text
from omnidit.sampling.flow import flow_loss, noised, training_sigmas, velocity_target, x0_from_velocity
from omnidit.sampling.guidance import GUIDANCE_MODES, cfg_combine, embedded_guidance
from omnidit.sampling.noise import NoiseSampler, batch_noise, seeded_noise
from omnidit.sampling.samplers import SAMPLERS, Cancelled, run_sampler, sample_euler, sample_x0_renoise
from omnidit.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    custom_sigmas,
    flow_sigmas,
    shift_sigmas,
    timesteps_from_sigmas,
)

__all__ = [
    "GUIDANCE_MODES",
    "NUM_TRAIN_TIMESTEPS",
    "SAMPLERS",
    "Cancelled",
    "Denoiser",
    "NoiseSampler",
    "Text",
    "batch_noise",
    "cat_text",
    "cfg_combine",
    "custom_sigmas",
    "embedded_guidance",
    "flow_loss",
    "flow_sigmas",
    "noised",
    "run_sampler",
    "sample_euler",
    "sample_x0_renoise",
    "seeded_noise",
    "shift_sigmas",
    "timesteps_from_sigmas",
    "training_sigmas",
    "velocity_target",
    "x0_from_velocity",
]
