"""Score decoders on a model's eval latents, without sampling again.

A DiT's latents do not depend on the decoder, so `eval_pipeline`'s scores for a model with a
swapped VAE (same latent space) are the model's eval latents decoded by that VAE. Sample them
once (`sample_latents`: eval's seeds and batches), then `decode_frames` + `score_frames` for
each decoder takes seconds. Used by `omnidit eval --decoder`.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import torch


def sample_latents(pipe, prompts: list[str], *, frames: int, seed: int, size: int = 64, batch_size: int = 8,
                   steps: int | None = None, guidance: float | None = None,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The clean latents `eval_pipeline` decodes, on the CPU: sample i from seed `seed + i`, in
    batches of `batch_size`; `progress(k)` after each batch of k samples."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        z, _, _ = pipe.generate_latents(batch, seeds=[seed + start + i for i in range(len(batch))], frames=frames,
                                        height=size, width=size, steps=steps, guidance=guidance)
        out.append(z.cpu())
        if progress is not None:
            progress(len(batch))
    return torch.cat(out)


@torch.no_grad()
def decode_frames(vae, latents: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """uint8 `[B, F, H, W, 3]` frames of `latents` decoded by `vae` (a VideoVAE), as Pipeline.decode."""
    from omnidit.tokenizers import frames_to_uint8

    return torch.cat([frames_to_uint8(vae.decode(latents[i:i + batch_size].to(vae.device))).cpu()
                      for i in range(0, len(latents), batch_size)]).numpy()


def score_frames(frames: np.ndarray, prompts: list[str]) -> dict[str, float]:
    """The evaluator's accuracy per attribute that applies, rounded as `eval_pipeline` rounds it."""
    from omnidit.shapes import evaluate_many, parse_prompt

    scores = evaluate_many(zip(frames, (parse_prompt(p) for p in prompts)))
    return {k: round(v, 4) for k, v in sorted(scores.items()) if v is not None}


def small_shape_reads(frames: np.ndarray, prompts: list[str]) -> dict[str, Counter]:
    """For small squares and triangles (where shapes fail): how often each is read as each shape,
    or "missing", at the middle frame, from the largest blob of the object's colour."""
    from omnidit.shapes import detect, parse_prompt

    reads: dict[str, Counter] = {"square": Counter(), "triangle": Counter()}
    for f, p in zip(frames, prompts):
        blobs = detect(f)[1]
        for o in parse_prompt(p).objects:
            if o.size == "small" and o.shape in reads:
                mine = [b for b in blobs if b.colour == o.colour]
                reads[o.shape][max(mine, key=lambda b: b.area).shape if mine else "missing"] += 1
    return reads
