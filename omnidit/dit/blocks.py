"""Transformer blocks: text token refiner, dual-stream and single-stream blocks, final layer.

Submodule and parameter names follow diffusers' HunyuanVideoTransformer3DModel exactly, so
state dicts are interchangeable; the computation is our own (see model.py for the data flow).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnidit.dit.attention import JointAttentionFn, JointLayout, masked_self_attention
from omnidit.dit.embeddings import ConditionEmbedding, apply_rope

EPS = 1e-6


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=EPS)  # no affine: adaLN supplies scale/shift


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, layer_norm(x), 1 + scale)  # LN(x) * (1 + scale) + shift: [B, N, D]


class RMSNorm(nn.Module):
    """Per-head q/k RMSNorm. Same dtypes: one fused call (accumulating in float32). Mixed dtypes:
    diffusers' order, normalise in float32, cast to the weight's dtype, multiply."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, x.shape[-1:], self.weight, eps=EPS)  # [..., D]
        y = F.rms_norm(x.float(), x.shape[-1:], eps=EPS)  # [..., D] float32
        return y.to(self.weight.dtype) * self.weight


class Modulation(nn.Module):
    """adaLN: SiLU(temb) -> Linear -> `n` chunks of `[B, 1, D]` (shift/scale/gate, in diffusers' order)."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(dim, n * dim)

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(temb)).unsqueeze(1).chunk(self.n, dim=-1)  # n x [B, 1, D]


class FeedForward(nn.Module):
    """Linear -> act -> Linear, laid out as diffusers' `net.0.proj` / `net.2` (net.1 is its dropout slot)."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        proj = nn.Module()
        proj.proj = nn.Linear(dim, hidden)
        self.net = nn.ModuleList([proj, nn.Identity(), nn.Linear(hidden, dim)])
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[0].proj(x)  # [B, N, hidden]
        h = F.gelu(h, approximate="tanh") if self.act == "gelu_tanh" else F.silu(h)
        return self.net[2](h)  # [B, N, D]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1))  # [B, N, D] -> [B, N, H, Dh]


# --- text token refiner (diffusers' `context_embedder`) -------------------------------------------


class RefinerAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (_heads(f(x), self.heads) for f in (self.to_q, self.to_k, self.to_v))  # [B, L, H, Dh]
        out = masked_self_attention(q, k, v, mask).flatten(2)  # [B, L, D]
        return self.to_out[0](out)  # [B, L, D]


class RefinerBlock(nn.Module):
    """Pre-norm self-attention + SiLU MLP over text, gated by temb (no shift/scale modulation)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):  # 4.0 whatever the model's ratio
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = RefinerAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.ff = FeedForward(dim, int(dim * mlp_ratio), act="silu")
        self.norm_out = nn.Module()  # diffusers' HunyuanVideoAdaNorm: only a gate projection
        self.norm_out.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        gates = self.norm_out.linear(F.silu(temb)).unsqueeze(1)  # [B, 1, 2D]
        gate_msa, gate_mlp = gates.chunk(2, dim=-1)  # [B, 1, D] each
        x = torch.addcmul(x, self.attn(self.norm1(x), mask), gate_msa)  # x + attn * gate: [B, L, D]
        return torch.addcmul(x, self.ff(self.norm2(x)), gate_mlp)  # [B, L, D]


def refiner_mask(mask: torch.Tensor, *, first_key: bool = True) -> torch.Tensor:
    """diffusers' refiner mask from a `[B, L]` token mask, `[B, 1, L, L]`: real query rows see the real
    keys. `first_key` (1.0): every row also sees key 0, so padded rows see key 0 only (their outputs
    never reach a real token later). Without (1.5, whose padded rows are dropped after the refiner):
    a key mask, so padded rows stay finite and real rows are exactly diffusers'."""
    m = mask.bool()
    if not first_key:
        return m[:, None, None, :].expand(-1, 1, m.shape[1], -1)  # [B, 1, L, L]
    allowed = m[:, None, :, None] & m[:, None, None, :]  # [B, 1, L, L]
    allowed[..., 0] = True
    return allowed


class TokenRefiner(nn.Module):
    """Projects text-encoder states to the model width and refines them with self-attention blocks."""

    def __init__(self, text_dim: int, dim: int, heads: int, num_layers: int, *, first_key: bool = True):
        super().__init__()
        self.first_key = first_key  # refiner_mask's padding semantics: 1.0 True, 1.5 False
        self.time_text_embed = ConditionEmbedding(dim, text_dim)
        self.proj_in = nn.Linear(text_dim, dim)
        self.token_refiner = nn.Module()  # keeps diffusers' `token_refiner.refiner_blocks.N` key path
        self.token_refiner.refiner_blocks = nn.ModuleList([RefinerBlock(dim, heads) for _ in range(num_layers)])

    def forward(self, text: torch.Tensor, timestep: torch.Tensor, mask: torch.Tensor, padded: bool) -> torch.Tensor:
        """text `[B, L, Dt]`, mask `[B, L]` (1 = real), `padded`: whether mask has zeros -> `[B, L, D]`."""
        m = mask.float().unsqueeze(-1)  # [B, L, 1]
        pooled = ((text * m).sum(dim=1) / m.sum(dim=1)).to(text.dtype)  # [B, Dt] mean over real tokens
        temb = self.time_text_embed(timestep, pooled)  # [B, D]
        x = self.proj_in(text)  # [B, L, D]
        attn_mask = refiner_mask(mask, first_key=self.first_key) if padded else None  # [B, 1, L, L]
        for block in self.token_refiner.refiner_blocks:
            x = block(x, temb, attn_mask)  # [B, L, D]
        return x


