"""omnidit.tokenizers.vae: shapes, parity with diffusers' AutoencoderKLHunyuanVideo, validation, uint8."""

import numpy as np
import pytest
import torch
from diffusers.video_processor import VideoProcessor
from tiny_hunyuan import make_tiny_vae
from tolerances import assert_frames_close, assert_rel_close

from omnidit.tokenizers import VideoVAE, frames_to_uint8


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    make_tiny_vae(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vv(vae_dir):
    return VideoVAE.from_pretrained(vae_dir)


@pytest.fixture(scope="module")
def ref_vae(vae_dir):
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo.from_pretrained(vae_dir).eval()


def video(frames, h=16, w=16, seed=0):
    return torch.rand(1, 3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_config_and_latent_shape(vv):
    assert (vv.spatial_ratio, vv.temporal_ratio, vv.latent_channels) == (8, 4, 4)
    assert vv.scaling_factor == pytest.approx(0.476986)
    assert vv.latent_shape(1, 16, 16) == (4, 1, 2, 2)
    assert vv.latent_shape(9, 32, 48) == (4, 3, 4, 6)
    assert vv.latent_shape(129, 720, 1280) == (4, 33, 90, 160)


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_decode_shapes_and_parity(vv, ref_vae, frames):
    x = video(frames)
    z = vv.encode(x)
    assert z.shape == (1, *vv.latent_shape(frames, 16, 16))
    with torch.no_grad():
        ref = ref_vae.encode(x).latent_dist.mode() * ref_vae.config.scaling_factor
        ref_video = ref_vae.decode(z / ref_vae.config.scaling_factor).sample
    torch.testing.assert_close(z, ref, atol=1e-6, rtol=0)
    out = vv.decode(z)
    assert out.shape == x.shape
    # CPU convolutions take oneDNN whatever the batch (omnidit.tokenizers.onednn_conv): the same
    # arithmetic as diffusers' module up to float rounding, far below one 8-bit level.
    torch.testing.assert_close(out, ref_video, atol=1e-3, rtol=0)
    assert out.abs().max() > 0.05  # the tiny VAE produces a real signal, not zeros


def test_cpu_conv3d_takes_onednn_and_matches_native():
    from omnidit.tokenizers.onednn_conv import OneDNNConv3d, use_onednn_conv3d

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(8, 8, 3), torch.nn.SiLU(), torch.nn.Conv3d(8, 3, 3, padding=1))
    x = torch.randn(1, 8, 7, 20, 20)
    with torch.no_grad():
        want = net(x)
    first, keys = net[0], list(net.state_dict())
    assert use_onednn_conv3d(net) == (2 if torch.backends.mkldnn.is_available() else 0)
    with torch.no_grad():
        got = net(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if torch.backends.mkldnn.is_available():
        assert isinstance(net[0], OneDNNConv3d) and use_onednn_conv3d(net) == 0  # idempotent
        assert type(first) is torch.nn.Conv3d and net[0].weight is first.weight  # a new module, the same weights
        assert list(net.state_dict()) == keys
        with torch.profiler.profile() as prof, torch.no_grad():
            net(x)
        ops = {e.key for e in prof.key_averages()}
        assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops
    y = net(x.requires_grad_())  # training keeps PyTorch's own kernel (and its backward)
    y.sum().backward()
    assert x.grad is not None


def test_videovae_leaves_the_given_module_untouched(vae_dir):
    """VideoVAE wraps convolutions in its own copy of the module tree (same parameter tensors); the
    diffusers module it is given keeps its classes, children and mode."""
    from diffusers import AutoencoderKLHunyuanVideo

    given = AutoencoderKLHunyuanVideo.from_pretrained(vae_dir).train()
    tree = [(name, type(m), id(m)) for name, m in given.named_modules()]
    keys = list(given.state_dict())
    vv = VideoVAE(given)
    assert [(name, type(m), id(m)) for name, m in given.named_modules()] == tree
    assert given.training and not vv.vae.training
    assert list(vv.vae.state_dict()) == keys  # the library's state dict, whatever wraps the convs
    assert all(a is b for a, b in zip(vv.vae.parameters(), given.parameters(), strict=True))  # no weight copy
    if torch.backends.mkldnn.is_available():
        assert {type(m).__name__ for m in vv.vae.modules()} >= {"OneDNNConv3d", "ImageFoldingCausalConv3d"}


def test_encode_sample_uses_generator(vv, ref_vae):
    x = video(5, seed=1)
    a = vv.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    b = vv.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    c = vv.encode(x, sample=True, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = ref_vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, ref * ref_vae.config.scaling_factor, atol=1e-6, rtol=0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loads_from_pipeline_folder(tmp_path, vae_dir):
    import shutil

    shutil.copytree(vae_dir, tmp_path / "vae")
    assert VideoVAE.from_pretrained(tmp_path).latent_channels == 4
    with pytest.raises(ValueError, match="config.json"):
        VideoVAE.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize(
    "args,match",
    [
        ((4, 16, 16), r"frames must be 1 mod 4 \(1, 5, 9"),
        ((0, 16, 16), "frames"),
        ((5, 20, 16), r"height must be a positive multiple of 8 \(8, 16, 24"),
        ((5, 16, 0), "width must be a positive multiple of 8"),
    ],
)
def test_latent_shape_validation(vv, args, match):
    with pytest.raises(ValueError, match=match):
        vv.latent_shape(*args)


def test_encode_decode_validation(vv):
    with pytest.raises(ValueError, match="frames"):
        vv.encode(video(3))
    with pytest.raises(ValueError, match="height"):
        vv.encode(video(1, h=12))
    with pytest.raises(ValueError, match="channels"):
        vv.encode(torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="latents"):
        vv.decode(torch.zeros(1, 3, 1, 2, 2))


def test_auto_tiling_switches_on_for_large_frames_only(vae_dir, monkeypatch):
    vv = VideoVAE.from_pretrained(vae_dir, auto_tiling_pixels=16 * 16)
    # Small tiles so the tiny test frames are "large" for diffusers' tiler.
    vv.vae.tile_sample_min_height = vv.vae.tile_sample_min_width = 16
    vv.vae.tile_sample_stride_height = vv.vae.tile_sample_stride_width = 8
    from omnidit.tokenizers import vae_tiling

    calls = []
    real = vae_tiling.tiled_decode
    monkeypatch.setattr(vae_tiling, "tiled_decode", lambda vae, z, *a, **kw: calls.append(z.shape) or real(vae, z, *a, **kw))
    z = torch.randn(1, 4, 1, 2, 2)
    assert vv.decode(z).shape == (1, 3, 1, 16, 16) and calls == []  # at the threshold: untiled
    z = torch.randn(1, 4, 1, 4, 4)
    out = vv.decode(z)
    assert out.shape == (1, 3, 1, 32, 32) and len(calls) == 1  # our tiler (one window at a time)
    assert vv.vae.use_tiling is False  # restored after the call
    vv.vae.use_tiling = True  # the same frames as diffusers' own tiled decode
    ref = vv.vae.decode(z.to(vv.dtype) / vv.scaling_factor).sample
    vv.vae.use_tiling = False
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    vv.enable_tiling()
    assert vv.vae.use_tiling is True
    vv.disable_tiling()
    assert vv.vae.use_tiling is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frames_to_uint8_matches_video_processor(dtype):
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 3, 3, 8, 8, generator=g) * 2.4 - 1.2  # includes out-of-range values
    # Exact rounding boundaries: (k + 0.5) / 255 for a few k, mapped back to [-1, 1].
    v[0, 0, 0, 0, :6] = (torch.tensor([0.5, 1.5, 2.5, 127.5, 128.5, 254.5]) / 255) * 2 - 1
    v = v.to(dtype)
    ours = frames_to_uint8(v)
    assert ours.dtype == torch.uint8 and ours.shape == (2, 3, 8, 8, 3)
    pil = VideoProcessor(vae_scale_factor=8).postprocess_video(v, output_type="pil")
    ref = np.stack([np.stack([np.asarray(im) for im in clip]) for clip in pil])
    assert_frames_close(ours.numpy(), ref)
    # Our own rounding convention, exactly: k/255 maps to k, and the range clips.
    levels = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    exact = frames_to_uint8(levels.float().reshape(1, 1, 1, 16, 16).expand(1, 3, 1, 16, 16))
    assert torch.equal(exact[0, 0, ..., 0].flatten(), torch.arange(256, dtype=torch.uint8))
    assert frames_to_uint8(torch.full((1, 3, 1, 1, 1), 5.0)).unique().tolist() == [255]
    with pytest.raises(ValueError, match="video"):
        frames_to_uint8(torch.zeros(1, 4, 1, 2, 2))


def test_bf16_decode_matches_diffusers(vae_dir):
    from diffusers import AutoencoderKLHunyuanVideo

    vv16 = VideoVAE.from_pretrained(vae_dir, dtype=torch.bfloat16)
    ref = AutoencoderKLHunyuanVideo.from_pretrained(vae_dir, torch_dtype=torch.bfloat16).eval()
    assert vv16.dtype == torch.bfloat16
    z = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(0))  # float32, like the sampler's
    with torch.no_grad():
        expected = ref.decode(z.to(torch.bfloat16) / ref.config.scaling_factor).sample  # the pipeline's order
    out = vv16.decode(z)
    assert out.dtype == torch.bfloat16
    assert_rel_close(out, expected)  # bf16 tolerance
    assert_frames_close(frames_to_uint8(out).numpy(), frames_to_uint8(expected).numpy(), levels=2)


@pytest.mark.parametrize("stride", [1, (1, 2, 2), 2])
def test_one_frame_causal_conv_runs_as_2d_and_matches_3d(stride):
    """omnidit.tokenizers.image_conv: on one frame the causal conv's replicate time padding makes
    the 3D kernel see kernel_t copies of it, so a 2D conv with the time-summed kernel gives the
    same output; several frames, and training, keep diffusers' 3D path."""
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    from omnidit.tokenizers.image_conv import ImageFoldingCausalConv3d, use_image_conv

    torch.manual_seed(0)
    net = torch.nn.Sequential(HunyuanVideoCausalConv3d(6, 5, 3, stride=stride)).eval()
    ref = HunyuanVideoCausalConv3d(6, 5, 3, stride=stride).eval()
    ref.load_state_dict(net[0].state_dict())
    wrapped = net[0]
    assert use_image_conv(net) == 1 and use_image_conv(net) == 0  # idempotent
    conv = net[0]
    assert isinstance(conv, ImageFoldingCausalConv3d) and type(wrapped) is HunyuanVideoCausalConv3d
    assert conv.conv is wrapped.conv and list(conv.state_dict()) == list(ref.state_dict())  # the library's keys
    image, clip = torch.randn(2, 6, 1, 12, 10), torch.randn(2, 6, 5, 12, 10)
    with torch.no_grad(), torch.profiler.profile() as prof:
        got = conv(image)
    ops = {e.key for e in prof.key_averages()}
    assert not any("3d" in op for op in ops), ops  # no 3D conv, no 3D padding
    with torch.no_grad():
        torch.testing.assert_close(got, ref(image), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(conv(clip), ref(clip), atol=0, rtol=0)
        for m in (conv, ref):  # an in-place weight update must not reuse the old summed kernel
            m.conv.weight.mul_(-0.5)
        torch.testing.assert_close(conv(image), ref(image), atol=1e-5, rtol=1e-5)
    x = image.clone().requires_grad_()
    conv(x).square().sum().backward()  # with gradients: diffusers' own path and backward
    x_ref = image.clone().requires_grad_()
    ref(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=0, rtol=0)
