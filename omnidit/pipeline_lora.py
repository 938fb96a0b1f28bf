"""The LoRA adapters of a Pipeline's generations: which adapters a request may name, and a bounded
LRU of adapters read on demand from a folder (`serve --lora-dir`). No Ray, no HTTP.

An adapter loaded by `Pipeline.load_lora` stays until unloaded; one read from the library is loaded
the first time a request names it and unloaded, least recently used first, when more than
`capacity` library adapters would be loaded. Switching between loaded adapters costs no reload
(dit/lora.py keeps them unmerged beside the base weights). Listing a folder imports no torch (the
service's ingress lists adapters without a model).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from omnidit.request import RequestError, parse_loras

LORA_SUFFIX = ".safetensors"


class LoRALibrary:
    """The adapters of a folder, named by file stem (`<name>.safetensors`); at most `capacity` loaded."""

    def __init__(self, folder: str | Path, capacity: int = 8):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"LoRA folder {str(self.folder)!r} does not exist or is not a directory")
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"LoRA capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.recent: OrderedDict[str, None] = OrderedDict()  # loaded from here, least recently used first

    def names(self) -> list[str]:
        """Adapters in the folder now (re-read each call, so files added later are found)."""
        return lora_names(self.folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{LORA_SUFFIX}"


def lora_names(folder: str | Path) -> list[str]:
    """`<name>.safetensors` files of `folder` as adapter names (a stem with a '.' cannot be one)."""
    return [p.stem for p in sorted(Path(folder).glob(f"*{LORA_SUFFIX}")) if p.stem and "." not in p.stem]


def fingerprint(loras) -> dict[str, list]:
    """{name: [sha1 of the file's bytes, scale]} of an adapter set {name: (path, scale)}, by name: what outputs
    sampled with it depend on (the file's content, not its path), for keys that must change when it does."""
    import hashlib

    return {name: [hashlib.sha1(Path(path).read_bytes()).hexdigest(), scale] for name, (path, scale) in
            sorted(loras.items())}


def available(pipe) -> list[str]:
    """Adapters a request may name: those loaded plus those in the pipeline's library."""
    from omnidit.dit import lora

    names = set(lora.state(pipe.dit).modules)
    if pipe.lora_library is not None:
        names.update(pipe.lora_library.names())
    return sorted(names)


def check_loras(pipe, loras) -> dict[str, float] | None:
    """A request's `lora` field -> {name: scale} (None: keep the DiT's current set); RequestError("lora")."""
    return parse_loras(loras, available(pipe) if loras else None)


def prepare(pipe, loras) -> dict[str, float] | None:
    """`check_loras`, then load each named adapter not loaded yet from the library (evicting the least
    recently used library adapters beyond its capacity, never one this request names)."""
    from omnidit.dit import lora

    spec = check_loras(pipe, loras)
    if not spec or pipe.lora_library is None:
        return spec
    lib, loaded = pipe.lora_library, lora.state(pipe.dit).modules
    for name in spec:
        if name in lib.recent:
            lib.recent.move_to_end(name)
        elif name not in loaded:
            while len(lib.recent) >= lib.capacity:
                victim = next((n for n in lib.recent if n not in spec), None)
                if victim is None:
                    raise RequestError("lora", f"lora names more adapters than the {lib.capacity} kept loaded")
                del lib.recent[victim]
                pipe.dit.unload_lora(victim)
            try:
                lora.load(pipe.dit, lib.path(name), name=name, activate=False)
            except (OSError, ValueError) as e:
                raise RequestError("lora", f"lora: adapter {name!r} cannot be loaded: {e}") from None
            lib.recent[name] = None
    return spec
