"""LoRA files as published for HunyuanVideo -> one canonical form: {our module name: LoRAFactors}.

Accepted layouts (one file may mix the naming schemes, never unknown keys):
- diffusers / PEFT: `transformer.<module>.lora_A.weight` / `.lora_B.weight`, our (= diffusers')
  module names; alpha from the PEFT config diffusers stores in the safetensors metadata
  (`lora_adapter_metadata`: lora_alpha, alpha_pattern, use_rslora), else alpha = rank;
- original Tencent module names (`double_blocks.N.img_attn_qkv`, `single_blocks.N.linear1`, ...),
  with or without a `diffusion_model.` / `transformer.` prefix, as lora_A/lora_B or lora_down/lora_up;
- kohya / musubi-tuner: `lora_unet_<module with _ for .>.lora_down.weight` / `.lora_up.weight` /
  `.alpha`, the module an original Tencent name (musubi) or ours.

An adapter on a fused original layer becomes one adapter per part: the down factor is shared and
the up factor split like the weight (qkv, linear1 = q|k|v|mlp); the final adaLN's up factor swaps
its halves. The key plan is convert.py's, so weights and adapters convert the same way.
A per-module `.alpha` scales by alpha / rank (kohya's convention).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from omnidit.dit.config import DiTConfig
from omnidit.dit.convert import _plan

METADATA_KEY = "lora_adapter_metadata"  # where diffusers keeps the PEFT config in a safetensors header
PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.")
KOHYA_PREFIX = "lora_unet_"
ROLES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_down.weight": "down",
         ".lora_up.weight": "up", ".alpha": "alpha"}  # fmt: skip
FILE_NAMES = ("pytorch_lora_weights.safetensors",)  # what diffusers' save_lora_weights writes in a folder


@dataclass
class LoRAFactors:
    """One module's adapter in canonical form: delta W = scale * up @ down."""

    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    scale: float = 1.0  # alpha / r (1.0 when the file carries no alpha)

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class _Target:
    modules: tuple[str, ...]  # our module names
    kind: str  # "same" | "split" | "swap"
    sizes: tuple[int, ...] = ()


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A .safetensors file (or a folder holding one) -> (tensors on CPU, the PEFT config or None)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_dir():
        files = [p / n for n in FILE_NAMES if (p / n).is_file()] or sorted(p.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"LoRA folder {str(p)!r} must hold one .safetensors file, found {[f.name for f in files]}")
        p = files[0]
    if not p.is_file():
        raise FileNotFoundError(f"LoRA file {str(p)!r} does not exist")
    if p.suffix != ".safetensors":
        raise ValueError(f"LoRA file {str(p)!r}: only .safetensors files are read (no pickles)")
    try:
        with safe_open(str(p), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
            header = f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise ValueError(f"LoRA file {str(p)!r} is not a valid safetensors file: {e}") from None
    return tensors, _peft_config(header.get(METADATA_KEY))


def _peft_config(raw: str | None) -> dict | None:
    if not raw:
        return None
    config = json.loads(raw)
    # A pipeline's save_lora_weights prefixes each field with its component ("transformer.r").
    if any(k.startswith("transformer.") for k in config):
        config = {k[len("transformer."):]: v for k, v in config.items() if k.startswith("transformer.")}
    return config


def _targets(config: DiTConfig, linears: Collection[str]) -> tuple[dict[str, _Target], dict[str, str]]:
    """(source module name -> target, underscored name -> source name) for every Linear."""
    table = {m: _Target((m,), "same") for m in linears}
    for e in _plan(config):
        if not e.original.endswith(".weight"):
            continue
        mods = tuple(d.removesuffix(".weight") for d in e.diffusers)
        if all(m in linears for m in mods):
            table[e.original.removesuffix(".weight")] = _Target(mods, e.kind, e.sizes)
    return table, {name.replace(".", "_"): name for name in table}


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in ROLES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _source_name(raw: str, underscored: dict[str, str]) -> str:
    if raw.startswith(KOHYA_PREFIX):
        return underscored.get(raw[len(KOHYA_PREFIX):], raw)
    for p in PREFIXES:
        if raw.startswith(p):
            return raw[len(p):]
    return raw


def _config_alpha(config: dict | None, module: str, rank: int) -> float | None:
    if not config:
        return None
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(config["lora_alpha"]) if config.get("lora_alpha") is not None else None


def parse_lora(
    tensors: Mapping[str, torch.Tensor], config: DiTConfig, linears: Collection[str], peft_config: dict | None = None
) -> dict[str, LoRAFactors]:
    """LoRA tensors in any accepted layout -> {our module: LoRAFactors}; a ValueError names unknown keys."""
    if not tensors:
        raise ValueError("the LoRA holds no tensors")
    odd = [k for k in tensors if "dora_scale" in k or "lora_magnitude_vector" in k or k.endswith(".bias")]
    if odd:
        raise ValueError(f"DoRA and LoRA biases are not supported; the file has {odd[:4]}")
    table, underscored = _targets(config, set(linears))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, t in tensors.items():
        split = _split_key(key)
        source = _source_name(split[0], underscored) if split else None
        if source not in table:
            unknown.append(key)
            continue
        parts.setdefault(source, {})[split[1]] = t
    if unknown:
        raise ValueError(
            f"{len(unknown)} of {len(tensors)} LoRA key(s) match no Linear of this model, e.g. {sorted(unknown)[:6]}; "
            "expected transformer.<module>.lora_A/lora_B.weight (diffusers/PEFT), original Tencent module names, "
            "or lora_unet_<module>.lora_down/lora_up.weight + .alpha (kohya/musubi)"
        )
    out: dict[str, LoRAFactors] = {}
    use_rslora = bool(peft_config and peft_config.get("use_rslora"))
    for source, p in sorted(parts.items()):
        if "down" not in p or "up" not in p:
            raise ValueError(f"LoRA for {source!r} is incomplete: it needs both the down (lora_A) and up (lora_B) "
                             f"weights, has {sorted(p)}")
        down, up = p["down"], p["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"LoRA for {source!r}: down {tuple(down.shape)} and up {tuple(up.shape)} are not "
                             "[r, in] and [out, r]")
        r = down.shape[0]
        alpha = float(p["alpha"]) if "alpha" in p else _config_alpha(peft_config, source, r)
        scale = 1.0 if alpha is None else alpha / (math.sqrt(r) if use_rslora else r)
        target = table[source]
        ups = (up,)
        if target.kind == "split":
            if up.shape[0] != sum(target.sizes):
                raise ValueError(f"LoRA for {source!r}: up has {up.shape[0]} rows, the fused layer {sum(target.sizes)}")
            ups = up.split(target.sizes, dim=0)
        elif target.kind == "swap":
            shift, scl = up.chunk(2, dim=0)  # original (shift, scale) -> our (scale, shift)
            ups = (torch.cat([scl, shift], dim=0),)
        for m, u in zip(target.modules, ups):
            if m in out:
                raise ValueError(f"the LoRA sets {m!r} twice (under two naming schemes)")
            out[m] = LoRAFactors(down, u.contiguous(), scale)
    return out
