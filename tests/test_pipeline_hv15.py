"""HunyuanVideo-1.5 folders through omnidit: parity with diffusers' HunyuanVideo15Pipeline and
HunyuanVideo15ImageToVideoPipeline (text encoders, image input, folder defaults, frames)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_hunyuan15_pipeline import make_tiny_hv15_pipeline_dir
from tolerances import assert_frames_close, assert_rel_close

from omnidit.model_folder import open_model
from omnidit.pipeline_config import bucket_for, read_hv15_pipeline_config
from omnidit.request import RequestError
from omnidit.tokenizers.text_hv15 import HV15_CROP_START, HV15_SYSTEM_MESSAGE, HunyuanVideo15TextEncoder, glyph_text

GLYPH_PROMPT = 'a red cat with a sign that says "OPEN" and “shop”'


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory):
    return make_tiny_hv15_pipeline_dir(tmp_path_factory.mktemp("hv15_t2v"), task="t2v")


@pytest.fixture(scope="module")
def i2v_dir(tmp_path_factory):
    # The step-distilled I2V variant's MeanFlow input is exercised too.
    return make_tiny_hv15_pipeline_dir(tmp_path_factory.mktemp("hv15_i2v"), task="i2v", use_meanflow=True, seed=1)


@pytest.fixture(scope="module")
def start_image():
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((40, 70, 3)) * 255).astype(np.uint8))  # 70 x 40: a 32 x 48 bucket


def _diffusers(path, task):
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline

    pipe = (HunyuanVideo15ImageToVideoPipeline if task == "i2v" else HunyuanVideo15Pipeline).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_prompt_template_and_glyph_text_match_diffusers():
    import inspect

    from diffusers import HunyuanVideo15Pipeline
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import extract_glyph_texts

    default = inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters
    assert HV15_SYSTEM_MESSAGE == default["system_message"].default
    assert HV15_CROP_START == default["crop_start"].default
    for p in [GLYPH_PROMPT, "no quotes here", 'twice "A" then "A" and "B"', 'one "x"', 'empty "" quotes',
              "“curly” only", 'unclosed "quote']:
        assert glyph_text(p) == extract_glyph_texts(p), p


def test_text_encoder_matches_diffusers_encode_prompt(t2v_dir):
    pipe = _diffusers(t2v_dir, "t2v")
    prompts = [GLYPH_PROMPT, "a dog walks", ""]
    with torch.no_grad():
        ref = pipe.encode_prompt(prompts, device=torch.device("cpu"), batch_size=len(prompts))
    enc = HunyuanVideo15TextEncoder.from_pipeline_dir(t2v_dir)
    # The tiny tokenizer's template prefix is the real one's 108 tokens: the crop keeps the prompt only.
    chat = [{"role": "system", "content": HV15_SYSTEM_MESSAGE}, {"role": "user", "content": "a"}]
    ids = enc.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert enc.tokenizer.convert_ids_to_tokens(ids["input_ids"])[HV15_CROP_START] == "a"
    got = enc.encode(prompts)
    assert got.hidden_states.shape == (3, 1000, 16) and got.hidden_states_2.shape == (3, 256, 16)
    assert got.pooled.shape == (3, 0)
    for mine, theirs in zip((got.hidden_states, got.hidden_states_2), (ref[0], ref[2])):
        assert_rel_close(mine, theirs)
    assert torch.equal(got.attention_mask, ref[1].long()) and torch.equal(got.attention_mask_2, ref[3].long())
    assert got.attention_mask_2[0].sum() > 0 and got.attention_mask_2[1:].sum() == 0  # glyphs of row 0 only


def test_cfg_batches_both_token_streams():
    """cond | uncond text with a second (glyph) stream: each stream padded to its longer length, mask 0."""
    from omnidit.sampling import cat_text

    def text(n, l1, l2):
        return (torch.randn(n, l1, 4), torch.ones(n, l1, dtype=torch.long), torch.zeros(n, 0),
                torch.randn(n, l2, 3), torch.ones(n, l2, dtype=torch.long))

    a, b = text(2, 5, 7), text(2, 6, 3)
    got = cat_text(a, b)
    assert [tuple(t.shape) for t in got] == [(4, 6, 4), (4, 6), (4, 0), (4, 7, 3), (4, 7)]
    assert torch.equal(got[3][:2], a[3]) and torch.equal(got[3][2:, :3], b[3]) and got[3][2:, 3:].abs().sum() == 0
    assert got[4][:2].all() and got[4][2:, :3].all() and not got[4][2:, 3:].any()
    with pytest.raises(ValueError):
        cat_text(a, a[:3])


def test_size_buckets_match_diffusers():
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    proc = HunyuanVideo15ImageProcessor(vae_scale_factor=16)
    for target in (48, 640, 960):
        for h, w in [(9, 16), (16, 9), (1, 1), (40, 70), (1080, 1920), (1000, 100), (3, 1000)]:
            assert bucket_for(h, w, target, 16) == tuple(proc.calculate_default_height_width(h, w, target))
    assert bucket_for(9, 16, 640, 16) == (480, 848) and bucket_for(9, 16, 960, 16) == (720, 1280)


def test_folder_recipe_is_the_default(t2v_dir, tmp_path):
    c = open_model(t2v_dir).sampling()
    assert (c.shift, c.guidance, c.guidance_mode, c.steps, c.size_multiple) == (5.0, 6.0, "cfg", 50, 16)
    assert (c.height, c.width) == bucket_for(9, 16, 48, 16)
    # A CFG-distilled variant: its guider says 1 (or is disabled), so no unconditional branch runs.
    copy = shutil.copytree(t2v_dir, tmp_path / "distilled", ignore=shutil.ignore_patterns("*.safetensors"))
    guider, sched = copy / "guider" / "guider_config.json", copy / "scheduler" / "scheduler_config.json"
    for change, want in [({"guidance_scale": 1.0}, 1.0), ({"enabled": False}, 1.0), ({"guidance_scale": 3.5}, 3.5)]:
        cfg = json.loads((t2v_dir / "guider" / "guider_config.json").read_text())
        guider.write_text(json.dumps({**cfg, **change}))
        assert read_hv15_pipeline_config(copy).guidance == want
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "shift": 9.0}))
    assert read_hv15_pipeline_config(copy).shift == 9.0
    guider.write_text(json.dumps({**cfg, "guidance_rescale": 0.7}))
    with pytest.raises(ValueError, match="guidance_rescale"):
        read_hv15_pipeline_config(copy)


def test_image_condition_matches_diffusers(i2v_dir, start_image):
    from omnidit.tokenizers import VideoVAE
    from omnidit.tokenizers.image_encoder import SiglipImageEncoder
    from omnidit.tokenizers.image_input import fit_image, image_to_video

    pipe = _diffusers(i2v_dir, "i2v")
    h, w = bucket_for(start_image.height, start_image.width, 48, 16)
    theirs = pipe.video_processor.resize(start_image, height=h, width=w, resize_mode="crop")
    fitted = fit_image(start_image, h, w)
    assert np.array_equal(np.asarray(fitted), np.asarray(theirs))
    assert torch.equal(image_to_video(fitted), pipe.video_processor.preprocess(theirs, height=h, width=w)[:, :, None])
    vae = VideoVAE.from_pretrained(i2v_dir / "vae")
    enc = SiglipImageEncoder.from_pipeline_dir(i2v_dir)
    with torch.no_grad():
        ref_latent = pipe._get_image_latents(pipe.vae, pipe.video_processor, theirs, h, w, torch.device("cpu"))
        ref_embeds = pipe.encode_image(theirs, 1, torch.device("cpu"), torch.float32)
    assert_rel_close(vae.encode(image_to_video(fitted)), ref_latent)
    assert_rel_close(enc.encode(fitted), ref_embeds)


def test_load_image_accepts_pil_array_path_and_names_the_field(tmp_path, start_image):
    from omnidit.tokenizers.image_input import load_image

    start_image.save(tmp_path / "start.png")
    arr = np.asarray(start_image)
    for im in (start_image, arr, arr / 255.0, torch.from_numpy(arr.copy()), tmp_path / "start.png",
               str(tmp_path / "start.png"), start_image.convert("RGBA")):
        assert np.array_equal(np.asarray(load_image(im)), arr)
    (tmp_path / "not.png").write_text("no image")
    for bad in (tmp_path / "missing.png", tmp_path / "not.png", 3, np.zeros((4, 4, 2)), arr * 2.0):
        with pytest.raises(RequestError) as e:
            load_image(bad)
        assert e.value.field == "image"


# ---- the whole pipeline: frames ------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2v_pipe(t2v_dir):
    from omnidit import Pipeline

    return Pipeline.from_pretrained(t2v_dir, device="cpu")


@pytest.fixture(scope="module")
def i2v_pipe(i2v_dir):
    from omnidit import Pipeline

    return Pipeline.from_pretrained(i2v_dir, device="cpu")


def _pil_frames(frames) -> np.ndarray:
    return np.stack([np.asarray(im) for im in frames])


def test_t2v_frames_match_diffusers(t2v_dir, t2v_pipe):
    """Glyph text (ByT5) and a negative prompt under the folder's own CFG scale 6 and shift 5."""
    ref = _diffusers(t2v_dir, "t2v")(
        GLYPH_PROMPT, negative_prompt="a blue dog", height=32, width=48, num_frames=5, num_inference_steps=3,
        generator=torch.Generator().manual_seed(0), output_type="pil").frames[0]
    gen = t2v_pipe.generate(GLYPH_PROMPT, negative_prompt="a blue dog", frames=5, height=32, width=48, steps=3,
                            seed=0)
    ref = _pil_frames(ref)
    assert gen.frames.shape == ref.shape == (5, 32, 48, 3) and ref.std() > 5  # a real picture
    assert gen.info["guidance"] == 6.0
    assert_frames_close(gen.frames, ref)


