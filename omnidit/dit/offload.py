"""Layer offload: the DiT's blocks live in host memory and visit the device a group at a time.

    offload_blocks(dit, device, group_size=2)   # embedders, refiner, output layer on `device`
    dit(...)                                    # each group copied in just before its first block
    remove_offload(dit)                         # hooks gone, blocks stay where they are (host)

What moves: every dual-stream and single-stream block (parameters and buffers, FP8 weights and
LoRA adapters included), in execution order, `group_size` blocks at a time. The rest of the model
is small and stays on the device. On CUDA the host copies are pinned and the next group is copied
on a side stream while the current one computes (the compute stream waits on its event before the
first block of that group runs); the device copy of a group is dropped after its last block. On CPU
the same path runs with real copies (device "cpu" to "cpu"), so tests exercise it.

Hooks are forward pre/post hooks on the blocks (PyTorch's own mechanism; the model's code is
unchanged); blocks a step cache skips simply never trigger theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

OFFLOAD = ("none", "blocks")  # the choices `from_pretrained(offload=...)` and `--offload` take


def check_offload(offload: str) -> str:
    if offload not in OFFLOAD:
        raise ValueError(f"offload must be one of {list(OFFLOAD)}, got {offload!r}")
    return offload


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


@dataclass
class _Group:
    blocks: list[nn.Module]
    host: list[list[torch.Tensor]] = field(default_factory=list)  # per block, while resident: its host tensors
    event: torch.cuda.Event | None = None  # set when a prefetch was issued on the side stream
    resident: bool = False


@dataclass
class BlockOffload:
    """The offload state a DiT carries (`dit._block_offload`); see the module docstring."""

    device: torch.device
    groups: list[_Group]
    handles: list = field(default_factory=list)
    stream: torch.cuda.Stream | None = None
    loads: int = 0  # group copies made (a test counts them)

    def load(self, g: int, *, prefetch: bool = False) -> None:
        group = self.groups[g]
        if group.resident:
            return
        use_stream = prefetch and self.stream is not None
        ctx = torch.cuda.stream(self.stream) if use_stream else _nullcontext()
        with ctx:
            # Off the device, each tensor's data *is* its host copy (adapters added since are picked up).
            group.host = [[t.data for t in _tensors(block)] for block in group.blocks]
            for block, host in zip(group.blocks, group.host):
                for t, h in zip(_tensors(block), host):
                    t.data = h.to(self.device, non_blocking=use_stream, copy=True)
            if use_stream:
                group.event = torch.cuda.Event()
                group.event.record(self.stream)
        group.resident = True
        self.loads += 1

    def release(self, g: int) -> None:
        group = self.groups[g]
        if not group.resident:
            return
        for block, host in zip(group.blocks, group.host):
            for t, h in zip(_tensors(block), host):
                t.data = h
        group.host, group.resident, group.event = [], False, None

    def before(self, g: int) -> None:
        """Group g is about to run: make it resident, wait for its copy, prefetch the next one."""
        nxt = (g + 1) % len(self.groups)
        for other in range(len(self.groups)):
            if other not in (g, nxt):
                self.release(other)  # left over from a cached (skipped) stretch of blocks
        self.load(g)
        group = self.groups[g]
        if group.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(group.event)
            for block in group.blocks:  # the side stream allocated them: keep them alive for this one
                for t in _tensors(block):
                    t.data.record_stream(stream)
            group.event = None
        if nxt != g:
            self.load(nxt, prefetch=True)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def blocks_of(dit: nn.Module) -> list[nn.Module]:
    """The blocks in execution order: dual-stream then single-stream."""
    return list(dit.transformer_blocks) + list(dit.single_transformer_blocks)


def offload_blocks(dit: nn.Module, device: str | torch.device, *, group_size: int = 2) -> BlockOffload:
    """Keep `dit`'s blocks on the host and move them to `device` a group at a time (module docstring)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    remove_offload(dit)
    device = torch.device(device)
    blocks = blocks_of(dit)
    block_ids = {id(t) for b in blocks for t in _tensors(b)}
    for t in _tensors(dit):  # everything else lives on the device
        if id(t) not in block_ids:
            t.data = t.data.to(device)
    pin = device.type == "cuda"
    groups = []
    for i in range(0, len(blocks), group_size):
        members = blocks[i : i + group_size]
        for b in members:
            for t in _tensors(b):
                h = t.data.to("cpu")
                t.data = h.pin_memory() if pin else h  # pinned: copies to the GPU run asynchronously
        groups.append(_Group(members))
    state = BlockOffload(device, groups, stream=torch.cuda.Stream(device) if pin else None)
    for g, group in enumerate(groups):
        state.handles.append(group.blocks[0].register_forward_pre_hook(lambda m, a, g=g: state.before(g)))
        state.handles.append(group.blocks[-1].register_forward_hook(lambda m, a, o, g=g: state.release(g)))
    dit.__dict__["_block_offload"] = state  # not a submodule: the state dict is unchanged
    return state


def remove_offload(dit: nn.Module) -> None:
    """Undo `offload_blocks`: hooks removed, every block back on the host."""
    state = dit.__dict__.pop("_block_offload", None)
    if state is None:
        return
    for h in state.handles:
        h.remove()
    for g in range(len(state.groups)):
        state.release(g)


def offload_state(dit: nn.Module) -> BlockOffload | None:
    return dit.__dict__.get("_block_offload")
