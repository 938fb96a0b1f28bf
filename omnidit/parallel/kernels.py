"""Single-device attention pieces the parallel attentions are built from.

- `attention_prefix`: attention where sample b sees only its first `key_lengths[b]` keys, through
  the DiT's backend (same kernel as single-device; q and k may differ in length).
- `attention_lse`: the same, also returning the log-sum-exp of each query row, so partial results
  over disjoint key sets can be merged exactly (`merge`, `merge_stack`): ring attention needs it.

All tensors are `[B, S, H, D]`; log-sum-exps are float32 `[B, S, H]`.
"""

from __future__ import annotations

import importlib.util

import torch

from omnidit.dit.attention import AttentionBackend

_MATH_CHUNK = 1 << 26  # score elements per chunk of the reference path (256 MiB in fp32)


def attention_prefix(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: list[int], backend: AttentionBackend
) -> torch.Tensor:
    """q `[B, Sq, H, D]`, k/v `[B, Sk, H, D]`; sample b attends keys `[:key_lengths[b]]` -> `[B, Sq, H, D]`."""
    backend.check(q)
    Sk = k.shape[1]
    if all(n == Sk for n in key_lengths):
        return backend.fn(q, k, v)  # [B, Sq, H, D]
    if backend.supports_mask and q.device.type == "cpu":  # as dit.attention.joint_attention: a key mask on CPU
        lengths = torch.tensor(key_lengths, device=q.device)  # [B]
        key_mask = torch.arange(Sk, device=q.device)[None] < lengths[:, None]  # [B, Sk]
        return backend.fn(q, k, v, key_mask)  # [B, Sq, H, D]
    out = [backend.fn(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n]) for b, n in enumerate(key_lengths)]
    return torch.cat(out, dim=0)  # [B, Sq, H, D]


def _flash_lse_available(q: torch.Tensor) -> bool:
    return (
        q.device.type == "cuda"
        and q.dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("flash_attn") is not None
    )


def _flash_lse(q, k, v):
    from flash_attn import flash_attn_func

    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)  # [B, Sq, H, D], [B, H, Sq]
    return out.float(), lse.transpose(1, 2).float()


def _math_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: list[int] | None):
    """Exact reference in float32, chunked over queries to bound the score matrix."""
    B, Sq, H, D = q.shape
    Sk = k.shape[1]
    kf, vf = k.float(), v.float()
    mask = None
    if key_lengths is not None and any(n != Sk for n in key_lengths):
        lengths = torch.tensor(key_lengths, device=q.device)  # [B]
        mask = (torch.arange(Sk, device=q.device)[None] >= lengths[:, None])[:, None, None, :]  # [B, 1, 1, Sk]
    step = max(1, _MATH_CHUNK // max(1, B * H * Sk))
    outs, lses = [], []
    for s in range(0, Sq, step):
        qc = q[:, s : s + step].float() * D**-0.5  # [B, c, H, D]
        scores = torch.einsum("bqhd,bkhd->bhqk", qc, kf)  # [B, H, c, Sk]
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # [B, H, c]
        p = torch.exp(scores - lse[..., None])  # [B, H, c, Sk]
        outs.append(torch.einsum("bhqk,bkhd->bqhd", p, vf))  # [B, c, H, D]
        lses.append(lse.transpose(1, 2))  # [B, c, H]
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over each sample's first `key_lengths[b]` keys (all if None), every length >= 1.

    Returns (out float32 `[B, Sq, H, D]`, lse float32 `[B, Sq, H]`). On CUDA with half precision and
    flash-attn installed it uses flash-attn's kernel; otherwise an exact float32 reference.
    """
    if key_lengths is not None and min(key_lengths) < 1:
        raise ValueError(f"attention_lse: every sample needs at least one key, got key_lengths={key_lengths}")
    if not _flash_lse_available(q):
        return _math_lse(q, k, v, key_lengths)
    if key_lengths is None or all(n == k.shape[1] for n in key_lengths):
        return _flash_lse(q, k, v)
    parts = [_flash_lse(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n]) for b, n in enumerate(key_lengths)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def empty_partial(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The partial result of attending no keys: out 0, lse -inf (merges as nothing)."""
    B, S, H, D = q.shape
    return q.new_zeros((B, S, H, D), dtype=torch.float32), q.new_full((B, S, H), float("-inf"), dtype=torch.float32)


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Attention over keys A and over keys B -> attention over A u B (A must be non-empty)."""
    lse = torch.maximum(lse_a, lse_b) + torch.log1p(torch.exp(-torch.abs(lse_a - lse_b)))  # [B, S, H]
    out = out_a * torch.exp(lse_a - lse)[..., None] + out_b * torch.exp(lse_b - lse)[..., None]
    return out, lse


def merge_stack(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[R, B, S, H, D]`, `[R, B, S, H]` partials over disjoint keys -> their union (>= 1 non-empty).

    A fixed reduction order, so every rank merging the same partials gets the same bits.
    """
    top = lses.max(dim=0).values  # [B, S, H], finite as one partial is non-empty
    w = torch.exp(lses - top)  # [R, B, S, H]; 0 for empty partials
    total = w.sum(dim=0)  # [B, S, H]
    out = (outs * w[..., None]).sum(dim=0) / total[..., None]  # [B, S, H, D]
    return out, top + torch.log(total)
