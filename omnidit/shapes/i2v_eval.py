"""Image-to-video on the shapes world: the start image is a rendered frame of a world scene, the prompt is
that scene's; the generated video is scored for what it keeps of the image and how it follows the words.

Per video, image-to-video (`image=` the scene's first rendered frame) and, as the reference, the same
prompt and seed without the image:
- first-frame PSNR against the image after a VAE round trip (encode + decode of the image alone) and
  against the image itself;
- junction PSNR: frame 1 (the first generated one) against the image: how continuously the video
  leaves it (text-to-video starts elsewhere);
- the world's adherence scores (evaluate.score): motion follows the prompt's words; colour and
  position are the image's too, since the prompt describes the same scene.
Used by `omnidit eval --i2v`.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

ATTRS = ("colour", "position", "shape", "motion", "all")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB between uint8 images (capped at 99 for identical ones)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def start_images(prompts: list[str], size: int) -> list[np.ndarray]:
    """The first rendered frame (uint8 [size, size, 3]) of each prompt's scene."""
    from omnidit.shapes import parse_prompt, render_batch

    return list(
        render_batch([parse_prompt(p) for p in prompts], frames=1, size=size)[:, 0]
    )


def round_trip(pipe, image: np.ndarray) -> np.ndarray:
    """The image through the pipeline's VAE alone (a one-frame video), uint8 [H, W, 3]."""
    from PIL import Image

    from omnidit.tokenizers.image_input import image_to_video

    return pipe.decode(pipe.vae.encode(image_to_video(Image.fromarray(image))))[0, 0]


def eval_i2v(
    pipe,
    prompts: list[str],
    *,
    frames: int = 17,
    size: int = 64,
    seed: int = 0,
    batch_size: int = 8,
    steps: int | None = None,
    guidance: float | None = None,
    cache=None,
) -> dict:
    """Mean metrics over `prompts` for image-to-video ("i2v") and the text-to-video reference ("t2v");
    sample i uses seed `seed + i` in both."""
    from omnidit.shapes import parse_prompt, score

    images = start_images(prompts, size)
    sums: dict[str, dict[str, list[float]]] = {
        "i2v": defaultdict(list),
        "t2v": defaultdict(list),
    }
    seconds = {"i2v": 0.0, "t2v": 0.0}
    for start in range(0, len(prompts), batch_size):
        batch, imgs = (
            prompts[start : start + batch_size],
            images[start : start + batch_size],
        )
        seeds = [seed + start + i for i in range(len(batch))]
        for kind, image in (("i2v", imgs), ("t2v", None)):
            t0 = time.perf_counter()
            gens = pipe.generate_many(
                batch,
                seeds=seeds,
                frames=frames,
                height=size,
                width=size,
                steps=steps,
                guidance=guidance,
                cache=cache,
                image=image,
            )
            seconds[kind] += time.perf_counter() - t0
            for p, im, g in zip(batch, imgs, gens):
                m = sums[kind]
                m["first_frame_psnr_vs_round_trip"].append(
                    psnr(g.frames[0], round_trip(pipe, im))
                )
                m["first_frame_psnr_vs_image"].append(psnr(g.frames[0], im))
                m["junction_psnr"].append(psnr(g.frames[1], im))
                for k, v in score(g.frames, parse_prompt(p)).items():
                    if k in ATTRS and v is not None:
                        m[k].append(float(v))
    out = {"n": len(prompts), "frames": frames, "size": size}
    for kind, m in sums.items():
        out[kind] = {k: round(float(np.mean(v)), 4) for k, v in m.items()}
        out[kind]["seconds_per_sample"] = round(seconds[kind] / max(1, len(prompts)), 3)
        out[kind]["first_frame_psnr_min"] = round(
            float(np.min(m["first_frame_psnr_vs_round_trip"])), 2
        )
    return out
