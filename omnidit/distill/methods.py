"""The distillation methods as objects the one training loop drives (`loop.train_distill`).

A method owns what differs between them: checks on the teacher and student, extra models and
optimizers (dmd's fake score), what its checkpoint adds, one training step, and the sampling
defaults its student is exported with. The loop owns data, EMA, checkpoints, eval and export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from omnidit.distill.dmd import distribution_matching_loss, fake_score_loss, generator_sample
from omnidit.distill.losses import consistency_distill_loss, consistency_grid, guidance_distill_loss
from omnidit.sampling import Text, flow_sigmas
from omnidit.training.common import EMA, optimizer_step


@dataclass
class Run:
    """What every method trains with: the accelerator, the student, its optimizer and EMA, the teacher."""

    acc: object
    student: torch.nn.Module
    opt: torch.optim.Optimizer
    ema: EMA
    teacher: object  # distill.teacher.Teacher
    cfg: object  # DistillConfig

    @property
    def mode(self) -> str:
        return self.teacher.config.guidance_mode


class Method:
    """Base: no extra state; `step` returns the losses to log (`loss` may be None)."""

    name = ""

    def __init__(self, run: Run):
        self.run = run

    def state(self) -> dict:
        """What the method adds to the checkpoint."""
        return {}

    def load(self, ck: dict) -> None:
        """Restore `state()` from a checkpoint (before `prepare`)."""

    def prepare(self) -> None:
        """Hand extra models to the accelerator (after `load`)."""

    def step(self, step: int, x0: torch.Tensor, cond: Text, uncond: Text, gen: torch.Generator) -> dict:
        raise NotImplementedError

    def sampling(self, teacher_sampling: dict) -> dict:
        """The exported student's sampling defaults."""
        raise NotImplementedError

    def _fit(self, loss: torch.Tensor, step: int) -> None:
        r = self.run
        optimizer_step(r.acc, r.student, r.opt, loss, r.ema, step)


class GuidanceDistill(Method):
    """The student takes the CFG scale as an input: one forward per step instead of two."""

    name = "guidance"

    def __init__(self, run: Run):
        super().__init__(run)
        if run.mode != "cfg":
            raise ValueError(f"guidance distillation needs a teacher sampled with true CFG; {run.teacher.name!r} "
                             f"uses guidance_mode={run.mode!r} (it is guidance-distilled already)")

    def step(self, step, x0, cond, uncond, gen):
        r = self.run
        with r.acc.autocast():
            loss = guidance_distill_loss(r.student, r.teacher.dit, x0, cond, uncond, gen,
                                         scale_range=r.cfg.scale_range)
        self._fit(loss, step)
        return {"loss": loss}

    def sampling(self, teacher_sampling):
        return dict(teacher_sampling, guidance_mode="embedded")


class ConsistencyDistill(Method):
    """Phased consistency: the student's step lands where the teacher's guided ODE ends its phase."""

    name = "consistency"

    def __init__(self, run: Run):
        super().__init__(run)
        cfg = run.cfg
        sub = max(1, round(cfg.teacher_intervals / cfg.phases))
        self.grid, self.phase_end = consistency_grid(cfg.phases, sub, run.teacher.config.shift)
        self.student_guidance = bool(run.student.config.guidance_embeds)

    def step(self, step, x0, cond, uncond, gen):
        r = self.run
        with r.acc.autocast():
            loss = consistency_distill_loss(
                r.student, r.ema.model, r.teacher.dit, x0, cond, uncond, gen, grid=self.grid,
                phase_end=self.phase_end, scale=r.teacher.config.guidance, mode=r.mode, huber_c=r.cfg.huber_c,
                student_guidance=self.student_guidance)
        self._fit(loss, step)
        return {"loss": loss}

    def sampling(self, teacher_sampling):
        cfg = self.run.cfg
        return dict(teacher_sampling, steps=cfg.phases if cfg.phases > 1 else cfg.steps,
                    sampler="euler" if cfg.phases > 1 else "x0_renoise",
                    guidance_mode="embedded" if self.student_guidance else "none")


class DMDDistill(Method):
    """Distribution matching: a fake score model fitted to the student's samples (two time scales)."""

    name = "dmd"

    def __init__(self, run: Run):
        super().__init__(run)
        if run.student.config.guidance_embeds:
            raise ValueError("dmd distillation needs a teacher without a guidance input (it learns the guided "
                             f"distribution itself); {run.teacher.name!r} has guidance_embeds")
        # The fake score model starts as the teacher (so the first updates compare like with like).
        self.fake = copy.deepcopy(run.teacher.dit).float().train().requires_grad_(True)
        self.fake_opt = torch.optim.AdamW(self.fake.parameters(), lr=run.cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.sigmas = flow_sigmas(run.cfg.steps, run.teacher.config.shift).to(run.acc.device)  # the student's sampler

    def state(self):
        return {"fake": self.run.acc.unwrap_model(self.fake).state_dict(), "fake_opt": self.fake_opt.state_dict()}

    def load(self, ck):
        self.fake.load_state_dict(ck["fake"])
        self.fake_opt.load_state_dict(ck["fake_opt"])

    def prepare(self):
        self.fake, self.fake_opt = self.run.acc.prepare(self.fake, self.fake_opt)

    def step(self, step, x0, cond, uncond, gen):
        """The student's samples (a random step k of its sampler per sample), a student update along the
        distribution-matching direction every `fake_updates`-th step, and a fake-score update every step."""
        r, b = self.run, x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        k = torch.randint(0, len(self.sigmas) - 1, (b,), generator=gen).to(x0.device)
        student_turn = step % r.cfg.fake_updates == r.cfg.fake_updates - 1
        loss = None
        with r.acc.autocast(), torch.set_grad_enabled(student_turn):
            sample = generator_sample(r.student, noise, cond, self.sigmas, k, gen)  # [B, C, F, H, W]
            if student_turn:  # the critics run without gradient inside the loss
                loss = distribution_matching_loss(sample, r.teacher.dit, self.fake, cond, uncond, gen,
                                                  scale=r.teacher.config.guidance, mode=r.mode)
        if loss is not None:
            self._fit(loss, step)
        with r.acc.autocast():
            fake_loss = fake_score_loss(self.fake, sample.detach(), cond, gen)
        optimizer_step(r.acc, self.fake, self.fake_opt, fake_loss, None, step)
        return {"loss": loss, "fake": fake_loss}

    def sampling(self, teacher_sampling):
        return dict(teacher_sampling, steps=self.run.cfg.steps, sampler="x0_renoise", guidance_mode="none")


METHOD_CLASSES: dict[str, type[Method]] = {m.name: m for m in (GuidanceDistill, ConsistencyDistill, DMDDistill)}
