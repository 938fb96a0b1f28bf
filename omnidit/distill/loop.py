"""`omnidit distill`: the distillation training loop, built like `omnidit train dit`.

accelerate (one CPU now, several GPUs in bf16 later), checkpoints that resume (student, EMA,
optimizer, generator, step), a progress bar, periodic adherence evaluation of the student at its
own few steps, and an export to a model folder that `Pipeline.from_pretrained` loads.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from omnidit.training.common import (
    EMA,
    Budget,
    load_checkpoint,
    load_weights_from,
    log_metrics,
    reference_attention,
    save_checkpoint,
    smooth_loss,
)

METHODS = ("guidance", "consistency", "dmd")
EMA_DECAY = {"consistency": 0.95, "guidance": 0.999, "dmd": 0.99}  # consistency: the EMA is also the target


@dataclass
class DistillConfig:
    teacher: str = "shapes"
    method: str = "consistency"
    out: str = "runs/distill/shapes-turbo/model"  # the exported model folder
    run: str = "runs/distill/shapes-turbo"  # checkpoints + metrics
    steps: int = 4  # the student's default sampling steps (consistency, dmd)
    phases: int = 1  # consistency: 1 = x0 prediction, multistep (any steps); K = phase edges (K steps)
    teacher_intervals: int = 32  # consistency: teacher Euler intervals over [1, 0] (rounded to phases)
    scale_range: tuple[float, float] = (1.0, 8.0)  # guidance: scales the student learns
    lr: float = 1e-4
    ema_decay: float | None = None  # None: EMA_DECAY[method]
    huber_c: float = 1e-3
    fake_updates: int = 5  # dmd: fake-score updates per student update (two time-scale rule)
    data: str = "cache"  # "cache" or "online" (as `omnidit train dit`)
    image_cache: str = "runs/shapes/cache/images"
    video_cache: str | None = "runs/shapes/cache/videos"
    image_batch: int = 32
    video_batch: int = 8
    video_every: int = 3
    video_frames: int = 17
    workers: int = 4
    text_encoder: str | None = None
    init_student: str | None = None  # start from an exported student folder (e.g. distilled elsewhere)
    max_steps: int | None = None
    max_minutes: float | None = 30.0
    checkpoint_every: int = 250
    eval_every: int = 500
    eval_n: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.phases < 1 or self.steps < 1:
            raise ValueError(f"steps and phases must be >= 1, got {self.steps}, {self.phases}")
        if self.method == "dmd" and self.phases != 1:
            raise ValueError(f"phases applies to consistency distillation only (dmd samples x0-renoise), got {self.phases}")
        if self.fake_updates < 1:
            raise ValueError(f"fake_updates must be >= 1, got {self.fake_updates}")
        if self.phases > 1 and self.steps != self.phases:
            raise ValueError(f"with phases={self.phases} the student samples in exactly {self.phases} steps, "
                             f"got steps={self.steps}")


def make_student(teacher_dit: torch.nn.Module, method: str) -> torch.nn.Module:
    """The student starts as the teacher. Guidance distillation adds a guidance embedder whose
    output layer is zero, so at step 0 the student is the teacher's conditional branch."""
    from omnidit.dit import DiT, DiTConfig

    if method in ("consistency", "dmd") or teacher_dit.config.guidance_embeds:
        return copy.deepcopy(teacher_dit).float().train().requires_grad_(True)
    cfg = DiTConfig.from_dict({**teacher_dit.config.to_dict(), "guidance_embeds": True})
    student = DiT(cfg)
    student.initialize_weights()
    missing, unexpected = student.load_state_dict(teacher_dit.state_dict(), strict=False)
    if unexpected or any("guidance_embedder" not in k for k in missing):
        raise ValueError(f"teacher weights do not fit the student: missing {missing}, unexpected {unexpected}")
    g = student.time_text_embed.guidance_embedder
    torch.nn.init.zeros_(g.linear_2.weight)
    torch.nn.init.zeros_(g.linear_2.bias)
    return student.to(next(teacher_dit.parameters()).device).train()


