"""omnidit.dit.DiT against diffusers' HunyuanVideoTransformer3DModel on the same random weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from omnidit.dit import DiT, JointLayout, preset
from omnidit.dit.attention import BACKENDS, joint_attention
from tolerances import FP32_REL, rel_err

TOL = FP32_REL  # relative L2 error in float32 (tests/tolerances.py)


def tiny(**changes):
    # Two of every block kind, so anything leaking from padded tokens would reach the output.
    return preset("tiny").replace(**{"num_layers": 2, "num_single_layers": 2, "num_refiner_layers": 2, **changes})


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random, including those diffusers zero-inits; norm weights around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = p.ndim == 1 and ".norm" in name and name.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if is_norm_weight else 0.1 * noise)


def make_pair(cfg, seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel

    ref_kwargs = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    ref = HunyuanVideoTransformer3DModel(**ref_kwargs).eval()
    randomize_(ref, seed)
    ours = DiT(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_inputs(cfg, B, thw, lengths, L, *, seed=0, mask=None):
    g = torch.Generator().manual_seed(seed)
    T, H, W = thw
    if mask is None:
        mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()  # right-padded
    return dict(
        hidden_states=torch.randn(B, cfg.in_channels, T, H, W, generator=g),
        timestep=torch.rand(B, generator=g) * 1000,
        encoder_hidden_states=torch.randn(B, L, cfg.text_embed_dim, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(B, cfg.pooled_projection_dim, generator=g),
        guidance=(torch.rand(B, generator=g) * 8000) if cfg.guidance_embeds else None,
    )


def run_both(ref, ours, inputs):
    with torch.no_grad():
        want = ref(**inputs, return_dict=False)[0]
        got = ours(**inputs)
    return got, want


CASES = {
    # name: (config changes, batch, latent (T, H, W), text lengths, padded text length)
    "full-text": ({}, 1, (3, 6, 10), [7], 7),
    "padded-text": ({}, 1, (3, 6, 10), [4], 9),
    "batch2-different-lengths": ({}, 2, (3, 6, 10), [3, 8], 9),
    "batch2-same-length-padded": ({}, 2, (2, 4, 6), [5, 5], 8),
    "image-F1": ({}, 2, (1, 4, 6), [5, 2], 6),
    "no-guidance": ({"guidance_embeds": False}, 2, (2, 4, 4), [2, 5], 5),
    "patch1-odd-sizes": ({"patch_size": 1}, 2, (3, 5, 7), [3, 6], 6),
    "temporal-patch2": ({"patch_size_t": 2}, 1, (4, 4, 6), [3], 5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_diffusers(name):
    changes, B, thw, lengths, L = CASES[name]
    cfg = tiny(**changes)
    ref, ours = make_pair(cfg)
    got, want = run_both(ref, ours, make_inputs(cfg, B, thw, lengths, L))
    assert got.shape == want.shape == (B, cfg.out_channels, *thw)
    assert want.norm() > 1.0  # a non-trivial output
    assert rel_err(got, want) <= TOL


def test_non_prefix_mask_matches_diffusers():
    # Holes in the mask: diffusers' refiner masks by position, its joint attention by count.
    cfg = tiny()
    ref, ours = make_pair(cfg, seed=3)
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    got, want = run_both(ref, ours, make_inputs(cfg, 2, (2, 4, 4), None, 6, mask=mask))
    assert rel_err(got, want) <= TOL


def test_padded_text_contents_do_not_matter_but_real_tokens_do():
    cfg = tiny()
    ref, ours = make_pair(cfg)
    inputs = make_inputs(cfg, 2, (2, 4, 6), [3, 6], 8)
    with torch.no_grad():
        base = ours(**inputs)
        junk = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        junk["encoder_hidden_states"][0, 3:] = 100.0  # sample 0's padding
        assert torch.equal(ours(**junk), base)
        real = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        real["encoder_hidden_states"][0, 2] += 1.0  # a real token of sample 0
        changed = ours(**real)
    assert rel_err(changed[0], base[0]) > 1e-3
    assert torch.equal(changed[1], base[1])  # samples stay independent


def test_batch_equals_each_sample_alone():
    cfg = tiny()
    _, ours = make_pair(cfg)
    inputs = make_inputs(cfg, 2, (2, 4, 6), [2, 7], 7)
    with torch.no_grad():
        batched = ours(**inputs)
        for b in range(2):
            alone = ours(**{k: v[b : b + 1] for k, v in inputs.items()})
            assert rel_err(alone[0], batched[b]) <= TOL


def test_bfloat16_close_to_diffusers():
    cfg = tiny()
    ref, ours = make_pair(cfg)
    ref, ours = ref.to(torch.bfloat16), ours.to(torch.bfloat16)
    inputs = make_inputs(cfg, 2, (2, 4, 6), [3, 6], 6)
    inputs = {k: v.to(torch.bfloat16) if v is not None and v.is_floating_point() else v for k, v in inputs.items()}
    got, want = run_both(ref, ours, inputs)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, want) <= 2e-2


@pytest.mark.parametrize("path", ["key-mask", "per-sample-loop"])
def test_joint_attention_equals_key_masked_sdpa(path):
    # The default hook vs diffusers' formulation: SDPA with padded text masked as keys.
    backend = BACKENDS["sdpa"]
    if path == "per-sample-loop":  # what accelerators (and mask-less backends) run
        backend = dataclasses.replace(backend, supports_mask=False)
    g = torch.Generator().manual_seed(0)
    B, n_img, L, H, D = 3, 5, 4, 2, 8
    q, k, v = (torch.randn(B, n_img + L, H, D, generator=g) for _ in range(3))
    lengths = torch.tensor([4, 1, 3])
    layout = JointLayout(n_img=n_img, text_lengths=lengths, max_text=L)
    key_ok = torch.arange(n_img + L)[None] < (n_img + lengths)[:, None]  # [B, S]
    want = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_ok[:, None, None]
    ).transpose(1, 2)
    got = joint_attention(q, k, v, layout, backend)
    assert rel_err(got, want) <= TOL  # all rows, padded queries included


def test_every_joint_attention_goes_through_the_hook():
    cfg = tiny()
    ref, ours = make_pair(cfg)
    inputs = make_inputs(cfg, 2, (2, 4, 6), [3, 5], 7)
    calls = []

    def spy(q, k, v, layout):
        calls.append((tuple(q.shape), layout.n_img, layout.text_lengths.tolist(), layout.max_text))
        return joint_attention(q, k, v, layout, BACKENDS["sdpa"])

    ours.set_joint_attention(spy)
    got, want = run_both(ref, ours, inputs)
    assert rel_err(got, want) <= TOL
    n_img, S = 2 * 2 * 3, 2 * 2 * 3 + 5  # text trimmed to the longest prompt
    assert calls == [((2, S, 2, 8), n_img, [3, 5], 5)] * (cfg.num_layers + cfg.num_single_layers)

    ours.set_joint_attention(lambda q, k, v, layout: torch.zeros_like(q))  # really replaces the attention
    with torch.no_grad():
        assert rel_err(ours(**inputs), want) > 1e-2
    ours.set_joint_attention(None)
    with torch.no_grad():
        assert rel_err(ours(**inputs), want) <= TOL


def test_initialize_weights_is_dit_style():
    torch.manual_seed(0)
    cfg = tiny()
    model = DiT(cfg)
    assert model.transformer_blocks[0].attn.to_q.weight.abs().sum() > 0  # xavier, not zero
    for lin in (model.proj_out, model.norm_out.linear, model.transformer_blocks[0].norm1.linear,
                model.single_transformer_blocks[0].norm.linear):  # fmt: skip
        assert not lin.weight.any() and not lin.bias.any()
    with torch.no_grad():
        out = model(**make_inputs(cfg, 1, (2, 4, 4), [3], 4))
    assert not out.any()  # zero output layer: training starts from a zero prediction


def test_gradient_checkpointing_same_gradients():
    cfg = tiny()
    _, ours = make_pair(cfg)
    inputs = make_inputs(cfg, 2, (2, 4, 4), [2, 4], 4)
    grads = []
    for ckpt in (False, True):
        ours.zero_grad()
        ours.gradient_checkpointing = ckpt
        ours(**inputs).square().mean().backward()
        grads.append(ours.transformer_blocks[0].attn.to_q.weight.grad.clone())
    assert rel_err(grads[1], grads[0]) <= TOL


@pytest.mark.parametrize(
    "field, bad",
    [("hidden_states", torch.zeros(1, 4, 2, 5, 4)), ("encoder_attention_mask", torch.zeros(1, 4, dtype=torch.long))],
)
def test_bad_inputs_raise_value_error(field, bad):
    cfg = tiny()
    model = DiT(cfg)
    inputs = make_inputs(cfg, 1, (2, 4, 4), [3], 4)
    inputs[field] = bad
    with pytest.raises(ValueError, match="hidden_states|encoder_attention_mask"):
        model(**inputs)


def test_guidance_required_when_embedded():
    cfg = tiny()
    inputs = make_inputs(cfg, 1, (2, 4, 4), [3], 4)
    inputs["guidance"] = None
    with pytest.raises(ValueError, match="guidance"):
        DiT(cfg)(**inputs)


def test_per_sample_attention_path_matches_diffusers():
    # Accelerators run one unmasked attention per sample instead of a key mask; check it end to end.
    cfg = tiny()
    ref, ours = make_pair(cfg, seed=4)
    ours.attention_backend = dataclasses.replace(ours.attention_backend, supports_mask=False)
    got, want = run_both(ref, ours, make_inputs(cfg, 3, (2, 4, 6), [2, 7, 5], 9))
    assert rel_err(got, want) <= TOL
