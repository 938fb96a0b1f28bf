"""Student vs teacher on the same prompts and seeds: adherence, paired similarity, diversity, speed.

Rows: the teacher at its default steps (the reference), the teacher at the student's N steps
(what naive step cutting gives), and the student at N steps. PSNR and SSIM compare each row's
frames with the reference's frames from the same initial noise; diversity is the mean pairwise
(1 - SSIM) between samples of one prompt under different seeds (0 = every seed the same picture).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays of one shape."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _gauss(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, k, k]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian window 7, sigma 1.5, per channel) of uint8 frames
    `[F, H, W, 3]` or `[H, W, 3]`."""
    x = torch.from_numpy(a.reshape(-1, *a.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0  # [F, 3, H, W]
    y = torch.from_numpy(b.reshape(-1, *b.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0
    c = x.shape[1]
    w = _gauss().expand(c, 1, -1, -1)

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def diversity(samples: list[np.ndarray]) -> float:
    """Mean pairwise 1 - SSIM among samples of one prompt."""
    pairs = list(itertools.combinations(samples, 2))
    return float(np.mean([1.0 - ssim(a, b) for a, b in pairs])) if pairs else 0.0


def compare_models(student, teacher, prompts: list[str], *, frames: int, steps: int, seed: int,
                   batch_size: int = 8, diversity_prompts: int = 8, diversity_seeds: int = 4) -> dict:
    """The three rows for one prompt list (images or videos); see the module docstring."""
    from omnidit.shapes.adherence import eval_pipeline

    rows = {
        "teacher_default": (teacher, None),
        f"teacher_{steps}_steps": (teacher, steps),
        f"student_{steps}_steps": (student, steps),
    }
    out: dict[str, dict] = {}
    ref_frames = None
    for name, (pipe, n_steps) in rows.items():
        r = eval_pipeline(pipe, prompts, frames=frames, steps=n_steps, seed=seed, batch_size=batch_size,
                          keep_frames=True)
        kept = r.pop("frames_list")
        r["steps"] = n_steps or pipe.config.steps
        if ref_frames is None:
            ref_frames = kept
        else:
            r["psnr_vs_teacher"] = round(float(np.mean([min(psnr(a, b), 100.0) for a, b in zip(kept, ref_frames)])), 2)
            r["ssim_vs_teacher"] = round(float(np.mean([ssim(a, b) for a, b in zip(kept, ref_frames)])), 4)
        div = []
        for p in prompts[:diversity_prompts]:
            gens = pipe.generate_many([p] * diversity_seeds, seeds=[seed + 10_000 + k for k in range(diversity_seeds)],
                                      frames=frames, steps=n_steps)
            div.append(diversity([g.frames for g in gens]))
        r["diversity"] = round(float(np.mean(div)), 4) if div else None
        out[name] = r
    return out
