"""Does a shapes model use the motion words of a prompt? Two checks, for the next training run.

    python experiments/motion_probe.py --model shapes

1. Seeds vs words: one prompt per direction, the same seeds for each; prints the first -> last
   frame displacement of the object. A model that ignores the words moves objects by the seed
   (the same displacement on every row of a column).
2. Loss with the right vs the opposite direction: the flow-matching loss on rendered single-object
   videos at several noise levels, with the true prompt and with its direction swapped. Where the
   two are equal the model does not read the direction (there, or at all).
3. With --eval-n N: can sampling recover motion? Adherence at other schedule shifts, and with
   guidance against the prompt with its motion reversed (the negative prompt).
"""

from __future__ import annotations

import argparse
import dataclasses
import re

import numpy as np
import torch

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
FRAMES = 17


def seeds_vs_words(pipe, seeds: int) -> None:
    from omnidit.shapes.evaluate import _as_frames, background_of, find_blobs

    print(f"displacement (dx, dy) of the object, first -> last frame, seeds 0..{seeds - 1}")
    for d in OPPOSITE:
        prompt = f"a large red square on a black background, moving {d}"
        row = []
        for g in pipe.generate_many([prompt] * seeds, seeds=list(range(seeds)), frames=FRAMES):
            fr = _as_frames(g.frames)
            blobs = find_blobs(fr, background_of(fr)[1])
            row.append(f"({blobs[-1][0].cx - blobs[0][0].cx:+.2f}, {blobs[-1][0].cy - blobs[0][0].cy:+.2f})"
                       if blobs[0] and blobs[-1] else "   (lost)   ")
        print(f"  moving {d:5s}  " + " ".join(row))


@torch.no_grad()
def loss_right_vs_swapped(pipe, n: int, sigmas: list[float]) -> None:
    from omnidit.shapes import prompt_for, sample_spec
    from omnidit.shapes.render import render_batch
    from omnidit.training.vae_train import to_video_tensor

    rng = np.random.default_rng(0)
    specs, swapped = [], []
    while len(specs) < n:
        s = sample_spec(rng, video=True, max_objects=1)
        if s.objects[0].motion in OPPOSITE:
            specs.append(s)
            o = s.objects[0]
            swapped.append(dataclasses.replace(s, objects=[dataclasses.replace(o, motion=OPPOSITE[o.motion])]))
    x0 = pipe.vae.encode(to_video_tensor(render_batch(specs, frames=FRAMES, size=64)))
    texts = [pipe.text_encoder.encode([prompt_for(s, paraphrase=False) for s in group]) for group in (specs, swapped)]
    gen = torch.Generator().manual_seed(0)
    print(f"flow-matching loss on {n} single-object videos: true prompt vs direction swapped")
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=gen)
        x_t = (1 - s) * x0 + s * noise
        t = torch.full((n,), s * 1000.0)
        losses = [float(((pipe.dit(x_t, t, e.hidden_states, e.attention_mask, e.pooled).float() - (noise - x0)) ** 2)
                        .mean()) for e in texts]
        print(f"  sigma {s:.2f}: true {losses[0]:.4f}  swapped {losses[1]:.4f}  ratio {losses[1] / losses[0]:.3f}")


REVERSED = {**OPPOSITE, "growing": "shrinking", "shrinking": "growing"}


def reverse_motion(prompt: str) -> str:
    """Every motion word reversed ("moving left" -> "moving right", growing <-> shrinking); positions kept."""
    return re.sub(r"(?<=moving )(left|right|up|down)\b|\b(growing|shrinking)\b", lambda m: REVERSED[m.group(0)], prompt)


def sampling_variants(pipe, n: int, shifts: list[float], negative_scales: list[float]) -> None:
    """3. Can sampling recover motion? Adherence on the eval's first `n` video prompts (seed 1000)
    at other schedule shifts, and with the prompt's motion reversed as the negative prompt."""
    from omnidit.shapes import parse_prompt, score
    from omnidit.shapes.adherence import eval_pipeline, eval_prompts

    prompts = eval_prompts(n, seed=1000, video=True)
    base = pipe.config
    for shift in shifts:
        pipe.config = dataclasses.replace(base, shift=shift)
        r = eval_pipeline(pipe, prompts, frames=FRAMES, seed=1000)["scores"]
        print(f"  shift {shift:g}: " + "  ".join(f"{k} {v:.1%}" for k, v in r.items()))
    pipe.config = base
    for scale in negative_scales:
        rows: dict[str, list[float]] = {}
        for i, p in enumerate(prompts):
            g = pipe.generate(p, negative_prompt=reverse_motion(p), guidance=scale, frames=FRAMES, seed=1000 + i)
            for k, v in score(g.frames, parse_prompt(p)).items():
                if v is not None:
                    rows.setdefault(k, []).append(float(v))
        print(f"  reversed-motion negative prompt, scale {scale:g}: "
              + "  ".join(f"{k} {np.mean(v):.1%}" for k, v in rows.items()))


def main() -> None:
    from omnidit.pipeline import Pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.6, 0.8, 0.9, 0.95, 0.99])
    ap.add_argument("--eval-n", type=int, default=0, help="3: this many video prompts (0 = skip check 3)")
    ap.add_argument("--shifts", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--negative-scales", type=float, nargs="*", default=[4.0])
    args = ap.parse_args()
    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    seeds_vs_words(pipe, args.seeds)
    loss_right_vs_swapped(pipe, args.n, args.sigmas)
    if args.eval_n:
        sampling_variants(pipe, args.eval_n, args.shifts, args.negative_scales)


if __name__ == "__main__":
    main()
