"""Image-to-video on HunyuanVideo-1.0-family models: the training-free first-frame condition
(sampling/first_frame.py, pipeline_image.py) and `Pipeline.generate(..., image=...)`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import assert_frames_close

from omnidit.request import RequestError
from omnidit.sampling import flow_sigmas, run_sampler, seeded_noise
from omnidit.sampling.first_frame import condition_first_frame

PROMPT = "a large red circle at the top left on a gray background, moving right"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _framewise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A velocity where each frame depends on itself alone, non-linear in x."""
    return torch.tanh(x) * 0.7 + 0.1 * sigma.view(-1, 1, 1, 1, 1)


@pytest.mark.parametrize("sampler", ["euler", "x0_renoise"])
def test_condition_lands_on_the_start_latent_and_leaves_other_frames_alone(sampler):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 2, 3, generator=g)  # [B, C, F', H', W'] initial noise
    z = torch.randn(3, 4, 1, 2, 3, generator=g)
    mask = torch.tensor([True, False, True])
    sigmas = flow_sigmas(4)
    fn = condition_first_frame(_framewise, z, x[:, :, :1], mask)
    got = run_sampler(sampler, fn, x, sigmas, noise_sampler=seeded_noise([1, 2, 3]))
    plain = run_sampler(
        sampler, _framewise, x, sigmas, noise_sampler=seeded_noise([1, 2, 3])
    )
    torch.testing.assert_close(
        got[mask, :, :1], z[mask], rtol=0, atol=1e-5
    )  # the start latents, exactly
    assert torch.equal(
        got[~mask], plain[~mask]
    )  # a sample without an image is untouched
    assert torch.equal(
        got[:, :, 1:], plain[:, :, 1:]
    )  # framewise model: later frames as without
    assert not torch.allclose(plain[mask, :, :1], z[mask], atol=1e-2)


def test_condition_shows_the_model_the_renoised_start_frame():
    z, eps = torch.full((1, 2, 1, 1, 1), 3.0), torch.full((1, 2, 1, 1, 1), -1.0)
    seen = []

    def model(x, sigma):
        seen.append((float(sigma[0]), x[0, 0, 0, 0, 0].item()))
        return torch.zeros_like(x)

    run_sampler(
        "euler",
        condition_first_frame(model, z, eps),
        torch.randn(1, 2, 3, 1, 1),
        flow_sigmas(3),
    )
    for s, first in seen:  # x_s = (1 - s) z + s eps at every step
        assert first == pytest.approx((1 - s) * 3.0 + s * -1.0, abs=1e-6)


def test_condition_checks_its_shapes():
    with pytest.raises(ValueError, match="1, H, W"):
        condition_first_frame(
            _framewise, torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2)
        )
    with pytest.raises(ValueError, match="mask"):
        condition_first_frame(
            _framewise,
            torch.zeros(2, 4, 1, 2, 2),
            torch.zeros(2, 4, 1, 2, 2),
            torch.ones(3),
        )


@pytest.fixture(scope="module")
def tiny(renoise_model_dir):
    """The tiny model with the stochastic sampler (per-sample seeded noise) and CFG (guidance_mode cfg)."""
    from omnidit import Pipeline

    return Pipeline.from_pretrained(renoise_model_dir, device="cpu")


@pytest.fixture(scope="module")
def start_image() -> np.ndarray:
    """A frame of a world scene at the tiny model's 32x32."""
    from omnidit.shapes import parse_prompt, render

    return render(parse_prompt(PROMPT), frames=1, size=32)[0]


def test_image_is_deterministic_and_changes_the_video(tiny, start_image):
    a = tiny.generate(PROMPT, frames=5, seed=3, image=start_image)
    b = tiny.generate(PROMPT, frames=5, seed=3, image=Image.fromarray(start_image))
    t2v = tiny.generate(PROMPT, frames=5, seed=3)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, t2v.frames)


