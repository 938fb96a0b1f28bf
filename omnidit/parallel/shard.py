"""Split and gather of the video tokens (and their RoPE table) at the DiT's edges.

N video tokens are cut into P contiguous chunks of `chunk = ceil(N / P)` tokens, sp rank i holding
tokens [i * chunk, (i + 1) * chunk). When P does not divide N the sequence is padded at its *end*
to P * chunk, so padding is always a suffix: of the whole sequence, of every rank's chunk and of
every run of consecutive chunks. Attention then drops it by slicing keys to their valid prefix
(`ShardSpec.valid`), never by a mask, and the gather cuts it off again. Text tokens are not split:
every rank holds all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omnidit.dit.attention import JointLayout
from omnidit.parallel.comm import all_gather
from omnidit.parallel.state import Axis


@dataclass(frozen=True)
class ShardSpec:
    """How N video tokens lie on P sequence-parallel ranks, seen from sp rank `rank`."""

    n_tokens: int  # real video tokens N
    degree: int  # sp degree P
    rank: int  # this process's sp rank

    def __post_init__(self) -> None:
        if self.n_tokens < 1 or self.degree < 1 or not 0 <= self.rank < self.degree:
            raise ValueError(f"ShardSpec needs n_tokens >= 1, degree >= 1, 0 <= rank < degree; got {self}")

    @property
    def chunk(self) -> int:
        """Tokens per rank, padding included."""
        return -(-self.n_tokens // self.degree)

    @property
    def padding(self) -> int:
        return self.chunk * self.degree - self.n_tokens

    def valid(self, first: int, count: int = 1) -> int:
        """Real (non-padding) tokens in the `count` consecutive chunks starting at chunk `first`."""
        return max(0, min(self.n_tokens - first * self.chunk, count * self.chunk))


@dataclass(frozen=True, eq=False)
class ShardedLayout(JointLayout):
    """The `JointLayout` the blocks see on one rank: `n_img` is the local chunk (padding included);
    `shard` tells the sequence-parallel attention where that chunk lies in the whole sequence."""

    shard: ShardSpec | None = None


def split_tokens(x: torch.Tensor, spec: ShardSpec) -> torch.Tensor:
    """`[B, N, ...]` (the same on every rank) -> this rank's `[B, chunk, ...]`, zero-padded at the end."""
    if x.shape[1] != spec.n_tokens:
        raise ValueError(f"split_tokens: expected {spec.n_tokens} tokens, got {tuple(x.shape)}")
    start = spec.rank * spec.chunk
    local = x[:, start : start + spec.chunk]  # [B, <= chunk, ...]
    missing = spec.chunk - local.shape[1]
    if missing:
        pad = [0, 0] * (x.ndim - 2) + [0, missing]
        local = F.pad(local, pad)  # zeros stay finite through every block
    return local


def split_rope(freqs: torch.Tensor, spec: ShardSpec) -> torch.Tensor:
    """RoPE table `[N, Dh/2]` (complex) -> this rank's `[chunk, Dh/2]`; padding rows rotate by identity."""
    if freqs.shape[0] != spec.n_tokens:
        raise ValueError(f"split_rope: expected {spec.n_tokens} rows, got {tuple(freqs.shape)}")
    start = spec.rank * spec.chunk
    local = freqs[start : start + spec.chunk]  # [<= chunk, Dh/2]
    missing = spec.chunk - local.shape[0]
    if missing:
        local = torch.cat([local, freqs.new_ones(missing, freqs.shape[1])])
    return local


def gather_tokens(local: torch.Tensor, spec: ShardSpec, axis: Axis) -> torch.Tensor:
    """Every rank's `[B, chunk, ...]` -> the whole `[B, N, ...]` on every rank, padding removed."""
    if axis.world_size != spec.degree:
        raise ValueError(f"gather_tokens: axis {axis.name} has {axis.world_size} ranks, the shard {spec.degree}")
    parts = all_gather(local, axis)  # [P, B, chunk, ...]
    whole = parts.transpose(0, 1).flatten(1, 2)  # [B, P * chunk, ...]
    return whole[:, : spec.n_tokens]  # [B, N, ...]
