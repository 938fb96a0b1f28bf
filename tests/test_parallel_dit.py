"""Sequence- and CFG-parallel DiT forward == single-process forward (fp32, CPU, gloo, 2 and 4 processes).

One spawn of 4 processes runs every configuration in a row (fresh process groups each time, all
destroyed), on inputs chosen to hit the hard cases: batch 2 with different text lengths (padded
text), video token counts that no degree divides (27 tokens; 5 tokens on 4 ranks leaves one rank
with nothing but padding), embedded guidance split by the CFG axis.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp
from tolerances import FP32_REL, rel_err

# (ulysses, ring, cfg): world sizes 2 and 4
CASES = [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 4, 1), (4, 1, 1), (1, 2, 2), (2, 1, 2)]
GRIDS = [(3, 3, 3), (1, 1, 5)]  # latent (T, H, W) with patch 1: 27 and 5 video tokens
TOL = FP32_REL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_dit():
    from omnidit.dit import DiT, DiTConfig

    torch.manual_seed(0)
    cfg = DiTConfig(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
    )
    dit = DiT(cfg).eval()
    with torch.no_grad():  # non-trivial weights: zero-init adaLN would make every block the identity
        for p in dit.parameters():
            p.normal_(0, 0.2)
    return dit


def inputs(grid, seed=1):
    g = torch.Generator().manual_seed(seed)
    T, H, W = grid
    x = torch.randn(2, 4, T, H, W, generator=g)
    text = torch.randn(2, 6, 16, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])  # sample 1 has 3 padded text tokens
    pooled = torch.randn(2, 8, generator=g)
    t = torch.tensor([700.0, 300.0])
    guidance = torch.tensor([4000.0, 6000.0])
    return x, t, text, mask, pooled, guidance


def worker(rank: int, ports: list[int], out_dir: str) -> None:
    from omnidit.parallel import ParallelConfig, ParallelRuntime, init_parallel

    torch.set_num_threads(1)
    dit = tiny_dit()
    with torch.no_grad():
        refs = {grid: dit(*inputs(grid)) for grid in GRIDS}
        x, t, text, _, pooled, g = inputs(GRIDS[0])
        unpadded = dit(x, t, text, torch.ones(2, 6, dtype=torch.long), pooled, g)
    # the padded-text case must matter, or the comparisons below could not catch mishandled padding
    assert rel_err(unpadded, refs[GRIDS[0]]) > 1e-2
    lines = []
    for (u, r, c), port in zip(CASES, ports):
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
                    out = runtime.forward(dit, *inputs(grid))
                    err = rel_err(out, refs[grid])
                    lines.append(f"{u} {r} {c} {grid} {err:.3e}")
                    assert out.shape == refs[grid].shape
                    assert err <= TOL, f"U{u} R{r} CFG{c} grid {grid}: relative error {err:.3e}"
        finally:
            dit.set_joint_attention(None)
            runtime.close()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(lines))


@pytest.mark.timeout(120)
def test_parallel_forward_equals_single_process(tmp_path):
    ports = [free_port() for _ in CASES]
    mp.spawn(worker, args=(ports, str(tmp_path)), nprocs=4, join=True)
    report = (tmp_path / "rank0.txt").read_text().splitlines()
    assert len(report) == len(CASES) * len(GRIDS)  # every case ran on rank 0
    print("\n".join(report), file=sys.stderr)
