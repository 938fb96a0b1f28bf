"""Tiled and parallel decode/encode of the HunyuanVideo-1.5 VAE (vae_tiling.Tiles15) against diffusers'
AutoencoderKLHunyuanVideo15 with enable_tiling()."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_parallel_dit import free_port
from tiny_hunyuan import make_tiny_vae
from tiny_hunyuan15_pipeline import make_tiny_hv15_vae
from tolerances import FP32_REL, assert_frames_close, rel_err

from omnidit.tokenizers.vae import VideoVAE, frames_to_uint8
from omnidit.tokenizers.vae_tiling import Tiles, Tiles15, tiled_decode, tiled_encode, tiles_of

# Small tiles for the 16x VAE: 64x64 pixel tiles (4x4 latents), a quarter blended, so 112x144 pixels
# (7x9 latents) are cut into 3 x 3 tiles with ragged last ones, in both directions.
SMALL = dict(tile_sample_min_height=64, tile_sample_min_width=64, tile_latent_min_height=4, tile_latent_min_width=4,
             tile_overlap_factor=0.25)
SHAPE = (1, 4, 2, 7, 9)  # latents of 5 frames, 112x144 pixels: 9 tiles, an uneven last round on 2 processes


def _vae():
    torch.manual_seed(3)  # the 1.5 VAE's own init draws from the global generator
    vae = make_tiny_hv15_vae(generator=torch.Generator().manual_seed(3))
    vae.enable_tiling(**SMALL)
    return vae


@pytest.fixture(scope="module")
def vae():
    return _vae()


def _latents(shape=SHAPE, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _video(frames, seed=1):
    return torch.rand(1, 3, frames, 112, 144, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tiled_decode_equals_diffusers_tiling(vae):
    z = _latents()
    with torch.no_grad():
        want = vae.decode(z).sample
        got = tiled_decode(vae, z, tiles_of(vae))
        untiled = vae.decoder(z)
    assert got.shape == want.shape == (1, 3, 5, 112, 144)
    assert rel_err(got, want) <= FP32_REL
    assert_frames_close(frames_to_uint8(got), frames_to_uint8(want))
    assert rel_err(untiled, want) > 1e-4  # the tiles really changed the cut


@pytest.mark.parametrize("frames", [1, 5])  # an image (the I2V first frame) and a short video
def test_tiled_encode_equals_diffusers_tiling(vae, frames):
    x = _video(frames)
    with torch.no_grad():
        want = vae.encode(x).latent_dist.parameters  # [1, 2C, F', 7, 9] moments
        got = tiled_encode(vae, x, tiles_of(vae))
        untiled = vae.encoder(x)
    assert got.shape == want.shape == (1, 8, (frames - 1) // 4 + 1, 7, 9)
    assert rel_err(got, want) <= FP32_REL
    assert rel_err(untiled, want) > 1e-4


def test_large_image_encode_tiles_like_diffusers(vae):
    # VideoVAE (the I2V path) switches tiling on for a frame above auto_tiling_pixels; the latents are
    # diffusers' tiled encode's posterior mean, scaled.
    x = _video(1)
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    vae.disable_tiling()
    try:
        wrapped = VideoVAE(vae, auto_tiling_pixels=64 * 64)
        got = wrapped.encode(x)
    finally:
        vae.enable_tiling(**SMALL)
    assert not wrapped.vae.use_tiling  # on for that call only
    assert rel_err(got, want) <= FP32_REL


def test_tile_settings_are_checked(vae):
    assert isinstance(tiles_of(vae), Tiles15) and isinstance(tiles_of(make_tiny_vae(seed=0)), Tiles)
    assert tiles_of(vae) == Tiles15(64, 64, 4, 4, 0.25, spatial=True)
    with pytest.raises(ValueError, match="latent_height"):  # 2-latent tiles step 1 latent (16 px), keep 24 px
        tiled_decode(vae, _latents(), Tiles15(height=32, latent_height=2))
    with pytest.raises(ValueError, match="overlap"):
        Tiles15(overlap=1.0)
    with pytest.raises(ValueError, match="latent_width"):
        Tiles15(latent_width=0)


def _worker(rank: int, port: int, out_dir: str) -> None:
    from omnidit.parallel import ParallelConfig, init_parallel

    torch.set_num_threads(1)
    state = init_parallel(ParallelConfig(ulysses_degree=2), rank=rank, world_size=2,
                          init_method=f"tcp://127.0.0.1:{port}", timeout_s=60)
    try:
        vae = _vae()
        wrapped = VideoVAE(vae, auto_tiling_pixels=None)  # the Pipeline's path
        with torch.no_grad():
            out = {"decode": tiled_decode(vae, _latents(), tiles_of(vae), axis=state.world),
                   "wrapped_decode": wrapped.decode(_latents(), axis=state.world),
                   "wrapped_encode": wrapped.encode(_video(1), axis=state.world)}
        for name, t in out.items():
            np.save(os.path.join(out_dir, f"{name}{rank}.npy"), t.numpy())
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


@pytest.mark.timeout(300)  # two spawned processes importing diffusers: slow on a busy machine
def test_parallel_decode_equals_one_process(vae, tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    wrapped = VideoVAE(vae, auto_tiling_pixels=None)
    with torch.no_grad():
        want = tiled_decode(vae, _latents(), tiles_of(vae)).numpy()
        one_decode = wrapped.decode(_latents())  # one process: diffusers' own tiled decode
        one_encode = wrapped.encode(_video(1))
    for rank in range(2):
        got = np.load(tmp_path / f"decode{rank}.npy")
        assert np.array_equal(got, want), rank  # the same pieces, blended the same way: bit-equal
        assert rel_err(torch.from_numpy(np.load(tmp_path / f"wrapped_decode{rank}.npy")), one_decode) <= FP32_REL
        assert rel_err(torch.from_numpy(np.load(tmp_path / f"wrapped_encode{rank}.npy")), one_encode) <= FP32_REL
