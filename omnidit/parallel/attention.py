"""Sequence-parallel joint attention: Ulysses, Ring, and USP (a ulysses x ring mesh of both).

The DiT calls one hook, `dit.joint_attention(q, k, v, layout)`; `SequenceParallelAttention` is that
hook. On every rank q, k, v are `[B, chunk + T, H, D]`: this rank's chunk of the video tokens (end
padded, see shard.py) followed by all T text tokens (replicated, identical on every rank).

- Ulysses (degree U): one all-to-all turns the video chunk x all heads into the U chunks of the
  ulysses group x H/U heads; text needs no communication (each rank slices its heads). After
  attention the inverse all-to-all returns the video rows, and one all-gather over heads gives
  every rank all text rows.
- Ring (degree R): video K/V blocks travel round the ring; each step's partial output is merged by
  log-sum-exp. Text K/V never travel:
    * video queries attend them once, appended to the *local* block at step 0;
    * text queries attend the local video block only, plus the text keys on ring rank 0 only, and
      the R partials are merged once with an all-gather (same order on every rank, so the text
      rows stay bit-identical across ranks). Each key is thus counted exactly once.
- USP: Ulysses inside each ulysses group, then Ring across groups over the H/U local heads.

Padding (when P does not divide N) is a suffix of the sequence, so each K/V block is sliced to its
valid prefix; blocks that are all padding are skipped. Padded text (JointLayout.text_lengths)
is excluded per sample, exactly as single-device attention does.
"""

from __future__ import annotations

from typing import Callable

import torch

from omnidit.dit.attention import AttentionBackend, JointLayout, joint_attention
from omnidit.parallel.comm import RingExchange, all_gather, all_to_all
from omnidit.parallel.kernels import attention_lse, attention_prefix, empty_partial, merge, merge_stack
from omnidit.parallel.shard import ShardedLayout
from omnidit.parallel.state import Axis, ParallelState


