"""Pipeline end to end: parity with diffusers' HunyuanVideoPipeline, and the generate() contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_hunyuan import make_tiny_hunyuan_pipeline_dir
from tiny_models import make_tiny_model_dir

from omnidit import Pipeline
from omnidit.generation import read_video
from omnidit.sampling import Cancelled


@pytest.fixture(scope="module")
def hunyuan_dir(tmp_path_factory):
    return make_tiny_hunyuan_pipeline_dir(tmp_path_factory.mktemp("hunyuan"), seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return Pipeline.from_pretrained(tiny_dir, device="cpu")


def _diffusers_frames(path, prompt, *, frames, size, steps, guidance, seed, negative=None, true_cfg=1.0):
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, negative_prompt=negative, true_cfg_scale=true_cfg, guidance_scale=guidance, height=size,
               width=size, num_frames=frames, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(seed), output_type="pil").frames[0]
    return np.stack([np.asarray(im) for im in out])


@pytest.mark.parametrize("frames,negative", [(5, None), (1, "blue"), (9, "blue")])
def test_matches_diffusers_hunyuan_pipeline(hunyuan_dir, frames, negative):
    """Same folder, same seed: omnidit's frames equal diffusers' within 1/255."""
    kw = dict(frames=frames, size=32, steps=3, guidance=6.0, seed=0)
    true_cfg = 3.0 if negative else 1.0
    ref = _diffusers_frames(hunyuan_dir, "a red cat walks", negative=negative, true_cfg=true_cfg, **kw)
    pipe = Pipeline.from_pretrained(hunyuan_dir, device="cpu")
    gen = pipe.generate("a red cat walks", frames=frames, height=32, width=32, steps=3, guidance=6.0, seed=0,
                        negative_prompt=negative, true_cfg_scale=true_cfg if negative else None)
    assert gen.frames.shape == ref.shape == (frames, 32, 32, 3)
    assert ref.std() > 5  # a real picture, not a flat one
    diff = np.abs(gen.frames.astype(int) - ref.astype(int)).max()
    assert diff <= 1, diff


def test_seeded_and_batch_independent(tiny):
    a = tiny.generate("a red circle on a black background", seed=3)
    b = tiny.generate("a red circle on a black background", seed=3)
    c = tiny.generate("a red circle on a black background", seed=4)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    # In a batch with another prompt, each sample equals its single-sample run.
    many = tiny.generate_many(["a red circle on a black background", "a blue square on a white background"],
                              seeds=[3, 5])
    assert np.abs(many[0].frames.astype(int) - a.frames.astype(int)).max() <= 1
    single = tiny.generate("a blue square on a white background", seed=5)
    assert np.abs(many[1].frames.astype(int) - single.frames.astype(int)).max() <= 1


def test_generate_latents_then_decode_is_generate_many(tiny):
    """`omnidit eval --decoder` decodes these latents with other VAEs: same frames."""
    prompts = ["a red circle", "a blue square on a white background"]
    latents, req, seeds = tiny.generate_latents(prompts, seeds=[3, 4], frames=5)
    assert latents.shape == (2, *tiny.vae.latent_shape(5, req.height, req.width)) and seeds == [3, 4]
    frames = tiny.decode(latents)
    for f, g in zip(frames, tiny.generate_many(prompts, seeds=[3, 4], frames=5)):
        np.testing.assert_array_equal(f, g.frames)


def test_prompt_changes_output(tiny):
    a = tiny.generate("a red circle on a black background", seed=0)
    b = tiny.generate("a green triangle on a white background", seed=0)
    assert not np.array_equal(a.frames, b.frames)


def test_defaults_and_info(tiny):
    gen = tiny.generate("a red circle on a black background", seed=0)
    assert gen.frames.dtype == np.uint8 and gen.frames.shape == (1, 32, 32, 3)
    assert gen.info["steps"] == tiny.config.steps and gen.info["seed"] == 0


def test_callback_progress_and_cancel(tiny):
    seen = []
    tiny.generate("a red circle on a black background", steps=3, seed=0, callback=lambda i, n, x: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    calls = []

    def cancel(i, n, x):
        calls.append(i)
        raise Cancelled

    with pytest.raises(Cancelled):
        tiny.generate("a red circle on a black background", steps=3, seed=0, callback=cancel)
    assert calls == [1]


@pytest.mark.parametrize("kwargs,field", [
    (dict(height=30), "height"), (dict(width=4096), "width"), (dict(frames=4), "frames"),
    (dict(frames=33), "frames"), (dict(steps=0), "steps"), (dict(guidance=-1.0), "guidance"),
])
def test_bad_arguments_name_the_field(tiny, kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny.generate("a red circle on a black background", **kwargs)


def test_save_png_mp4_gif(tiny, tmp_path):
    img = tiny.generate("a red circle on a black background", seed=0)
    png = img.save(tmp_path / "a.png")
    assert np.array_equal(read_video(png), img.frames)
    vid = tiny.generate("a red circle on a black background, moving left", frames=9, seed=0)
    assert vid.frames.shape == (9, 32, 32, 3)
    for suffix in ("mp4", "gif"):
        back = read_video(vid.save(tmp_path / f"v.{suffix}"))
        assert back.shape == vid.frames.shape
    with pytest.raises(ValueError, match="frames"):
        vid.save(tmp_path / "v.png")
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither a shipped model"):
        Pipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="model_index.json"):
        Pipeline.from_pretrained(tmp_path)