def test_i2v_frames_match_diffusers(i2v_dir, i2v_pipe, start_image):
    """The start image's latent + mask channels, its SigLIP tokens, MeanFlow's timestep_r; the size
    is the image's bucket, as diffusers chooses it."""
    ref = _diffusers(i2v_dir, "i2v")(
        image=start_image, prompt=GLYPH_PROMPT, negative_prompt="a blue dog", num_frames=5, num_inference_steps=3,
        generator=torch.Generator().manual_seed(0), output_type="pil").frames[0]
    gen = i2v_pipe.generate(GLYPH_PROMPT, negative_prompt="a blue dog", frames=5, steps=3, seed=0, image=start_image)
    ref = _pil_frames(ref)
    assert gen.frames.shape == ref.shape == (5, 32, 48, 3) and ref.std() > 5
    assert_frames_close(gen.frames, ref)


def test_i2v_start_image_encode_gets_the_pipelines_vae_axis(i2v_pipe, start_image, monkeypatch):
    """A tiled encode splits across `Pipeline.vae_axis` under sequence parallelism: the 1.5 start
    image's encode is handed it."""
    from types import SimpleNamespace

    from omnidit import Pipeline

    axis = SimpleNamespace(world_size=1)  # one process: the VAE takes its unsplit path
    monkeypatch.setattr(Pipeline, "vae_axis", property(lambda self: axis))
    seen, real = [], i2v_pipe.vae.encode

    def spy(x, *args, **kwargs):
        seen.append(kwargs.get("axis"))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(i2v_pipe.vae, "encode", spy)
    i2v_pipe.generate(GLYPH_PROMPT, frames=5, steps=1, seed=0, image=start_image)
    assert seen == [axis]


