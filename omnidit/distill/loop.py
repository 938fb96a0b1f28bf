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
    optimizer_step,
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


def student_sampling(cfg: DistillConfig, teacher_sampling: dict, student_guidance: bool) -> dict:
    """The student's defaults in model_index.json: few steps and no CFG forward (consistency),
    or the teacher's steps with the scale as an input (guidance)."""
    s = dict(teacher_sampling)
    if cfg.method == "guidance":
        s.update(guidance_mode="embedded")
    elif cfg.method == "dmd":
        s.update(steps=cfg.steps, sampler="x0_renoise", guidance_mode="none")
    else:
        s.update(steps=cfg.phases if cfg.phases > 1 else cfg.steps,
                 sampler="euler" if cfg.phases > 1 else "x0_renoise",
                 guidance_mode="embedded" if student_guidance else "none")
    return s


@reference_attention()
def train_distill(cfg: DistillConfig) -> Path:
    """Train (or resume) the student, then export it to `cfg.out`; returns the model folder."""
    from accelerate import Accelerator

    from omnidit.distill.losses import consistency_distill_loss, consistency_grid, guidance_distill_loss
    from omnidit.distill.teacher import load_teacher
    from omnidit.sampling import flow_sigmas
    from omnidit.training.dit_train import DiTTrainConfig, open_data, quick_eval

    run = Path(cfg.run)
    acc = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg.teacher, device=acc.device, text_encoder=cfg.text_encoder)
    mode = teacher.config.guidance_mode
    if cfg.method == "guidance" and mode != "cfg":
        raise ValueError(f"guidance distillation needs a teacher sampled with true CFG; {teacher.name!r} "
                         f"uses guidance_mode={mode!r} (it is guidance-distilled already)")
    student = make_student(teacher.dit, cfg.method)
    if cfg.init_student:
        load_weights_from(student, cfg.init_student, "init_student")
    student_guidance = bool(student.config.guidance_embeds) and cfg.method == "consistency"
    if cfg.method == "dmd" and student.config.guidance_embeds:
        raise ValueError("dmd distillation needs a teacher without a guidance input (it learns the guided "
                         f"distribution itself); {teacher.name!r} has guidance_embeds")
    ema = EMA(student, cfg.ema_decay if cfg.ema_decay is not None else EMA_DECAY[cfg.method])
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    # dmd: the fake score model starts as the teacher (so the first updates compare like with like).
    fake = copy.deepcopy(teacher.dit).float().train().requires_grad_(True) if cfg.method == "dmd" else None
    fake_opt = (torch.optim.AdamW(fake.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
                if fake is not None else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    ck = load_checkpoint(run / "checkpoint.pt")
    if ck is not None:
        if ck.get("method") != cfg.method:
            raise ValueError(f"{run}/checkpoint.pt is a {ck.get('method')!r} run, not {cfg.method!r}")
        student.load_state_dict(ck["student"])
        ema.model.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        if fake is not None:
            fake.load_state_dict(ck["fake"])
            fake_opt.load_state_dict(ck["fake_opt"])
        gen.set_state(ck["gen"])
        step = ck["step"]
        acc.print(f"resumed {cfg.method} distillation at step {step}")
    student, opt = acc.prepare(student, opt)
    if fake is not None:
        fake, fake_opt = acc.prepare(fake, fake_opt)
    ema.model.to(acc.device)

    data_cfg = DiTTrainConfig(vae=str(teacher.vae_dir), image_cache=cfg.image_cache, video_cache=cfg.video_cache,
                              image_batch=cfg.image_batch, video_batch=cfg.video_batch, video_every=cfg.video_every,
                              video_frames=cfg.video_frames, data=cfg.data, workers=cfg.workers, seed=cfg.seed + 100)
    images, videos = open_data(data_cfg, acc.device, teacher.text_encoder, start=step)
    null = teacher.text([teacher.config.negative_prompt or ""], "cpu")
    phases = cfg.phases
    sub = max(1, round(cfg.teacher_intervals / phases))
    grid, phase_end = consistency_grid(phases, sub, teacher.config.shift)
    student_sigmas = flow_sigmas(cfg.steps, teacher.config.shift).to(acc.device)  # dmd: the student's sampler
    acc.print(f"{cfg.method} distillation of {teacher.name!r} ({mode} guidance {teacher.config.guidance}) on "
              f"{acc.device}; student {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M params")

    budget = Budget(cfg.max_steps, cfg.max_minutes)
    bar = tqdm(desc=f"distill {cfg.method}", unit="step", initial=step, disable=not acc.is_local_main_process)
    t0, run_loss, run_fake = time.time(), None, None
    while not budget.done(step):
        is_video = (videos is not None and cfg.video_every > 0 and step % (cfg.video_every + 1) == cfg.video_every)
        src, b = (videos, cfg.video_batch) if is_video else (images, cfg.image_batch)
        x0, text, mask, pooled = (t.to(acc.device) for t in src.batch(gen, b))
        cond = (text, mask, pooled)
        uncond = tuple(n.to(acc.device).expand(x0.shape[0], *n.shape[1:]) for n in null)
        if cfg.method == "dmd":
            loss, fake_loss = dmd_step(acc, student, opt, ema, fake, fake_opt, teacher, x0, cond, uncond, gen,
                                       sigmas=student_sigmas, step=step, fake_updates=cfg.fake_updates, mode=mode)
            run_fake = smooth_loss(run_fake, fake_loss)
        else:
            with acc.autocast():
                if cfg.method == "guidance":
                    loss = guidance_distill_loss(student, teacher.dit, x0, cond, uncond, gen,
                                                 scale_range=cfg.scale_range)
                else:
                    loss = consistency_distill_loss(
                        student, ema.model, teacher.dit, x0, cond, uncond, gen, grid=grid, phase_end=phase_end,
                        scale=teacher.config.guidance, mode=mode, huber_c=cfg.huber_c,
                        student_guidance=student_guidance)
            optimizer_step(acc, student, opt, loss, ema, step)
        step += 1
        if loss is not None:
            run_loss = smooth_loss(run_loss, loss)
        bar.update(1)
        shown = {"loss": run_loss, "fake": run_fake}  # dmd has no student loss before its first student turn
        bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items() if v is not None}, refresh=False)
        last = budget.done(step)
        if acc.is_main_process and (step % cfg.checkpoint_every == 0 or last):
            extra = ({"fake": acc.unwrap_model(fake).state_dict(), "fake_opt": fake_opt.state_dict()}
                     if fake is not None else {})
            save_checkpoint(run / "checkpoint.pt", student=acc.unwrap_model(student).state_dict(),
                            ema=ema.model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), step=step,
                            method=cfg.method, config=asdict(cfg), dit_config=ema.model.config.to_dict(), **extra)
            log_metrics(run / "metrics.jsonl", {"step": step, "loss": run_loss, "seconds": round(time.time() - t0, 1),
                                                **({"fake_loss": run_fake} if run_fake is not None else {})})
        if acc.is_main_process and cfg.eval_every and (step % cfg.eval_every == 0 or last):
            scores = quick_eval(ema.model, teacher.vae_dir, teacher.text_encoder, n=cfg.eval_n, seed=cfg.seed + 7,
                                steps=None, sampling=student_sampling(cfg, teacher.config.to_dict(), student_guidance))
            log_metrics(run / "metrics.jsonl", {"step": step, "eval": scores})
            acc.print(f"step {step} eval: {scores}")
            ema.model.eval()
    bar.close()
    if not acc.is_main_process:
        return Path(cfg.out)
    return export_student(ema.model, teacher, Path(cfg.out), cfg=cfg, trained_steps=step,
                          sampling=student_sampling(cfg, teacher.config.to_dict(), student_guidance))


