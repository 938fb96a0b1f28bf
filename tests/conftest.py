"""Shared tiny fixtures. Both samplers are covered: `tiny_pipe` is parametrised over every
sampler a model folder may name, so a test that takes it runs once per sampler."""

from __future__ import annotations

import pytest
from tiny_models import make_tiny_model_dir

from omnidit.sampling import SAMPLERS


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, str]:
    """One tiny random model folder per sampler (same weights, seed 0), by sampler name."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: str(make_tiny_model_dir(root / name, sampling={"sampler": name})) for name in SAMPLERS}


@pytest.fixture(scope="session", params=sorted(SAMPLERS))
def tiny_sampler(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dirs, tiny_sampler):
    """A CPU Pipeline on the tiny model, once per sampler."""
    from omnidit import Pipeline

    return Pipeline.from_pretrained(tiny_model_dirs[tiny_sampler], device="cpu")


@pytest.fixture(scope="session")
def renoise_model_dir(tiny_model_dirs) -> str:
    """The tiny model with the stochastic x0-renoise sampler (the shipped default's sampler)."""
    return tiny_model_dirs["x0_renoise"]