# --- joint blocks ----------------------------------------------------------------------------


class DualStreamAttention(nn.Module):
    """Parameters of a joint attention with separate video (`to_*`) and text (`add_*`) projections."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        head_dim = dim // heads
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.add_q_proj, self.add_k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.norm_added_q, self.norm_added_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = nn.Linear(dim, dim)


class DualStreamBlock(nn.Module):
    """Video and text keep their own weights but attend jointly (diffusers' HunyuanVideoTransformerBlock)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = Modulation(dim, 6)
        self.norm1_context = Modulation(dim, 6)
        self.attn = DualStreamAttention(dim, heads)
        self.ff = FeedForward(dim, int(dim * mlp_ratio), act="gelu_tanh")
        self.ff_context = FeedForward(dim, int(dim * mlp_ratio), act="gelu_tanh")

    def modulated_input(self, img: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """What the attention of this block reads of the video stream: `[B, N, D]`."""
        shift_msa, scale_msa = self.norm1(temb)[:2]  # [B, 1, D] each
        return modulate(img, shift_msa, scale_msa)

    def forward(
        self,
        img: torch.Tensor,  # [B, N, D]
        txt: torch.Tensor,  # [B, L, D]
        temb: torch.Tensor,  # [B, D]
        rope: torch.Tensor,  # [N, Dh/2] complex
        layout: JointLayout,
        attend: JointAttentionFn,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a, H = self.attn, self.attn.heads
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(temb)  # [B, 1, D] each
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(temb)

        h = modulate(img, shift_msa, scale_msa)  # [B, N, D]
        q = apply_rope(a.norm_q(_heads(a.to_q(h), H)), rope)  # [B, N, H, Dh]
        k = apply_rope(a.norm_k(_heads(a.to_k(h), H)), rope)  # [B, N, H, Dh]
        v = _heads(a.to_v(h), H)  # [B, N, H, Dh]
        c = modulate(txt, c_shift_msa, c_scale_msa)  # [B, L, D]
        cq = a.norm_added_q(_heads(a.add_q_proj(c), H))  # [B, L, H, Dh]
        ck = a.norm_added_k(_heads(a.add_k_proj(c), H))  # [B, L, H, Dh]
        cv = _heads(a.add_v_proj(c), H)  # [B, L, H, Dh]

        q, k, v = torch.cat([q, cq], 1), torch.cat([k, ck], 1), torch.cat([v, cv], 1)  # [B, S, H, Dh]
        out = attend(q, k, v, layout).flatten(2)  # [B, S, D]
        n = img.shape[1]
        img = torch.addcmul(img, a.to_out[0](out[:, :n]), gate_msa)  # img + attn * gate: [B, N, D]
        txt = torch.addcmul(txt, a.to_add_out(out[:, n:]), c_gate_msa)  # [B, L, D]

        img = torch.addcmul(img, self.ff(modulate(img, shift_mlp, scale_mlp)), gate_mlp)  # [B, N, D]
        c = modulate(txt, c_shift_mlp, c_scale_mlp)  # [B, L, D]
        txt = torch.addcmul(txt, self.ff_context(c), c_gate_mlp)  # [B, L, D]
        return img, txt


class SingleStreamAttention(nn.Module):
    """q/k/v projections of a single-stream block (its output projection is the block's `proj_out`)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(dim // heads), RMSNorm(dim // heads)


class SingleStreamBlock(nn.Module):
    """One weight set over the concatenated `[video | text]` stream; attention and MLP run in parallel."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.attn = SingleStreamAttention(dim, heads)
        self.norm = Modulation(dim, 3)
        self.proj_mlp = nn.Linear(dim, int(dim * mlp_ratio))
        self.proj_out = nn.Linear(dim + int(dim * mlp_ratio), dim)

    def modulated_input(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """What the attention and MLP of this block read: `[B, S, D]` (or its video rows)."""
        shift, scale, _ = self.norm(temb)  # [B, 1, D] each
        return modulate(x, shift, scale)

    def forward(
        self,
        x: torch.Tensor,  # [B, S, D], video tokens first
        temb: torch.Tensor,  # [B, D]
        rope: torch.Tensor,  # [S, Dh/2] complex, identity on text rows
        layout: JointLayout,
        attend: JointAttentionFn,
    ) -> torch.Tensor:
        a, H = self.attn, self.attn.heads
        shift, scale, gate = self.norm(temb)  # [B, 1, D] each
        h = modulate(x, shift, scale)  # [B, S, D]
        q = apply_rope(a.norm_q(_heads(a.to_q(h), H)), rope)  # [B, S, H, Dh]
        k = apply_rope(a.norm_k(_heads(a.to_k(h), H)), rope)  # [B, S, H, Dh]
        v = _heads(a.to_v(h), H)  # [B, S, H, Dh]
        out = attend(q, k, v, layout).flatten(2)  # [B, S, D]
        mlp = F.gelu(self.proj_mlp(h), approximate="tanh")  # [B, S, M]
        y = self.proj_out(torch.cat([out, mlp], dim=-1))  # [B, S, D]
        return torch.addcmul(x, y, gate)  # x + y * gate: [B, S, D]


class FinalLayer(nn.Module):
    """Final adaLN in (scale, shift) order, diffusers' AdaLayerNormContinuous; the model's proj_out follows."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        emb = self.linear(F.silu(temb).to(x.dtype)).unsqueeze(1)  # [B, 1, 2D]
        scale, shift = emb.chunk(2, dim=-1)  # [B, 1, D] each
        return modulate(x, shift, scale)  # [B, N, D]
