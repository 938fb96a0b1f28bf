"""Step caching under Ulysses, Ring, USP and CFG parallelism (gloo, 2 and 4 processes): the skip
decision comes from a metric reduced across ranks, so every rank skips the same steps and the
result equals one process running the same cache (rel <= 1e-5).

Each case runs a short CFG Euler trajectory of the tiny DiT (2 samples with different text
lengths x cond/uncond, 27 video tokens: padding on every degree) through `ParallelRuntime.forward`.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
from test_parallel_dit import free_port, inputs, tiny_dit
from tolerances import FP32_REL, rel_err

# (ulysses, ring, cfg): world sizes 2 and 4
CASES = [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2), (2, 1, 2), (4, 1, 1), (1, 4, 1)]
STEPS = 6
GRID = (3, 3, 3)


def make_caches():
    from omnidit.dit.cache import FirstBlockCache, MagCache, TeaCache

    # thresholds 1-3 % away from every decision the reference takes (the random DiT moves a lot per step)
    return {"fbcache": FirstBlockCache(1.2), "teacache": TeaCache(1.5, [1.0, 0.0]),
            "magcache": MagCache(0.2, [1.0, 1.1, 0.95, 1.02, 0.97, 1.0], retention=0.0)}


def trajectory(forward, cache) -> torch.Tensor:
    """STEPS Euler steps with true CFG (scale 3): batch rows [cond x2 | uncond x2], one forward per step."""
    x, _, text, mask, pooled, guidance = inputs(GRID)
    g = torch.Generator().manual_seed(7)
    text4 = torch.cat([text, torch.randn(text.shape, generator=g)])
    mask4 = torch.cat([mask, mask.flip(0)])
    pooled4 = torch.cat([pooled, torch.randn(pooled.shape, generator=g)])
    guidance4 = torch.cat([guidance, guidance])
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    cache.begin(steps=STEPS, branches=2)
    with torch.no_grad():
        for i in range(STEPS):
            t = (sigmas[i] * 1000).expand(4)
            v = forward(torch.cat([x, x]), t, text4, mask4, pooled4, guidance4, cache=cache)
            v_c, v_u = v.chunk(2)
            x = x + (sigmas[i + 1] - sigmas[i]) * (v_u + 3.0 * (v_c - v_u))
    return x


def worker(rank: int, ports: list[int], out_dir: str) -> None:
    from omnidit.parallel import ParallelConfig, ParallelRuntime, init_parallel

    torch.set_num_threads(1)
    dit = tiny_dit()
    refs = {}
    for name, cache in make_caches().items():
        refs[name] = (trajectory(dit, cache), list(cache.computed))
        # the cases must skip something and compute something, per sample, or they test nothing
        assert 0 < sum(cache.computed) < 2 * STEPS and len(set(cache.computed)) > 1, (name, cache.computed)
    assert refs["fbcache"][1] != refs["teacache"][1] or refs["fbcache"][1] != refs["magcache"][1]
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
            forward = functools.partial(runtime.forward, dit)
            for name, cache in make_caches().items():
                if name == "magcache" and (u, r, c) not in CASES[:3]:
                    continue  # data-independent decisions: a few cases suffice
                out = trajectory(forward, cache)
                want, computed = refs[name]
                err = rel_err(out, want)
                lines.append(f"{u} {r} {c} {name} {cache.computed} {err:.3e}")
                assert cache.computed == computed, f"U{u} R{r} CFG{c} {name}: {cache.computed} != {computed}"
                assert err <= FP32_REL, f"U{u} R{r} CFG{c} {name}: relative error {err:.3e}"
        finally:
            dit.set_joint_attention(None)
            runtime.close()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(lines))


@pytest.mark.timeout(180)
def test_cached_parallel_trajectory_equals_single_process(tmp_path):
    ports = [free_port() for _ in CASES]
    mp.spawn(worker, args=(ports, str(tmp_path)), nprocs=4, join=True)
    report = (tmp_path / "rank0.txt").read_text().splitlines()
    assert len(report) == 2 * len(CASES) + 3  # every case ran on rank 0
    print("\n".join(report), file=sys.stderr)