def test_a_batch_with_and_without_images_equals_each_alone(tiny, start_image, tmp_path):
    other = np.ascontiguousarray(start_image[::-1])  # a second image
    Image.fromarray(other).save(tmp_path / "other.png")
    prompts = [
        PROMPT,
        "a small blue square moving up",
        "a green triangle at the bottom",
    ]
    images = [start_image, None, tmp_path / "other.png"]
    got = tiny.generate_many(prompts, seeds=[5, 6, 7], frames=5, image=images)
    for p, s, im, g in zip(prompts, [5, 6, 7], images, got):
        alone = tiny.generate(p, frames=5, seed=s, image=im)
        assert_frames_close(g.frames, alone.frames)
    one_for_all = tiny.generate_many(
        prompts[:2], seeds=[5, 6], frames=5, image=start_image
    )
    assert_frames_close(one_for_all[0].frames, got[0].frames)


@pytest.mark.parametrize(
    "bad, says",
    [
        ("/no/such/start.png", "is not a file"),
        (np.zeros((4, 4, 2), np.uint8), "array must be"),
        (3, "must be a PIL image"),
        ([np.zeros((8, 8, 3), np.uint8)] * 3, "3 entries for 2 prompts"),
    ],
)
def test_bad_images_are_refused_naming_the_field(tiny, bad, says):
    with pytest.raises(RequestError, match=says) as e:
        tiny.generate_many(["a", "b"], frames=5, image=bad)
    assert e.value.field == "image"


def test_an_image_needs_more_than_one_frame(tiny, start_image):
    with pytest.raises(RequestError, match="frames > 1") as e:
        tiny.generate(PROMPT, image=start_image)
    assert e.value.field == "image"


@pytest.fixture(scope="module")
def shipped():
    from omnidit import Pipeline

    return {
        name: Pipeline.from_pretrained(name, device="cpu")
        for name in ("shapes-turbo", "shapes")
    }


@pytest.mark.parametrize(
    "name, steps", [("shapes-turbo", None), ("shapes", 4)]
)  # x0-renoise; Euler with CFG
def test_shipped_models_start_from_the_image(shipped, name, steps):
    """The video's first frame is the image after a VAE round trip (PSNR >= 25 dB); the rest moves."""
    from omnidit.shapes import parse_prompt, render, score
    from omnidit.tokenizers.image_input import image_to_video

    pipe = shipped[name]
    spec = parse_prompt(PROMPT)
    image = render(spec, frames=1, size=64)[0]
    gen = pipe.generate(PROMPT, frames=17, steps=steps, seed=1, image=image)
    round_trip = pipe.decode(pipe.vae.encode(image_to_video(Image.fromarray(image))))[
        0, 0
    ]
    assert psnr(gen.frames[0], round_trip) >= 25.0
    assert (
        score(gen.frames, spec)["motion"] == 1.0
    )  # later frames move as the prompt says


def test_start_image_encode_and_decode_get_the_pipelines_vae_axis(tiny, start_image, monkeypatch):
    """Under sequence parallelism a tiled encode splits across `Pipeline.vae_axis`: the start
    image's encode must be handed it like the decode is."""
    from types import SimpleNamespace

    from omnidit import Pipeline

    axis = SimpleNamespace(world_size=1)  # one process: the VAE takes its unsplit path
    monkeypatch.setattr(Pipeline, "vae_axis", property(lambda self: axis))
    seen = []
    for op in ("encode", "decode"):
        real = getattr(tiny.vae, op)

        def spy(x, *args, _real=real, _op=op, **kwargs):
            seen.append((_op, kwargs.get("axis")))
            return _real(x, *args, **kwargs)

        monkeypatch.setattr(tiny.vae, op, spy)
    tiny.generate(PROMPT, frames=5, seed=3, steps=2, image=start_image)
    assert seen == [("encode", axis), ("decode", axis)]
