"""Tiled and parallel VAE decode/encode (omnidit/tokenizers/vae_tiling.py) against diffusers' tiling."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_parallel_dit import free_port
from tiny_hunyuan import make_tiny_vae
from tolerances import FP32_REL, assert_frames_close, rel_err

from omnidit.tokenizers.vae import VideoVAE, frames_to_uint8
from omnidit.tokenizers.vae_tiling import Tiles, tiled_decode, tiled_encode

# Small tiles so a small video is cut in time and space: 32x32 pixel tiles every 24, 8-frame windows every 4.
SMALL = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_min_num_frames=8,
             tile_sample_stride_height=24, tile_sample_stride_width=24, tile_sample_stride_num_frames=4)


@pytest.fixture(scope="module")
def vae():
    v = make_tiny_vae(seed=3)
    v.enable_tiling(**SMALL)
    return v


def _latents(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [
    (1, 4, 5, 7, 9),  # 17 frames, 56x72: both cuts, ragged edge tiles
    (2, 4, 2, 6, 5),  # 5 frames: spatial tiles only (no temporal window past 8 frames)
    (1, 4, 4, 3, 3),  # 13 frames, 24x24: temporal windows only (one tile)
])
def test_tiled_decode_equals_diffusers_tiling(vae, shape):
    z = _latents(shape)
    with torch.no_grad():
        want = vae.decode(z).sample
        got = tiled_decode(vae, z, Tiles.of(vae))
    assert got.shape == want.shape
    assert rel_err(got, want) <= FP32_REL
    assert_frames_close(frames_to_uint8(got), frames_to_uint8(want))
    with torch.no_grad():
        plain = tiled_decode(vae, z, Tiles(spatial=False, temporal=False))  # one piece: the untiled decoder
    assert rel_err(plain, want) > 1e-4 if shape[3] * 8 > 32 else True  # the tiles really changed the cut


def test_tiled_encode_equals_diffusers_tiling(vae):
    x = torch.rand(1, 3, 17, 56, 72, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist.parameters
        got = tiled_encode(vae, x, Tiles.of(vae))
    assert got.shape == want.shape and rel_err(got, want) <= FP32_REL


def test_tile_settings_are_checked():
    with pytest.raises(ValueError, match="stride_height"):
        Tiles(height=32, stride_height=40)
    with pytest.raises(ValueError, match="frames"):
        Tiles(frames=0)


PARALLEL_SHAPE = (1, 4, 3, 7, 3)  # 3 time windows x 3 tile rows x 1 column = 9 pieces: an uneven last round


def _decode_worker(rank: int, port: int, out_dir: str) -> None:
    from omnidit.parallel import ParallelConfig, init_parallel

    torch.set_num_threads(1)
    state = init_parallel(ParallelConfig(ulysses_degree=2), rank=rank, world_size=2,
                          init_method=f"tcp://127.0.0.1:{port}", timeout_s=60)
    try:
        vae = make_tiny_vae(seed=3)
        vae.enable_tiling(**SMALL)
        z = _latents(PARALLEL_SHAPE)
        with torch.no_grad():
            got = tiled_decode(vae, z, Tiles.of(vae), axis=state.world)
            wrapped = VideoVAE(vae, auto_tiling_pixels=None).decode(z, axis=state.world)  # the Pipeline's path
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), got.numpy())
        np.save(os.path.join(out_dir, f"wrapped{rank}.npy"), wrapped.numpy())
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


@pytest.mark.timeout(300)  # two spawned processes importing diffusers: slow on a busy machine
def test_parallel_decode_equals_one_process(vae, tmp_path):
    mp.spawn(_decode_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    z = _latents(PARALLEL_SHAPE)
    with torch.no_grad():
        want = tiled_decode(vae, z, Tiles.of(vae)).numpy()
        one = VideoVAE(vae, auto_tiling_pixels=None).decode(z)  # one process: diffusers' own tiled decode
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npy")
        assert np.array_equal(got, want), rank  # the same pieces, blended the same way: bit-equal
        assert rel_err(torch.from_numpy(np.load(tmp_path / f"wrapped{rank}.npy")), one) <= FP32_REL
