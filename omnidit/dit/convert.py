"""Key maps between Tencent's original HunyuanVideo checkpoints and diffusers' (= our) layout.

One plan, derived from the config, drives both directions, so a round trip is exact:
- `same`:  one tensor, renamed;
- `split`: an original fused tensor (qkv, or single-block `linear1` = q|k|v|mlp) split along dim 0;
- `swap`:  the final adaLN projection, (shift, scale) in the original vs (scale, shift) in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnidit.dit.config import DiTConfig

ORIGINAL_PREFIXES = (
    "double_blocks.", "single_blocks.", "final_layer.", "txt_in.",
    "img_in.", "time_in.", "vector_in.", "guidance_in.",
)  # fmt: skip


@dataclass(frozen=True)
class _Entry:
    original: str
    diffusers: tuple[str, ...]
    kind: str  # "same" | "split" | "swap"
    sizes: tuple[int, ...] = ()


def is_original_state_dict(keys) -> bool:
    return any(k.startswith(ORIGINAL_PREFIXES) for k in keys)


def _weight_bias(orig: str, diff: str) -> list[_Entry]:
    return [_Entry(f"{orig}.{s}", (f"{diff}.{s}",), "same") for s in ("weight", "bias")]


def _fused(orig: str, diffs: list[str], sizes: tuple[int, ...]) -> list[_Entry]:
    return [_Entry(f"{orig}.{s}", tuple(f"{d}.{s}" for d in diffs), "split", sizes) for s in ("weight", "bias")]


def _norm(orig: str, diff: str) -> list[_Entry]:
    return [_Entry(f"{orig}.weight", (f"{diff}.weight",), "same")]


def _plan(config: DiTConfig) -> list[_Entry]:
    D = config.inner_dim
    M = int(D * config.mlp_ratio)
    qkv = (D, D, D)
    e: list[_Entry] = []
    e += _weight_bias("img_in.proj", "x_embedder.proj")
    e += _weight_bias("time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    e += _weight_bias("time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    if config.guidance_embeds:
        e += _weight_bias("guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1")
        e += _weight_bias("guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2")
    e += _weight_bias("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    e += _weight_bias("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")

    ctx = "context_embedder"
    e += _weight_bias("txt_in.input_embedder", f"{ctx}.proj_in")
    e += _weight_bias("txt_in.t_embedder.mlp.0", f"{ctx}.time_text_embed.timestep_embedder.linear_1")
    e += _weight_bias("txt_in.t_embedder.mlp.2", f"{ctx}.time_text_embed.timestep_embedder.linear_2")
    e += _weight_bias("txt_in.c_embedder.linear_1", f"{ctx}.time_text_embed.text_embedder.linear_1")
    e += _weight_bias("txt_in.c_embedder.linear_2", f"{ctx}.time_text_embed.text_embedder.linear_2")
    for i in range(config.num_refiner_layers):
        o, d = f"txt_in.individual_token_refiner.blocks.{i}", f"{ctx}.token_refiner.refiner_blocks.{i}"
        e += _weight_bias(f"{o}.norm1", f"{d}.norm1")
        e += _fused(f"{o}.self_attn_qkv", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], qkv)
        e += _weight_bias(f"{o}.self_attn_proj", f"{d}.attn.to_out.0")
        e += _weight_bias(f"{o}.norm2", f"{d}.norm2")
        e += _weight_bias(f"{o}.mlp.fc1", f"{d}.ff.net.0.proj")
        e += _weight_bias(f"{o}.mlp.fc2", f"{d}.ff.net.2")
        e += _weight_bias(f"{o}.adaLN_modulation.1", f"{d}.norm_out.linear")

    for i in range(config.num_layers):
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        e += _weight_bias(f"{o}.img_mod.linear", f"{d}.norm1.linear")
        e += _weight_bias(f"{o}.txt_mod.linear", f"{d}.norm1_context.linear")
        e += _fused(f"{o}.img_attn_qkv", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], qkv)
        e += _fused(
            f"{o}.txt_attn_qkv", [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"], qkv
        )
        e += _norm(f"{o}.img_attn_q_norm", f"{d}.attn.norm_q")
        e += _norm(f"{o}.img_attn_k_norm", f"{d}.attn.norm_k")
        e += _norm(f"{o}.txt_attn_q_norm", f"{d}.attn.norm_added_q")
        e += _norm(f"{o}.txt_attn_k_norm", f"{d}.attn.norm_added_k")
        e += _weight_bias(f"{o}.img_attn_proj", f"{d}.attn.to_out.0")
        e += _weight_bias(f"{o}.txt_attn_proj", f"{d}.attn.to_add_out")
        e += _weight_bias(f"{o}.img_mlp.fc1", f"{d}.ff.net.0.proj")
        e += _weight_bias(f"{o}.img_mlp.fc2", f"{d}.ff.net.2")
        e += _weight_bias(f"{o}.txt_mlp.fc1", f"{d}.ff_context.net.0.proj")
        e += _weight_bias(f"{o}.txt_mlp.fc2", f"{d}.ff_context.net.2")

    for i in range(config.num_single_layers):
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        parts = [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"]
        e += _fused(f"{o}.linear1", parts, (D, D, D, M))
        e += _weight_bias(f"{o}.linear2", f"{d}.proj_out")
        e += _norm(f"{o}.q_norm", f"{d}.attn.norm_q")
        e += _norm(f"{o}.k_norm", f"{d}.attn.norm_k")
        e += _weight_bias(f"{o}.modulation.linear", f"{d}.norm.linear")

    e += _weight_bias("final_layer.linear", "proj_out")
    for s in ("weight", "bias"):
        e.append(_Entry(f"final_layer.adaLN_modulation.1.{s}", (f"norm_out.linear.{s}",), "swap"))
    return e


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _check_keys(have, want, what: str) -> None:
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the config: missing {len(missing)} key(s) {missing[:8]}, "
            f"unexpected {len(unexpected)} key(s) {unexpected[:8]}"
        )


def original_to_diffusers(state: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """Tencent original keys -> diffusers keys. Consumes `state` (entries are popped to bound memory)."""
    plan = _plan(config)
    _check_keys(state.keys(), [p.original for p in plan], "original HunyuanVideo checkpoint")
    out: dict[str, torch.Tensor] = {}
    for p in plan:
        t = state.pop(p.original)
        if p.kind == "split":
            if t.shape[0] != sum(p.sizes):
                raise ValueError(f"{p.original}: dim 0 is {t.shape[0]}, expected {sum(p.sizes)} for this config")
            out.update({k: part.clone() for k, part in zip(p.diffusers, t.split(p.sizes, dim=0))})
        else:
            out[p.diffusers[0]] = _swap_halves(t) if p.kind == "swap" else t
    return out


def diffusers_to_original(state: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """diffusers keys -> Tencent original keys (fused qkv / linear1, final adaLN in (shift, scale) order)."""
    plan = _plan(config)
    _check_keys(state.keys(), [k for p in plan for k in p.diffusers], "diffusers HunyuanVideo state dict")
    out: dict[str, torch.Tensor] = {}
    for p in plan:
        if p.kind == "split":
            out[p.original] = torch.cat([state[k] for k in p.diffusers], dim=0)
        else:
            t = state[p.diffusers[0]]
            out[p.original] = _swap_halves(t) if p.kind == "swap" else t
    return out
