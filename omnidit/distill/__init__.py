"""Step distillation: fewer sampling steps, one forward per step, the same picture.

- guidance distillation: a student with a guidance-scale input learns the teacher's
  classifier-free-guided velocity, so one forward per step replaces two;
- consistency distillation (multistep / phased): a student whose one step lands where the
  teacher's guided ODE lands at the end of the current phase; sampled in 1 to 8 steps;
- distribution matching (DMD2-style, no GAN term): a few-step student whose samples are pushed
  towards the teacher's guided distribution by a real (teacher) and a fake (fitted to the
  student) score model.

`losses.py` and `dmd.py` hold the objectives as plain functions, `teacher.py` loads a teacher and
computes its guided velocity, `loop.py` is the training loop (`omnidit distill`).
"""

from omnidit.distill.dmd import distribution_matching_loss, fake_score_loss, generator_sample
from omnidit.distill.losses import (
    consistency_distill_loss,
    consistency_grid,
    guidance_distill_loss,
    guided_velocity,
    pseudo_huber,
)

__all__ = [
    "consistency_distill_loss",
    "consistency_grid",
    "distribution_matching_loss",
    "fake_score_loss",
    "generator_sample",
    "guidance_distill_loss",
    "guided_velocity",
    "pseudo_huber",
]
