"""The few collectives sequence parallelism needs, on one `Axis` each (gloo on CPU, NCCL on GPU).

All of them are no-ops (or plain reshapes) on an axis of size 1, so callers need no special case.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from omnidit.parallel.state import Axis

# torch >= 2.13 renamed all_gather_into_tensor (which now warns) to all_gather_single
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_gather(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """`x` from every member -> `[W, *x.shape]` in axis order (W = axis.world_size)."""
    if axis.world_size == 1:
        return x.unsqueeze(0)
    x = x.contiguous()
    out = x.new_empty((axis.world_size * x.shape[0], *x.shape[1:]))  # gloo wants the dim-0 concatenation
    _all_gather_single(out, x, group=axis.group)
    return out.unflatten(0, (axis.world_size, x.shape[0]))  # [W, *x.shape]


def all_to_all(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """`x [W, ...]`: slice j goes to member j; returns `[W, ...]` whose slice j came from member j."""
    if axis.world_size == 1:
        return x
    if x.shape[0] != axis.world_size:
        raise ValueError(f"all_to_all needs a leading dim of {axis.world_size}, got {tuple(x.shape)}")
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=axis.group)
    return out


class RingExchange:
    """Send a buffer to the next member of the ring and receive one from the previous, asynchronously.

    `start(buf)` posts both transfers and returns at once, so the caller computes on `buf` while it
    travels; `wait()` returns the received buffer (the previous member's).
    """

    def __init__(self, axis: Axis):
        self.axis = axis
        self._next = axis.global_rank(axis.rank + 1)
        self._prev = axis.global_rank(axis.rank - 1)
        self._pending: tuple[list, torch.Tensor, torch.Tensor] | None = None

    def start(self, buf: torch.Tensor) -> None:
        if self._pending is not None:
            raise RuntimeError("RingExchange.start called twice without wait()")
        buf = buf.contiguous()
        recv = torch.empty_like(buf)
        ops = [
            dist.P2POp(dist.isend, buf, self._next, self.axis.group),
            dist.P2POp(dist.irecv, recv, self._prev, self.axis.group),
        ]
        self._pending = (dist.batch_isend_irecv(ops), recv, buf)  # buf kept alive until the send is done

    def wait(self) -> torch.Tensor:
        if self._pending is None:
            raise RuntimeError("RingExchange.wait called without start()")
        reqs, recv, _ = self._pending
        for r in reqs:
            r.wait()
        self._pending = None
        return recv


def broadcast_object(obj: Any, axis: Axis, src_axis_rank: int = 0, device: torch.device | None = None) -> Any:
    """A picklable object from member `src_axis_rank` to every member of `axis`."""
    if axis.world_size == 1:
        return obj
    box = [obj if axis.rank == src_axis_rank else None]
    dist.broadcast_object_list(box, src=axis.global_rank(src_axis_rank), group=axis.group, device=device)
    return box[0]


def broadcast_tensor(x: torch.Tensor | None, axis: Axis, *, shape, dtype, device, src_axis_rank: int = 0):
    """A tensor of known shape/dtype from member `src_axis_rank` to every member (others pass None)."""
    if axis.world_size == 1:
        return x
    buf = x.to(device).contiguous() if axis.rank == src_axis_rank else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(buf, src=axis.global_rank(src_axis_rank), group=axis.group)
    return buf
