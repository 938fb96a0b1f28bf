"""LoRA adapters on the DiT's Linears: unmerged (a low-rank add beside the base) or merged (fused).

A targeted `nn.Linear` (or `FP8Linear`) is wrapped by a `LoRALinear` that keeps the base module
itself untouched and adds, for each active adapter,

    y = base(x) + scale * up(down(x))     down [r, in], up [out, r], scale = file scale * user scale

where the file scale is alpha / r (PEFT, kohya) and the user scale comes from `set_loras`. At
inference `set_loras` packs a layer's active adapters into one low-rank pair (downs stacked along
the rank, scales folded into the ups): the forward is then the same two matmuls whichever adapters
and scales are active, so under torch.compile a swap or a scale change is new buffer values, not a
new graph (a new total rank recompiles once, after which the rank is a dynamic size). Trainable
adapters are never packed: their forward loops over them so gradients reach each one.

The wrapper's state dict is its base's (same keys as without LoRA; adapters are never in it), so
`save_pretrained`, checkpoints and `load_state_dict` see the plain model. Merged mode adds the
active adapters into the base weights and keeps a host copy of each weight it touched, so
unmerging restores the base bit-for-bit; unloading the last adapter of a Linear puts the original
module object back in its parent. File formats are parsed by lora_formats.py.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from omnidit.dit.fp8 import FP8Linear
from omnidit.dit.lora_formats import (
    METADATA_KEY,
    LoRAFactors,
    parse_lora,
    read_lora_file,
)


class LoRAAdapter(nn.Module):
    """One adapter's factors in one Linear; `scale` is a buffer (file scale x user scale)."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, file_scale: float, *, trainable: bool = False):
        super().__init__()
        self.down = nn.Parameter(down, requires_grad=trainable)  # [r, in]
        self.up = nn.Parameter(up, requires_grad=trainable)  # [out, r]
        self.file_scale = float(file_scale)
        self.register_buffer("scale", torch.tensor(self.file_scale, dtype=torch.float32, device=down.device),
                             persistent=False)

    def set_user_scale(self, s: float) -> None:
        self.scale.fill_(self.file_scale * float(s))

    def delta(self) -> torch.Tensor:
        """`[out, in]` fp32: the weight this adapter adds at its current scale."""
        return (self.up.float() @ self.down.float()) * self.scale

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out `[T, out]` + scale * up(down(x `[T, in]`)), the add fused into the up matmul (in place
        without autograd: each adapter then writes the output once instead of allocating and adding)."""
        down, up = self.down, self.up
        if down.dtype != x.dtype:
            down, up = down.to(x.dtype), up.to(x.dtype)
        h = F.linear(x, down) * self.scale.to(x.dtype)  # [T, r]
        return out.addmm_(h, up.t()) if not torch.is_grad_enabled() else torch.addmm(out, h, up.t())


def _compute_dtype(base: nn.Module) -> torch.dtype:
    if isinstance(base, FP8Linear):
        return base.bias.dtype if base.bias is not None else torch.float32
    return base.weight.dtype


class LoRALinear(nn.Module):
    """`base(x)` plus the active adapters' low-rank terms; state dict = the base's."""

    def __init__(self, base: nn.Module):
        super().__init__()
        if not isinstance(base, (nn.Linear, FP8Linear)):
            raise TypeError(f"LoRA targets Linear layers, got {type(base).__name__}")
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()  # adapters added in forward (not those merged)
        self.merged: tuple[str, ...] = ()  # adapters fused into base.weight
        self._original: torch.Tensor | None = None  # host copy of base.weight while merged
        # the active adapters as one pair (`pack`): down [R, in], up [out, R] with scales folded in
        self.register_buffer("packed_down", None, persistent=False)
        self.register_buffer("packed_up", None, persistent=False)
        self._register_load_state_dict_pre_hook(self._base_keys)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    # Read-through to the base, so code that asks a Linear for its dtype or device keeps working.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # [..., out]
        if self.packed_down is not None:
            out, flat = y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])  # [T, out], [T, in]
            down, up = self.packed_down, self.packed_up
            if down.dtype != x.dtype:
                down, up = down.to(x.dtype), up.to(x.dtype)
            return out.addmm_(F.linear(flat, down), up.t()).view(y.shape)  # + up(down(x)), [R] inner
        if not self.active:
            return y
        out, flat = y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])  # [T, out], [T, in]
        for name in self.active:
            out = self.adapters[name].add_to(out, flat)
        return out.view(y.shape)

    @torch.no_grad()
    def pack(self) -> None:
        """(Re)build the packed pair from the active adapters at their current scales; none when
        nothing is active or an active adapter is trainable (its forward must reach its parameters)."""
        adapters = [self.adapters[n] for n in self.active]
        if not adapters or any(p.requires_grad for a in adapters for p in a.parameters()):
            self.packed_down = self.packed_up = None
            return
        down = torch.cat([a.down for a in adapters])  # [R, in]
        up = torch.cat([a.up * a.scale.to(a.up.dtype) for a in adapters], dim=1)  # [out, R]
        old = self.packed_down
        if old is not None and old.shape == down.shape and old.dtype == down.dtype and old.device == down.device:
            self.packed_down.copy_(down)  # same tensors: a swap or a scale change is new values only
            self.packed_up.copy_(up)
        else:
            self.packed_down, self.packed_up = down, up

    # The wrapper is invisible to state dicts: keys are the base's own, at the wrapper's prefix.
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        return self.base.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    @staticmethod
    def _base_keys(module, state_dict, prefix, *_):
        for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "base.")]:
            state_dict[prefix + "base." + key[len(prefix):]] = state_dict.pop(key)

    @torch.no_grad()
    def merge(self, names: tuple[str, ...]) -> None:
        """Fuse `names` (at their current scales) into base.weight; a copy of it is kept to unmerge."""
        self.unmerge()
        if not names:
            return
        if isinstance(self.base, FP8Linear):
            raise ValueError(  # noqa: TRY004 (a bad request for this model, not a programming error)
                "merged LoRA needs full-precision weights; with FP8 weights keep adapters unmerged"
            )
        w = self.base.weight
        self._original = w.detach().to("cpu", copy=True)
        delta = sum(self.adapters[n].delta() for n in names)  # [out, in] fp32
        w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
        self.merged, self.active = names, ()
        self.pack()

    @torch.no_grad()
    def unmerge(self) -> None:
        if self._original is not None:
            self.base.weight.copy_(self._original.to(self.base.weight.device))
            self._original = None
        self.merged = ()

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}, active={list(self.active)}, merged={list(self.merged)}"


@dataclass
class LoRAState:
    """The DiT's adapters: each one's user scale and modules, the active set, merged or not."""

    modules: dict[str, list[str]] = field(default_factory=dict)  # adapter -> module names
    active: dict[str, float] = field(default_factory=dict)  # adapter -> user scale
    merged: bool = False
    loads: int = 0  # adapters read from a file or dict so far (tests count reloads with it)


def state(dit: nn.Module) -> LoRAState:
    st = dit.__dict__.get("_lora_state")
    if st is None:
        st = dit.__dict__["_lora_state"] = LoRAState()
    return st


def lora_layers(dit: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, mod in dit.named_modules():
        if isinstance(mod, LoRALinear):
            yield name, mod


def linear_names(dit: nn.Module) -> list[str]:
    """Every module a LoRA may target: the Linears (full precision or FP8), wrapped or not."""
    out = []
    for name, mod in dit.named_modules():
        plain = isinstance(mod, (nn.Linear, FP8Linear)) and not name.endswith(".base")
        if plain or isinstance(mod, LoRALinear):
            out.append(name)
    return out


def _wrapped(dit: nn.Module, name: str) -> LoRALinear:
    parent, _, leaf = name.rpartition(".")
    owner = dit.get_submodule(parent) if parent else dit
    mod = getattr(owner, leaf) if not leaf.isdigit() else owner[int(leaf)]
    if isinstance(mod, LoRALinear):
        return mod
    wrapper = LoRALinear(mod)
    if leaf.isdigit():
        owner[int(leaf)] = wrapper
    else:
        setattr(owner, leaf, wrapper)
    return wrapper


def _unwrap(dit: nn.Module, name: str) -> None:
    parent, _, leaf = name.rpartition(".")
    owner = dit.get_submodule(parent) if parent else dit
    wrapper = owner[int(leaf)] if leaf.isdigit() else getattr(owner, leaf)
    if leaf.isdigit():
        owner[int(leaf)] = wrapper.base
    else:
        setattr(owner, leaf, wrapper.base)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "." in name or "/" in name:
        raise ValueError(f"LoRA name must be a non-empty string without '.' or '/', got {name!r}")
    return name


def check_scale(name: str, s) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
        raise ValueError(f"LoRA {name!r}: scale must be a finite number, got {s!r}")
    return float(s)


def attach(dit: nn.Module, name: str, factors: Mapping[str, LoRAFactors], *, trainable: bool = False) -> None:
    """Add adapter `name` (module name -> factors, our module names) to the DiT, inactive."""
    st = state(dit)
    check_name(name)
    if name in st.modules:
        raise ValueError(f"a LoRA named {name!r} is already loaded; unload it first or pick another name")
    targets = set(linear_names(dit))
    unknown = sorted(set(factors) - targets)
    if unknown:
        raise ValueError(f"LoRA {name!r} targets {len(unknown)} module(s) that are not Linears of this model: "
                         f"{unknown[:6]}")
    for mod_name, f in factors.items():
        layer = dit.get_submodule(mod_name)
        base = layer.base if isinstance(layer, LoRALinear) else layer
        want = (f.rank, base.in_features), (base.out_features, f.rank)
        if tuple(f.down.shape) != want[0] or tuple(f.up.shape) != want[1]:
            raise ValueError(f"LoRA {name!r} at {mod_name}: down {tuple(f.down.shape)} / up {tuple(f.up.shape)} "
                             f"do not fit the layer's [out, in] = [{base.out_features}, {base.in_features}]")
    for mod_name, f in factors.items():
        layer = _wrapped(dit, mod_name)
        dev, dt = layer.base.weight.device, _compute_dtype(layer.base)
        layer.adapters[name] = LoRAAdapter(f.down.to(dev, dt).contiguous(), f.up.to(dev, dt).contiguous(), f.scale,
                                           trainable=trainable)
    st.modules[name] = sorted(factors)


def set_loras(dit: nn.Module, scales: Mapping[str, float] | None, *, merge: bool = False) -> None:
    """Make exactly `scales` ({name: user scale}) active; `merge` fuses them into the weights."""
    st = state(dit)
    scales = dict(scales or {})
    unknown = [n for n in scales if n not in st.modules]
    if unknown:
        raise ValueError(f"unknown LoRA {unknown[0]!r}; loaded: {sorted(st.modules) or 'none'}")
    for n, s in scales.items():
        check_scale(n, s)
    for _, layer in lora_layers(dit):
        layer.unmerge()
        names = tuple(n for n in scales if n in layer.adapters)
        for n in names:
            layer.adapters[n].set_user_scale(scales[n])
        layer.active = names
        layer.pack()
        if merge:
            layer.merge(names)
    st.active, st.merged = scales, merge and bool(scales)


class using_loras:
    """`with using_loras(dit, {name: scale}):` runs with exactly that set, then restores the previous one.
    None keeps whatever is set. A set equal to the current one changes nothing (merged stays merged)."""

    def __init__(self, dit: nn.Module, scales: Mapping[str, float] | None):
        self.dit, self.scales = dit, None if scales is None else dict(scales)

    def __enter__(self):
        st = state(self.dit)
        self.saved = (dict(st.active), st.merged)
        if self.scales is not None and self.scales != st.active:
            set_loras(self.dit, self.scales)
        return self

    def __exit__(self, *exc):
        st = state(self.dit)
        saved = {n: s for n, s in self.saved[0].items() if n in st.modules}  # minus any unloaded meanwhile
        if (st.active, st.merged) != (saved, self.saved[1]):
            set_loras(self.dit, saved, merge=self.saved[1])
        return False


def load(dit: nn.Module, source, *, name: str | None = None, scale: float = 1.0, activate: bool = True) -> str:
    """Read a LoRA (a .safetensors path, a folder holding one, or a state dict), attach it and (with
    `activate`) add it to the active set at `scale`; returns its name (default: the file's stem)."""
    st = state(dit)
    check_scale(name or "lora", scale)
    if isinstance(source, Mapping):
        tensors, peft_config = dict(source), None
        name = name or f"lora_{len(st.modules)}"
    else:
        tensors, peft_config = read_lora_file(source)
        name = name or Path(source).stem
    factors = parse_lora(tensors, dit.config, linear_names(dit), peft_config)
    attach(dit, check_name(name), factors)
    st.loads += 1
    if activate:
        set_loras(dit, {**st.active, name: scale}, merge=st.merged)
    return name


def unload(dit: nn.Module, name: str) -> None:
    """Remove adapter `name`; a Linear left without adapters gets its original module back."""
    st = state(dit)
    if name not in st.modules:
        raise ValueError(f"unknown LoRA {name!r}; loaded: {sorted(st.modules) or 'none'}")
    rest = {n: s for n, s in st.active.items() if n != name}
    merged = st.merged
    set_loras(dit, {})  # unmerge everything first: weights are the originals again
    for mod_name, layer in list(lora_layers(dit)):
        if name in layer.adapters:
            del layer.adapters[name]
        if not len(layer.adapters):
            _unwrap(dit, mod_name)
    del st.modules[name]
    set_loras(dit, rest, merge=merged)


def loaded(dit: nn.Module) -> dict[str, dict]:
    """{name: {"modules", "rank", "active", "scale"}} of every loaded adapter."""
    st = state(dit)
    out = {}
    for n, mods in st.modules.items():
        ranks = {dit.get_submodule(m).adapters[n].down.shape[0] for m in mods}
        out[n] = {"modules": len(mods), "rank": max(ranks) if ranks else 0, "active": n in st.active,
                  "scale": st.active.get(n)}
    return out


# --- training and saving ------------------------------------------------------------------------


def add_trainable_lora(dit: nn.Module, name: str, rank: int, targets: Iterable[str], *,
                       alpha: float | None = None, seed: int | None = None) -> list[nn.Parameter]:
    """A fresh adapter on the modules named in `targets` (full names, or suffixes such as
    "attn.to_q"), activated at scale 1; returns its parameters (down: PEFT's kaiming-uniform init,
    up: zeros, so the model starts unchanged). alpha None means alpha = rank (scale 1)."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    patterns = list(targets)
    names = [m for m in linear_names(dit) if any(m == p or m.endswith("." + p) for p in patterns)]
    if not names:
        raise ValueError(f"targets {patterns} match no Linear of this model")
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    factors = {}
    for m in names:
        layer = dit.get_submodule(m)
        base = layer.base if isinstance(layer, LoRALinear) else layer
        down = torch.empty(rank, base.in_features)
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform(a=sqrt(5)) on [r, in]
        down.uniform_(-bound, bound, generator=g)
        factors[m] = LoRAFactors(down, torch.zeros(base.out_features, rank), (alpha or rank) / rank)
    attach(dit, name, factors, trainable=True)
    set_loras(dit, {**state(dit).active, name: 1.0})
    return [p for m in names for p in dit.get_submodule(m).adapters[name].parameters()]


def lora_state_dict(dit: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Adapter `name` in diffusers/PEFT keys (`transformer.<module>.lora_A/lora_B.weight`, fp32 on
    CPU) and its PEFT config (r, lora_alpha, rank_pattern, alpha_pattern, target_modules)."""
    st = state(dit)
    if name not in st.modules:
        raise ValueError(f"unknown LoRA {name!r}; loaded: {sorted(st.modules) or 'none'}")
    tensors, ranks, alphas = {}, {}, {}
    for m in st.modules[name]:
        a = dit.get_submodule(m).adapters[name]
        tensors[f"transformer.{m}.lora_A.weight"] = a.down.detach().float().cpu().contiguous()
        tensors[f"transformer.{m}.lora_B.weight"] = a.up.detach().float().cpu().contiguous()
        ranks[m], alphas[m] = a.down.shape[0], a.file_scale * a.down.shape[0]
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {"r": r, "lora_alpha": alpha, "target_modules": sorted(ranks),
              "rank_pattern": {m: v for m, v in ranks.items() if v != r},
              "alpha_pattern": {m: v for m, v in alphas.items() if v != alpha}}
    return tensors, config


def save_lora(dit: nn.Module, name: str, path: str | Path) -> Path:
    """Write adapter `name` as a diffusers/PEFT safetensors file (loads in diffusers' `load_lora_weights`)."""
    from safetensors.torch import save_file

    tensors, config = lora_state_dict(dit, name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {f"transformer.{k}": v for k, v in config.items()}  # as a pipeline's save_lora_weights writes it
    save_file(tensors, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(config, sort_keys=True)})
    return path
