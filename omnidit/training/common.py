"""Pieces every training loop here shares: EMA, checkpoints that resume, a time budget, metrics."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Iterator

import torch


class EMA:
    """Exponential moving average of a model's parameters (kept in fp32)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm up the decay so early EMA weights are not dominated by the random init.
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().float(), 1 - d)


def load_weights_from(model: torch.nn.Module, name_or_dir: str, field: str) -> None:
    """Start `model` from a shipped or exported model folder's transformer (fine-tuning, or a
    student distilled elsewhere); `field` names the option in the error if it does not fit."""
    from omnidit.dit import DiT
    from omnidit.model_folder import resolve_model

    init = DiT.from_pretrained(resolve_model(name_or_dir) / "transformer", dtype=torch.float32)
    try:
        model.load_state_dict(init.state_dict())
    except RuntimeError as e:
        raise ValueError(f"{field} {name_or_dir!r} does not fit the model's architecture: {e}") from None


def optimizer_step(acc, model: torch.nn.Module, opt, loss: torch.Tensor, ema: EMA | None, step: int,
                   max_grad_norm: float = 1.0) -> None:
    """Backward through accelerate, clip, step, then move the EMA (if any) towards the new weights."""
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    acc.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    if ema is not None:
        ema.update(acc.unwrap_model(model), step)


def smooth_loss(running: float | None, loss: torch.Tensor, keep: float = 0.98) -> float:
    """Exponential moving average of the loss for progress bars and metrics."""
    value = float(loss.detach())
    return value if running is None else keep * running + (1 - keep) * value


@contextlib.contextmanager
def reference_attention() -> Iterator[None]:
    """Train with PyTorch's math SDPA kernel on CUDA for the block (or the decorated function), then
    put the kernel choice back as it was. The small models trained here have short sequences
    (<= ~400 tokens), where the fused kernels gain little, and a fused kernel's backward hit an
    illegal memory access on an H100 (torch 2.11) with per-sample text padding.

    The switches are PyTorch's process-wide SDPA flags: scoped in time, not per thread."""
    if not torch.cuda.is_available():
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def save_checkpoint(path: Path, **state) -> None:
    """Atomically write a dict of state (models' state_dicts, optimizer, step, rng) to `path`."""
    from omnidit.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


class Budget:
    """Stops a loop after `max_steps` or `max_minutes`, whichever comes first."""

    def __init__(self, max_steps: int | None, max_minutes: float | None):
        self.max_steps = max_steps
        self.start = time.monotonic()
        self.deadline = self.start + 60 * max_minutes if max_minutes else None
        self.start_step: int | None = None

    def fraction(self, step: int) -> float:
        """How much of the budget is used, in [0, 1] (time or steps, whichever is further)."""
        if self.start_step is None:
            self.start_step = step
        parts = [0.0]
        if self.max_steps:
            parts.append(step / self.max_steps)
        if self.deadline is not None:
            parts.append((time.monotonic() - self.start) / (self.deadline - self.start))
        return min(1.0, max(parts))

    def done(self, step: int) -> bool:
        if self.max_steps is not None and step >= self.max_steps:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline


def log_metrics(path: Path, row: dict) -> None:
    """Append one JSON line (step, losses, eval scores, wall time) to the run's metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
