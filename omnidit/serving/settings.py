"""`ServeSettings`: every knob of the service, in one typed place.

The CLI (`omnidit serve`) and the Serve config YAML (`args:` of the application) both
build one of these; the deployments receive it as a plain dict so Ray can ship it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int, field: str = "retention") -> float:
    """`90`, `90s`, `15m`, `24h`, `7d` -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a duration like 3600, 90s, 15m, 24h or 7d, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{field} must be a duration like 3600, 90s, 15m, 24h or 7d, got {value!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"{field} must be > 0, got {value!r}")
    return seconds


@dataclass
class ServeSettings:
    # A shipped name or diffusers-format folder (None = the embedded default), or a list of them: a generator
    # deployment each, a request's `model` picks one, the first is the default (README "Several models").
    model: str | list[str] | None = None
    data_dir: str = "omnidit-data"  # job database (SQLite) and outputs; shared storage across nodes
    job_store: str | None = None  # None = sqlite under data_dir; or postgresql://... for several nodes
    api_key: str | None = None  # bearer token required on /v1/* when set
    device: str | None = None  # cpu | cuda | cuda:N; None = cuda if available
    replicas: int = 1  # generator replicas (each holds a Pipeline, or a worker group when parallel)
    cpus_per_replica: float = 1.0
    gpus_per_replica: int = 0  # 0 = CPU; 1 = one GPU; K > 1 = one GPU per worker of a parallel replica
    # A parallel replica: ulysses x ring x (2 if cfg_parallel) worker processes running one generation
    # together (omnidit/parallel WorkerGroup); gloo on CPU, NCCL with gpus_per_replica equal to that product.
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: bool = False
    weights: str | None = None  # the DiT's storage: fp8 | bf16 | fp32; None = the compute dtype (pipeline_memory.py)
    offload: str = "none"  # none | blocks: DiT blocks streamed to the GPU, encoders and VAE parked on the host
    compile: str | None = None  # regional torch.compile backend of each replica's DiT (dit/compile.py); None = eager
    ingress_replicas: int = 1
    max_batch_size: int = 8  # image requests per @serve.batch call; 1 turns batching off
    batch_wait_s: float = 0.02  # how long a batch waits to fill
    max_batch_images: int = 16  # images per Pipeline.generate_many call (n of several requests summed)
    max_pending_images: int = 32  # image requests admitted and not finished; past it -> 429
    max_queued_jobs: int = 256  # queued video jobs; past it -> 429
    max_images: int = 8  # `n` per image request
    max_steps: int = 100  # `steps` per request
    max_prompt_chars: int = 2000
    retention_s: float = 86400.0  # outputs and job records are deleted this long after they finish
    log_prompts: bool = False  # logs never carry prompt text unless this is on
    # Content safety and labelling (README "Content safety and labelling"; omnidit/serving/content.py).
    moderation: str | None = None  # policy file (JSON/YAML): prompts checked at the ingress, outputs on replicas
    audit_log: str | None = None  # moderation decisions, JSON lines; None = <data_dir>/audit.jsonl
    label_producer: str = "omnidit"  # the AIGC label's ContentProducer on every output
    visible_label: str | None = None  # text drawn in a corner of outputs (explicit label); None = none
    visible_label_frames: str = "ends"  # ends (first and last frames of a video) | all
    visible_label_font: str | None = None  # a TrueType file (needed for CJK label text)
    store_prompts: str = "full"  # full | hash: a finished job's record keeps a keyed hash, not the text
    run_jobs: bool = True  # generator replicas run the video job worker
    lease_s: float = 60.0  # a job whose lease is not renewed for this long is taken over
    poll_s: float = 0.5  # how often an idle worker looks for queued jobs
    max_attempts: int = 3  # a job whose replica died this many times fails with a clear error
    sweep_s: float = 60.0  # how often expired jobs/outputs are deleted
    health_check_period_s: float = 10.0
    # LoRA adapters a request may name in `lora`: <name>.safetensors files of this folder, loaded on first
    # use; at most max_loras stay loaded per replica (least recently used unloaded first).
    lora_dir: str | None = None
    max_loras: int = 8

    def __post_init__(self) -> None:
        if self.api_key == "":
            self.api_key = None
        self._check_models()
        self.retention_s = parse_duration(self.retention_s, "retention")
        for name, low in (("replicas", 1), ("ingress_replicas", 1), ("max_batch_size", 1), ("max_batch_images", 1),
                          ("max_pending_images", 1), ("max_queued_jobs", 1), ("max_images", 1), ("max_steps", 1),
                          ("max_prompt_chars", 1), ("max_attempts", 1), ("gpus_per_replica", 0),
                          ("ulysses_degree", 1), ("ring_degree", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("cpus_per_replica", "batch_wait_s", "lease_s", "poll_s", "sweep_s", "health_check_period_s"):
            v = getattr(self, name)
            zero_ok = name in ("cpus_per_replica", "batch_wait_s")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and not zero_ok):
                raise ValueError(f"{name} must be a number {'>=' if zero_ok else '>'} 0, got {v!r}")
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.lora_dir is not None and not Path(self.lora_dir).is_dir():
            raise ValueError(f"lora_dir {self.lora_dir!r} does not exist or is not a directory")
        if self.store_prompts not in ("full", "hash"):
            raise ValueError(f"store_prompts must be full or hash, got {self.store_prompts!r}")
        if self.visible_label_frames not in ("ends", "all"):
            raise ValueError(f"visible_label_frames must be ends or all, got {self.visible_label_frames!r}")
        if not isinstance(self.label_producer, str) or not self.label_producer.strip():
            raise ValueError(f"label_producer must be a non-empty string, got {self.label_producer!r}")
        if self.visible_label is not None and not self.visible_label.strip():
            raise ValueError("visible_label must be non-empty text (or unset for no visible label)")
        if self.moderation is not None and not Path(self.moderation).expanduser().is_file():
            raise ValueError(f"moderation: policy file {self.moderation!r} does not exist")
        for name in ("moderation", "audit_log"):  # absolute: replicas may run in another working directory
            if getattr(self, name) is not None:
                setattr(self, name, str(Path(getattr(self, name)).expanduser().resolve()))
        from omnidit.pipeline_memory import check_memory

        check_memory(self.weights, self.offload)
        from omnidit.dit.compile import BACKENDS

        if self.compile is not None and self.compile not in BACKENDS:
            raise ValueError(f"compile must be one of {BACKENDS} (or None), got {self.compile!r}")
        if not isinstance(self.cfg_parallel, bool):
            raise ValueError(f"cfg_parallel must be true or false, got {self.cfg_parallel!r}")
        if self.max_batch_images < self.max_images:
            raise ValueError(f"max_batch_images ({self.max_batch_images}) must be >= max_images ({self.max_images})")
        if self.job_store is not None and not self.job_store.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"job_store must be sqlite:///PATH or postgresql://..., got {self.job_store!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "ServeSettings":
        """From the YAML `args:` (or the deployments' init args); unknown keys are an error."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        if "retention" in d:  # the YAML/CLI spelling
            d["retention_s"] = d.pop("retention")
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown serve settings {sorted(unknown)}; allowed: {sorted(known)}")
        if d.get("api_key") is None:
            d["api_key"] = os.environ.get("OMNIDIT_API_KEY") or None
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def _check_models(self) -> None:
        if isinstance(self.model, (list, tuple)):
            models = list(self.model)
            if not models or not all(isinstance(m, str) and m.strip() for m in models):
                raise ValueError("model must be a model name or folder, or a non-empty list of them, "
                                 f"got {self.model!r}")
            ids = [model_id(m) for m in models]
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                raise ValueError(f"model: each served model needs its own name, got {twice} more than once")
            self.model = models[0] if len(models) == 1 else models
        elif self.model is not None and not (isinstance(self.model, str) and self.model.strip()):
            raise ValueError(f"model must be a model name or folder, or a non-empty list of them, got {self.model!r}")

    @property
    def models(self) -> list[str | None]:
        """The served models in order (the first is the default); [None] = the embedded default alone."""
        return list(self.model) if isinstance(self.model, list) else [self.model]

    def for_model(self, model: str | None) -> "ServeSettings":
        """These settings for one generator deployment: the same knobs, one model."""
        return replace(self, model=model)

    @property
    def workers_per_replica(self) -> int:
        """Processes of one replica's worker group (1 = a plain Pipeline in the replica itself)."""
        return self.ulysses_degree * self.ring_degree * (2 if self.cfg_parallel else 1)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def store_url(self) -> str:
        return self.job_store or f"sqlite:///{self.data_path / 'jobs.db'}"


def model_id(model: str | None) -> str:
    """The name clients send in `model` for a served model (a folder's last part), as ModelInfo.id has it."""
    if model is None:
        from omnidit.model_folder import default_model

        model = default_model()
    return Path(str(model)).expanduser().name


def configure_logging(level: int = 20) -> None:
    """`omnidit.*` INFO lines to stderr in a replica (Ray streams them to the driver's console)."""
    import logging
    import sys

    logger = logging.getLogger("omnidit")
    if not any(getattr(h, "_omnidit", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._omnidit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
