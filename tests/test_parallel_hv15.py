"""HunyuanVideo-1.5 DiT under sequence and CFG parallelism == one process (fp32, CPU, gloo, 2 and 4 processes).

One spawn of 4 processes runs every configuration in a row, on inputs with the hard cases of the 1.5
forward: batch 2 with different text and glyph lengths (one sample without glyph tokens), image tokens
(I2V) and MeanFlow's timestep_r, split by the CFG axis like the rest; video token counts no degree
divides (27, and 5 on 4 ranks). The runtime's text broadcast carries the glyph tokens to every rank.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
from test_parallel_dit import free_port
from tolerances import FP32_REL, rel_err

# (ulysses, ring, cfg): world sizes 2 and 4
CASES = [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (4, 1, 1), (1, 4, 1), (1, 2, 2), (2, 1, 2)]
GRIDS = [(3, 3, 3), (1, 1, 5)]  # latent (T, H, W), patch 1: 27 and 5 video tokens
TOL = FP32_REL


def tiny_dit():
    from omnidit.dit import DiT, preset

    torch.manual_seed(0)
    cfg = preset("tiny-1.5").replace(num_attention_heads=4, attention_head_dim=8, text_embed_dim=16)
    dit = DiT(cfg).eval()
    with torch.no_grad():  # non-trivial weights: zero-init adaLN would make every block the identity
        for p in dit.parameters():
            p.normal_(0, 0.2)
    return dit


def inputs(grid, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, *grid, generator=g)
    t = torch.tensor([700.0, 300.0])
    text = torch.randn(2, 6, 16, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])  # sample 1 has 3 padded text tokens
    kw = dict(encoder_hidden_states_2=torch.randn(2, 4, 10, generator=g),
              encoder_attention_mask_2=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]),  # sample 1: no glyphs
              image_embeds=torch.randn(2, 3, 6, generator=g), timestep_r=torch.tensor([500.0, 0.0]))
    return (x, t, text, mask), kw


class Rank0Encoder:
    """Text embeddings with glyph tokens; only rank 0 may run it."""

    def __init__(self, rank: int):
        self.rank = rank

    def encode(self, prompts, device):
        from omnidit.tokenizers import TextEmbeddings

        assert self.rank == 0, "the text encoder ran on a rank other than 0"
        g = torch.Generator().manual_seed(len(prompts))
        B = len(prompts)
        return TextEmbeddings(torch.randn(B, 5, 16, generator=g), torch.ones(B, 5, dtype=torch.long),
                              torch.zeros(B, 0), torch.randn(B, 3, 10, generator=g),
                              torch.tensor([[1, 0, 0]] * B))


def worker(rank: int, ports: list[int], out_dir: str) -> None:
    from omnidit.parallel import ParallelConfig, ParallelRuntime, init_parallel

    torch.set_num_threads(1)
    dit = tiny_dit()
    with torch.no_grad():
        refs = {grid: dit(*inputs(grid)[0], **inputs(grid)[1]) for grid in GRIDS}
        args, kw = inputs(GRIDS[0])
        no_glyph_padding = dit(*args, **dict(kw, encoder_attention_mask_2=torch.ones(2, 4, dtype=torch.long)))
    # padded glyphs must matter, or the comparisons below could not catch mishandled padding
    assert rel_err(no_glyph_padding, refs[GRIDS[0]]) > 1e-2
    want_text = Rank0Encoder(0).encode(["a", "b"], "cpu")
    lines = []
    for (u, r, c), port in zip(CASES, ports, strict=True):
        config = ParallelConfig(ulysses_degree=u, ring_degree=r, cfg_degree=c)
        if rank >= config.world_size:
            continue
        state = init_parallel(config, rank=rank, world_size=config.world_size, init_method=f"tcp://127.0.0.1:{port}",
                              timeout_s=60)
        runtime = ParallelRuntime(state)
        try:
            runtime.attach(dit)
            with torch.no_grad():
                for grid in GRIDS:
                    args, kw = inputs(grid)
                    out = runtime.forward(dit, *args, **kw)
                    err = rel_err(out, refs[grid])
                    lines.append(f"{u} {r} {c} {grid} {err:.3e}")
                    assert out.shape == refs[grid].shape
                    assert err <= TOL, f"U{u} R{r} CFG{c} grid {grid}: relative error {err:.3e}"
            text = runtime.encode_text(Rank0Encoder(rank), ["a", "b"], torch.device("cpu"))
            for a, b in zip(text.as_text(), want_text.as_text(), strict=True):
                assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        finally:
            dit.set_joint_attention(None)
            runtime.close()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(lines))


@pytest.mark.timeout(150)
def test_hv15_parallel_forward_equals_single_process(tmp_path):
    ports = [free_port() for _ in CASES]
    mp.spawn(worker, args=(ports, str(tmp_path)), nprocs=4, join=True)
    report = (tmp_path / "rank0.txt").read_text().splitlines()
    assert len(report) == len(CASES) * len(GRIDS)  # every case ran on rank 0
    print("\n".join(report), file=sys.stderr)


def test_planner_knows_hunyuanvideo_15_shapes():
    from omnidit.parallel.planner import Workload, candidates, choose

    w = Workload.hunyuan_video_15()  # 720p x 121 frames, real CFG
    assert w.video_tokens == 31 * 45 * 80  # (121 - 1) / 4 + 1 latent frames of 720/16 x 1280/16
    assert (w.heads, w.head_dim, w.dual_blocks, w.single_blocks, w.out_per_token) == (16, 128, 54, 0, 32)
    assert 8.0e9 < w.params < 8.7e9  # HunyuanVideo-1.5 is 8.3B
    assert all(16 % c.ulysses_degree == 0 for c in candidates(w, 64))
    assert {c.ulysses_degree for c in candidates(w, 32)} == {1, 2, 4, 8, 16}
    assert choose(w, 8).cfg_degree == 2  # real CFG: the two branches split before the tokens do
    assert choose(Workload.hunyuan_video_15(true_cfg=False), 8).cfg_degree == 1
