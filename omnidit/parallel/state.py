"""Parallel configuration and process groups: one object per axis (rank, world size, group).

Rank layout (ulysses innermost, so its all-to-all stays inside a node when degrees fit one):

    global rank = (cfg_rank * ring_degree + ring_rank) * ulysses_degree + ulysses_rank
    sp rank     = ring_rank * ulysses_degree + ulysses_rank      (position of this rank's video chunk)

No global state: `init_parallel` returns a `ParallelState` and `destroy_parallel` tears down exactly
what it created, so tests can run several configurations in a row in the same processes.
"""

from __future__ import annotations

import os
from datetime import timedelta
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of the three axes; their product is the number of processes."""

    ulysses_degree: int = 1  # all-to-all between sequence and heads; must divide the head count
    ring_degree: int = 1  # key/value blocks passed round a ring
    cfg_degree: int = 1  # 2: conditional and unconditional branches on different ranks

    def __post_init__(self) -> None:
        for name in ("ulysses_degree", "ring_degree", "cfg_degree"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ParallelConfig.{name} must be an integer >= 1, got {v!r}")
        if self.cfg_degree not in (1, 2):
            raise ValueError(f"ParallelConfig.cfg_degree must be 1 or 2, got {self.cfg_degree}")

    @property
    def sp_degree(self) -> int:
        """Sequence-parallel degree: how many chunks the video tokens are split into."""
        return self.ulysses_degree * self.ring_degree

    @property
    def world_size(self) -> int:
        return self.sp_degree * self.cfg_degree

    def check_heads(self, num_heads: int) -> None:
        """Ulysses gives each rank heads / ulysses_degree heads: refuse what does not divide."""
        if num_heads % self.ulysses_degree:
            ok = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
            raise ValueError(
                f"ulysses_degree={self.ulysses_degree} must divide the model's {num_heads} attention heads; "
                f"allowed: {ok} (use ring_degree for the rest)"
            )

    def coords(self, rank: int) -> tuple[int, int, int]:
        """Global rank -> (cfg_rank, ring_rank, ulysses_rank)."""
        u, r = self.ulysses_degree, self.ring_degree
        return rank // (u * r), (rank // u) % r, rank % u


@dataclass(frozen=True)
class Axis:
    """One parallel axis as seen by this process: its rank on the axis, the axis size, its group.

    `ranks` are the global ranks of the axis members in axis order (needed for point-to-point ops).
    `group` is None when the axis has size 1 (nothing to communicate).
    """

    name: str
    rank: int
    world_size: int
    ranks: tuple[int, ...]
    group: object | None = field(default=None, compare=False, repr=False)

    def global_rank(self, axis_rank: int) -> int:
        return self.ranks[axis_rank % self.world_size]


@dataclass(frozen=True)
class ParallelState:
    """All axes of one process. `sp` is the combined ulysses x ring axis (the sequence split)."""

    config: ParallelConfig
    rank: int
    world_size: int
    ulysses: Axis
    ring: Axis
    sp: Axis
    cfg: Axis
    world: Axis  # every process (the default group)
    device: torch.device
    owns_default_group: bool = False

    @property
    def is_output_rank(self) -> bool:
        """The one process that writes results (global rank 0)."""
        return self.rank == 0


def _axis_members(config: ParallelConfig, rank: int, axis: str) -> list[int]:
    """Global ranks sharing every coordinate of `rank` except those of `axis`, in axis order."""
    u, r, c = config.ulysses_degree, config.ring_degree, config.cfg_degree
    cr, rr, ur = config.coords(rank)
    if axis == "ulysses":
        return [(cr * r + rr) * u + i for i in range(u)]
    if axis == "ring":
        return [(cr * r + i) * u + ur for i in range(r)]
    if axis == "sp":
        return [cr * r * u + i for i in range(r * u)]
    return [(i * r + rr) * u + ur for i in range(c)]  # cfg


def _all_groups(config: ParallelConfig, axis: str) -> list[list[int]]:
    seen: dict[tuple[int, ...], None] = {}
    for g in range(config.world_size):
        seen.setdefault(tuple(_axis_members(config, g, axis)), None)
    return [list(k) for k in seen]


def init_parallel(
    config: ParallelConfig,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    init_method: str | None = None,
    backend: str | None = None,
    device: torch.device | str | None = None,
    timeout_s: float | None = None,
) -> ParallelState:
    """Join (or create) the default process group and build the groups of every axis.

    Without an initialised default group, one is created from `init_method` (e.g.
    `tcp://127.0.0.1:PORT`) or, if None, from torchrun's env vars (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT). Backend: gloo for CPU, NCCL for CUDA unless given. Every process must call this
    with the same config (group creation is collective). `timeout_s` bounds every collective (tests
    set it low so a broken peer fails fast instead of hanging).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    owns = False
    timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if rank is None:
            rank = int(os.environ.get("RANK", "0"))
        if world_size is None:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        kwargs = {"device_id": device} if backend == "nccl" and device.index is not None else {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size,
                                **kwargs)
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != config.world_size:
        if owns:
            dist.destroy_process_group()
        raise ValueError(
            f"ulysses_degree x ring_degree x cfg_degree = {config.ulysses_degree} x {config.ring_degree} x "
            f"{config.cfg_degree} = {config.world_size} must equal the number of processes ({world})"
        )
    axes = {}
    for name in ("ulysses", "ring", "sp", "cfg"):
        mine = _axis_members(config, rank, name)
        group = None
        for members in _all_groups(config, name):  # new_group is collective: every rank creates every group
            g = dist.new_group(members, timeout=timeout) if len(members) > 1 else None
            if rank in members:
                group = g
        axes[name] = Axis(name, mine.index(rank), len(mine), tuple(mine), group)
    everyone = Axis("world", rank, world, tuple(range(world)), dist.group.WORLD if world > 1 else None)
    return ParallelState(config, rank, world, axes["ulysses"], axes["ring"], axes["sp"], axes["cfg"], everyone,
                         device, owns_default_group=owns)


def local_state(config: ParallelConfig | None = None, device: torch.device | str = "cpu") -> ParallelState:
    """A one-process state (every axis of size 1) that needs no torch.distributed."""
    config = config or ParallelConfig()
    if config.world_size != 1:
        raise ValueError(f"local_state needs a world of 1 process, the config has {config.world_size}")
    axes = [Axis(n, 0, 1, (0,)) for n in ("ulysses", "ring", "sp", "cfg", "world")]
    return ParallelState(config, 0, 1, *axes, device=torch.device(device))


def destroy_parallel(state: ParallelState) -> None:
    """Destroy the axis groups and, if `init_parallel` created it, the default group."""
    if not dist.is_initialized():
        return
    if state.owns_default_group:
        dist.destroy_process_group()  # destroys every subgroup with it
        return
    done: set[int] = set()
    for axis in (state.ulysses, state.ring, state.sp, state.cfg):
        if axis.group is not None and id(axis.group) not in done:
            done.add(id(axis.group))
            dist.destroy_process_group(axis.group)
