"""Single-process pieces of omnidit.parallel: config checks, rank layout, sharding, LSE merging, planner."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from omnidit.dit.attention import BACKENDS
from omnidit.parallel import ParallelConfig
from omnidit.parallel.kernels import attention_lse, attention_prefix, empty_partial, merge, merge_stack
from omnidit.parallel.planner import Workload, candidates, choose, estimate, markdown, plan
from omnidit.parallel.shard import ShardSpec, split_rope, split_tokens
from omnidit.parallel.state import _axis_members


@pytest.mark.parametrize("kwargs,needle", [
    (dict(ulysses_degree=0), "ulysses_degree"),
    (dict(ring_degree=-1), "ring_degree"),
    (dict(cfg_degree=3), "cfg_degree must be 1 or 2"),
    (dict(ulysses_degree=2.0), "ulysses_degree"),
])
def test_config_rejects_bad_degrees(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ParallelConfig(**kwargs)


def test_heads_not_divisible_by_ulysses_is_refused():
    ParallelConfig(ulysses_degree=4).check_heads(24)
    with pytest.raises(ValueError, match=r"ulysses_degree=5 must divide the model's 24 attention heads.*12, 24"):
        ParallelConfig(ulysses_degree=5).check_heads(24)


def test_rank_layout_ulysses_innermost():
    c = ParallelConfig(ulysses_degree=2, ring_degree=2, cfg_degree=2)
    assert c.world_size == 8 and c.sp_degree == 4
    assert c.coords(5) == (1, 0, 1)
    assert _axis_members(c, 5, "ulysses") == [4, 5]  # consecutive ranks: one node
    assert _axis_members(c, 5, "ring") == [5, 7]
    assert _axis_members(c, 5, "sp") == [4, 5, 6, 7]  # sp rank = ring rank * U + ulysses rank
    assert _axis_members(c, 5, "cfg") == [1, 5]


def test_shard_spec_pads_at_the_end():
    s = ShardSpec(n_tokens=5, degree=4, rank=0)
    assert (s.chunk, s.padding) == (2, 3)
    assert [s.valid(j) for j in range(4)] == [2, 2, 1, 0]  # the last rank holds only padding
    assert s.valid(2, 2) == 1 and s.valid(0, 4) == 5


def test_split_tokens_and_rope_cover_the_sequence_once():
    x = torch.randn(2, 7, 3)
    freqs = torch.polar(torch.ones(7, 4), torch.randn(7, 4))
    parts = [split_tokens(x, ShardSpec(7, 3, r)) for r in range(3)]  # chunk 3, one padding token
    whole = torch.cat(parts, dim=1)
    assert torch.equal(whole[:, :7], x) and torch.equal(whole[:, 7:], torch.zeros(2, 2, 3))
    ropes = torch.cat([split_rope(freqs, ShardSpec(7, 3, r)) for r in range(3)])
    assert torch.equal(ropes[:7], freqs) and torch.equal(ropes[7:], torch.ones(2, 4, dtype=freqs.dtype))


def _ref(q, k, v, lengths):
    mask = (torch.arange(k.shape[1])[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def test_attention_lse_and_merge_equal_full_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 3, 8), torch.randn(2, 9, 3, 8), torch.randn(2, 9, 3, 8)
    full = _ref(q, k, v, [9, 9])
    out, lse = attention_lse(q, k, v)
    assert torch.allclose(out, full, atol=1e-6)
    scores = torch.einsum("bqhd,bkhd->bqhk", q, k) / 8**0.5
    assert torch.allclose(lse, scores.logsumexp(-1), atol=1e-6)
    a, b = attention_lse(q, k[:, :4], v[:, :4]), attention_lse(q, k[:, 4:], v[:, 4:])
    merged, _ = merge(*a, *b)
    assert torch.allclose(merged, full, atol=1e-6)
    # stacked merge with an empty partial (a ring block of pure padding) changes nothing
    outs, lses = zip(a, b, empty_partial(q))
    stacked, _ = merge_stack(torch.stack(outs), torch.stack(lses))
    assert torch.allclose(stacked, full, atol=1e-6)
    # counting a block twice is visibly wrong: the bug replicated text K/V would cause on a ring
    twice, _ = merge_stack(torch.stack([a[0], a[0], b[0]]), torch.stack([a[1], a[1], b[1]]))
    assert (twice - full).abs().max() > 1e-2


def test_key_lengths_exclude_padded_keys():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 2, 8), torch.randn(2, 6, 2, 8), torch.randn(2, 6, 2, 8)
    want = _ref(q, k, v, [6, 3])
    assert torch.allclose(attention_lse(q, k, v, [6, 3])[0], want, atol=1e-6)
    assert torch.allclose(attention_prefix(q, k, v, [6, 3], BACKENDS["sdpa"]), want, atol=1e-6)
    with pytest.raises(ValueError, match="at least one key"):
        attention_lse(q, k, v, [6, 0])


def test_planner_hunyuan_video_shapes_and_volumes():
    w = Workload.hunyuan_video()
    assert w.video_tokens == 118_800 and 12e9 < w.params < 13.5e9
    assert {(c.ulysses_degree, c.ring_degree) for c in candidates(w, 8)} == {(1, 8), (2, 4), (4, 2), (8, 1)}
    r = estimate(w, ParallelConfig(ulysses_degree=8))
    assert r.ring_bytes == 0 and r.tokens_per_gpu == 14_850 + 256 and r.padding == 0
    # Ulysses moves (U-1)/U of each rank's q, k, v and output once per attention: bounded by four local
    # [n, D] activations per block, and above three (q, k, v must all travel).
    local = 60 * 14_850 * 3072 * 2  # blocks x tokens per GPU x D x bf16
    assert 3 * local * 7 / 8 < r.ulysses_bytes < 4 * local
    ring = estimate(w, ParallelConfig(ring_degree=8))
    assert ring.ring_bytes > 2 * 7 * 60 * 14_850 * 3072 * 2
    assert estimate(w, ParallelConfig(ulysses_degree=8, ring_degree=8)).padding == 48
    assert choose(w, 64) == ParallelConfig(ulysses_degree=8, ring_degree=8)  # all-to-all inside nodes
    with_cfg = Workload.hunyuan_video(true_cfg=True)
    assert any(c.cfg_degree == 2 for c in candidates(with_cfg, 8))
    assert "(chosen)" in markdown(plan(w, 8), w)
    with pytest.raises(ValueError, match="world_size=0"):
        plan(w, 0)


def test_planner_volumes_scale_as_the_traffic_does():
    """Properties of the estimates, not their formula: linear in blocks and batch, zero for an axis of
    size 1, and Ulysses' per-GPU volume falls as (U - 1) / U^2 (each rank keeps 1/U of a 1/U chunk)."""
    from dataclasses import replace

    w = replace(Workload.hunyuan_video(height=256, width=256, frames=33), text_tokens=0)
    for cfg in (ParallelConfig(ulysses_degree=4), ParallelConfig(ring_degree=4), ParallelConfig(2, 2)):
        one = estimate(w, cfg)
        blocks = estimate(replace(w, dual_blocks=2 * w.dual_blocks, single_blocks=2 * w.single_blocks), cfg)
        batch = estimate(replace(w, batch=3), cfg)
        for field in ("ulysses_bytes", "ring_bytes"):
            assert getattr(blocks, field) == pytest.approx(2 * getattr(one, field))
            assert getattr(batch, field) == pytest.approx(3 * getattr(one, field))
    assert estimate(w, ParallelConfig(ring_degree=4)).ulysses_bytes == 0
    assert estimate(w, ParallelConfig(ulysses_degree=4)).ring_bytes == 0
    assert w.video_tokens % 8 == 0
    per = {u: estimate(w, ParallelConfig(ulysses_degree=u)).ulysses_bytes * u * u / (u - 1) for u in (2, 4, 8)}
    assert per[2] == pytest.approx(per[4]) == pytest.approx(per[8])
    # Ring: every rank receives the other R - 1 ranks' K and V blocks, so its volume grows with R.
    ring = [estimate(w, ParallelConfig(ring_degree=r)).ring_bytes for r in (2, 4, 8)]
    assert ring[0] < ring[1] < ring[2]


def test_cli_flags_and_launch_errors(monkeypatch):
    from omnidit.cli.parallel_flags import add_parallel_args, parallel_config, start_parallel

    p = argparse.ArgumentParser()
    add_parallel_args(p)
    args = p.parse_args(["--ulysses-degree", "2", "--ring-degree", "3", "--cfg-parallel"])
    assert parallel_config(args) == ParallelConfig(2, 3, 2)
    assert start_parallel(p.parse_args([]), None) is None  # plain single process: no torch.distributed
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="12 processes needed; run under torchrun"):
        start_parallel(args, None)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="this torchrun has 4 processes"):
        start_parallel(args, None)
