"""What HunyuanVideo-1.5 adds to the DiT: its condition embedders and the joint text sequence.

The blocks, RoPE, patch embedding, token refiner and output layer are 1.0's (blocks.py,
embeddings.py); 1.5 differs before the blocks:
- `temb` is the timestep alone (no pooled text, no guidance), plus MeanFlow's `timestep_r`;
- the text side of the joint attention is three token streams, each with a learned type vector
  (`cond_type_embed` rows 0, 1, 2): the refined Qwen2.5-VL states, the ByT5 glyph tokens
  (`context_embedder_2`) and the SigLIP image tokens (`image_embedder`).

`joint_text` packs the three per sample as diffusers does, valid tokens first in the order
[image | glyph | text], so every sample's text is a right-padded prefix and the attention takes a
`JointLayout` (per-sample lengths) instead of a mask. Text tokens carry no position (no RoPE),
so the packing order changes nothing but float summation order.

Image tokens: a sample whose `image_embeds` are all zero is text-to-video and has none (diffusers
decides this for the whole batch at once; the two agree whenever a batch is all-T2V or all-I2V,
and ours keeps a sample's result independent of its batch).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnidit.dit.config import DiTConfig
from omnidit.dit.embeddings import MLPEmbedder, timestep_sinusoids

GLYPH_HIDDEN = 2048  # diffusers' HunyuanVideo15ByT5TextProjection width, fixed for every size
TEXT, GLYPH, IMAGE = 0, 1, 2  # rows of `cond_type_embed`


class TimeEmbedding(nn.Module):
    """Timestep -> `temb [B, D]`; with MeanFlow a second embedder adds the step's end `timestep_r`."""

    def __init__(self, dim: int, use_meanflow: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim)
        self.timestep_embedder_r = MLPEmbedder(256, dim) if use_meanflow else None

    def forward(self, timestep: torch.Tensor, timestep_r: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.timestep_embedder.linear_1.weight.dtype
        temb = self.timestep_embedder(timestep_sinusoids(timestep).to(dtype))  # [B, D]
        if timestep_r is not None:
            if self.timestep_embedder_r is None:
                raise ValueError("timestep_r is given but this DiT has use_meanflow=False (no MeanFlow embedder)")
            temb = temb + self.timestep_embedder_r(timestep_sinusoids(timestep_r).to(dtype))  # [B, D]
        return temb


class GlyphProjection(nn.Module):
    """ByT5 states `[B, L2, D2]` -> `[B, L2, D]`: LayerNorm, then three Linears with GELU between."""

    def __init__(self, in_dim: int, dim: int, hidden: int = GLYPH_HIDDEN):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.linear_1(self.norm(x)))  # [B, L2, hidden]
        return self.linear_3(F.gelu(self.linear_2(h)))  # [B, L2, D]


class ImageProjection(nn.Module):
    """SigLIP states `[B, Ni, Di]` -> `[B, Ni, D]`: LayerNorm, Linear, GELU, Linear, LayerNorm."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim)
        self.linear_1 = nn.Linear(in_dim, in_dim)
        self.linear_2 = nn.Linear(in_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.linear_2(F.gelu(self.linear_1(self.norm_in(x)))))  # [B, Ni, D]


def check_inputs(
    c: DiTConfig, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, pooled, guidance,
    text_2: torch.Tensor | None, mask_2: torch.Tensor | None, image_embeds: torch.Tensor | None,
) -> None:
    """Shapes of a 1.5 forward's inputs beyond the ones both families share; a clear error naming the field."""
    B = x.shape[0]
    if guidance is not None:
        raise ValueError("guidance: HunyuanVideo-1.5 has no guidance embedder (it uses real CFG); pass None")
    if pooled is not None and pooled.numel():
        raise ValueError(f"pooled_projections: HunyuanVideo-1.5 takes none (None or [B, 0]), got {tuple(pooled.shape)}")
    if text_2 is not None and (text_2.ndim != 3 or text_2.shape[0] != B or text_2.shape[2] != c.text_embed_2_dim):
        raise ValueError(f"encoder_hidden_states_2 must be [{B}, L2, {c.text_embed_2_dim}], got {tuple(text_2.shape)}")
    if mask_2 is not None and (text_2 is None or tuple(mask_2.shape) != tuple(text_2.shape[:2])):
        want = "absent (no encoder_hidden_states_2)" if text_2 is None else str(tuple(text_2.shape[:2]))
        raise ValueError(f"encoder_attention_mask_2 must be {want}, got {tuple(mask_2.shape)}")
    if image_embeds is not None and (
        image_embeds.ndim != 3 or image_embeds.shape[0] != B or image_embeds.shape[2] != c.image_embed_dim
    ):
        raise ValueError(f"image_embeds must be [{B}, Ni, {c.image_embed_dim}], got {tuple(image_embeds.shape)}")


def joint_text(
    dit: nn.Module,
    txt: torch.Tensor,  # [B, L, D] refined text states
    mask: torch.Tensor,  # [B, L] 1 = real
    text_2: torch.Tensor | None,  # [B, L2, D2] ByT5 states
    mask_2: torch.Tensor | None,  # [B, L2]; None: all real
    image_embeds: torch.Tensor | None,  # [B, Ni, Di]; an all-zero sample has no image
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (text side of the joint sequence `[B, L', D]`, right-padded with zeros; lengths LongTensor[B] on CPU)."""
    B, _, D = txt.shape
    kind = dit.cond_type_embed.weight  # [3, D]
    streams, valid = [], []
    if image_embeds is not None:
        has_image = (image_embeds != 0).flatten(1).any(dim=1).cpu()  # [B]
        if bool(has_image.any()):
            streams.append(dit.image_embedder(image_embeds) + kind[IMAGE])  # [B, Ni, D]
            valid.append(has_image[:, None].expand(B, image_embeds.shape[1]))
    if text_2 is not None and text_2.shape[1]:
        streams.append(dit.context_embedder_2(text_2) + kind[GLYPH])  # [B, L2, D]
        valid.append(torch.ones(text_2.shape[:2], dtype=torch.bool) if mask_2 is None else mask_2.cpu().bool())
    streams.append(txt + kind[TEXT])  # [B, L, D]
    valid.append(mask.cpu().bool())
    joint, valid = torch.cat(streams, dim=1), torch.cat(valid, dim=1)  # [B, Lt, D], [B, Lt]
    lengths = valid.sum(dim=1)  # [B]
    if bool(valid.all()):
        return joint, lengths  # nothing to move
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid tokens first, in order
    n = int(lengths.max())
    idx = order[:, :n].to(joint.device)  # [B, L']
    packed = joint.gather(1, idx[..., None].expand(B, n, D))  # [B, L', D]
    keep = (torch.arange(n)[None] < lengths[:, None]).to(joint.device)  # [B, L']
    return torch.where(keep[..., None], packed, torch.zeros_like(packed)), lengths  # padding rows zero
