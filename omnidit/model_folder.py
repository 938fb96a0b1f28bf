"""The model folder, in one place: resolve a name or path, read it, write it, name it.

A model folder is diffusers' pipeline layout: `model_index.json`, `transformer/`, `vae/`,
`text_encoder*/`, `tokenizer*/`, `scheduler/`. omnidit's own folders (the shipped `shapes`
models, training exports, distilled students) add an `"omnidit"` section to model_index.json
with their sampling defaults and provenance, and may name their text encoder as a dict spec.
The family (`omnidit`, `hunyuanvideo`, `hunyuanvideo15`) is read from the transformer's class,
so loaders for other families, LoRA adapters and quantized weights all pass through here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
SHIPPED_LORAS = MODELS_DIR / "loras"  # the adapters this project trained for the shipped models (their cards inside)
DEFAULT_MODEL = "shapes-turbo"
INDEX = "model_index.json"
CACHE_CALIBRATION = "cache.json"  # step-cache calibration beside model_index.json (diffusers ignores it)

# transformer/config.json `_class_name` -> family
FAMILIES = {
    "HunyuanVideoTransformer3DModel": "hunyuanvideo",
    "HunyuanVideo15Transformer3DModel": "hunyuanvideo15",
}


def shipped_models() -> list[str]:
    """Names of the models inside the package (folders with a model_index.json)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / INDEX).is_file())


def default_model() -> str:
    """The default model: `shapes-turbo` when shipped, else `shapes`, else the first shipped one."""
    names = shipped_models()
    if DEFAULT_MODEL in names or not names:
        return DEFAULT_MODEL
    return "shapes" if "shapes" in names else names[0]


def resolve_model(name_or_dir: str | os.PathLike | None) -> Path:
    """A shipped model's name, a folder, or None (the default model) -> the folder; ValueError otherwise."""
    s = str(name_or_dir) if name_or_dir is not None else default_model()
    if s in shipped_models():
        return MODELS_DIR / s
    p = Path(s).expanduser()
    if (p / INDEX).is_file():
        return p
    if p.exists():
        raise ValueError(f"model folder {s!r} has no {INDEX} (expected a diffusers-format pipeline folder)")
    raise ValueError(f"model {s!r} is neither a shipped model {shipped_models()} nor an existing folder")


def model_name(folder: str | os.PathLike) -> str:
    """A model's display name: a shipped model's name, else its folder's absolute path."""
    p = Path(folder)
    if p.parent.resolve() == MODELS_DIR.resolve():
        return p.name
    return str(p.resolve())


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    index: dict = field(repr=False)

    @property
    def name(self) -> str:
        return model_name(self.path)

    @property
    def transformer_dir(self) -> Path:
        return self.path / "transformer"

    @property
    def vae_dir(self) -> Path:
        return self.path / "vae"

    @property
    def family(self) -> str:
        """`omnidit` for our own DiT folders, else the diffusers transformer class's family."""
        cfg = self.transformer_dir / "config.json"
        cls = json.loads(cfg.read_text()).get("_class_name", "") if cfg.is_file() else ""
        return FAMILIES.get(cls, "omnidit")

    @property
    def temporal_ratio(self) -> int:
        """Frames per latent frame of the folder's causal VAE (after the first)."""
        cfg = json.loads((self.vae_dir / "config.json").read_text())
        return int(cfg.get("temporal_compression_ratio", 4))  # diffusers' default for the HunyuanVideo VAE

    @property
    def omnidit(self) -> dict:
        """The folder's own `"omnidit"` section (sampling defaults, provenance), or {}."""
        return self.index.get("omnidit", {})

    @property
    def cache_calibration(self) -> dict:
        """The step-cache calibration `omnidit calibrate-cache` wrote (`cache.json`), or {}."""
        p = self.path / CACHE_CALIBRATION
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p} must hold a JSON object, got {type(data).__name__}")
        return data

    def sampling(self, guidance_embeds: bool = False):
        """The folder's sampling defaults and limits (a PipelineConfig); a HunyuanVideo-1.5 folder's
        come from its own scheduler, guider and transformer configs."""
        from omnidit.pipeline_config import read_hv15_pipeline_config, read_pipeline_config

        if self.family == "hunyuanvideo15" and "sampling" not in self.omnidit:
            return read_hv15_pipeline_config(self.path)
        return read_pipeline_config(self.path, self.index, guidance_embeds)


def open_model(name_or_dir: str | os.PathLike | None) -> ModelFolder:
    """Resolve and read a model folder (None: the default model)."""
    path = resolve_model(name_or_dir)
    try:
        index = json.loads((path / INDEX).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / INDEX} is not valid JSON: {e}") from None
    return ModelFolder(path, index)


def write_model_index(out: Path, index: dict) -> Path:
    """Write `out/model_index.json` (atomically: a killed export never leaves half a file)."""
    from omnidit.files import write_atomic

    path = Path(out) / INDEX
    write_atomic(path, (json.dumps(index, indent=2) + "\n").encode())
    return path


def write_cache_calibration(folder: Path, calibration: dict) -> Path:
    """Write `folder/cache.json` (atomically), the coefficients `ModelFolder.cache_calibration` reads."""
    from omnidit.files import write_atomic

    path = Path(folder) / CACHE_CALIBRATION
    write_atomic(path, (json.dumps(calibration, indent=2) + "\n").encode())
    return path


def omnidit_index(*, text_encoder: dict | str, sampling: dict, **provenance) -> dict:
    """model_index.json of an omnidit-format folder (our DiT + diffusers' HunyuanVideo VAE)."""
    from omnidit import __version__
    from omnidit.pipeline_config import PipelineConfig

    return {
        "_class_name": "OmniDiTPipeline",
        "_omnidit_version": __version__,
        "transformer": ["omnidit", "DiT"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
        "text_encoder": text_encoder,
        "omnidit": {"sampling": PipelineConfig.from_dict(sampling).to_dict(), **provenance},
    }