def test_image_argument_is_checked(t2v_pipe, i2v_pipe, start_image, i2v_dir):
    from omnidit.serving.engine import model_info
    from omnidit.serving.schemas import ModelInfo

    assert i2v_pipe.takes_image and not t2v_pipe.takes_image
    # an i2v folder needs its image: the service refuses a request without one before queueing it
    assert i2v_pipe.needs_image and not t2v_pipe.needs_image
    assert ModelInfo.from_pipeline(i2v_pipe).needs_image and model_info(str(i2v_dir)).needs_image
    assert not ModelInfo.from_pipeline(t2v_pipe).needs_image
    for pipe, image in ((t2v_pipe, start_image), (i2v_pipe, None), (i2v_pipe, "no/such/file.png")):
        with pytest.raises(RequestError) as e:
            pipe.generate("a red cat", frames=1, steps=1, seed=0, image=image)
        assert e.value.field == "image"
    with pytest.raises(RequestError, match="image-to-video") as e:  # validation alone (CLI, service) refuses too
        i2v_pipe.check(frames=5)
    assert e.value.field == "image"
    assert (i2v_pipe.check(frames=5, image=start_image).height, t2v_pipe.check(frames=5).width) == (32, 48)
    # A size of one's own: the image is fitted (scaled to cover, centre-cropped) to it.
    assert i2v_pipe.generate("a red cat", frames=1, height=48, width=32, steps=1, seed=0,
                             image=start_image).frames.shape == (1, 48, 32, 3)


def test_a_lora_per_request_on_a_15_folder(t2v_pipe):
    """Adapters on the 1.5 DiT (diffusers/PEFT names): applied per request, off again without a reload."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for n, m in t2v_pipe.dit.named_modules():
        if isinstance(m, torch.nn.Linear) and n.startswith("transformer_blocks."):
            tensors[f"transformer.{n}.lora_A.weight"] = 0.5 * torch.randn(2, m.in_features, generator=g)
            tensors[f"transformer.{n}.lora_B.weight"] = 0.5 * torch.randn(m.out_features, 2, generator=g)
    name = t2v_pipe.load_lora(tensors, name="hv15-style")
    try:
        kw = dict(frames=1, steps=2, seed=0, height=32, width=48)
        plain, styled = (t2v_pipe.generate("a red cat", loras=lo, **kw).frames for lo in ({}, {name: 1.0}))
        assert np.abs(plain.astype(int) - styled.astype(int)).mean() > 2
        assert np.array_equal(t2v_pipe.generate("a red cat", loras={}, **kw).frames, plain)
    finally:
        t2v_pipe.dit.unload_lora(name)