def ulysses_to_sequence(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """`[K, B, n, H, D]` (own chunk, all heads) -> `[K, B, U * n, H / U, D]` (group's chunks, own heads)."""
    U = axis.world_size
    if U == 1:
        return x
    x = x.unflatten(3, (U, x.shape[3] // U)).permute(3, 0, 1, 2, 4, 5)  # [U, K, B, n, h, D], slice u -> rank u
    y = all_to_all(x, axis)  # [U, K, B, n, h, D], slice j = chunk of rank j
    return y.permute(1, 2, 0, 3, 4, 5).flatten(2, 3)  # [K, B, U * n, h, D]


def ulysses_to_heads(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Inverse of `ulysses_to_sequence` for one tensor: `[B, U * n, h, D]` -> `[B, n, U * h, D]`."""
    U = axis.world_size
    if U == 1:
        return x
    x = x.unflatten(1, (U, x.shape[1] // U)).permute(1, 0, 2, 3, 4)  # [U, B, n, h, D], slice j -> rank j
    y = all_to_all(x, axis)  # [U, B, n, h, D], slice j = heads of rank j
    return y.permute(1, 2, 0, 3, 4).flatten(2, 3)  # [B, n, H, D]


def ring_attention(
    video: torch.Tensor,
    text: torch.Tensor,
    valid: list[int],
    text_lengths: list[int],
    axis: Axis,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring attention over `[all video chunks | text]`.

    video `[3, B, n, h, D]` (q, k, v of this ring rank's chunk), text `[3, B, T, h, D]` (replicated),
    valid[j] = real tokens in ring rank j's chunk. Returns (video out `[B, n, h, D]`, text out
    `[B, T, h, D]`, identical on every ring rank), in the input dtype.
    """
    (qv, kv, vv), (qt, kt, vt) = video, text
    me, R = axis.rank, axis.world_size
    ring = RingExchange(axis) if R > 1 else None
    if ring is not None:
        ring.start(video[1:])  # [2, B, n, h, D]: own K/V leave while we compute on them

    nv = valid[me]
    k0, v0 = torch.cat([kv[:, :nv], kt], 1), torch.cat([vv[:, :nv], vt], 1)  # [B, nv + T, h, D]
    with_text = [nv + t for t in text_lengths]
    out, lse = attention_lse(qv, k0, v0, with_text)  # video queries meet the text keys here, once
    if me == 0:
        out_t, lse_t = attention_lse(qt, k0, v0, with_text)  # text keys: on ring rank 0 only
    elif nv > 0:
        out_t, lse_t = attention_lse(qt, kv[:, :nv], vv[:, :nv])
    else:
        out_t, lse_t = empty_partial(qt)

    for step in range(1, R):
        block = ring.wait()  # [2, B, n, h, D] from ring rank (me - step)
        if step < R - 1:
            ring.start(block)  # pass it on while computing with it
        n_src = valid[(me - step) % R]
        if n_src == 0:
            continue  # all padding
        o, l = attention_lse(qv, block[0, :, :n_src], block[1, :, :n_src])
        out, lse = merge(out, lse, o, l)

    if R > 1:
        packed = torch.cat([out_t, lse_t[..., None]], dim=-1)  # [B, T, h, D + 1] float32
        parts = all_gather(packed, axis)  # [R, B, T, h, D + 1]
        out_t, _ = merge_stack(parts[..., :-1], parts[..., -1])
    return out.to(qv.dtype), out_t.to(qt.dtype)


def local_attention(
    video: torch.Tensor, text: torch.Tensor, valid: int, text_lengths: list[int], backend: AttentionBackend
) -> tuple[torch.Tensor, torch.Tensor]:
    """No ring: one call of the DiT's kernel over `[video[:valid] | text]` keys (padding dropped)."""
    (qv, kv, vv), (qt, kt, vt) = video, text
    n = qv.shape[1]
    q = torch.cat([qv, qt], 1)  # [B, n + T, h, D]
    k, v = torch.cat([kv[:, :valid], kt], 1), torch.cat([vv[:, :valid], vt], 1)  # [B, valid + T, h, D]
    out = attention_prefix(q, k, v, [valid + t for t in text_lengths], backend)  # [B, n + T, h, D]
    return out[:, :n], out[:, n:]


def usp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: ShardedLayout,
    state: ParallelState,
    backend: AttentionBackend,
) -> torch.Tensor:
    """`[B, chunk + T, H, D]` x3 on each rank -> `[B, chunk + T, H, D]`, equal to single-device attention."""
    spec, n = layout.shard, layout.n_img
    uly, ring = state.ulysses, state.ring
    H = q.shape[2]
    video = torch.stack([q[:, :n], k[:, :n], v[:, :n]])  # [3, B, n, H, D]
    text = torch.stack([q[:, n:], k[:, n:], v[:, n:]])  # [3, B, T, H, D]
    video = ulysses_to_sequence(video, uly)  # [3, B, U * n, h, D]
    h = H // uly.world_size
    text = text[..., uly.rank * h : (uly.rank + 1) * h, :]  # [3, B, T, h, D]: own heads, no communication
    U = uly.world_size
    valid = [spec.valid(j * U, U) for j in range(ring.world_size)]  # real tokens in each ring chunk
    lengths = [int(t) for t in layout.text_lengths.tolist()]
    if ring.world_size == 1:
        out_v, out_t = local_attention(video, text, valid[0], lengths, backend)
    else:
        out_v, out_t = ring_attention(video, text, valid, lengths, ring)
    out_v = ulysses_to_heads(out_v, uly)  # [B, n, H, D]
    out_t = all_gather(out_t, uly).permute(1, 2, 0, 3, 4).flatten(2, 3)  # [B, T, H, D], heads in rank order
    return torch.cat([out_v, out_t], dim=1)  # [B, n + T, H, D]


class SequenceParallelAttention:
    """The joint-attention hook of a sequence-parallel DiT (install with `dit.set_joint_attention`).

    A `ShardedLayout` means the sequence is split across the sp ranks; any other layout (the DiT
    called directly, on whole sequences) falls back to the single-device attention.
    """

    def __init__(self, state: ParallelState, backend: Callable[[], AttentionBackend]):
        self.state = state
        self._backend = backend  # read at call time: dit.set_attention_backend may change it

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout) -> torch.Tensor:
        if not isinstance(layout, ShardedLayout) or layout.shard is None:
            return joint_attention(q, k, v, layout, self._backend())
        if layout.shard.degree != self.state.sp.world_size:
            raise ValueError(f"layout is split {layout.shard.degree} ways, the sp axis has {self.state.sp.world_size}")
        return usp_attention(q, k, v, layout, self.state, self._backend())
