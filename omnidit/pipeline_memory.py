"""How a Pipeline's components use device memory: the DiT's weight storage (`weights`), its layer
offload (`offload`), and the text encoders and VAE parked on the host while the DiT runs.

    weights  None (the compute dtype) | "fp32" | "bf16" | "fp8" (block Linears in float8, dit/fp8.py)
    offload  "none" | "blocks": DiT blocks visit the device a group at a time (dit/offload.py), and
             the text encoders and VAE stay on the host, moved to the device for their call only.

The compute (activation) dtype is the Pipeline's `dtype` argument, by default fp32 on CPU and bf16
on CUDA; with weights="fp8" the unquantised layers (norms, embedders, refiner, output) are stored in
it, so nothing runs in a checkpoint's stored dtype by accident.
"""

from __future__ import annotations

import contextlib
import os

import torch

from omnidit.dit.fp8 import WEIGHTS
from omnidit.dit.offload import OFFLOAD, check_offload, offload_blocks

HOST = torch.device("cpu")


def check_weights(weights: str | None) -> str | None:
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    return weights


def check_memory(weights: str | None, offload: str) -> None:
    """ValueError naming `weights` or `offload` for a value outside WEIGHTS / OFFLOAD."""
    check_weights(weights)
    check_offload(offload)


def component_device(device: torch.device, offload: str) -> torch.device:
    """Where a text encoder or VAE is loaded: the host under offload, else the device."""
    return HOST if offload == "blocks" else device


def load_dit(path: str | os.PathLike, *, device: torch.device, dtype: torch.dtype, weights: str | None = None,
             offload: str = "none", group_size: int = 2):
    """The DiT of a transformer folder, stored as `weights` says, computing in `dtype`, offloaded or not."""
    from omnidit.dit import DiT

    check_memory(weights, offload)
    # fp8: `dtype` is the compute dtype of what stays unquantised; fp32/bf16 name the storage itself.
    load_dtype = None if weights in ("fp32", "bf16") else dtype
    where = HOST if offload == "blocks" else device
    dit = DiT.from_pretrained(path, dtype=load_dtype, device=where, weights=weights).eval()
    if offload == "blocks":
        offload_blocks(dit, device, group_size=group_size)
    return dit


@contextlib.contextmanager
def on_device(component, device: torch.device, offload: str):
    """Under offload="blocks", `component` (a text encoder or VAE with `.to`) on `device` for the
    block only and back on the host after; otherwise it stays where it is."""
    if offload != "blocks" or device.type == HOST.type:
        yield component
        return
    component.to(device)
    try:
        yield component
    finally:
        component.to(HOST)
        if device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = ["OFFLOAD", "WEIGHTS", "check_memory", "component_device", "load_dit", "on_device"]