def dmd_step(acc, student, opt, ema: EMA, fake, fake_opt, teacher, x0, cond, uncond, gen: torch.Generator, *,
             sigmas: torch.Tensor, step: int, fake_updates: int, mode: str):
    """One dmd iteration: the student's samples (a random step k of its sampler per sample), a
    student update along the distribution-matching direction every `fake_updates`-th step, and a
    fake-score update on those samples every step. Returns (student loss or None, fake loss)."""
    from omnidit.distill.dmd import distribution_matching_loss, fake_score_loss, generator_sample

    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    k = torch.randint(0, len(sigmas) - 1, (b,), generator=gen).to(x0.device)
    student_turn = step % fake_updates == fake_updates - 1
    loss = None
    with acc.autocast(), torch.set_grad_enabled(student_turn):
        sample = generator_sample(student, noise, cond, sigmas, k, gen)  # [B, C, F, H, W]
        if student_turn:  # the critics run without gradient inside the loss
            loss = distribution_matching_loss(sample, teacher.dit, fake, cond, uncond, gen,
                                              scale=teacher.config.guidance, mode=mode)
    if loss is not None:
        optimizer_step(acc, student, opt, loss, ema, step)
    with acc.autocast():
        fake_loss = fake_score_loss(fake, sample.detach(), cond, gen)
    optimizer_step(acc, fake, fake_opt, fake_loss, None, step)
    return loss, fake_loss


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
