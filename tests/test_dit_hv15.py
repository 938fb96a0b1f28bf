"""omnidit.dit.DiT (family "hunyuanvideo15") against diffusers' HunyuanVideo15Transformer3DModel on the same
random weights; loading, step caching and FP8 on the 1.5 block loop."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_hunyuan15 import make_tiny_hv15_transformer
from tolerances import FP32_REL, rel_err

from omnidit.dit import DiT, DiTConfig, preset
from omnidit.dit.cache import FirstBlockCache, MagCache, TeaCache
from omnidit.dit.fp8 import FP8, FP8Linear


def ours_from(ref) -> DiT:
    cfg = DiTConfig.from_dict({**ref.config, "_class_name": type(ref).__name__})
    dit = DiT(cfg).eval()
    dit.load_state_dict(ref.state_dict(), strict=True)
    return dit


def pair(task="t2v", seed=0, **overrides):
    ref = make_tiny_hv15_transformer(task=task, seed=seed, **overrides)
    return ref, ours_from(ref)


def _mask(lengths, L):
    return (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()  # right-padded


def make_inputs(c: DiTConfig, thw, lengths, L, lengths_2, L2, *, image=False, meanflow=False, seed=0,
                image_tokens=4, mask=None, mask_2=None):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    image_embeds = torch.zeros(B, image_tokens, c.image_embed_dim)  # text-to-video: zeros, as diffusers' pipeline
    if image:
        image_embeds = torch.randn(B, image_tokens, c.image_embed_dim, generator=g)
    t = torch.rand(B, generator=g) * 1000
    out = dict(
        hidden_states=torch.randn(B, c.in_channels, *thw, generator=g),
        timestep=t,
        encoder_hidden_states=torch.randn(B, L, c.text_embed_dim, generator=g),
        encoder_attention_mask=_mask(lengths, L) if mask is None else mask,
        encoder_hidden_states_2=torch.randn(B, L2, c.text_embed_2_dim, generator=g),
        encoder_attention_mask_2=_mask(lengths_2, L2) if mask_2 is None else mask_2,
        image_embeds=image_embeds,
    )
    if meanflow:
        out["timestep_r"] = t * torch.rand(B, generator=g)
    return out


def run_both(ref, ours, inputs):
    with torch.no_grad():
        return ours(**inputs), ref(**inputs, return_dict=False)[0]


CASES = {
    # name: (task, config overrides, latent (T, H, W), text lengths, L, glyph lengths, L2, image, meanflow)
    "t2v-padded-text-and-glyphs-batch2-odd": ("t2v", {}, (3, 5, 7), [7, 3], 7, [2, 5], 5, False, False),
    "t2v-one-sample-without-glyphs": ("t2v", {}, (1, 3, 3), [4, 6], 6, [0, 3], 4, False, False),
    "t2v-batch1-nothing-padded": ("t2v", {}, (2, 3, 5), [5], 5, [3], 3, False, False),
    "i2v-batch2-padded": ("i2v", {}, (3, 3, 5), [5, 2], 6, [1, 4], 4, True, False),
    "i2v-meanflow": ("i2v", {"use_meanflow": True}, (3, 5, 3), [3, 6], 6, [4, 2], 5, True, True),
    "t2v-meanflow": ("t2v", {"use_meanflow": True}, (1, 5, 5), [2, 4], 4, [3, 1], 3, False, True),
    "patch2-temporal2": ("t2v", {"patch_size": 2, "patch_size_t": 2}, (2, 4, 6), [3, 5], 5, [2, 2], 3, False, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_diffusers(name):
    task, over, thw, lengths, L, lengths_2, L2, image, meanflow = CASES[name]
    ref, ours = pair(task, **over)
    assert ours.config.family == "hunyuanvideo15" and not len(ours.single_transformer_blocks)
    got, want = run_both(ref, ours, make_inputs(ours.config, thw, lengths, L, lengths_2, L2, image=image,
                                                meanflow=meanflow))
    assert got.shape == want.shape == (len(lengths), ours.config.out_channels, *thw)
    assert want.norm() > 1.0  # a non-trivial output
    assert rel_err(got, want) <= FP32_REL


def test_non_prefix_masks_match_diffusers():
    # Holes in both masks: diffusers selects valid tokens by mask, wherever they are.
    ref, ours = pair("i2v", seed=2)
    mask = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 0]])
    mask_2 = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    inputs = make_inputs(ours.config, (2, 3, 3), [0, 0], 6, [0, 0], 4, image=True, mask=mask, mask_2=mask_2)
    got, want = run_both(ref, ours, inputs)
    assert rel_err(got, want) <= FP32_REL


def test_every_stream_matters_and_padding_does_not():
    _, ours = pair("i2v", seed=1)
    base_in = make_inputs(ours.config, (2, 3, 3), [3, 5], 5, [2, 4], 4, image=True)
    with torch.no_grad():
        base = ours(**base_in)
        junk = {k: v.clone() for k, v in base_in.items()}
        junk["encoder_hidden_states"][0, 3:] = 100.0  # sample 0's padded text
        junk["encoder_hidden_states_2"][0, 2:] = -50.0  # and padded glyph tokens
        assert torch.equal(ours(**junk), base)
        for key, index in (("encoder_hidden_states", (0, 1)), ("encoder_hidden_states_2", (0, 1)),
                           ("image_embeds", (0, 2))):
            changed = {k: v.clone() for k, v in base_in.items()}
            changed[key][index] += torch.linspace(-1, 1, changed[key].shape[-1])  # LayerNorms cancel a constant
            out = ours(**changed)
            assert rel_err(out[0], base[0]) > 1e-4, key  # a real token of sample 0 moves sample 0
            assert torch.equal(out[1], base[1]), key  # and only sample 0


def test_text_to_video_and_image_to_video_rows_in_one_batch_equal_each_alone():
    # diffusers decides T2V for the whole batch; we decide per sample, which equals diffusers on each
    # sample alone and keeps a sample's result independent of its batch.
    ref, ours = pair("i2v", seed=3)
    inputs = make_inputs(ours.config, (2, 3, 5), [4, 2], 4, [1, 3], 3, image=True)
    inputs["image_embeds"][0] = 0.0  # sample 0 is text-to-video
    with torch.no_grad():
        batched = ours(**inputs)
        for b in range(2):
            alone = {k: v[b : b + 1] for k, v in inputs.items()}
            want = ref(**alone, return_dict=False)[0]
            assert rel_err(batched[b : b + 1], want) <= FP32_REL


def test_diffusers_folder_loads_and_ours_saves_a_diffusers_folder(tmp_path):
    from diffusers import HunyuanVideo15Transformer3DModel

    ref = make_tiny_hv15_transformer(tmp_path / "ref", task="i2v", seed=4, use_meanflow=True)
    ours = DiT.from_pretrained(tmp_path / "ref")
    c = ours.config
    assert (c.family, c.task_type, c.use_meanflow, c.num_layers, c.in_channels) == ("hunyuanvideo15", "i2v", True,
                                                                                     2, 9)
    inputs = make_inputs(c, (2, 3, 3), [3, 5], 5, [2, 1], 2, image=True, meanflow=True)
    got, want = run_both(ref, ours, inputs)
    assert rel_err(got, want) <= FP32_REL
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["_class_name"] == "HunyuanVideo15Transformer3DModel"
    assert not {"family", "num_single_layers", "guidance_embeds", "pooled_projection_dim"} & set(saved)
    back = HunyuanVideo15Transformer3DModel.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        assert torch.equal(back(**inputs, return_dict=False)[0], want)
    assert DiT.from_pretrained(tmp_path / "ours").config == c


def test_preset_is_hunyuanvideo_15_and_bad_inputs_name_the_field():
    with torch.device("meta"):
        big = DiT(preset("hunyuan-video-1.5"))
    n = sum(p.numel() for p in big.parameters())
    assert 8.0e9 < n < 8.7e9, n  # HunyuanVideo-1.5 is 8.3B
    assert len(big.transformer_blocks) == 54 and not len(big.single_transformer_blocks)
    with pytest.raises(ValueError, match="task_type"):
        preset("tiny-1.5").replace(task_type="v2v")
    with pytest.raises(ValueError, match="num_single_layers"):
        preset("tiny-1.5").replace(num_single_layers=1)
    with pytest.raises(ValueError, match="unknown DiTConfig field.*HunyuanVideo15Transformer3DModel"):
        DiTConfig.from_dict({"_class_name": "HunyuanVideo15Transformer3DModel", "guidance_embeds": True})

    _, ours = pair("t2v", use_meanflow=False)
    inputs = make_inputs(ours.config, (1, 3, 3), [3], 3, [2], 2)
    with pytest.raises(ValueError, match="use_meanflow"):
        ours(**inputs, timestep_r=torch.tensor([10.0]))
    with pytest.raises(ValueError, match="guidance"):
        ours(**inputs, guidance=torch.tensor([6000.0]))
    with pytest.raises(ValueError, match="encoder_hidden_states_2"):
        ours(**{**inputs, "encoder_hidden_states_2": torch.randn(1, 2, 3)})
    with pytest.raises(ValueError, match="image_embeds"):
        ours(**{**inputs, "image_embeds": torch.randn(1, 4, 3)})
    v10 = DiT(preset("tiny")).eval()
    with pytest.raises(ValueError, match="HunyuanVideo-1.5 inputs"):
        v10(torch.randn(1, 4, 1, 2, 2), torch.tensor([5.0]), torch.randn(1, 2, 12), torch.ones(1, 2),
            torch.randn(1, 10), torch.tensor([1.0]), image_embeds=torch.randn(1, 1, 6))


class BlockCalls:
    def __init__(self, dit):
        self.calls = 0
        self.handle = dit.transformer_blocks[-1].register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1


def test_step_cache_on_the_15_block_loop():
    _, ours = pair("i2v", seed=5, use_meanflow=True)
    inputs = make_inputs(ours.config, (2, 3, 3), [3, 5], 5, [2, 4], 4, image=True, meanflow=True)
    steps = [dict(inputs, timestep=inputs["timestep"] * s) for s in (1.0, 0.7, 0.4)]
    with torch.no_grad():
        want = [ours(**s) for s in steps]
        for cache in (FirstBlockCache(0.0), TeaCache(0.0, [1.0, 0.0]), MagCache(0.0, [1.0, 1.02, 0.99])):
            cache.begin(steps=len(steps))
            got = [ours(**s, cache=cache) for s in steps]
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), cache.name  # threshold 0: bit-exact
        # the same input three times: the middle step skips the blocks and reuses the residual
        cache = FirstBlockCache(1e-3)
        cache.begin(steps=3)
        counter = BlockCalls(ours)
        out = [ours(**steps[0], cache=cache) for _ in range(3)]
        counter.handle.remove()
    assert cache.computed == [2, 0, 2] and counter.calls == 2
    assert rel_err(out[1], want[0]) <= FP32_REL


def test_fp8_load_of_a_15_folder(tmp_path):
    ref = make_tiny_hv15_transformer(tmp_path, task="i2v", seed=6)
    q = DiT.from_pretrained(tmp_path, weights="fp8")
    fp8 = {n for n, m in q.named_modules() if isinstance(m, FP8Linear)}
    assert fp8 and all(n.startswith("transformer_blocks.") for n in fp8)
    assert all(q.get_submodule(n).weight.dtype == FP8 for n in fp8)
    assert len(fp8) == 2 * len([n for n, m in ref.transformer_blocks[0].named_modules()
                                if isinstance(m, torch.nn.Linear)])  # every Linear of both blocks
    inputs = make_inputs(q.config, (2, 3, 3), [3, 5], 5, [2, 4], 4, image=True)
    got, want = run_both(ref, q, inputs)
    assert 1e-6 < rel_err(got, want) < 0.1  # quantised, yet close


def test_bfloat16_close_to_diffusers():
    ref, ours = pair("i2v", seed=7, use_meanflow=True)
    ref, ours = ref.to(torch.bfloat16), ours.to(torch.bfloat16)
    inputs = make_inputs(ours.config, (2, 3, 5), [3, 6], 6, [2, 4], 4, image=True, meanflow=True)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    got, want = run_both(ref, ours, inputs)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, want) <= 2e-2
