"""Reading and writing diffusers-format transformer folders (config.json + safetensors, sharded or not)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omnidit.dit.config import DiTConfig
from omnidit.dit.convert import is_original_state_dict, original_to_diffusers

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = f"{WEIGHTS_NAME}.index.json"


def read_config(path: str | Path) -> DiTConfig:
    folder = _folder(path)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; expected a diffusers transformer folder")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from e
    return DiTConfig.from_dict(raw)


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a folder: the shards named by an index, else the single weights file."""
    folder = _folder(path)
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if (folder / INDEX_NAME).is_file():
        indexes = [folder / INDEX_NAME]  # the standard name wins over stray indexes
    if len(indexes) > 1:
        raise ValueError(f"{folder} has several safetensors indexes {[p.name for p in indexes]}; keep one")
    if indexes:
        weight_map = json.loads(indexes[0].read_text()).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if not files or absent:
            raise FileNotFoundError(f"{indexes[0]} names shard(s) that are missing: {absent or 'none listed'}")
        return files
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return singles
    raise FileNotFoundError(
        f"{folder} has no weights: expected {WEIGHTS_NAME} or {INDEX_NAME} with its shards"
        + (f" (found several unindexed files: {[p.name for p in singles]})" if singles else "")
    )


TensorTransform = Callable[[str, torch.Tensor], dict[str, torch.Tensor]]


def load_state_dict(
    path: str | Path, config: DiTConfig, *, dtype: torch.dtype | None, device: torch.device,
    transform: TensorTransform | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of a folder in diffusers keys, each read straight onto `device` (memory-mapped,
    shard by shard) and cast to `dtype` one at a time (peak extra memory: one tensor).

    `transform(key, tensor) -> {key: tensor, ...}` runs on each tensor as it is read (e.g. FP8
    quantisation), so the full-precision copy of the model never exists; original Tencent
    checkpoints are converted first and transformed after."""
    files = weight_files(path)
    keys = []
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            keys.extend(f.keys())
    original = is_original_state_dict(dict.fromkeys(keys))
    if original and config.family != "hunyuanvideo":
        raise ValueError(f"{_folder(path)} holds original Tencent keys (double_blocks.*, ...); for "
                         f"{config.family!r} only diffusers-format folders load (convert it with diffusers first)")
    per_tensor = transform if not original else None
    where = _safetensors_device(device)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device=where) as f:
            for key in f.keys():
                t = f.get_tensor(key)
                t = t.to(dtype) if dtype is not None and t.is_floating_point() else t
                if per_tensor is None:
                    state[key] = t
                else:
                    state.update(per_tensor(key, t))
    if original:
        state = original_to_diffusers(state, config)
        if transform is not None:
            state = {k2: v2 for k, v in state.items() for k2, v2 in transform(k, v).items()}
    return state


def save_folder(
    path: str | Path, config: DiTConfig, state: dict[str, torch.Tensor], *, max_shard_size: int | str | None = "10GB"
) -> None:
    """config.json + safetensors in diffusers' names; more than `max_shard_size` bytes -> indexed shards."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    shards = _shard({k: v.detach() for k, v in state.items()}, _parse_size(max_shard_size))
    meta = {"format": "pt"}
    for stale in list(folder.glob("diffusion_pytorch_model*.safetensors")) + [folder / INDEX_NAME]:
        stale.unlink(missing_ok=True)  # a previous save with other sharding must not be mixed in
    if len(shards) == 1:
        save_file(_host(shards[0]), str(folder / WEIGHTS_NAME), metadata=meta)
        return
    weight_map, n = {}, len(shards)
    for i, shard in enumerate(shards, start=1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors"
        save_file(_host(shard), str(folder / name), metadata=meta)  # one shard on the host at a time
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _host(shard: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.to("cpu").contiguous() for k, t in shard.items()}


def _shard(state: dict[str, torch.Tensor], limit: int | None) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in state.items():
        nbytes = t.numel() * t.element_size()
        if limit is not None and shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    return shards


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _parse_size(size: int | str | None) -> int | None:
    if size is None or isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size={size!r}: expected bytes as an int or a string like '5GB' or '200MB'")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"transformer folder {str(folder)!r} does not exist or is not a directory")
    return folder


def _safetensors_device(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)
