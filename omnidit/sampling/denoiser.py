"""The denoiser: a DiT's forward wrapped in the flow-matching parameterisation and one guidance mode.

Samplers call it as `model_fn(x, sigma) -> v`; training losses, distillation and DMD ask it for
`velocity` or `x0`. It owns the timestep scale (flow.py), the guidance modes (guidance.py) and the
batched CFG forward, so none of its callers re-derives them (k-diffusion's `external.py` idea).

`forward(x, t, states, mask, pooled, guidance=None) -> v` is the DiT's call (or a
sequence-parallel wrapper of it); text is `(states [B, L, D], mask [B, L], pooled [B, P])`, then
for a family with a second token stream (HunyuanVideo-1.5's glyph tokens) `(states_2, mask_2)`,
which `forward` receives as two more positional arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from omnidit.sampling.flow import timesteps_from_sigmas, x0_from_velocity
from omnidit.sampling.guidance import GUIDANCE_MODES, cfg_combine, embedded_guidance

Text = tuple[torch.Tensor, ...]  # (states, mask, pooled) or (states, mask, pooled, states_2, mask_2)
Forward = Callable[..., torch.Tensor]
Scale = float | torch.Tensor  # one scale, or Tensor[B] per sample


def _pairs(text: Text) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (states, mask) token streams of a text conditioning: the first, then any second."""
    if len(text) not in (3, 5):
        raise ValueError(f"text must be (states, mask, pooled[, states_2, mask_2]), got {len(text)} tensors")
    return [(text[0], text[1])] + ([(text[3], text[4])] if len(text) == 5 else [])


def cat_text(a: Text, b: Text) -> Text:
    """Two text conditionings along the batch, each stream's shorter sequence zero-padded (mask 0)."""
    if len(a) != len(b):
        raise ValueError(f"cannot batch text of {len(a)} and {len(b)} tensors")

    def pad(x: torch.Tensor, k: int) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, k)) if x.dim() == 3 else F.pad(x, (0, k))

    streams = []
    for (sa, ma), (sb, mb) in zip(_pairs(a), _pairs(b)):
        la, lb = sa.shape[1], sb.shape[1]
        n = max(la, lb)
        streams.append((torch.cat([pad(sa, n - la), pad(sb, n - lb)]), torch.cat([pad(ma, n - la), pad(mb, n - lb)])))
    first, *second = streams
    return (*first, torch.cat([a[2], b[2]]), *(t for pair in second for t in pair))


def cast_text(text: Text, dtype: torch.dtype) -> Text:
    """The float tensors (states, pooled, states_2) in `dtype`; the masks as they are."""
    return tuple(t if i in (1, 4) else t.to(dtype) for i, t in enumerate(text))


class Denoiser:
    """`velocity(x, sigma)` (also `__call__`) and `x0(x, sigma)` of a DiT under one guidance setting.

    - `uncond` with `cfg_scale` != 1: true CFG, both branches in one batched forward;
    - `embedded`: the scale fed to a guidance-distilled DiT as its guidance input;
    - neither: the conditional velocity alone.
    `dtype` casts the inputs to the DiT's dtype (text is cast once, here); outputs are fp32.
    """

    def __init__(self, forward: Forward, cond: Text, *, uncond: Text | None = None, cfg_scale: Scale = 1.0,
                 embedded: Scale | None = None, dtype: torch.dtype | None = None):
        self.forward, self.dtype = forward, dtype
        self.use_cfg = uncond is not None and not (isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0)
        text = cat_text(cond, uncond) if self.use_cfg else cond
        if dtype is not None:
            text = cast_text(text, dtype)
        self.text, self.cfg_scale = text, cfg_scale
        self.guidance = None
        if embedded is not None:
            n = text[0].shape[0]
            if isinstance(embedded, torch.Tensor) and self.use_cfg:
                embedded = torch.cat([embedded, embedded])
            self.guidance = embedded_guidance(embedded, n, text[0].device, dtype or torch.float32)

    @classmethod
    def for_mode(cls, forward: Forward, mode: str, cond: Text, uncond: Text | None, scale: Scale, *,
                 true_cfg: Scale = 1.0, dtype: torch.dtype | None = None) -> "Denoiser":
        """The one mapping from a guidance mode (guidance.py) to forwards: "cfg" uses `scale` as the
        CFG scale (no `uncond`: the conditional branch, as the request chose no CFG); "embedded"
        feeds it as the guidance input and applies `true_cfg` when `uncond` is given; "none"
        ignores it (true CFG only if asked for)."""
        if mode == "cfg":
            return cls(forward, cond, uncond=uncond, cfg_scale=scale, dtype=dtype)
        if mode == "embedded":
            return cls(forward, cond, uncond=uncond, cfg_scale=true_cfg, embedded=scale, dtype=dtype)
        if mode == "none":
            return cls(forward, cond, uncond=uncond, cfg_scale=true_cfg, dtype=dtype)
        raise ValueError(f"guidance mode must be one of {GUIDANCE_MODES}, got {mode!r}")

    @property
    def branches(self) -> int:
        """Copies of the batch in each forward: 2 with true CFG (cond rows, then uncond rows), else 1."""
        return 2 if self.use_cfg else 1

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x `[B, C, F, H, W]`, sigma `[B]` -> the guided velocity `[B, C, F, H, W]` in fp32."""
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        t = timesteps_from_sigmas(sigma).to(torch.float32)  # [B], as diffusers: sigma * 1000
        x_in = x if self.dtype is None else x.to(self.dtype)
        if self.use_cfg:
            x_in, t = torch.cat([x_in, x_in]), torch.cat([t, t])
        kw = {} if self.guidance is None else {"guidance": self.guidance}
        v = self.forward(x_in, t, *self.text, **kw).float()
        if not self.use_cfg:
            return v
        v_cond, v_uncond = v.chunk(2)
        scale = self.cfg_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(v).view(-1, *([1] * (v.ndim - 1)))
        return cfg_combine(v_cond, v_uncond, scale)

    __call__ = velocity

    def x0(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The clean sample the guided velocity predicts: x - s v (fp32)."""
        return x0_from_velocity(x.float(), sigma, self.velocity(x, sigma))