@reference_attention()
def train_distill(cfg: DistillConfig) -> Path:
    """Train (or resume) the student with `cfg.method` (distill/methods.py), then export it to
    `cfg.out`; returns the model folder."""
    from accelerate import Accelerator

    from omnidit.distill.methods import METHOD_CLASSES, Run
    from omnidit.distill.teacher import load_teacher
    from omnidit.training.dit_train import DiTTrainConfig, open_data, quick_eval

    run_dir = Path(cfg.run)
    acc = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg.teacher, device=acc.device, text_encoder=cfg.text_encoder)
    student = make_student(teacher.dit, cfg.method)
    if cfg.init_student:
        load_weights_from(student, cfg.init_student, "init_student")
    ema = EMA(student, cfg.ema_decay if cfg.ema_decay is not None else EMA_DECAY[cfg.method])
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    run = Run(acc, student, opt, ema, teacher, cfg)
    method = METHOD_CLASSES[cfg.method](run)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    if ck is not None:
        if ck.get("method") != cfg.method:
            raise ValueError(f"{run_dir}/checkpoint.pt is a {ck.get('method')!r} run, not {cfg.method!r}")
        student.load_state_dict(ck["student"])
        ema.model.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        method.load(ck)
        gen.set_state(ck["gen"])
        step = ck["step"]
        acc.print(f"resumed {cfg.method} distillation at step {step}")
    run.student, run.opt = acc.prepare(student, opt)
    method.prepare()
    ema.model.to(acc.device)

    data_cfg = DiTTrainConfig(vae=str(teacher.vae_dir), image_cache=cfg.image_cache, video_cache=cfg.video_cache,
                              image_batch=cfg.image_batch, video_batch=cfg.video_batch, video_every=cfg.video_every,
                              video_frames=cfg.video_frames, data=cfg.data, workers=cfg.workers, seed=cfg.seed + 100)
    images, videos = open_data(data_cfg, acc.device, teacher.text_encoder, start=step)
    null = teacher.text([teacher.config.negative_prompt or ""], "cpu")
    sampling = method.sampling(teacher.config.to_dict())
    acc.print(f"{cfg.method} distillation of {teacher.name!r} ({run.mode} guidance {teacher.config.guidance}) on "
              f"{acc.device}; student {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M params")

    budget = Budget(cfg.max_steps, cfg.max_minutes)
    bar = tqdm(desc=f"distill {cfg.method}", unit="step", initial=step, disable=not acc.is_local_main_process)
    t0, running = time.time(), {}
    while not budget.done(step):
        is_video = (videos is not None and cfg.video_every > 0 and step % (cfg.video_every + 1) == cfg.video_every)
        src, b = (videos, cfg.video_batch) if is_video else (images, cfg.image_batch)
        x0, text, mask, pooled = (t.to(acc.device) for t in src.batch(gen, b))
        uncond = tuple(n.to(acc.device).expand(x0.shape[0], *n.shape[1:]) for n in null)
        losses = method.step(step, x0, (text, mask, pooled), uncond, gen)
        step += 1
        for k, v in losses.items():  # dmd has no student loss before its first student turn
            if v is not None:
                running[k] = smooth_loss(running.get(k), v)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()}, refresh=False)
        last = budget.done(step)
        if acc.is_main_process and (step % cfg.checkpoint_every == 0 or last):
            save_checkpoint(run_dir / "checkpoint.pt", student=acc.unwrap_model(run.student).state_dict(),
                            ema=ema.model.state_dict(), opt=run.opt.state_dict(), gen=gen.get_state(), step=step,
                            method=cfg.method, config=asdict(cfg), dit_config=ema.model.config.to_dict(),
                            **method.state())
            log_metrics(run_dir / "metrics.jsonl", {
                "step": step, "loss": running.get("loss"), "seconds": round(time.time() - t0, 1),
                **({"fake_loss": running["fake"]} if "fake" in running else {})})
        if acc.is_main_process and cfg.eval_every and (step % cfg.eval_every == 0 or last):
            scores = quick_eval(ema.model, teacher.vae_dir, teacher.text_encoder, n=cfg.eval_n, seed=cfg.seed + 7,
                                steps=None, sampling=sampling)
            log_metrics(run_dir / "metrics.jsonl", {"step": step, "eval": scores})
            acc.print(f"step {step} eval: {scores}")
            ema.model.eval()
    bar.close()
    if not acc.is_main_process:
        return Path(cfg.out)
    return export_student(ema.model, teacher, Path(cfg.out), cfg=cfg, trained_steps=step, sampling=sampling)


def export_student(student: torch.nn.Module, teacher, out: Path, *, cfg: DistillConfig, trained_steps: int,
                   sampling: dict, dtype: torch.dtype = torch.float16) -> Path:
    """Write the student as a model folder: transformer/ (fp16), the teacher's vae/, model_index.json."""
    from omnidit import __version__
    from omnidit.dit import DiT, DiTConfig
    from omnidit.model_folder import write_model_index

    out.mkdir(parents=True, exist_ok=True)
    dit = DiT(DiTConfig.from_dict(student.config.to_dict()))
    dit.load_state_dict({k: v.detach().cpu() for k, v in student.state_dict().items()})
    dit.to(dtype).save_pretrained(out / "transformer")
    shutil.copytree(teacher.vae_dir, out / "vae", dirs_exist_ok=True)
    index = copy.deepcopy(teacher.index)
    if not isinstance(index.get("text_encoder"), dict):  # a HunyuanVideo folder: point at the teacher's encoders
        index["text_encoder"] = {"kind": "hunyuan", "path": str(teacher.model_dir.resolve())}
    index["_omnidit_version"] = __version__
    index["omnidit"] = {
        "sampling": sampling,
        "distilled_from": teacher.name,
        "method": cfg.method,
        "phases": cfg.phases if cfg.method == "consistency" else None,
        "trained_steps": trained_steps,
        "weights": "ema",
    }
    write_model_index(out, index)
    return out
